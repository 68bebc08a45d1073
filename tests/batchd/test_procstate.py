"""The worker state machine table (supervisor.batchd.procstate): pure, driven with a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.batchd.procstate import TABLE, Action, Cause, Event, Proc, State, step
from supervisor.config import WorkerConfig


def _proc(**cfg: float) -> Proc:
    return Proc("locks", WorkerConfig(**cfg))  # type: ignore[arg-type]


class Driver:
    """Applies events at a fake monotonic time and plays the caller's part for SPAWN."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.now = 100.0
        self.pid = 1000
        self.actions: list[Action] = []

    def __call__(self, ev: Event, **kw: object) -> State:
        t = step(self.proc, ev, now=self.now, wall=self.now + 1e9, **kw)  # type: ignore[arg-type]
        if t is not None:
            self.actions = list(t.actions)
            if Action.SPAWN in t.actions:
                self.pid += 1
                self.proc.pid, self.proc.start = self.pid, self.pid * 10
        else:
            self.actions = []
        return self.proc.state


def test_start_spawns_and_running_needs_ready_and_startsecs() -> None:
    """START spawns; RUNNING only once both the ready record and startsecs are in."""
    d = Driver(_proc())
    assert State.STARTING == d(Event.START)
    assert [Action.SPAWN] == d.actions
    assert State.STARTING == d(Event.READY)
    assert State.RUNNING == d(Event.UP)
    d2 = Driver(_proc())
    d2(Event.START)
    assert State.STARTING == d2(Event.UP)
    assert State.RUNNING == d2(Event.READY)


def test_failed_starts_back_off_one_more_second_each_then_fatal() -> None:
    """Exits before RUNNING: BACKOFF with delays 1, 2, 3 s; the (startretries+1)th -> FATAL."""
    d = Driver(_proc(startretries=3))
    d(Event.START)
    delays = []
    for _ in range(3):
        assert State.BACKOFF == d(Event.EXIT, exitstatus=3, message="exited with status 3")
        assert Action.ARM_BACKOFF in d.actions
        delays.append(d.proc.backoff)
        assert State.STARTING == d(Event.RETRY)
    assert [1, 2, 3] == delays
    assert State.FATAL == d(Event.EXIT, exitstatus=3, message="exited with status 3")
    assert Action.ESCALATE in d.actions
    assert 3 == d.proc.exitstatus
    assert d.proc.pid is None
    assert "gave up after 4 failed starts" in (d.proc.message or "")


def test_start_from_fatal_resets_the_retries() -> None:
    """An operator START revives a FATAL worker with a fresh retry budget."""
    d = Driver(_proc(startretries=0))
    d(Event.START)
    assert State.FATAL == d(Event.EXIT, exitstatus=1, message="x")
    assert State.STARTING == d(Event.START)
    assert 0 == d.proc.backoff
    assert d.proc.message is None


def test_crash_in_running_restarts_at_once_and_counts() -> None:
    """A crash in RUNNING spawns a replacement immediately and counts a restart."""
    d = Driver(_proc())
    d(Event.START)
    d(Event.READY)
    d(Event.UP)
    old = d.proc.pid
    assert State.STARTING == d(Event.EXIT, exitstatus=-9, message="killed by SIGKILL")
    assert Action.SPAWN in d.actions
    assert 1 == d.proc.restarts
    assert old != d.proc.pid
    assert not d.proc.ready and not d.proc.up


def test_restart_intensity_escalates_after_max_restarts_in_window() -> None:
    """More than max_restarts crashes within restart_window: FATAL with ESCALATE."""
    d = Driver(_proc(max_restarts=3, restart_window=10.0))

    def crash() -> State:
        d(Event.READY)
        d(Event.UP)
        d.now += 1.0
        return d(Event.EXIT, exitstatus=-9, message="killed by SIGKILL")

    d(Event.START)
    assert [State.STARTING] * 3 == [crash() for _ in range(3)]
    assert State.FATAL == crash()
    assert Action.ESCALATE in d.actions
    assert 3 == d.proc.restarts
    assert "restart intensity exceeded" in (d.proc.message or "")


def test_crashes_spread_beyond_the_window_never_escalate() -> None:
    """Crashes further apart than the window do not accumulate."""
    d = Driver(_proc(max_restarts=2, restart_window=5.0))
    d(Event.START)
    for _ in range(10):
        d(Event.READY)
        d(Event.UP)
        d.now += 6.0
        assert State.STARTING == d(Event.EXIT, exitstatus=-9, message="killed")
    assert 10 == d.proc.restarts


def test_stop_terms_then_kills_after_stopwait_then_stopped() -> None:
    """STOP: SIGTERM; STOPWAIT: SIGKILL; the exit: STOPPED (no restart, no count)."""
    d = Driver(_proc())
    d(Event.START)
    d(Event.READY)
    d(Event.UP)
    assert State.STOPPING == d(Event.STOP)
    assert [Action.CANCEL_TIMERS, Action.TERM] == d.actions
    assert State.STOPPING == d(Event.STOPWAIT)
    assert [Action.KILL] == d.actions
    assert State.STOPPED == d(Event.EXIT, exitstatus=-9, message="killed by SIGKILL")
    assert 0 == d.proc.restarts


def test_stop_in_backoff_is_immediate() -> None:
    """A worker waiting to retry is stopped at once (its retry timer cancelled)."""
    d = Driver(_proc())
    d(Event.START)
    d(Event.EXIT, exitstatus=1, message="x")
    assert State.STOPPED == d(Event.STOP)
    assert [Action.CANCEL_TIMERS] == d.actions


def test_events_that_do_not_apply_are_ignored() -> None:
    """Pairs missing from the table change nothing and return None."""
    p = _proc()
    assert step(p, Event.READY, now=0.0, wall=0.0) is None
    assert step(p, Event.RETRY, now=0.0, wall=0.0) is None
    assert step(p, Event.STOP, now=0.0, wall=0.0) is None
    assert State.STOPPED == p.state


def test_every_table_row_is_a_valid_state_cause_pair() -> None:
    """The table only names real states, causes and actions, and EXITED is only left by START."""
    for (state, cause), row in TABLE.rows.items():
        assert isinstance(state, State) and isinstance(cause, Cause)
        assert isinstance(row.next, State)
        assert all(isinstance(a, Action) for a in row.actions)
    assert [Cause.START, Cause.RESTART] == [c for (s, c) in TABLE.rows if s is State.EXITED]


def test_restart_of_a_running_worker_stops_it_then_spawns_it_on_its_exit() -> None:
    """RESTART: SIGTERM with the restart noted; its exit spawns it again (a planned exit,
    so no crash counted); a STOP meanwhile (shutdown) drops the note and it stays down."""
    d = Driver(_proc())
    d(Event.START)
    d(Event.READY)
    d(Event.UP)
    assert (State.STOPPING, [Action.CANCEL_TIMERS, Action.TERM]) == (d(Event.RESTART),
                                                                     d.actions)
    assert State.STARTING == d(Event.EXIT, exitstatus=0, message="exited with status 0")
    assert ([Action.CANCEL_TIMERS, Action.SPAWN], 0, False) == (
        d.actions, d.proc.restarts, d.proc.restart)
    d(Event.READY)
    d(Event.UP)
    d(Event.RESTART)
    assert State.STOPPING == d(Event.STOP)
    assert State.STOPPED == d(Event.EXIT, exitstatus=0, message="exited with status 0")


def test_restart_of_a_stopped_or_fatal_worker_just_starts_it() -> None:
    """A worker that is not running restarts as a start: spawned at once, backoff reset."""
    d = Driver(_proc(startretries=0))
    d(Event.START)
    assert State.FATAL == d(Event.EXIT, exitstatus=3, message="exited with status 3")
    assert (State.STARTING, [Action.SPAWN], 0, None) == (
        d(Event.RESTART), d.actions, d.proc.backoff, d.proc.message)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(Event)), max_size=60),
       st.integers(min_value=0, max_value=4))
def test_invariants_hold_for_any_event_sequence(events: list[Event], retries: int) -> None:
    """RUNNING implies ready and up; a pid only while a process exists; backoff bounded."""
    d = Driver(_proc(startretries=retries, max_restarts=5))
    for ev in events:
        d.now += 0.5
        d(ev, exitstatus=1, message="x") if ev is Event.EXIT else d(ev)
        p = d.proc
        if p.state is State.RUNNING:
            assert p.ready and p.up
        if p.state in (State.STOPPED, State.BACKOFF, State.FATAL, State.EXITED):
            assert p.pid is None
        assert p.backoff <= retries + 1
