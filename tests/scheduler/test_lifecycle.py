"""The job state machine table (scheduler.lifecycle): every row, every guard, a fake clock."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.config import SchedulerConfig
from supervisor.scheduler.lifecycle import (
    ACTIVE,
    IGNORED,
    TABLE,
    TERMINAL,
    Decision,
    Event,
    Facts,
    Finalize,
    KillGroup,
    Launch,
    Observation,
    State,
    Timing,
    Update,
    WarnStale,
    classify,
    step,
    tick,
)
from supervisor.state.clock import iso_now

NOW = 1_800_000_000.0
T = Timing(stale_after=30.0, dead_after=120.0, kill_grace=10.0, launch_grace=30.0,
           margin=15.0, max_launch_attempts=3)
PID, START = 4242, 987654
S, E = State, Event


def job(state: State, **fields: Any) -> dict[str, Any]:
    """A queue entry as JobQueue.get returns it."""
    entry: dict[str, Any] = {"id": "j1", "state": state.value, "agent": "shell", "attempts": 0}
    if state in ACTIVE:
        entry.update(attempts=1, dispatched_at=iso_now(NOW - 300.0))
    if state is S.RUNNING:
        entry.update(pid=PID, start=START, started_at=iso_now(NOW - 290.0))
    entry.update(fields)
    return entry


def healthy(**kw: Any) -> Observation:
    """A live adaptor with a heartbeat `hb_age` seconds old (default 1)."""
    age = kw.pop("hb_age", 1.0)
    base: dict[str, Any] = {
        "sentinel": {"id": "j1", "pid": PID, "start": START}, "heartbeat": NOW - age,
        "pid": PID, "start": START, "alive": True, "lock_held": True, "timeout": 3600.0}
    base.update(kw)
    return Observation(**base)


def dead(**kw: Any) -> Observation:
    """The adaptor is gone: pid not alive, lock free; heartbeat `hb_age` old (default 500)."""
    base: dict[str, Any] = {"hb_age": 500.0, "alive": False, "lock_held": False}
    base.update(kw)
    return healthy(**base)


def result(**fields: Any) -> dict[str, Any]:
    body = {"id": "j1", "exit_code": 0, "signal": None, "reason": None, "timed_out": False,
            "started_at": "2027-01-15T08:00:00.000Z", "finished_at": "2027-01-15T08:05:00.000Z",
            "session_id": "sess-1", "duration_s": 300.0}
    body.update(fields)
    return body


NOTHING = Observation(timeout=3600.0)   # no sentinel, no result, no process, lock free


def kinds(decision: Decision) -> list[str]:
    return [type(a).__name__ for a in decision.actions]


def finalize_fields(decision: Decision) -> dict[str, Any]:
    fins = [a for a in decision.actions if isinstance(a, Finalize)]
    assert 1 == len(fins)
    return fins[0].fields


def apply(entry: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """What the WAL holds after the scheduler executed the decision's writes."""
    out = dict(entry)
    for action in decision.actions:
        if isinstance(action, Update | Finalize):
            out.update(action.fields)
    return out


# --------------------------------------------------------------------------- the table


def test_every_pair_is_a_row_or_explicitly_ignored() -> None:
    """Completeness: each (state, event) is in TABLE or IGNORED, never both, never neither."""
    pairs = {(s, e) for s in State for e in Event}
    assert set() == set(TABLE.rows) & IGNORED
    assert pairs == set(TABLE.rows) | IGNORED


def test_every_terminal_state_ignores_every_event() -> None:
    """A terminal job is final: a late result, a replayed cancel or a dispatch changes nothing."""
    for s in TERMINAL:
        for e in Event:
            d = step(job(s), e, Facts(now=NOW, timing=T, obs=healthy(result=result())))
            assert (s, (), True) == (d.next_state, d.actions, d.ignored)


def test_row_kinds_are_all_buildable() -> None:
    """Every action kind a row names has a builder (step never raises KeyError)."""
    for (s, e) in TABLE.rows:
        step(job(s), e, Facts(now=NOW, timing=T, obs=healthy(), pid=PID, start=START))


# One case per TABLE row: (state, event) -> (entry overrides, facts, next state, action types).
ROWS: dict[tuple[State, Event], tuple[dict[str, Any], Facts, State, list[str]]] = {
    (S.QUEUED, E.WAIT_LOCK): ({}, Facts(NOW, T), S.WAITING, ["Update"]),
    (S.QUEUED, E.DISPATCHED): ({}, Facts(NOW, T), S.STARTING, ["Update", "Launch"]),
    (S.QUEUED, E.CANCEL_REQUESTED): ({}, Facts(NOW, T), S.CANCELLED, ["Finalize"]),
    (S.QUEUED, E.DEPENDENCY_FAILED): ({}, Facts(NOW, T, error="dependency a failed"),
                                      S.FAILED, ["Finalize"]),
    (S.WAITING, E.DISPATCHED): ({}, Facts(NOW, T), S.STARTING, ["Update", "Launch"]),
    (S.WAITING, E.CANCEL_REQUESTED): ({}, Facts(NOW, T), S.CANCELLED, ["Finalize"]),
    (S.STARTING, E.LAUNCHED): ({}, Facts(NOW, T, pid=PID, start=START), S.RUNNING, ["Update"]),
    (S.STARTING, E.LAUNCH_FAILED): ({}, Facts(NOW, T, error="boom"), S.FAILED, ["Finalize"]),
    (S.STARTING, E.LAUNCH_PENDING): ({"dispatched_at": iso_now(NOW - 5.0)},
                                     Facts(NOW, T, obs=NOTHING), S.STARTING, []),
    (S.STARTING, E.NOT_LAUNCHED): ({}, Facts(NOW, T, obs=NOTHING), S.STARTING,
                                   ["Update", "Launch"]),
    (S.STARTING, E.LAUNCH_GAVE_UP): ({"attempts": 3}, Facts(NOW, T, obs=NOTHING), S.FAILED,
                                     ["Finalize"]),
    (S.STARTING, E.SENTINEL_FRESH): ({}, Facts(NOW, T, obs=healthy()), S.RUNNING, ["Update"]),
    (S.STARTING, E.SENTINEL_STALE): ({}, Facts(NOW, T, obs=healthy(hb_age=60.0)), S.RUNNING,
                                     ["Update", "WarnStale"]),
    (S.RUNNING, E.SENTINEL_FRESH): ({"pid": None, "start": None}, Facts(NOW, T, obs=healthy()),
                                    S.RUNNING, ["Update"]),
    (S.RUNNING, E.SENTINEL_STALE): ({}, Facts(NOW, T, obs=healthy(hb_age=60.0)), S.RUNNING,
                                    ["WarnStale"]),
}
for _s in (S.STARTING, S.RUNNING):
    ROWS.update({
        (_s, E.SENTINEL_DEAD): ({}, Facts(NOW, T, obs=dead()), S.LOST, ["Finalize"]),
        (_s, E.RESULT_OK): ({}, Facts(NOW, T, obs=dead(result=result())), S.COMPLETED,
                            ["Finalize"]),
        (_s, E.RESULT_FAILED): ({}, Facts(NOW, T, obs=dead(result=result(exit_code=3))),
                                S.FAILED, ["Finalize"]),
        (_s, E.RESULT_TIMED_OUT): ({}, Facts(NOW, T, obs=dead(result=result(
            exit_code=None, signal=15, reason="timed_out", timed_out=True))), S.TIMED_OUT,
            ["Finalize"]),
        (_s, E.RESULT_CANCELLED): ({"cancel_requested": True}, Facts(NOW, T, obs=dead(
            result=result(exit_code=None, signal=15, reason="terminated"))), S.CANCELLED,
            ["Finalize"]),
        (_s, E.CANCEL_REQUESTED): ({"cancel_requested": True}, Facts(NOW, T, obs=healthy()), _s,
                                   ["KillGroup", "Update"]),
        (_s, E.CANCEL_SETTLED): ({"cancel_requested": True}, Facts(NOW, T, obs=dead()),
                                 S.CANCELLED, ["Finalize"]),
        (_s, E.CANCEL_OVERDUE): ({"cancel_requested": True, "cancel_sent_at": iso_now(NOW - 100)},
                                 Facts(NOW, T, obs=healthy()), S.CANCELLED,
                                 ["KillGroup", "Finalize"]),
        (_s, E.TIMEOUT_BACKSTOP): ({}, Facts(NOW, T, obs=healthy(timeout=60.0)), S.TIMED_OUT,
                                   ["KillGroup", "Finalize"]),
    })


def test_the_row_cases_cover_the_table_exactly() -> None:
    """The parametrized cases below exercise every row of TABLE and nothing else."""
    assert set(TABLE.rows) == set(ROWS)


@pytest.mark.parametrize(("state", "event"), sorted(ROWS), ids=str)
def test_row(state: State, event: Event) -> None:
    """Each row gives its next state and its actions in order."""
    fields, facts, expected_next, expected_kinds = ROWS[(state, event)]
    d = step(job(state, **fields), event, facts)
    assert (state, event, expected_next, expected_kinds) == (d.state, d.event, d.next_state,
                                                             kinds(d))
    assert (expected_next in TERMINAL) == d.terminal


@pytest.mark.parametrize(("state", "event"), sorted(ROWS), ids=str)
def test_guards_lead_to_the_row_case(state: State, event: Event) -> None:
    """Where the row's event is one `classify` makes, the row case's facts classify to it."""
    fields, facts, _, _ = ROWS[(state, event)]
    if facts.obs is None:
        return  # the scheduler's own events: wait_lock, dispatched, launched, launch_failed
    assert event == classify(job(state, **fields), facts.obs, NOW, T)


# --------------------------------------------------------------------------- action contents


def test_dispatch_records_the_attempt_before_the_launch() -> None:
    """dispatched: starting + attempts+1 + dispatched_ts written first, then Launch."""
    d = step(job(S.QUEUED, attempts=0), E.DISPATCHED, Facts(NOW, T))
    assert (Update({"state": "starting", "attempts": 1,
                    "dispatched_at": "2027-01-15T08:00:00.000Z"}), Launch(relaunch=False)) \
        == d.actions


def test_launched_records_pid_start_and_started_at() -> None:
    """launched: running with the launcher's pid and start time, started_at = now."""
    d = step(job(S.STARTING), E.LAUNCHED, Facts(NOW, T, pid=PID, start=START))
    assert (Update({"state": "running", "pid": PID, "start": START,
                    "started_at": "2027-01-15T08:00:00.000Z"}),) == d.actions


def test_launched_under_systemd_has_no_pid_yet() -> None:
    """A systemd launch gives pid None; the job runs and adopts the sentinel's pid later."""
    entry = apply(job(S.STARTING), step(job(S.STARTING), E.LAUNCHED, Facts(NOW, T)))
    assert (None, None, "running") == (entry["pid"], entry["start"], entry["state"])
    d = tick(entry, healthy(), NOW + 5, T)
    assert (E.SENTINEL_FRESH, (Update({"pid": PID, "start": START}),)) == (d.event, d.actions)


def test_adopt_writes_nothing_when_the_pid_is_known() -> None:
    """A fresh heartbeat of a job whose pid the WAL already holds costs no WAL write."""
    d = tick(job(S.RUNNING), healthy(), NOW, T)
    assert (E.SENTINEL_FRESH, ()) == (d.event, d.actions)
    assert d.ignored


def test_launch_failed_reason() -> None:
    """launch_failed: failed with "launch failed: <error>" and no exit code."""
    d = step(job(S.STARTING), E.LAUNCH_FAILED, Facts(NOW, T, error="git clone failed: nope"))
    fields = finalize_fields(d)
    assert ("failed", "launch failed: git clone failed: nope", None) == (
        fields["state"], fields["reason"], fields["exit_code"])


def test_cancel_of_queued_job_is_immediate() -> None:
    """cancel_requested on queued/waiting: cancelled at once, "cancelled by operator"."""
    for s in (S.QUEUED, S.WAITING):
        fields = finalize_fields(step(job(s), E.CANCEL_REQUESTED, Facts(NOW, T)))
        assert {"state": "cancelled", "reason": "cancelled by operator", "exit_code": None,
                "finished_at": "2027-01-15T08:00:00.000Z"} == fields


def test_cancel_of_running_job_signals_then_remembers() -> None:
    """cancel_requested on running: SIGTERM the group (pid + start) then record the intent."""
    d = step(job(S.RUNNING), E.CANCEL_REQUESTED, Facts(NOW, T))
    assert (KillGroup(PID, START, signal.SIGTERM),
            Update({"cancel_requested": True, "cancel_sent_at": iso_now(NOW)})) == d.actions


def test_cancel_signals_the_observed_adaptor_when_the_wal_has_no_pid() -> None:
    """A re-attached starting job's pid comes from the observation (its sentinel)."""
    d = step(job(S.STARTING), E.CANCEL_REQUESTED, Facts(NOW, T, obs=healthy(pid=77, start=8)))
    assert KillGroup(77, 8, signal.SIGTERM) == d.actions[0]


def test_overdue_cancel_kills_hard_then_finalizes() -> None:
    """cancel_overdue: SIGKILL the group first, then the terminal write (cancelled)."""
    entry = job(S.RUNNING, cancel_requested=True, cancel_sent_at=iso_now(NOW - 26.0))
    d = tick(entry, healthy(), NOW, T)
    assert E.CANCEL_OVERDUE == d.event
    assert KillGroup(PID, START, signal.SIGKILL) == d.actions[0]
    assert ("cancelled", "cancelled by operator (killed: still running 10s after SIGTERM)") \
        == (finalize_fields(d)["state"], finalize_fields(d)["reason"])


def test_warn_stale_carries_the_heartbeat_age() -> None:
    """sentinel_stale: a warning with the heartbeat's age and pid; the job is kept."""
    d = tick(job(S.RUNNING), healthy(hb_age=45.0), NOW, T)
    assert (S.RUNNING, (WarnStale(45.0, PID),)) == (d.next_state, d.actions)


@pytest.mark.parametrize(("res", "state", "reason", "code"), [
    (result(), "completed", None, 0),
    (result(exit_code=3), "failed", "exit 3", 3),
    (result(exit_code=None, signal=9), "failed", "killed by signal 9", None),
    (result(exit_code=127, reason="agent_not_found: claude"), "failed",
     "agent_not_found: claude", 127),
    (result(exit_code=None, signal=15, reason="terminated"), "failed", "terminated", None),
    (result(exit_code=None, signal=None), "failed", "ended without an exit status", None),
    (result(exit_code=None, signal=15, reason="timed_out", timed_out=True), "timed_out",
     "timed out after 3600s", None),
], ids=["ok", "exit3", "sig9", "adaptor-reason", "terminated", "no-status", "timed-out"])
def test_result_outcomes(res: dict[str, Any], state: str, reason: str | None,
                         code: int | None) -> None:
    """result: exit 0 -> completed; else failed with the adaptor's reason / exit N / signal N."""
    d = tick(job(S.RUNNING), dead(result=res), NOW, T)
    fields = finalize_fields(d)
    assert (state, reason, code, "2027-01-15T08:05:00.000Z", "sess-1") == (
        fields["state"], fields["reason"], fields["exit_code"], fields["finished_at"],
        fields["session_id"])


def test_result_after_cancel_is_cancelled_unless_it_completed() -> None:
    """With a cancel requested: terminated -> cancelled; exit 0 -> still completed."""
    entry = job(S.RUNNING, cancel_requested=True, cancel_sent_at=iso_now(NOW - 1))
    term = tick(entry, dead(result=result(exit_code=None, signal=15, reason="terminated")),
                NOW, T)
    ok = tick(entry, dead(result=result()), NOW, T)
    assert ("cancelled", "completed") == (finalize_fields(term)["state"],
                                          finalize_fields(ok)["state"])


def test_unreadable_result_fails_the_job() -> None:
    """A corrupt result.json (atomic writes make this disk damage) fails the job, saying why."""
    d = tick(job(S.RUNNING), dead(result_error="not valid JSON"), NOW, T)
    assert ("failed", "result.json unreadable: not valid JSON") == (
        finalize_fields(d)["state"], finalize_fields(d)["reason"])


def test_result_fills_a_missing_started_at() -> None:
    """A job that never recorded started_at (crash before launched) takes the result's."""
    entry = job(S.STARTING)
    fields = finalize_fields(tick(entry, dead(result=result()), NOW, T))
    assert "2027-01-15T08:00:00.000Z" == fields["started_at"]


def test_lost_reason_names_the_heartbeat_age() -> None:
    """sentinel_dead: lost, the reason says how old the last heartbeat was."""
    fields = finalize_fields(tick(job(S.RUNNING), dead(hb_age=600.0), NOW, T))
    assert ("lost", "lost: no heartbeat for 600s, no process and no result") == (
        fields["state"], fields["reason"])


# --------------------------------------------------------------------------- guards


def test_fresh_stale_dead_boundaries() -> None:
    """Heartbeat age: <= stale_after fresh; beyond it stale; beyond dead_after and gone: lost."""
    entry = job(S.RUNNING)
    assert E.SENTINEL_FRESH == classify(entry, healthy(hb_age=30.0), NOW, T)
    assert E.SENTINEL_STALE == classify(entry, healthy(hb_age=30.5), NOW, T)
    assert E.SENTINEL_STALE == classify(entry, dead(hb_age=120.0), NOW, T)
    assert E.SENTINEL_DEAD == classify(entry, dead(hb_age=120.5), NOW, T)


def test_an_old_heartbeat_of_a_live_process_is_stale_never_lost() -> None:
    """A live adaptor (pid + start) is never declared lost, however old its heartbeat."""
    entry = job(S.RUNNING)
    assert E.SENTINEL_STALE == classify(entry, healthy(hb_age=10_000.0, lock_held=False), NOW, T)


def test_a_held_lock_keeps_a_job_from_being_lost() -> None:
    """The adaptor.lock held (e.g. pid unknown under systemd) counts as alive."""
    entry = job(S.RUNNING, pid=None, start=None)
    obs = dead(lock_held=True)
    assert E.SENTINEL_STALE == classify(entry, obs, NOW, T)


def test_a_fresh_heartbeat_of_a_dead_pid_is_stale() -> None:
    """Re-attach needs both: the pid alive with its start time AND a fresh heartbeat."""
    assert E.SENTINEL_STALE == classify(job(S.RUNNING), dead(hb_age=1.0), NOW, T)


def test_no_sentinel_counts_from_the_launch() -> None:
    """Without a sentinel the age is measured from started_ts: fresh, then lost."""
    entry = job(S.RUNNING, started_at=iso_now(NOW - 10.0))
    alive = Observation(pid=PID, start=START, alive=True, timeout=3600.0)
    gone = Observation(pid=PID, start=START, alive=False, timeout=3600.0)
    assert E.SENTINEL_FRESH == classify(entry, alive, NOW, T)
    assert E.SENTINEL_STALE == classify(entry, gone, NOW, T)
    assert E.SENTINEL_DEAD == classify(entry, gone, NOW + 111.0, T)


def test_timeout_backstop_only_past_timeout_plus_grace_plus_margin() -> None:
    """The adaptor enforces the timeout; the scheduler acts only after timeout+grace+margin."""
    entry = job(S.RUNNING, started_at=iso_now(NOW - 1000.0))
    deadline = NOW - 1000.0 + 900.0 + T.kill_grace + T.margin
    assert E.SENTINEL_FRESH == classify(entry, healthy(timeout=900.0), deadline, T)
    assert E.TIMEOUT_BACKSTOP == classify(entry, healthy(timeout=900.0), deadline + 0.1, T)


def test_timeout_backstop_survives_a_crash_between_kill_and_finalize() -> None:
    """After the SIGKILL the process is gone; a re-run still says timed_out (not lost)."""
    entry = job(S.RUNNING, started_at=iso_now(NOW - 1000.0))
    d = tick(entry, dead(hb_age=5.0, timeout=60.0), NOW, T)
    assert (E.TIMEOUT_BACKSTOP, "timed_out") == (d.event, finalize_fields(d)["state"])
    assert KillGroup(PID, START, signal.SIGKILL) == d.actions[0]


def test_cancel_guards() -> None:
    """Cancel intent: unsignalled -> signal; gone -> settled; in grace -> wait; late -> kill."""
    fresh = job(S.RUNNING, cancel_requested=True)
    sent = job(S.RUNNING, cancel_requested=True, cancel_sent_at=iso_now(NOW - 5.0))
    assert E.CANCEL_REQUESTED == classify(fresh, healthy(), NOW, T)
    assert E.CANCEL_SETTLED == classify(fresh, dead(hb_age=1.0), NOW, T)
    assert E.SENTINEL_FRESH == classify(sent, healthy(), NOW, T)
    assert E.SENTINEL_FRESH == classify(sent, healthy(), NOW - 5.0 + 25.0, T)
    assert E.CANCEL_OVERDUE == classify(sent, healthy(), NOW - 5.0 + 25.1, T)
    assert E.CANCEL_OVERDUE == classify(sent, dead(hb_age=1.0, lock_held=True),
                                        NOW + 100.0, T)


def test_cancel_overdue_survives_a_crash_between_kill_and_finalize() -> None:
    """After the SIGKILL, the dead job with a cancel intent is finalized cancelled."""
    entry = job(S.RUNNING, cancel_requested=True, cancel_sent_at=iso_now(NOW - 100.0))
    d = tick(entry, dead(hb_age=2.0), NOW, T)
    assert (E.CANCEL_SETTLED, "cancelled") == (d.event, finalize_fields(d)["state"])


def test_starting_job_not_launched_is_relaunched_after_the_grace() -> None:
    """starting, no sign of an adaptor: wait launch_grace, then relaunch (attempt counted)."""
    entry = job(S.STARTING, dispatched_at=iso_now(NOW), attempts=1)
    assert E.LAUNCH_PENDING == tick(entry, NOTHING, NOW + 30.0, T).event
    d = tick(entry, NOTHING, NOW + 30.5, T)
    assert (E.NOT_LAUNCHED, S.STARTING) == (d.event, d.next_state)
    assert (Update({"state": "starting", "attempts": 2,
                    "dispatched_at": "2027-01-15T08:00:30.500Z"}), Launch(relaunch=True)) \
        == d.actions
    again = apply(entry, d)
    assert E.LAUNCH_PENDING == tick(again, NOTHING, NOW + 31.0, T).event


def test_starting_job_gives_up_after_max_launch_attempts() -> None:
    """A job whose launches keep being interrupted fails instead of looping."""
    entry = job(S.STARTING, attempts=3)
    fields = finalize_fields(tick(entry, NOTHING, NOW, T))
    assert ("failed", "not launched: 3 launch attempts were interrupted by the scheduler "
            "stopping") == (fields["state"], fields["reason"])


@pytest.mark.parametrize("obs", [
    Observation(lock_held=True, timeout=3600.0),
    Observation(sentinel={"id": "j1"}, heartbeat=NOW - 500.0, timeout=3600.0),
    Observation(pid=PID, start=START, alive=True, timeout=3600.0),
], ids=["lock-held", "sentinel-exists", "pid-alive"])
def test_starting_job_with_any_sign_of_launch_is_not_relaunched(obs: Observation) -> None:
    """Relaunch needs no sentinel, no result, the lock free and no live pid."""
    d = tick(job(S.STARTING), obs, NOW, T)
    assert [] == [a for a in d.actions if isinstance(a, Launch)]


def test_cancel_of_a_never_launched_starting_job_settles_without_relaunch() -> None:
    """A cancelled starting job that never launched is cancelled, not relaunched."""
    entry = job(S.STARTING, cancel_requested=True, cancel_sent_at=iso_now(NOW - 1.0))
    within = job(S.STARTING, cancel_requested=True, cancel_sent_at=iso_now(NOW - 1.0),
                 dispatched_at=iso_now(NOW - 5.0))
    assert E.CANCEL_SETTLED == classify(entry, NOTHING, NOW, T)
    assert E.LAUNCH_PENDING == classify(within, NOTHING, NOW, T)


def test_classify_looks_only_at_active_jobs() -> None:
    """queued/waiting/terminal jobs have no process: tick decides nothing for them."""
    for s in (S.QUEUED, S.WAITING, *TERMINAL):
        d = tick(job(s), dead(result=result()), NOW, T)
        assert (None, s, ()) == (d.event, d.next_state, d.actions)


def test_unknown_state_is_an_error_naming_it() -> None:
    """A WAL entry with a state this code does not know is refused with its id and state."""
    with pytest.raises(ValueError, match="job 'j1': unknown state 'paused'"):
        tick({"id": "j1", "state": "paused"}, NOTHING, NOW, T)


def test_timing_from_config() -> None:
    """Timing takes stale/dead/kill_grace from scheduler:, launch grace = stale_after >= 10s."""
    t = Timing.from_config(SchedulerConfig(stale_after=2.0, dead_after=5.0, kill_grace=1.0))
    assert (2.0, 5.0, 1.0, 10.0) == (t.stale_after, t.dead_after, t.kill_grace, t.launch_grace)
    assert 30.0 == Timing.from_config(SchedulerConfig()).launch_grace


# --------------------------------------------------------------------------- re-attachment


def test_reattach_rule_of_the_issue() -> None:
    """At start: result -> finalize; alive+fresh -> re-attach; stale -> keep; dead -> lost."""
    for s in (S.STARTING, S.RUNNING):
        entry = job(s)
        assert "completed" == finalize_fields(tick(entry, dead(result=result()), NOW, T))["state"]
        fresh = tick(entry, healthy(), NOW, T)
        assert (S.RUNNING, []) == (fresh.next_state,
                                   [a for a in fresh.actions if isinstance(a, Launch | Finalize)])
        stale = tick(entry, healthy(hb_age=90.0), NOW, T)
        assert (S.RUNNING, True) == (stale.next_state,
                                     any(isinstance(a, WarnStale) for a in stale.actions))
        assert "lost" == finalize_fields(tick(entry, dead(), NOW, T))["state"]


def test_reattached_starting_job_learns_its_pid_from_the_sentinel() -> None:
    """A crash after the fork but before `running` was written: re-attach with the sentinel pid."""
    d = tick(job(S.STARTING), healthy(pid=555, start=666), NOW, T)
    entry = apply(job(S.STARTING), d)
    assert ("running", 555, 666) == (entry["state"], entry["pid"], entry["start"])


# --------------------------------------------------------------------------- whole lives


def test_a_life_from_queued_to_completed() -> None:
    """dispatch -> launched -> heartbeats -> result: the WAL writes along the way."""
    entry = job(S.QUEUED)
    entry = apply(entry, step(entry, E.DISPATCHED, Facts(NOW, T)))
    entry = apply(entry, step(entry, E.LAUNCHED, Facts(NOW + 1, T, pid=PID, start=START)))
    for k in range(1, 5):
        assert tick(entry, healthy(hb_age=2.0), NOW + 5 * k, T).ignored
    entry = apply(entry, tick(entry, dead(result=result()), NOW + 30, T))
    assert ("completed", 1, 0, None) == (entry["state"], entry["attempts"], entry["exit_code"],
                                         entry["reason"])
    assert tick(entry, dead(result=result()), NOW + 31, T).ignored


def test_a_cancelled_life_with_a_stubborn_adaptor() -> None:
    """cancel -> SIGTERM; still alive past kill_grace + margin -> SIGKILL and cancelled."""
    entry = job(S.RUNNING)
    d1 = step(entry, E.CANCEL_REQUESTED, Facts(NOW, T, obs=healthy()))
    entry = apply(entry, d1)
    assert tick(entry, healthy(), NOW + 20.0, T).ignored
    d2 = tick(entry, healthy(), NOW + 26.0, T)
    entry = apply(entry, d2)
    assert [signal.SIGTERM, signal.SIGKILL] == [
        a.signal for a in (*d1.actions, *d2.actions) if isinstance(a, KillGroup)]
    assert "cancelled" == entry["state"]


# --------------------------------------------------------------------------- properties

_obs = st.builds(
    Observation,
    sentinel=st.sampled_from([None, {"id": "j1", "pid": PID, "start": START}]),
    result=st.sampled_from([None, result(), result(exit_code=1)]),
    result_error=st.sampled_from([None, None, "bad"]),
    heartbeat=st.one_of(st.none(), st.floats(NOW - 1000.0, NOW)),
    pid=st.sampled_from([None, PID]),
    start=st.sampled_from([None, START]),
    alive=st.booleans(),
    lock_held=st.booleans(),
    timeout=st.sampled_from([None, 60.0, 3600.0]),
)


@settings(max_examples=300, deadline=None)
@given(obs=_obs, since=st.floats(0.0, 2000.0), attempts=st.integers(0, 5),
       cancel=st.booleans(), state=st.sampled_from([S.STARTING, S.RUNNING]))
def test_never_started_twice(obs: Observation, since: float, attempts: int, cancel: bool,
                             state: State) -> None:
    """Launch is only ever decided for a starting job with no trace of an adaptor, after the
    launch grace, with attempts left and no cancel; a terminal decision always has a state."""
    entry = job(state, dispatched_at=iso_now(NOW - since), attempts=attempts)
    entry.pop("started_ts", None)
    if cancel:
        entry["cancel_requested"] = True
    d = tick(entry, obs, NOW, T)
    if any(isinstance(a, Launch) for a in d.actions):
        assert state is S.STARTING
        assert (None, None, None, False, False, False) == (
            obs.sentinel, obs.result, obs.result_error, obs.lock_held, obs.alive, cancel)
        assert since > T.launch_grace
        assert attempts < T.max_launch_attempts
    if d.terminal:
        assert d.next_state.value == finalize_fields(d)["state"]
