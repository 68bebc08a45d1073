"""The job state machine: the scheduler's decisions about one job, as a table; pure, clock injected.

Nothing here reads a file, a clock or /proc, forks or signals. The scheduler gathers the
facts (`supervisor.scheduler.jobfiles.observe` turns the job's files and processes into an
`Observation`), this module turns them into an `Event` (`classify`), looks the event up in
`TABLE[(state, event)]` and returns a `Decision`: the next state and the `Action`s, as
data, that the scheduler executes in the order given.

States (CONTRACT.md): queued, waiting, starting, running; terminal: completed, failed,
cancelled, timed_out, lost. A pair of `(state, event)` that is not in `TABLE` is listed in
`IGNORED` (the event means nothing there: e.g. anything at all for a terminal job, so a
late result, a replayed cancel or a second dispatch change nothing).

The table (state, event -> next state: actions; "=" keeps the state):

    queued    wait_lock        -> waiting    : update
    queued    dispatched       -> starting   : dispatch, launch
    queued    cancel_requested -> cancelled  : finalize
    waiting   dispatched       -> starting   : dispatch, launch
    waiting   cancel_requested -> cancelled  : finalize
    starting  launched         -> running    : attach
    starting  launch_failed    -> failed     : finalize
    starting  launch_pending   =             : (nothing: within the launch grace)
    starting  not_launched     =             : dispatch, launch          (the relaunch row)
    starting  launch_gave_up   -> failed     : finalize
    starting  sentinel_fresh   -> running    : attach                    (re-attach)
    starting  sentinel_stale   -> running    : attach, warn_stale
    running   sentinel_fresh   =             : adopt
    running   sentinel_stale   =             : warn_stale
    st./run.  sentinel_dead    -> lost       : finalize
    st./run.  result_ok        -> completed  : finalize
    st./run.  result_failed    -> failed     : finalize
    st./run.  result_timed_out -> timed_out  : finalize
    st./run.  result_cancelled -> cancelled  : finalize
    st./run.  cancel_requested =             : kill_term, note_cancel
    st./run.  cancel_settled   -> cancelled  : finalize
    st./run.  cancel_overdue   -> cancelled  : kill_hard, finalize
    st./run.  timeout_backstop -> timed_out  : kill_hard, finalize

Action kinds (`Action` is the union of these dataclasses):
    Update(fields)          write fields to the job's WAL entry (queue.update(id, **fields))
    Launch(relaunch)        prepare_workspace -> write_spec -> launch; then feed the outcome
                            back as `launched` (pid, start) or `launch_failed` (error)
    KillGroup(pid, start, signal)   supervisor.scheduler.jobfiles.kill_group(pid, start, signal)
    WarnStale(age_s, pid)   log a warning (the job is kept); rate-limit it per job
    Finalize(fields)        the terminal WAL update (fields hold "state", "finished_at",
                            "exit_code", "reason", ...); then count it (queue.incr(state)),
                            release its repository locks and emit its callback event

How events are derived from an Observation (`classify`, first match wins; only for
starting/running jobs; `age` = now - last heartbeat, or - launch time if no sentinel yet;
"healthy" = the adaptor pid is alive with its start time, or its adaptor.lock is held;
"gone" = not healthy, no result, and either the adaptor left a sentinel/pid (so it did
start) or the launch grace has passed):

    1. a result (or an unreadable result.json) -> result_ok (exit 0, no reason) /
       result_timed_out (reason timed_out) / result_cancelled (a cancel was requested) /
       result_failed (anything else: reason = the adaptor's, else "exit N" /
       "killed by signal N")
    2. a cancel was requested: gone -> cancel_settled; not yet signalled -> cancel_requested;
       signalled more than kill_grace + margin ago -> cancel_overdue
    3. now > launch + timeout + kill_grace + margin -> timeout_backstop (alive or not: if the
       scheduler died between its SIGKILL and the WAL write, the retry must still say
       timed_out; a job that died by itself that late also overran its time)
    4. starting, and no sign of a launch at all (no sentinel, no result, lock not held, no
       pid alive): within launch_grace of the dispatch -> launch_pending; after it ->
       not_launched (relaunch) while attempts < max_launch_attempts, else launch_gave_up
    5. age <= stale_after and healthy -> sentinel_fresh
    6. age > dead_after and not healthy (and no result) -> sentinel_dead
    7. otherwise -> sentinel_stale (warn, keep: a stale job is never killed for it)

Re-attachment at scheduler start is the same function applied to every job the WAL says
is starting or running: result -> finalize; alive + fresh heartbeat -> re-attach (a
`starting` job becomes `running`, its pid learned from the sentinel); stale -> warn and
keep; dead -> lost. A job is never started twice:

The `starting` rule. `starting` is written to the WAL BEFORE the workspace is made and the
adaptor forked, so a scheduler that died in between leaves a `starting` job whose launch
may or may not have happened. The adaptor takes an exclusive flock on jobs/<id>/adaptor.lock
first thing, holds it for its whole life, writes its sentinel only after that, and refuses
to run if result.json exists. The scheduler therefore relaunches a `starting` job
(`not_launched`) only when there is no sentinel, no result, the lock is not held, no
recorded pid is alive, AND more than `launch_grace` has passed since the (re)dispatch
(the time an adaptor may take between the fork and its flock). If a slow adaptor from the
earlier attempt is still on its way, the two race for the flock and the loser exits
without touching any file; a winner that finds result.json exits too: at most one adaptor
ever runs the agent. Each relaunch counts an attempt; after `max_launch_attempts`
interrupted launches (a scheduler that dies while launching this job) the job fails
(`launch_gave_up`) instead of looping.

Call sequence for the scheduler (`jobs` = supervisor.scheduler.jobfiles, `lc` = this module):

    timing = lc.Timing.from_config(cfg.scheduler)
    # dispatch a queued job (its repository locks are held):
    d = lc.step(entry, lc.Event.DISPATCHED, lc.Facts(now=time.time(), timing=timing))
    execute(d)   # Update(state=starting, attempts, dispatched_ts) first: durable before
                 # the fork; then Launch: ws = jobs.prepare_workspace(cfg, entry);
                 # jobs.write_spec(layout, cfg, entry); launched = _launch.launch(job_dir)
    d = lc.step(entry, lc.Event.LAUNCHED, lc.Facts(now=..., pid=launched.pid,
                                                   start=launched.start, timing=timing))
    #   or, on PrepareError / LaunchError:
    d = lc.step(entry, lc.Event.LAUNCH_FAILED, lc.Facts(now=..., error=str(exc)))
    execute(d)   # Update(state=running, pid, start, started_at, started_ts) / Finalize
    # each tick (and once for every starting/running job at scheduler start):
    for entry in active jobs:
        obs = jobs.observe(layout, entry, time.time(), cfg)
        d = lc.tick(entry, obs, now, timing)
        execute(d)   # actions in order; Update/Finalize -> queue.update(id, **fields)
    # a cancel request for any job:
    d = lc.step(entry, lc.Event.CANCEL_REQUESTED, lc.Facts(now=..., obs=obs_or_None))

`entry` is the queue's dict for the job (`JobQueue.get(id)`). The fields this module
reads and writes there: state, attempts, dispatched_ts, started_at, started_ts, pid,
start, cancel_requested, cancel_sent_ts, timeout; Finalize adds finished_at, exit_code,
reason, signal, session_id. Times ending in `_ts` are epoch seconds, `_at` ISO-8601 UTC.
`now` is always epoch seconds (time.time()): the clock of the adaptor's heartbeat_ts.
The cancel handler may also just record `cancel_requested: true` in the WAL: the next
tick classifies the unsignalled intent as cancel_requested and signals then. `tick` is
for jobs the scheduler is not launching at this moment (after a restart: all of them).

Crash safety: this module writes nothing. The scheduler executes the actions in order;
every row is written so that a crash after any action and a re-run of `tick` on the
files converges: the intent (state=starting, cancel_requested) is durable before its
side effect, a signal is re-sent rather than lost, and a kill is followed by the terminal
WAL write that a re-run reaches again (rules 2 and 3 do not depend on the process still
being alive).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from supervisor.config import SchedulerConfig
from supervisor.state.clock import epoch_of, iso_now

__all__ = [
    "ACTIVE",
    "IGNORED",
    "TABLE",
    "TERMINAL",
    "Action",
    "Decision",
    "Event",
    "Facts",
    "Finalize",
    "KillGroup",
    "Launch",
    "Observation",
    "Row",
    "State",
    "Timing",
    "Update",
    "WarnStale",
    "classify",
    "settled_by_result",
    "step",
    "tick",
]


class State(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"        # for a repository lock
    STARTING = "starting"      # dispatched: workspace, spec and fork under way (or interrupted)
    RUNNING = "running"        # launched; watched through its sentinel
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"


TERMINAL: frozenset[State] = frozenset(
    {State.COMPLETED, State.FAILED, State.CANCELLED, State.TIMED_OUT, State.LOST})
#: The states `tick` looks at: the job may have a process.
ACTIVE: frozenset[State] = frozenset({State.STARTING, State.RUNNING})


class Event(StrEnum):
    """What the scheduler learned about a job: a table column."""

    WAIT_LOCK = "wait_lock"                # a repository lock it needs is taken
    DISPATCHED = "dispatched"              # chosen to run now (locks held, a slot free)
    LAUNCHED = "launched"                  # the launcher returned (pid, start)
    LAUNCH_FAILED = "launch_failed"        # workspace, spec or fork failed (Facts.error)
    LAUNCH_PENDING = "launch_pending"      # starting, nothing seen yet, within launch_grace
    NOT_LAUNCHED = "not_launched"          # starting, provably never launched: relaunch
    LAUNCH_GAVE_UP = "launch_gave_up"      # ... but max_launch_attempts are used up
    SENTINEL_FRESH = "sentinel_fresh"      # healthy and a heartbeat within stale_after
    SENTINEL_STALE = "sentinel_stale"      # not proven healthy, not yet dead: warn, keep
    SENTINEL_DEAD = "sentinel_dead"        # no heartbeat for dead_after, no process, no result
    RESULT_OK = "result_ok"                # result.json: exit 0, no reason
    RESULT_FAILED = "result_failed"        # result.json: non-zero exit, signal, or a reason
    RESULT_TIMED_OUT = "result_timed_out"  # result.json: the adaptor enforced the timeout
    RESULT_CANCELLED = "result_cancelled"  # result.json after a cancel was requested
    CANCEL_REQUESTED = "cancel_requested"  # operator cancel (or its intent, not yet signalled)
    CANCEL_SETTLED = "cancel_settled"      # cancel intent and no process of the job left
    CANCEL_OVERDUE = "cancel_overdue"      # SIGTERM sent > kill_grace + margin ago, no result
    TIMEOUT_BACKSTOP = "timeout_backstop"  # past timeout + kill_grace + margin, no result


@dataclass(frozen=True)
class Timing:
    """The durations the guards use (seconds). `from_config` takes them from scheduler:."""

    stale_after: float = 30.0
    dead_after: float = 120.0
    kill_grace: float = 10.0
    #: How long after a (re)dispatch a `starting` job may show no sign of its adaptor
    #: before it is relaunched (fork -> exec -> flock can take seconds on a loaded box).
    launch_grace: float = 30.0
    #: Slack on top of kill_grace before the scheduler SIGKILLs what the adaptor should
    #: have stopped itself (cancel, timeout).
    margin: float = 15.0
    #: Launches a `starting` job may have interrupted before it fails instead.
    max_launch_attempts: int = 3

    @classmethod
    def from_config(cls, sched: SchedulerConfig) -> Timing:
        """Timing for scheduler config `sched`; launch_grace is stale_after (>= 10 s)."""
        return cls(stale_after=sched.stale_after, dead_after=sched.dead_after,
                   kill_grace=sched.kill_grace, launch_grace=max(sched.stale_after, 10.0))


@dataclass(frozen=True)
class Observation:
    """What the job's files and processes show at one instant (built by _jobfiles.observe).

    Gathered in the order sentinel, liveness, lock, result, so that "not alive and no
    result" is conclusive: the adaptor writes result.json before it exits.
    """

    sentinel: Mapping[str, Any] | None = None   # the SENTINEL record, or None
    result: Mapping[str, Any] | None = None     # the RESULT record, or None
    result_error: str | None = None             # result.json exists but is unreadable: why
    heartbeat_ts: float | None = None           # the sentinel's heartbeat (epoch seconds)
    pid: int | None = None                      # best-known adaptor pid (entry, sentinel, lock)
    start: int | None = None                    # ... and its start time
    alive: bool = False                         # a known adaptor pid is alive with its start
    lock_held: bool = False                     # adaptor.lock held (probed only if not alive)
    timeout: float | None = None                # the job's effective timeout (seconds)


@dataclass(frozen=True)
class Facts:
    """Everything a decision may depend on besides the entry: the clock and the event's data."""

    now: float
    timing: Timing = field(default_factory=Timing)
    obs: Observation | None = None   # tick events (and a cancel: whom to signal)
    pid: int | None = None           # LAUNCHED: the adaptor's pid and start time
    start: int | None = None
    error: str | None = None         # LAUNCH_FAILED: why


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Update:
    """Write `fields` to the job's WAL entry (non-terminal)."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class Launch:
    """prepare_workspace -> write_spec -> launch, then step LAUNCHED or LAUNCH_FAILED."""

    relaunch: bool = False


@dataclass(frozen=True)
class KillGroup:
    """Signal the job's process group via _jobfiles.kill_group (verifies pid + start)."""

    pid: int | None
    start: int | None
    signal: int


@dataclass(frozen=True)
class WarnStale:
    """Log that the job's heartbeat is `age_s` old; the job is kept."""

    age_s: float
    pid: int | None


@dataclass(frozen=True)
class Finalize:
    """The terminal WAL write: `fields` include state, finished_at, exit_code and reason."""

    fields: dict[str, Any]


Action = Update | Launch | KillGroup | WarnStale | Finalize


@dataclass(frozen=True)
class Decision:
    """What to do about one job: the actions, in order, and the state they lead to."""

    job_id: str
    state: State
    event: Event | None          # None: tick found nothing to classify (not an active job)
    next_state: State
    actions: tuple[Action, ...] = ()

    @property
    def ignored(self) -> bool:
        """True when nothing is to be done (the pair is IGNORED, or the row does nothing)."""
        return not self.actions and self.next_state is self.state

    @property
    def terminal(self) -> bool:
        """True when this decision ends the job."""
        return self.next_state in TERMINAL and self.state not in TERMINAL


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    """One table cell: the next state (None keeps it) and the action kinds, in order."""

    next: State | None
    does: tuple[str, ...] = ()


S, E = State, Event
_FIN = ("finalize",)

_BOTH: dict[Event, Row] = {       # rows shared by starting and running
    E.SENTINEL_DEAD: Row(S.LOST, _FIN),
    E.RESULT_OK: Row(S.COMPLETED, _FIN),
    E.RESULT_FAILED: Row(S.FAILED, _FIN),
    E.RESULT_TIMED_OUT: Row(S.TIMED_OUT, _FIN),
    E.RESULT_CANCELLED: Row(S.CANCELLED, _FIN),
    E.CANCEL_REQUESTED: Row(None, ("kill_term", "note_cancel")),
    E.CANCEL_SETTLED: Row(S.CANCELLED, _FIN),
    E.CANCEL_OVERDUE: Row(S.CANCELLED, ("kill_hard", "finalize")),
    E.TIMEOUT_BACKSTOP: Row(S.TIMED_OUT, ("kill_hard", "finalize")),
}

#: (state, event) -> Row. Every other pair is in IGNORED.
TABLE: dict[tuple[State, Event], Row] = {
    (S.QUEUED, E.WAIT_LOCK): Row(S.WAITING, ("update",)),
    (S.QUEUED, E.DISPATCHED): Row(S.STARTING, ("dispatch", "launch")),
    (S.QUEUED, E.CANCEL_REQUESTED): Row(S.CANCELLED, _FIN),
    (S.WAITING, E.DISPATCHED): Row(S.STARTING, ("dispatch", "launch")),
    (S.WAITING, E.CANCEL_REQUESTED): Row(S.CANCELLED, _FIN),
    (S.STARTING, E.LAUNCHED): Row(S.RUNNING, ("attach",)),
    (S.STARTING, E.LAUNCH_FAILED): Row(S.FAILED, _FIN),
    (S.STARTING, E.LAUNCH_PENDING): Row(None),
    (S.STARTING, E.NOT_LAUNCHED): Row(None, ("dispatch", "launch")),
    (S.STARTING, E.LAUNCH_GAVE_UP): Row(S.FAILED, _FIN),
    (S.STARTING, E.SENTINEL_FRESH): Row(S.RUNNING, ("attach",)),
    (S.STARTING, E.SENTINEL_STALE): Row(S.RUNNING, ("attach", "warn_stale")),
    (S.RUNNING, E.SENTINEL_FRESH): Row(None, ("adopt",)),
    (S.RUNNING, E.SENTINEL_STALE): Row(None, ("warn_stale",)),
    **{(S.STARTING, e): row for e, row in _BOTH.items()},
    **{(S.RUNNING, e): row for e, row in _BOTH.items()},
}

#: (state, event) pairs that change nothing, each for a reason:
IGNORED: frozenset[tuple[State, Event]] = frozenset(
    # a terminal job is final: late results, replayed cancels, stray ticks
    {(s, e) for s in TERMINAL for e in Event}
    # queued/waiting jobs have no process: only wait_lock, dispatch and cancel apply
    | {(s, e) for s in (S.QUEUED, S.WAITING) for e in Event}
    - {(S.QUEUED, E.WAIT_LOCK), (S.QUEUED, E.DISPATCHED), (S.QUEUED, E.CANCEL_REQUESTED),
       (S.WAITING, E.DISPATCHED), (S.WAITING, E.CANCEL_REQUESTED)}
    # a dispatched job is never dispatched again, nor sent back to wait for a lock
    | {(s, e) for s in (S.STARTING, S.RUNNING) for e in (E.DISPATCHED, E.WAIT_LOCK)}
    # a running job was launched: launch outcomes and relaunch guards are moot
    | {(S.RUNNING, e) for e in (E.LAUNCHED, E.LAUNCH_FAILED, E.LAUNCH_PENDING,
                                E.NOT_LAUNCHED, E.LAUNCH_GAVE_UP)}
)

del S, E


# --------------------------------------------------------------------------- builders


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _launch_ref(entry: Mapping[str, Any]) -> float:
    """When the job's current launch began: started_ts, else dispatched_ts, else long ago."""
    for ts_key, iso_key in (("started_ts", "started_at"), ("dispatched_ts", "dispatched_at")):
        t = epoch_of(entry, ts_key, iso_key)
        if t is not None:
            return t
    return 0.0


def _dispatch_ref(entry: Mapping[str, Any]) -> float:
    t = epoch_of(entry, "dispatched_ts", "dispatched_at")
    return _launch_ref(entry) if t is None else t


def _age(entry: Mapping[str, Any], obs: Observation, now: float) -> float:
    ref = obs.heartbeat_ts if obs.heartbeat_ts is not None else _launch_ref(entry)
    return max(0.0, now - ref)


def _whom(entry: Mapping[str, Any], facts: Facts) -> tuple[int | None, int | None]:
    """The adaptor to signal: the observed one if known, else the WAL's."""
    if facts.obs is not None and facts.obs.pid is not None:
        return facts.obs.pid, facts.obs.start
    pid, start = entry.get("pid"), entry.get("start")
    return (pid if isinstance(pid, int) else None, start if isinstance(start, int) else None)


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:g}s"


def _result_reason(result: Mapping[str, Any]) -> str:
    reason, code, sig = result.get("reason"), result.get("exit_code"), result.get("signal")
    if isinstance(reason, str) and reason:
        return reason
    if isinstance(sig, int) and sig:
        return f"killed by signal {sig}"
    if isinstance(code, int):
        return f"exit {code}"
    return "ended without an exit status"


def _finalize(entry: Mapping[str, Any], event: Event, nxt: State, facts: Facts) -> Action:
    now, obs, t = facts.now, facts.obs, facts.timing
    fields: dict[str, Any] = {"state": nxt.value, "finished_at": iso_now(now),
                              "exit_code": None, "reason": None}
    result = obs.result if obs is not None else None
    if result is not None:
        code = result.get("exit_code")
        fields["exit_code"] = code if isinstance(code, int) and not isinstance(code, bool) else None
        for key in ("signal", "session_id"):
            fields[key] = result.get(key)
        if isinstance(result.get("finished_at"), str):
            fields["finished_at"] = result["finished_at"]
        if not entry.get("started_at") and isinstance(result.get("started_at"), str):
            fields["started_at"] = result["started_at"]
    timeout = obs.timeout if obs is not None else None
    if event is Event.RESULT_FAILED:
        if result is None:
            why = obs.result_error if obs is not None else None
            fields["reason"] = f"result.json unreadable: {why}"
        else:
            fields["reason"] = _result_reason(result)
    elif event is Event.RESULT_TIMED_OUT:
        fields["reason"] = f"timed out after {_secs(timeout)}"
    elif nxt is State.CANCELLED:
        fields["reason"] = "cancelled by operator"
        if event is Event.CANCEL_OVERDUE:
            fields["reason"] += f" (killed: still running {_secs(t.kill_grace)} after SIGTERM)"
    elif event is Event.TIMEOUT_BACKSTOP:
        fields["reason"] = (f"timed out after {_secs(timeout)} "
                            "(killed by the scheduler: the adaptor did not stop it)")
    elif event is Event.LAUNCH_FAILED:
        fields["reason"] = f"launch failed: {facts.error or 'unknown error'}"
    elif event is Event.LAUNCH_GAVE_UP:
        fields["reason"] = (f"not launched: {int(entry.get('attempts') or 0)} launch attempts "
                            "were interrupted by the scheduler stopping")
    elif event is Event.SENTINEL_DEAD:
        age = _age(entry, obs, now) if obs is not None else None
        fields["reason"] = (f"lost: no heartbeat for {_secs(None if age is None else round(age))}"
                            ", no process and no result")
    return Finalize(fields)


def _attach(entry: Mapping[str, Any], facts: Facts) -> dict[str, Any]:
    """running, with the adaptor's identity: from the launcher, else from what was observed."""
    if facts.pid is not None or facts.obs is None:
        pid, start = facts.pid, facts.start
    else:
        pid, start = facts.obs.pid, facts.obs.start
    fields: dict[str, Any] = {"state": State.RUNNING.value, "pid": pid, "start": start}
    if not entry.get("started_at"):
        fields["started_at"] = iso_now(facts.now)
        fields["started_ts"] = facts.now
    return fields


def _adopt(entry: Mapping[str, Any], facts: Facts) -> dict[str, Any]:
    """Learn the pid the WAL lacks (systemd launches, re-attached jobs); {} if nothing new."""
    obs = facts.obs
    if obs is None or obs.pid is None or not obs.alive:
        return {}
    if (entry.get("pid"), entry.get("start")) == (obs.pid, obs.start):
        return {}
    return {"pid": obs.pid, "start": obs.start}


_Builder = Callable[[Mapping[str, Any], Event, State, Facts], list[Action]]


def _b_update(entry: Mapping[str, Any], event: Event, nxt: State, facts: Facts) -> list[Action]:
    return [Update({"state": nxt.value})]


def _b_dispatch(entry: Mapping[str, Any], event: Event, nxt: State,
                facts: Facts) -> list[Action]:
    return [Update({"state": State.STARTING.value,
                    "attempts": int(entry.get("attempts") or 0) + 1,
                    "dispatched_ts": facts.now, "dispatched_at": iso_now(facts.now)})]


def _b_launch(entry: Mapping[str, Any], event: Event, nxt: State, facts: Facts) -> list[Action]:
    return [Launch(relaunch=event is Event.NOT_LAUNCHED)]


def _b_attach(entry: Mapping[str, Any], event: Event, nxt: State, facts: Facts) -> list[Action]:
    return [Update(_attach(entry, facts))]


def _b_adopt(entry: Mapping[str, Any], event: Event, nxt: State, facts: Facts) -> list[Action]:
    fields = _adopt(entry, facts)
    return [Update(fields)] if fields else []


def _b_warn(entry: Mapping[str, Any], event: Event, nxt: State, facts: Facts) -> list[Action]:
    age = _age(entry, facts.obs, facts.now) if facts.obs is not None else 0.0
    return [WarnStale(age, _whom(entry, facts)[0])]


def _b_kill(sig: int) -> _Builder:
    def build(entry: Mapping[str, Any], event: Event, nxt: State, facts: Facts) -> list[Action]:
        pid, start = _whom(entry, facts)
        return [KillGroup(pid, start, sig)]
    return build


def _b_note_cancel(entry: Mapping[str, Any], event: Event, nxt: State,
                   facts: Facts) -> list[Action]:
    return [Update({"cancel_requested": True, "cancel_sent_ts": facts.now})]


def _b_finalize(entry: Mapping[str, Any], event: Event, nxt: State,
                facts: Facts) -> list[Action]:
    return [_finalize(entry, event, nxt, facts)]


#: Action kind (as named in TABLE) -> the function that makes the concrete actions.
_BUILDERS: dict[str, _Builder] = {
    "update": _b_update,
    "dispatch": _b_dispatch,
    "launch": _b_launch,
    "attach": _b_attach,
    "adopt": _b_adopt,
    "warn_stale": _b_warn,
    "kill_term": _b_kill(signal.SIGTERM),
    "kill_hard": _b_kill(signal.SIGKILL),
    "note_cancel": _b_note_cancel,
    "finalize": _b_finalize,
}


def _state(entry: Mapping[str, Any]) -> State:
    try:
        return State(str(entry.get("state")))
    except ValueError:
        raise ValueError(f"job {entry.get('id')!r}: unknown state {entry.get('state')!r}") from None


def step(entry: Mapping[str, Any], event: Event, facts: Facts) -> Decision:
    """Look up (the entry's state, event) in TABLE and build the concrete actions.

    An IGNORED pair gives a Decision with no actions and the same state. Pure: the entry is
    not modified; the Update/Finalize actions carry what the WAL must be told.
    """
    state = _state(entry)
    job_id = str(entry.get("id"))
    row = TABLE.get((state, event))
    if row is None:
        return Decision(job_id, state, event, state)
    nxt = row.next if row.next is not None else state
    actions: list[Action] = []
    for kind in row.does:
        actions += _BUILDERS[kind](entry, event, nxt, facts)
    return Decision(job_id, state, event, nxt, tuple(actions))


# --------------------------------------------------------------------------- guards


def _result_event(entry: Mapping[str, Any], obs: Observation) -> Event:
    result = obs.result
    if result is None:
        return Event.RESULT_FAILED                    # unreadable result.json
    reason = result.get("reason")
    if result.get("exit_code") == 0 and not reason and not result.get("signal"):
        return Event.RESULT_OK
    if reason == "timed_out" or result.get("timed_out") is True:
        return Event.RESULT_TIMED_OUT
    if entry.get("cancel_requested"):
        return Event.RESULT_CANCELLED
    return Event.RESULT_FAILED


def settled_by_result(entry: Mapping[str, Any], result: Mapping[str, Any], now: float,
                      timeout: float | None = None) -> dict[str, Any] | None:
    """The terminal fields the scheduler will record for a starting/running `entry` whose
    adaptor wrote `result` (the same table rows); None if the entry is not active.

    For readers (batchctl) while the scheduler has not yet recorded the end, e.g. with
    batchd down: a finished job shows as finished, and `wait` returns.
    """
    if _state(entry) not in ACTIVE:
        return None
    obs = Observation(result=result, timeout=timeout)
    decision = step(entry, _result_event(entry, obs), Facts(now=now, obs=obs))
    for action in decision.actions:
        if isinstance(action, Finalize):
            return dict(action.fields)
    return None


def _launch_seen(entry: Mapping[str, Any], obs: Observation) -> bool:
    """Any sign the adaptor ever started for the current attempt."""
    return obs.sentinel is not None or obs.lock_held or obs.alive


def classify(entry: Mapping[str, Any], obs: Observation, now: float,
             timing: Timing) -> Event | None:
    """The event an observation of a starting/running job amounts to; None for other states.

    The rules, first match wins, are listed in the module docstring.
    """
    state = _state(entry)
    if state not in ACTIVE:
        return None
    if obs.result is not None or obs.result_error is not None:
        return _result_event(entry, obs)
    healthy = obs.alive or obs.lock_held
    since_dispatch = now - _dispatch_ref(entry)
    did_start = obs.sentinel is not None or entry.get("pid") is not None
    gone = not healthy and (did_start or since_dispatch > timing.launch_grace)
    if entry.get("cancel_requested"):
        sent = _num(entry.get("cancel_sent_ts"))
        if gone:
            return Event.CANCEL_SETTLED
        if sent is None:
            return Event.CANCEL_REQUESTED
        if now - sent > timing.kill_grace + timing.margin:
            return Event.CANCEL_OVERDUE
    if obs.timeout is not None:
        deadline = _launch_ref(entry) + obs.timeout + timing.kill_grace + timing.margin
        if now > deadline and (healthy or did_start):
            return Event.TIMEOUT_BACKSTOP
    if state is State.STARTING and not _launch_seen(entry, obs):
        if since_dispatch <= timing.launch_grace:
            return Event.LAUNCH_PENDING
        if int(entry.get("attempts") or 0) < timing.max_launch_attempts:
            return Event.NOT_LAUNCHED
        return Event.LAUNCH_GAVE_UP
    age = _age(entry, obs, now)
    if healthy and age <= timing.stale_after:
        return Event.SENTINEL_FRESH
    if not healthy and age > timing.dead_after:
        return Event.SENTINEL_DEAD
    return Event.SENTINEL_STALE


def tick(entry: Mapping[str, Any], obs: Observation, now: float, timing: Timing) -> Decision:
    """classify + step: what to do about a job after looking at its files and processes."""
    event = classify(entry, obs, now, timing)
    if event is None:
        state = _state(entry)
        return Decision(str(entry.get("id")), state, None, state)
    return step(entry, event, Facts(now=now, timing=timing, obs=obs))
