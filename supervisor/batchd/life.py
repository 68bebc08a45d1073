"""batchd's own life as a table: starting up, running, reloading, stopping; pure.

The parent's life used to be a handful of flags; it is one state here, changed only by
`step(state, event)`, whose row names what batchd.supervise must do, in order:

    starting   recovered       -> running    : finish_startup, replay_reload
    starting   startup_failed  -> stopping   : abort_startup, begin_shutdown
    starting   critical_fatal  -> stopping   : abort_startup, begin_shutdown
    starting   shutdown        -> stopping   : abort_startup, begin_shutdown
    starting   reload          =             : defer_reload   (applied once running)
    running    reload          -> reloading  : apply_reload
    running    shutdown        -> stopping   : begin_shutdown
    running    critical_fatal  -> stopping   : begin_shutdown
    reloading  reloaded        -> running    : replay_reload
    reloading  reload          =             : defer_reload
    reloading  shutdown        -> stopping   : begin_shutdown
    reloading  critical_fatal  -> stopping   : begin_shutdown
    stopping   all_stopped     -> stopped    : leave
"""

from __future__ import annotations

from enum import StrEnum

from supervisor.state.machine import Row, Table

__all__ = ["TABLE", "Do", "Event", "Life", "step"]


class Life(StrEnum):
    STARTING = "starting"      # startup recovery: phases of workers, in dependency order
    RUNNING = "running"
    RELOADING = "reloading"    # a reload is restarting the workers whose settings changed
    STOPPING = "stopping"      # workers stopped one by one in reverse start order
    STOPPED = "stopped"        # the loop ends


class Event(StrEnum):
    RECOVERED = "recovered"              # the last startup phase is done
    STARTUP_FAILED = "startup_failed"    # a critical worker could not recover
    CRITICAL_FATAL = "critical_fatal"    # a critical worker went FATAL
    RELOAD = "reload"                    # SIGHUP or `batchctl reload`
    RELOADED = "reloaded"                # the workers a reload restarted are settled
    SHUTDOWN = "shutdown"                # SIGTERM, SIGINT or `batchctl shutdown`
    ALL_STOPPED = "all_stopped"          # the last worker is down


class Do(StrEnum):
    FINISH_STARTUP = "finish_startup"    # startup-log, READY=1, answer waiting requests
    ABORT_STARTUP = "abort_startup"      # startup-log with the failed phases
    DEFER_RELOAD = "defer_reload"        # remember it (and its request) for later
    APPLY_RELOAD = "apply_reload"        # read the config, restart the changed workers
    REPLAY_RELOAD = "replay_reload"      # a reload that was deferred goes in now
    BEGIN_SHUTDOWN = "begin_shutdown"    # STOPPING=1, refuse waiters, stop the workers
    LEAVE = "leave"                      # end the loop


L, E = Life, Event
_DOWN = (Do.BEGIN_SHUTDOWN,)

TABLE: Table[Life, Event, Do] = Table(
    {
        (L.STARTING, E.RECOVERED): Row(L.RUNNING, (Do.FINISH_STARTUP, Do.REPLAY_RELOAD)),
        (L.STARTING, E.STARTUP_FAILED): Row(L.STOPPING, (Do.ABORT_STARTUP, Do.BEGIN_SHUTDOWN)),
        (L.STARTING, E.CRITICAL_FATAL): Row(L.STOPPING, (Do.ABORT_STARTUP, Do.BEGIN_SHUTDOWN)),
        (L.STARTING, E.SHUTDOWN): Row(L.STOPPING, (Do.ABORT_STARTUP, Do.BEGIN_SHUTDOWN)),
        (L.STARTING, E.RELOAD): Row(None, (Do.DEFER_RELOAD,)),
        (L.RUNNING, E.RELOAD): Row(L.RELOADING, (Do.APPLY_RELOAD,)),
        (L.RUNNING, E.SHUTDOWN): Row(L.STOPPING, _DOWN),
        (L.RUNNING, E.CRITICAL_FATAL): Row(L.STOPPING, _DOWN),
        (L.RELOADING, E.RELOADED): Row(L.RUNNING, (Do.REPLAY_RELOAD,)),
        (L.RELOADING, E.RELOAD): Row(None, (Do.DEFER_RELOAD,)),
        (L.RELOADING, E.SHUTDOWN): Row(L.STOPPING, _DOWN),
        (L.RELOADING, E.CRITICAL_FATAL): Row(L.STOPPING, _DOWN),
        (L.STOPPING, E.ALL_STOPPED): Row(L.STOPPED, (Do.LEAVE,)),
    },
    ignored=(
        # once stopping, nothing but the last worker going down matters
        {(L.STOPPING, e) for e in Event if e is not E.ALL_STOPPED}
        | {(L.STOPPED, e) for e in Event}
        # events that belong to another phase of life arrive late or never apply
        | {(L.STARTING, E.RELOADED), (L.STARTING, E.ALL_STOPPED)}
        | {(L.RUNNING, e) for e in (E.RECOVERED, E.STARTUP_FAILED, E.RELOADED,
                                    E.ALL_STOPPED)}
        | {(L.RELOADING, e) for e in (E.RECOVERED, E.STARTUP_FAILED, E.ALL_STOPPED)}
    ),
)

del L, E


def step(state: Life, event: Event) -> tuple[Life, tuple[Do, ...]]:
    """The next state and what to do, in order (an ignored pair: same state, nothing)."""
    row = TABLE.lookup(state, event)
    if row is None:
        return state, ()
    return (row.next if row.next is not None else state), row.actions
