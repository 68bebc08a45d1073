"""The job state machine: the scheduler's decisions about one job, as a table; pure, clock injected.

Nothing here reads a file, a clock or /proc, forks or signals. The scheduler gathers the
facts (`scheduler.jobfiles.observe` makes an `Observation`), `classify` turns them into an
`Event`, `TABLE` gives the `Row` (next state, `Do` kinds) and `step` builds the concrete
actions (`Update`, `Launch`, `KillGroup`, `WarnStale`, `Finalize`) that
`scheduler.dispatch` carries out in order. The table, the classification rules, the
`starting` rule that keeps a job from ever running twice, and the crash argument are in
docs/JOBS.md. Instants in an entry are ISO-8601 text (`*_at`); `now` is epoch seconds.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from supervisor.config import SchedulerConfig
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.jobs import result_state, settled_fields
from supervisor.state.machine import Row, Table

__all__ = [
    "ACTIVE",
    "IGNORED",
    "TABLE",
    "TERMINAL",
    "Action",
    "Decision",
    "Do",
    "Event",
    "Facts",
    "Finalize",
    "KillGroup",
    "Launch",
    "Observation",
    "Row",
    "SlurmRelease",
    "SlurmSeen",
    "State",
    "Timing",
    "Update",
    "WarnStale",
    "classify",
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
    DEPENDENCY_FAILED = "dependency_failed"  # a job it runs `after` ended otherwise (Facts.error)
    # launcher: slurm (Observation.slurm: what Slurm says about the job's tagged Slurm job)
    SUBMITTED = "submitted"                # sbatch returned the Slurm job id (Facts.slurm_job_id)
    SLURM_WAIT = "slurm_wait"              # a result of a stop Slurm made: its verdict is awaited
    SLURM_HELD = "slurm_held"              # Slurm held it after a failed launch: release it
    SLURM_CANCELLED = "slurm_cancelled"    # Slurm ended it CANCELLED (from outside), no result
    SLURM_TIMED_OUT = "slurm_timed_out"    # Slurm ended it TIMEOUT/DEADLINE, no result
    SLURM_LOST = "slurm_lost"              # Slurm ended it otherwise (NODE_FAIL...) or forgot it


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


#: Slurm job states that are not over yet (the rest are final). PENDING-like ones first.
SLURM_PENDING: frozenset[str] = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD"})
SLURM_LIVE: frozenset[str] = SLURM_PENDING | frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"})
#: The hold Slurm puts on a job it could not launch after a slurmctld crash ("Duplicate
#: jobid" on the node): batchd releases it (an operator's own hold is left alone).
SLURM_LAUNCH_HELD = "launch_failed_requeued_held"


@dataclass(frozen=True)
class SlurmSeen:
    """What Slurm said about a job's tagged Slurm job at the scheduler's last poll.

    `known` False: Slurm was not asked since the job's (re)dispatch, or did not answer: no
    conclusion may be drawn from its silence. Known and `slurm_job_id` None: Slurm has no
    job with the tag (not in squeue, nor in its accounting or completion log).
    """

    known: bool = False
    slurm_job_id: int | None = None
    state: str | None = None          # squeue's %T: PENDING, RUNNING, CANCELLED, NODE_FAIL...
    reason: str | None = None         # squeue's %r: None, JobHeldUser, NodeDown...
    final_for: float = 0.0            # seconds this final state has been seen (0: not final)
    at_launch: bool = False           # CANCELLED by Slurm itself as it launched (no run time)
    #: slurmctld started after the job's dispatch: a crash may have lost its submission
    #: (or cancelled its relaunch), which is Slurm's doing, not the job's
    restarted: bool = False

    @property
    def found(self) -> bool:
        return self.known and self.slurm_job_id is not None

    @property
    def live(self) -> bool:
        """Slurm holds the job pending or running (not over)."""
        return self.found and self.state in SLURM_LIVE

    @property
    def final(self) -> bool:
        return self.found and self.state not in SLURM_LIVE

    @property
    def pending(self) -> bool:
        return self.found and self.state in SLURM_PENDING

    def words(self) -> str:
        """`slurm job 12 CANCELLED (None)`: Slurm's state, as the reason of a job shows it."""
        if not self.found:
            return "slurm has no job tagged with it"
        why = f" ({self.reason})" if self.reason and self.reason != "None" else ""
        return f"slurm job {self.slurm_job_id} {self.state}{why}"


@dataclass(frozen=True)
class Observation:
    """What the job's files and processes show at one instant (built by _jobfiles.observe).

    Gathered in the order sentinel, liveness, lock, result, so that "not alive and no
    result" is conclusive: the adaptor writes result.json before it exits.
    """

    sentinel: Mapping[str, Any] | None = None   # the SENTINEL record, or None
    result: Mapping[str, Any] | None = None     # the RESULT record, or None
    result_error: str | None = None             # result.json exists but is unreadable: why
    heartbeat: float | None = None              # the sentinel's heartbeat (epoch seconds)
    pid: int | None = None                      # best-known adaptor pid (entry, sentinel, lock)
    start: int | None = None                    # ... and its start time
    alive: bool = False                         # a known adaptor pid is alive with its start
    lock_held: bool = False                     # adaptor.lock held (probed only if not alive)
    timeout: float | None = None                # the job's effective timeout (seconds)
    slurm: SlurmSeen | None = None              # launcher slurm: Slurm's view; else None


@dataclass(frozen=True)
class Facts:
    """Everything a decision may depend on besides the entry: the clock and the event's data."""

    now: float
    timing: Timing = field(default_factory=Timing)
    obs: Observation | None = None   # tick events (and a cancel: whom to signal)
    pid: int | None = None           # LAUNCHED: the adaptor's pid and start time
    start: int | None = None
    error: str | None = None         # LAUNCH_FAILED: why
    slurm_job_id: int | None = None  # SUBMITTED: the id sbatch printed
    launcher: str | None = None      # DISPATCHED: "slurm" when the job goes to Slurm


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
class SlurmRelease:
    """`scontrol release` a Slurm job Slurm held after a failed launch."""

    slurm_job_id: int


@dataclass(frozen=True)
class WarnStale:
    """Log that the job's heartbeat is `age_s` old; the job is kept."""

    age_s: float
    pid: int | None


@dataclass(frozen=True)
class Finalize:
    """The terminal WAL write: `fields` include state, finished_at, exit_code and reason."""

    fields: dict[str, Any]


Action = Update | Launch | KillGroup | SlurmRelease | WarnStale | Finalize


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


class Do(StrEnum):
    """The action kinds a row names; `step` builds each into concrete actions (_BUILDERS)."""

    UPDATE = "update"            # write the new state
    DISPATCH = "dispatch"        # state starting, attempts + 1, dispatched_at (before the fork)
    LAUNCH = "launch"            # workspace, spec, fork (Launch)
    ATTACH = "attach"            # state running with the adaptor's pid and start time
    ADOPT = "adopt"              # learn a pid the WAL lacks
    WARN_STALE = "warn_stale"    # log a stale heartbeat (the job is kept)
    KILL_TERM = "kill_term"      # SIGTERM the job's process group
    KILL_HARD = "kill_hard"      # SIGKILL the job's process group
    NOTE_CANCEL = "note_cancel"  # record when the cancel's SIGTERM was sent
    NOTE_SLURM = "note_slurm"    # record the Slurm job id sbatch printed
    RELEASE = "release"          # scontrol release a Slurm job held after a failed launch
    FINALIZE = "finalize"        # the terminal WAL write


S, E = State, Event
_FIN = (Do.FINALIZE,)

_BOTH: dict[Event, Row[State, Do]] = {       # rows shared by starting and running
    E.SENTINEL_DEAD: Row(S.LOST, _FIN),
    E.RESULT_OK: Row(S.COMPLETED, _FIN),
    E.RESULT_FAILED: Row(S.FAILED, _FIN),
    E.RESULT_TIMED_OUT: Row(S.TIMED_OUT, _FIN),
    E.RESULT_CANCELLED: Row(S.CANCELLED, _FIN),
    E.CANCEL_REQUESTED: Row(None, (Do.KILL_TERM, Do.NOTE_CANCEL)),
    E.CANCEL_SETTLED: Row(S.CANCELLED, _FIN),
    E.CANCEL_OVERDUE: Row(S.CANCELLED, (Do.KILL_HARD, Do.FINALIZE)),
    E.TIMEOUT_BACKSTOP: Row(S.TIMED_OUT, (Do.KILL_HARD, Do.FINALIZE)),
    E.SLURM_WAIT: Row(None),
    E.SLURM_CANCELLED: Row(S.CANCELLED, _FIN),
    E.SLURM_TIMED_OUT: Row(S.TIMED_OUT, _FIN),
    E.SLURM_LOST: Row(S.LOST, _FIN),
}

#: (state, event) -> Row; every other pair is ignored, each for the reason given.
TABLE: Table[State, Event, Do] = Table(
    {
        (S.QUEUED, E.WAIT_LOCK): Row(S.WAITING, (Do.UPDATE,)),
        (S.QUEUED, E.DISPATCHED): Row(S.STARTING, (Do.DISPATCH, Do.LAUNCH)),
        (S.QUEUED, E.CANCEL_REQUESTED): Row(S.CANCELLED, _FIN),
        (S.QUEUED, E.DEPENDENCY_FAILED): Row(S.FAILED, _FIN),
        (S.WAITING, E.DISPATCHED): Row(S.STARTING, (Do.DISPATCH, Do.LAUNCH)),
        (S.WAITING, E.CANCEL_REQUESTED): Row(S.CANCELLED, _FIN),
        (S.STARTING, E.LAUNCHED): Row(S.RUNNING, (Do.ATTACH,)),
        (S.STARTING, E.LAUNCH_FAILED): Row(S.FAILED, _FIN),
        (S.STARTING, E.LAUNCH_PENDING): Row(None, (Do.ADOPT,)),
        (S.STARTING, E.NOT_LAUNCHED): Row(None, (Do.DISPATCH, Do.LAUNCH)),
        (S.STARTING, E.LAUNCH_GAVE_UP): Row(S.FAILED, _FIN),
        (S.STARTING, E.SENTINEL_FRESH): Row(S.RUNNING, (Do.ATTACH,)),
        (S.STARTING, E.SENTINEL_STALE): Row(S.RUNNING, (Do.ATTACH, Do.WARN_STALE)),
        (S.STARTING, E.SUBMITTED): Row(None, (Do.NOTE_SLURM,)),
        (S.STARTING, E.SLURM_HELD): Row(None, (Do.RELEASE,)),
        (S.RUNNING, E.SENTINEL_FRESH): Row(None, (Do.ADOPT,)),
        (S.RUNNING, E.SENTINEL_STALE): Row(None, (Do.WARN_STALE,)),
        **{(S.STARTING, e): row for e, row in _BOTH.items()},
        **{(S.RUNNING, e): row for e, row in _BOTH.items()},
    },
    ignored=(
        # a terminal job is final: late results, replayed cancels, stray ticks
        {(s, e) for s in TERMINAL for e in Event}
        # queued/waiting jobs have no process: only wait_lock, dispatch and cancel apply
        | {(s, e) for s in (S.QUEUED, S.WAITING) for e in Event}
        - {(S.QUEUED, E.WAIT_LOCK), (S.QUEUED, E.DISPATCHED), (S.QUEUED, E.CANCEL_REQUESTED),
           (S.QUEUED, E.DEPENDENCY_FAILED), (S.WAITING, E.DISPATCHED),
           (S.WAITING, E.CANCEL_REQUESTED)}
        # a dispatched job is never dispatched again, nor sent back to wait for a lock;
        # its dependencies were done before it left the queue
        | {(s, e) for s in (S.STARTING, S.RUNNING)
           for e in (E.DISPATCHED, E.WAIT_LOCK, E.DEPENDENCY_FAILED)}
        # a running job was launched: launch outcomes and relaunch guards are moot
        | {(S.RUNNING, e) for e in (E.LAUNCHED, E.LAUNCH_FAILED, E.LAUNCH_PENDING,
                                    E.NOT_LAUNCHED, E.LAUNCH_GAVE_UP)}
        # a running Slurm job's adaptor started: it was submitted, and a held copy of it
        # waits for its result (the result ends the job; the finalize cancels the copy)
        | {(S.RUNNING, E.SUBMITTED), (S.RUNNING, E.SLURM_HELD)}
    ),
)
#: The pairs that change nothing (kept under this name for readers of the table).
IGNORED = TABLE.ignored

del S, E


# --------------------------------------------------------------------------- builders


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _launch_ref(entry: Mapping[str, Any]) -> float:
    """When the job's current launch began: started_at, else dispatched_at, else long ago."""
    for key in ("started_at", "dispatched_at"):
        t = parse_iso(entry.get(key))
        if t is not None:
            return t
    return 0.0


def _dispatch_ref(entry: Mapping[str, Any]) -> float:
    t = parse_iso(entry.get("dispatched_at"))
    return _launch_ref(entry) if t is None else t


def _age(entry: Mapping[str, Any], obs: Observation, now: float) -> float:
    ref = obs.heartbeat if obs.heartbeat is not None else _launch_ref(entry)
    return max(0.0, now - ref)


def _whom(entry: Mapping[str, Any], facts: Facts) -> tuple[int | None, int | None]:
    """The adaptor to signal: the observed one if known, else the WAL's."""
    if facts.obs is not None and facts.obs.pid is not None:
        return facts.obs.pid, facts.obs.start
    pid, start = entry.get("pid"), entry.get("start")
    return (pid if isinstance(pid, int) else None, start if isinstance(start, int) else None)


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:g}s"


def _finalize(entry: Mapping[str, Any], event: Event, nxt: State, facts: Facts) -> Action:
    now, obs, t = facts.now, facts.obs, facts.timing
    timeout = obs.timeout if obs is not None else None
    result = obs.result if obs is not None else None
    if result is not None and event in _RESULT_EVENTS:
        return Finalize(settled_fields(entry, result, timeout, iso_now(now)))
    if event in _SLURM_END_EVENTS:
        return Finalize(_slurm_end(entry, event, nxt, facts))
    fields: dict[str, Any] = {"state": nxt.value, "finished_at": iso_now(now),
                              "exit_code": None, "reason": None}
    if event is Event.RESULT_FAILED:
        why = obs.result_error if obs is not None else None
        fields["reason"] = f"result.json unreadable: {why}"
    elif nxt is State.CANCELLED:
        fields["reason"] = "cancelled by operator"
        if event is Event.CANCEL_OVERDUE:
            fields["reason"] += f" (killed: still running {_secs(t.kill_grace)} after SIGTERM)"
    elif event is Event.TIMEOUT_BACKSTOP:
        fields["reason"] = (f"timed out after {_secs(timeout)} "
                            "(killed by the scheduler: the adaptor did not stop it)")
    elif event is Event.LAUNCH_FAILED:
        fields["reason"] = f"launch failed: {facts.error or 'unknown error'}"
    elif event is Event.DEPENDENCY_FAILED:
        fields["reason"] = facts.error or "dependency failed"
    elif event is Event.LAUNCH_GAVE_UP and obs is not None and obs.slurm is not None:
        fields["reason"] = (f"not launched: {int(entry.get('attempts') or 0)} Slurm jobs "
                            f"ended before the adaptor started (last: {obs.slurm.words()})")
    elif event is Event.LAUNCH_GAVE_UP:
        fields["reason"] = (f"not launched: {int(entry.get('attempts') or 0)} launch attempts "
                            "were interrupted by the scheduler stopping")
    elif event is Event.SENTINEL_DEAD:
        age = _age(entry, obs, now) if obs is not None else None
        fields["reason"] = (f"lost: no heartbeat for {_secs(None if age is None else round(age))}"
                            ", no process and no result")
    return Finalize(fields)


_SLURM_END_EVENTS = frozenset({Event.SLURM_CANCELLED, Event.SLURM_TIMED_OUT, Event.SLURM_LOST})


def _slurm_end(entry: Mapping[str, Any], event: Event, nxt: State,
               facts: Facts) -> dict[str, Any]:
    """The terminal fields of a job Slurm ended: its state as the table says, the result's
    fields when the adaptor wrote one (a SIGTERM from Slurm), Slurm's state in `reason`."""
    obs = facts.obs
    seen = obs.slurm if obs is not None and obs.slurm is not None else SlurmSeen()
    result = obs.result if obs is not None else None
    now = iso_now(facts.now)
    if result is not None:
        fields = settled_fields(entry, result, obs.timeout if obs is not None else None, now)
    else:
        fields = {"finished_at": now, "exit_code": None}
    fields["state"] = nxt.value
    if nxt is State.CANCELLED and entry.get("cancel_requested"):
        fields["reason"] = "cancelled by operator"
    elif nxt is State.CANCELLED:
        fields["reason"] = f"cancelled in Slurm: {seen.words()}"
    elif nxt is State.TIMED_OUT:
        fields["reason"] = f"timed out in Slurm: {seen.words()}"
    elif result is not None:
        fields["reason"] = f"lost: {seen.words()} (the adaptor was stopped)"
    else:
        fields["reason"] = f"lost: {seen.words()}, and no result"
    return fields


def _slurm_learned(entry: Mapping[str, Any], obs: Observation | None) -> dict[str, Any]:
    """The Slurm job id Slurm shows carrying the job's tag, when the entry lacks it (a crash
    between sbatch and its record, or a resubmission); the adaptor's pid from its sentinel
    (on a node: no local process to check)."""
    if obs is None or obs.slurm is None:
        return {}
    fields: dict[str, Any] = {}
    sid = obs.slurm.slurm_job_id
    if obs.slurm.found and sid is not None and sid != entry.get("slurm_job_id"):
        fields["slurm_job_id"] = sid
    if (obs.sentinel is not None and obs.pid is not None
            and (entry.get("pid"), entry.get("start")) != (obs.pid, obs.start)):
        fields.update(pid=obs.pid, start=obs.start)
    return fields


def _attach(entry: Mapping[str, Any], facts: Facts) -> dict[str, Any]:
    """running, with the adaptor's identity: from the launcher, else from what was observed."""
    if facts.pid is not None or facts.obs is None:
        pid, start = facts.pid, facts.start
    else:
        pid, start = facts.obs.pid, facts.obs.start
    fields: dict[str, Any] = {"state": State.RUNNING.value, "pid": pid, "start": start}
    if not entry.get("started_at"):
        fields["started_at"] = iso_now(facts.now)
    learned = _slurm_learned(entry, facts.obs)
    learned.pop("pid", None)
    learned.pop("start", None)
    fields.update(learned)
    return fields


def _adopt(entry: Mapping[str, Any], facts: Facts) -> dict[str, Any]:
    """Learn the pid the WAL lacks (systemd launches, re-attached jobs); {} if nothing new."""
    obs = facts.obs
    if obs is not None and obs.slurm is not None:
        return _slurm_learned(entry, obs)
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
    fields: dict[str, Any] = {"state": State.STARTING.value,
                              "attempts": int(entry.get("attempts") or 0) + 1,
                              "dispatched_at": iso_now(facts.now)}
    if (facts.launcher or entry.get("launcher")) == "slurm":
        fields["launcher"] = "slurm"     # the job stays a Slurm job, whatever the config says
    return [Update(fields)]


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
    return [Update({"cancel_requested": True, "cancel_sent_at": iso_now(facts.now)})]


def _b_note_slurm(entry: Mapping[str, Any], event: Event, nxt: State,
                  facts: Facts) -> list[Action]:
    return [Update({"slurm_job_id": facts.slurm_job_id})]


def _b_release(entry: Mapping[str, Any], event: Event, nxt: State,
               facts: Facts) -> list[Action]:
    seen = facts.obs.slurm if facts.obs is not None else None
    if seen is None or seen.slurm_job_id is None:
        return []
    return [SlurmRelease(seen.slurm_job_id)]


def _b_finalize(entry: Mapping[str, Any], event: Event, nxt: State,
                facts: Facts) -> list[Action]:
    return [_finalize(entry, event, nxt, facts)]


#: Action kind (as named in TABLE) -> the function that makes the concrete actions.
_BUILDERS: dict[Do, _Builder] = {
    Do.UPDATE: _b_update,
    Do.DISPATCH: _b_dispatch,
    Do.LAUNCH: _b_launch,
    Do.ATTACH: _b_attach,
    Do.ADOPT: _b_adopt,
    Do.WARN_STALE: _b_warn,
    Do.KILL_TERM: _b_kill(signal.SIGTERM),
    Do.KILL_HARD: _b_kill(signal.SIGKILL),
    Do.NOTE_CANCEL: _b_note_cancel,
    Do.NOTE_SLURM: _b_note_slurm,
    Do.RELEASE: _b_release,
    Do.FINALIZE: _b_finalize,
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
    row = TABLE.lookup(state, event)
    if row is None:
        return Decision(job_id, state, event, state)
    nxt = row.next if row.next is not None else state
    actions: list[Action] = []
    for kind in row.actions:
        actions += _BUILDERS[kind](entry, event, nxt, facts)
    return Decision(job_id, state, event, nxt, tuple(actions))


# --------------------------------------------------------------------------- guards


_RESULT_EVENTS = frozenset({Event.RESULT_OK, Event.RESULT_FAILED, Event.RESULT_TIMED_OUT,
                            Event.RESULT_CANCELLED})
_RESULT_EVENT_OF = {"completed": Event.RESULT_OK, "failed": Event.RESULT_FAILED,
                    "timed_out": Event.RESULT_TIMED_OUT, "cancelled": Event.RESULT_CANCELLED}


def _result_event(entry: Mapping[str, Any], obs: Observation) -> Event:
    if obs.result is None:
        return Event.RESULT_FAILED                    # unreadable result.json
    return _RESULT_EVENT_OF[result_state(entry, obs.result)]


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
    if obs.slurm is not None:
        return _classify_slurm(entry, obs, state, now, timing)
    if obs.result is not None or obs.result_error is not None:
        return _result_event(entry, obs)
    healthy = obs.alive or obs.lock_held
    since_dispatch = now - _dispatch_ref(entry)
    did_start = obs.sentinel is not None or entry.get("pid") is not None
    gone = not healthy and (did_start or since_dispatch > timing.launch_grace)
    if entry.get("cancel_requested"):
        sent = parse_iso(entry.get("cancel_sent_at"))
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


#: Slurm's final states that are not the job's own end, by the event each one is.
_SLURM_ENDS: dict[str, Event] = {
    "CANCELLED": Event.SLURM_CANCELLED, "TIMEOUT": Event.SLURM_TIMED_OUT,
    "DEADLINE": Event.SLURM_TIMED_OUT, "NODE_FAIL": Event.SLURM_LOST,
    "PREEMPTED": Event.SLURM_LOST, "BOOT_FAIL": Event.SLURM_LOST,
}


def _stopped_by_slurm(entry: Mapping[str, Any], obs: Observation, seen: SlurmSeen,
                      now: float, timing: Timing) -> Event | None:
    """For a result of a stop batchd did not ask for (`terminated`, or the agent killed by
    a signal: a plain scancel signals every process of the job at once, so the agent may
    die of it before the adaptor notes its own SIGTERM), the signal may be Slurm's (scancel
    from outside, its time limit, a node failure): Slurm's final state says which;
    SLURM_WAIT while that verdict is not in yet (at most kill_grace + margin + stale_after
    after the result). None: the result decides."""
    result = obs.result
    if result is None or entry.get("cancel_requested"):
        return None
    if result.get("reason") != "terminated" and not result.get("signal"):
        return None
    if seen.final:
        return _SLURM_ENDS.get(str(seen.state))
    finished = parse_iso(result.get("finished_at"))
    waited = now - (finished if finished is not None else now)
    if waited < timing.kill_grace + timing.margin + timing.stale_after:
        return Event.SLURM_WAIT
    return None


def _classify_slurm(entry: Mapping[str, Any], obs: Observation, state: State, now: float,
                    timing: Timing) -> Event:
    """classify for a job launched into Slurm: the job's files as on one host, plus Slurm's
    word on its tagged Slurm job (docs/JOBS.md, "Slurm jobs"). Slurm is done with a job
    when it has shown a final state for stale_after, or knows no job with its tag; its
    silence (no answer, not asked yet) proves nothing. The adaptor started when its
    sentinel exists (it writes it first, before any agent runs)."""
    seen = obs.slurm if obs.slurm is not None else SlurmSeen()
    if obs.result is not None or obs.result_error is not None:
        return _stopped_by_slurm(entry, obs, seen, now, timing) or _result_event(entry, obs)
    started = obs.sentinel is not None or obs.alive or obs.lock_held
    fresh = obs.alive or (obs.heartbeat is not None and now - obs.heartbeat <= timing.stale_after)
    since_dispatch = now - _dispatch_ref(entry)
    # Slurm is done with it: a final state seen for stale_after (the shared filesystem's
    # time to show a result written just before), or no job with its tag at all once the
    # launch grace is over (a poll never races a submission it did not ask about)
    over = (seen.final and seen.final_for >= timing.stale_after) or (
        seen.known and not seen.found and since_dispatch > timing.launch_grace)
    if entry.get("cancel_requested"):
        sent = parse_iso(entry.get("cancel_sent_at"))
        if over and not fresh:
            return Event.CANCEL_SETTLED
        if sent is None:
            return Event.CANCEL_REQUESTED
        if now - sent > timing.kill_grace + timing.margin:
            return Event.CANCEL_OVERDUE
    started_at = parse_iso(entry.get("started_at"))
    if (obs.timeout is not None and started_at is not None
            and now > started_at + obs.timeout + timing.kill_grace + timing.margin):
        return Event.TIMEOUT_BACKSTOP
    if over and not fresh:
        if started or state is State.RUNNING:
            return _SLURM_ENDS.get(str(seen.state), Event.SLURM_LOST)
        if seen.found and seen.state == "CANCELLED" and not seen.at_launch:
            return Event.SLURM_CANCELLED          # scancel from outside before it started
        # the Slurm job ended (or vanished: a slurmctld crash loses fresh submissions)
        # before the adaptor started: nothing ran, so it may be submitted again; a loss
        # a slurmctld restart caused is not counted against the job's attempts (each
        # submission again is dispatched after that restart: only a new one frees it)
        if since_dispatch <= timing.launch_grace:
            return Event.LAUNCH_PENDING
        if int(entry.get("attempts") or 0) < timing.max_launch_attempts or seen.restarted:
            return Event.NOT_LAUNCHED
        return Event.LAUNCH_GAVE_UP
    if state is State.STARTING and obs.sentinel is None:
        if seen.pending and seen.reason == SLURM_LAUNCH_HELD:
            return Event.SLURM_HELD
        return Event.LAUNCH_PENDING      # pending, in its start gate, its sentinel due, or unknown
    # the heartbeat is the adaptor's own proof of life: Slurm showing the job RUNNING only
    # says its allocation exists (a dead node stays RUNNING for SlurmdTimeout)
    healthy = obs.lock_held or fresh
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
