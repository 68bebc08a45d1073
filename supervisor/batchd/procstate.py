"""The worker process state machine (supervisord's states), as one table; pure, clock injected.

supervisord's states; RUNNING = ready AND up startsecs; BACKOFF 1, 2, 3 s then FATAL;
an OTP-style restart intensity; RESTART is stop then spawn. docs/SUPERVISOR.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from supervisor.config import WorkerConfig
from supervisor.state.machine import Row, Table

__all__ = [
    "TABLE",
    "Action",
    "Cause",
    "Event",
    "Proc",
    "State",
    "Transition",
    "classify",
    "step",
]


class State(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class Event(StrEnum):
    """What happened to a worker, as the main loop sees it."""

    START = "start"          # startup, operator `start`, or the start half of `restart`
    READY = "ready"          # its ready file, with this process's pid and start time, appeared
    UP = "up"                # `startsecs` elapsed since the spawn
    EXIT = "exit"            # the process was reaped (or the fork failed)
    RETRY = "retry"          # the BACKOFF delay elapsed
    STOP = "stop"            # shutdown, operator `stop`
    RESTART = "restart"      # operator `restart`, or a reload that changed its settings
    STOPWAIT = "stopwait"    # `stopwaitsecs` elapsed in STOPPING without an exit


class Cause(StrEnum):
    """An event refined by its guard: the table's column."""

    START = "start"
    READY_EARLY = "ready_early"    # ready before startsecs elapsed: keep STARTING
    READY_LATE = "ready_late"      # ready after startsecs elapsed: RUNNING
    UP_UNREADY = "up_unready"      # startsecs elapsed, not ready yet: keep STARTING
    UP_READY = "up_ready"          # startsecs elapsed and ready: RUNNING
    EXIT_RETRY = "exit_retry"      # STARTING: retries left; RUNNING: intensity not exceeded
    EXIT_GIVEUP = "exit_giveup"    # STARTING: startretries used up; RUNNING: too many restarts
    EXIT_STOPPED = "exit_stopped"  # STOPPING: the stop is done
    EXIT_RESTART = "exit_restart"  # STOPPING for a restart: the stop is done, start again
    RETRY = "retry"
    STOP = "stop"
    RESTART = "restart"
    STOPWAIT = "stopwait"


class Action(StrEnum):
    """What the caller must do, in the order given."""

    CANCEL_TIMERS = "cancel_timers"  # forget this worker's pending startsecs/backoff/stopwait timer
    SPAWN = "spawn"                  # fork a new process, then arm the UP timer (startsecs)
    ARM_BACKOFF = "arm_backoff"      # arm the RETRY timer `proc.backoff` seconds from now
    TERM = "term"                    # SIGTERM the process, arm the STOPWAIT timer (stopwaitsecs)
    KILL = "kill"                    # SIGKILL the process
    ESCALATE = "escalate"            # it went FATAL: a critical worker takes batchd down (exit 1)


S, C, A = State, Cause, Action

#: (state, cause) -> Row(new state, actions). A pair not listed is ignored (no change).
TABLE: Table[State, Cause, Action] = Table({
    (S.STOPPED, C.START): Row(S.STARTING, (A.SPAWN,)),
    (S.EXITED, C.START): Row(S.STARTING, (A.SPAWN,)),
    (S.FATAL, C.START): Row(S.STARTING, (A.SPAWN,)),
    (S.BACKOFF, C.START): Row(S.STARTING, (A.CANCEL_TIMERS, A.SPAWN)),
    (S.BACKOFF, C.RETRY): Row(S.STARTING, (A.SPAWN,)),
    (S.BACKOFF, C.STOP): Row(S.STOPPED, (A.CANCEL_TIMERS,)),
    (S.STARTING, C.READY_EARLY): Row(S.STARTING),
    (S.STARTING, C.READY_LATE): Row(S.RUNNING),
    (S.STARTING, C.UP_UNREADY): Row(S.STARTING),
    (S.STARTING, C.UP_READY): Row(S.RUNNING),
    (S.STARTING, C.EXIT_RETRY): Row(S.BACKOFF, (A.CANCEL_TIMERS, A.ARM_BACKOFF)),
    (S.STARTING, C.EXIT_GIVEUP): Row(S.FATAL, (A.CANCEL_TIMERS, A.ESCALATE)),
    (S.STARTING, C.STOP): Row(S.STOPPING, (A.CANCEL_TIMERS, A.TERM)),
    (S.RUNNING, C.EXIT_RETRY): Row(S.STARTING, (A.CANCEL_TIMERS, A.SPAWN)),
    (S.RUNNING, C.EXIT_GIVEUP): Row(S.FATAL, (A.CANCEL_TIMERS, A.ESCALATE)),
    (S.RUNNING, C.STOP): Row(S.STOPPING, (A.CANCEL_TIMERS, A.TERM)),
    (S.STOPPING, C.STOPWAIT): Row(S.STOPPING, (A.KILL,)),
    (S.STOPPING, C.STOP): Row(S.STOPPING),          # drops a pending restart
    (S.STOPPING, C.EXIT_STOPPED): Row(S.STOPPED, (A.CANCEL_TIMERS,)),
    (S.STOPPING, C.EXIT_RESTART): Row(S.STARTING, (A.CANCEL_TIMERS, A.SPAWN)),
    # restart: a live worker is stopped with the restart noted; a stopped one just starts
    (S.STARTING, C.RESTART): Row(S.STOPPING, (A.CANCEL_TIMERS, A.TERM)),
    (S.RUNNING, C.RESTART): Row(S.STOPPING, (A.CANCEL_TIMERS, A.TERM)),
    (S.STOPPING, C.RESTART): Row(S.STOPPING),
    (S.STOPPED, C.RESTART): Row(S.STARTING, (A.SPAWN,)),
    (S.EXITED, C.RESTART): Row(S.STARTING, (A.SPAWN,)),
    (S.FATAL, C.RESTART): Row(S.STARTING, (A.SPAWN,)),
    (S.BACKOFF, C.RESTART): Row(S.STARTING, (A.CANCEL_TIMERS, A.SPAWN)),
})

del S, C, A


@dataclass
class Proc:
    """One worker's supervision record (what workers.json shows, plus the guards' inputs)."""

    name: str
    config: WorkerConfig
    critical: bool = False
    state: State = State.STOPPED
    since: float = 0.0                 # wall time of the last state change
    pid: int | None = None
    start: int | None = None           # the process's start time (supervisor.state.proc)
    ready: bool = False                # its ready file was accepted for this pid
    up: bool = False                   # startsecs elapsed for this pid
    backoff: int = 0                   # failed starts in a row (the next delay, in seconds)
    restarts: int = 0                  # crashes in RUNNING restarted since batchd started
    restart_times: list[float] = field(default_factory=list)   # monotonic, within the window
    exitstatus: int | None = None      # exit code, or -signal, of the last exit
    message: str | None = None
    restart: bool = False              # STOPPING for a restart: spawn again on its exit


@dataclass(frozen=True)
class Transition:
    """What `step` did: for logging and for the caller to perform `actions`."""

    name: str
    old: State
    new: State
    cause: Cause
    actions: tuple[Action, ...]


def _recent(proc: Proc, now: float) -> list[float]:
    window = proc.config.restart_window
    return [t for t in proc.restart_times if now - t < window]


def classify(proc: Proc, event: Event, now: float) -> Cause:
    """Resolve the event's guard against the record: the table column to look up."""
    if event is Event.READY:
        return Cause.READY_LATE if proc.up else Cause.READY_EARLY
    if event is Event.UP:
        return Cause.UP_READY if proc.ready else Cause.UP_UNREADY
    if event is Event.EXIT:
        if proc.state is State.RUNNING:
            exceeded = len(_recent(proc, now)) + 1 > proc.config.max_restarts
            return Cause.EXIT_GIVEUP if exceeded else Cause.EXIT_RETRY
        if proc.state is State.STARTING:
            exhausted = proc.backoff >= proc.config.startretries
            return Cause.EXIT_GIVEUP if exhausted else Cause.EXIT_RETRY
        return Cause.EXIT_RESTART if proc.restart else Cause.EXIT_STOPPED
    return Cause(event.value)


def step(proc: Proc, event: Event, *, now: float, wall: float,
         exitstatus: int | None = None, message: str | None = None) -> Transition | None:
    """Apply `event` to `proc` (mutating it); None if the table ignores it in this state.

    `now` is monotonic seconds, `wall` epoch seconds (for `since`); `exitstatus` and
    `message` describe an EXIT (exit code or -signal, and a human phrase).
    """
    cause = classify(proc, event, now)
    row = TABLE.get(proc.state, cause)
    if row is None:
        return None
    old = proc.state
    new, actions = row.next if row.next is not None else old, row.actions
    _bookkeep(proc, cause, actions, now, exitstatus=exitstatus, message=message)
    if new is not old:
        proc.state = new
        proc.since = wall
    return Transition(proc.name, old, new, cause, actions)


def _bookkeep(proc: Proc, cause: Cause, actions: tuple[Action, ...], now: float, *,
              exitstatus: int | None, message: str | None) -> None:
    """The counters and flags that go with a transition (read before the state changes)."""
    if cause in (Cause.READY_EARLY, Cause.READY_LATE):
        proc.ready = True
    elif cause in (Cause.UP_UNREADY, Cause.UP_READY):
        proc.up = True
    if cause is Cause.RESTART:
        proc.restart = proc.state in (State.STARTING, State.RUNNING, State.STOPPING)
    elif cause in (Cause.STOP, Cause.START, Cause.EXIT_RESTART):
        proc.restart = False
    if cause in (Cause.READY_LATE, Cause.UP_READY, Cause.START) or (
            cause is Cause.RESTART and not proc.restart):
        proc.backoff = 0
        proc.message = None
    if cause in (Cause.EXIT_RETRY, Cause.EXIT_GIVEUP, Cause.EXIT_STOPPED, Cause.EXIT_RESTART):
        _count_exit(proc, cause, now, exitstatus, message)
        proc.pid = proc.start = None
        proc.ready = proc.up = False
    if Action.SPAWN in actions:
        proc.ready = proc.up = False


def _count_exit(proc: Proc, cause: Cause, now: float, exitstatus: int | None,
                message: str | None) -> None:
    """A failed start feeds the backoff; a crash in RUNNING feeds the restart intensity."""
    proc.exitstatus = exitstatus
    proc.message = message
    if proc.state is State.STARTING:
        proc.backoff += 1
        if cause is Cause.EXIT_GIVEUP:
            proc.message = f"{message}; gave up after {proc.backoff} failed starts"
    elif proc.state is State.RUNNING:
        recent = _recent(proc, now)
        if cause is Cause.EXIT_RETRY:
            proc.restarts += 1
            recent.append(now)
        else:
            proc.message = (f"{message}; restart intensity exceeded: more than "
                            f"{proc.config.max_restarts} restarts in "
                            f"{proc.config.restart_window:g}s")
        proc.restart_times = recent
