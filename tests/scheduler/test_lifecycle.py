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
    SlurmRelease,
    SlurmSeen,
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
SID = 12


def slurm(state: str | None = "RUNNING", reason: str = "None", final_for: float = 0.0,
          sid: int | None = SID, known: bool = True) -> SlurmSeen:
    """What Slurm said of the job's tagged Slurm job (state None: no such job)."""
    if state is None:
        return SlurmSeen(known=known)
    return SlurmSeen(known=known, slurm_job_id=sid, state=state, reason=reason,
                     final_for=final_for)


def sjob(state: State, **fields: Any) -> dict[str, Any]:
    """A queue entry of a job launched into Slurm."""
    return job(state, launcher="slurm", slurm_job_id=SID, **fields)


TERMINATED = result(exit_code=None, signal=15, reason="terminated",
                    finished_at=iso_now(NOW - 1.0))


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
    (S.STARTING, E.SUBMITTED): ({}, Facts(NOW, T, slurm_job_id=SID), S.STARTING, ["Update"]),
    (S.STARTING, E.SLURM_HELD): (
        {"launcher": "slurm"},
        Facts(NOW, T, obs=Observation(slurm=slurm("PENDING", "launch_failed_requeued_held"))),
        S.STARTING, ["SlurmRelease"]),
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
        (_s, E.SLURM_WAIT): ({"launcher": "slurm"}, Facts(NOW, T, obs=dead(
            result=TERMINATED, slurm=slurm("COMPLETING"))), _s, []),
        (_s, E.SLURM_CANCELLED): ({"launcher": "slurm"}, Facts(NOW, T, obs=dead(
            slurm=slurm("CANCELLED", final_for=100.0))), S.CANCELLED, ["Finalize"]),
        (_s, E.SLURM_TIMED_OUT): ({"launcher": "slurm"}, Facts(NOW, T, obs=dead(
            slurm=slurm("TIMEOUT", "TimeLimit", final_for=100.0))), S.TIMED_OUT, ["Finalize"]),
        (_s, E.SLURM_LOST): ({"launcher": "slurm"}, Facts(NOW, T, obs=dead(
            slurm=slurm("NODE_FAIL", "NodeDown", final_for=100.0))), S.LOST, ["Finalize"]),
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


# --------------------------------------------------------------------------- Slurm jobs


def test_dispatch_to_slurm_records_the_launcher_and_a_relaunch_keeps_it() -> None:
    """dispatched with launcher slurm: the entry says so (a reload never makes it local)."""
    first = step(job(S.QUEUED), E.DISPATCHED, Facts(NOW, T, launcher="slurm"))
    again = step(sjob(S.STARTING), E.NOT_LAUNCHED, Facts(NOW, T, obs=NOTHING))
    local = step(job(S.QUEUED), E.DISPATCHED, Facts(NOW, T, launcher="direct"))
    assert ("slurm", "slurm", None) == (apply(job(S.QUEUED), first).get("launcher"),
                                        apply(sjob(S.STARTING), again)["launcher"],
                                        apply(job(S.QUEUED), local).get("launcher"))


def test_submitted_records_the_slurm_job_id() -> None:
    """submitted: the id sbatch printed goes into the entry; the job stays starting."""
    d = step(job(S.STARTING, launcher="slurm"), E.SUBMITTED, Facts(NOW, T, slurm_job_id=77))
    assert (S.STARTING, (Update({"slurm_job_id": 77}),)) == (d.next_state, d.actions)


@pytest.mark.parametrize("seen", [slurm("PENDING", "Resources"), slurm("RUNNING"),
                                  slurm(known=False), slurm("CONFIGURING")],
                         ids=["pending", "in-start-gate", "slurm-silent", "configuring"])
def test_a_slurm_job_waits_as_starting_however_long_slurm_holds_it(seen: SlurmSeen) -> None:
    """No sentinel yet, and Slurm holds the job (or says nothing): starting, for hours, never
    relaunched nor timed out (the timeout counts from the adaptor's start)."""
    entry = sjob(S.STARTING, dispatched_at=iso_now(NOW - 7200.0))
    assert E.LAUNCH_PENDING == classify(entry, Observation(timeout=60.0, slurm=seen), NOW, T)


def test_a_slurm_job_is_running_once_its_adaptor_writes_its_sentinel() -> None:
    """starting -> running on the sentinel, learning the pid (on a node) and the Slurm id."""
    entry = job(S.STARTING, launcher="slurm")
    obs = healthy(alive=False, lock_held=False, pid=31, start=41, slurm=slurm("RUNNING"))
    after = apply(entry, tick(entry, obs, NOW, T))
    assert ("running", 31, 41, SID) == (after["state"], after["pid"], after["start"],
                                        after["slurm_job_id"])


def test_a_crash_between_sbatch_and_its_record_learns_the_id_from_the_tag() -> None:
    """starting without slurm_job_id, Slurm shows a job with its tag: that id is recorded,
    nothing is submitted again."""
    entry = job(S.STARTING, launcher="slurm", dispatched_at=iso_now(NOW - 300.0))
    d = tick(entry, Observation(timeout=60.0, slurm=slurm("PENDING", sid=99)), NOW, T)
    assert (E.LAUNCH_PENDING, (Update({"slurm_job_id": 99}),)) == (d.event, d.actions)


@pytest.mark.parametrize(("seen", "since", "attempts", "event"), [
    (slurm(None), 300.0, 1, E.NOT_LAUNCHED),
    (slurm(None), 5.0, 1, E.LAUNCH_PENDING),
    (slurm("FAILED", "NonZeroExitCode", final_for=60.0), 300.0, 1, E.NOT_LAUNCHED),
    (slurm("FAILED", "NonZeroExitCode", final_for=1.0), 300.0, 1, E.LAUNCH_PENDING),
    (slurm("NODE_FAIL", "NodeDown", final_for=60.0), 300.0, 2, E.NOT_LAUNCHED),
    (slurm("FAILED", "NonZeroExitCode", final_for=60.0), 300.0, 3, E.LAUNCH_GAVE_UP),
    (slurm(None), 300.0, 3, E.LAUNCH_GAVE_UP),
    (SlurmSeen(known=True, restarted=True), 300.0, 3, E.NOT_LAUNCHED),
    (SlurmSeen(True, SID, "FAILED", "None", 60.0, restarted=True), 300.0, 5, E.NOT_LAUNCHED),
], ids=["vanished", "vanished-within-grace", "ended-unstarted", "ended-not-settled",
        "node-fail-unstarted", "out-of-attempts", "vanished-out-of-attempts",
        "lost-in-a-slurmctld-restart-after-its-dispatch", "ended-by-a-restart-after-it"])
def test_a_slurm_job_that_ended_before_its_adaptor_started_is_submitted_again(
        seen: SlurmSeen, since: float, attempts: int, event: Event) -> None:
    """Slurm lost the submission (a slurmctld crash) or ended it before the adaptor wrote a
    sentinel (a reused id killed at launch): nothing ran, so it is submitted again after
    the launch grace, while attempts last; a loss with a slurmctld start after the dispatch
    is Slurm's and is not counted (20 kills in a row used up a job's 3 attempts)."""
    entry = sjob(S.STARTING, dispatched_at=iso_now(NOW - since), attempts=attempts)
    assert event == classify(entry, Observation(timeout=60.0, slurm=seen), NOW, T)


def test_slurms_own_cancel_of_a_launch_is_submitted_again_an_operators_is_not() -> None:
    """CANCELLED before the adaptor started: by Slurm itself as it launched the job (after
    a slurmctld restart, with no requeue allowed) -> submitted again; by an operator's
    scancel -> cancelled."""
    entry = sjob(S.STARTING, dispatched_at=iso_now(NOW - 300.0))
    own = SlurmSeen(True, SID, "CANCELLED", "None", 60.0, at_launch=True)
    theirs = SlurmSeen(True, SID, "CANCELLED", "None", 60.0)
    assert (E.NOT_LAUNCHED, E.SLURM_CANCELLED) == (
        classify(entry, Observation(slurm=own), NOW, T),
        classify(entry, Observation(slurm=theirs), NOW, T))


def test_giving_up_on_slurm_names_slurms_last_word() -> None:
    """launch_gave_up of a Slurm job: the reason names the Slurm job and its state."""
    entry = sjob(S.STARTING, attempts=3)
    obs = Observation(slurm=slurm("FAILED", "NonZeroExitCode", final_for=60.0))
    fields = finalize_fields(tick(entry, obs, NOW, T))
    assert ("failed", "not launched: 3 Slurm jobs ended before the adaptor started "
            "(last: slurm job 12 FAILED (NonZeroExitCode))") == (fields["state"],
                                                                fields["reason"])


@pytest.mark.parametrize(("state", "reason", "end", "words"), [
    ("CANCELLED", "None", "cancelled", "cancelled in Slurm: slurm job 12 CANCELLED"),
    ("TIMEOUT", "TimeLimit", "timed_out", "timed out in Slurm: slurm job 12 TIMEOUT (TimeLimit)"),
    ("NODE_FAIL", "NodeDown", "lost", "lost: slurm job 12 NODE_FAIL (NodeDown), and no result"),
    ("PREEMPTED", "None", "lost", "lost: slurm job 12 PREEMPTED, and no result"),
    ("FAILED", "JobLaunchFailure", "lost",
     "lost: slurm job 12 FAILED (JobLaunchFailure), and no result"),
    (None, "", "lost", "lost: slurm has no job tagged with it, and no result"),
])
def test_a_slurm_job_ended_without_a_result(state: str | None, reason: str, end: str,
                                            words: str) -> None:
    """Slurm ended the running job (or forgot it) and its heartbeat stopped: the state by
    Slurm's word, Slurm's state in the reason."""
    seen = slurm(state, reason, final_for=60.0)
    fields = finalize_fields(tick(sjob(S.RUNNING), dead(hb_age=60.0, slurm=seen), NOW, T))
    assert (end, words, None) == (fields["state"], fields["reason"], fields["exit_code"])


def test_a_job_slurm_ended_is_kept_while_its_heartbeat_goes_on() -> None:
    """NODE_FAIL while slurmd is away: the job's processes run on (their heartbeat is fresh):
    kept, never lost, until the heartbeat stops or a result comes."""
    seen = slurm("NODE_FAIL", "NodeDown", final_for=60.0)
    fresh = healthy(alive=False, lock_held=False, hb_age=2.0, slurm=seen)
    assert E.SENTINEL_FRESH == classify(sjob(S.RUNNING), fresh, NOW, T)
    assert E.SLURM_LOST == classify(sjob(S.RUNNING), dead(hb_age=31.0, slurm=seen), NOW, T)


def test_a_quiet_slurm_job_is_lost_after_dead_after_whatever_slurm_says() -> None:
    """A running job whose heartbeat is old: stale first; lost after dead_after even while
    Slurm shows it RUNNING (a dead node stays RUNNING for SlurmdTimeout): the heartbeat is
    the adaptor's own proof of life."""
    running = dead(hb_age=500.0, slurm=slurm("RUNNING"))
    silent = dead(hb_age=500.0, slurm=slurm(known=False))
    young = dead(hb_age=60.0, slurm=slurm("RUNNING"))
    assert (E.SENTINEL_DEAD, E.SENTINEL_DEAD, E.SENTINEL_STALE) == (
        classify(sjob(S.RUNNING), running, NOW, T), classify(sjob(S.RUNNING), silent, NOW, T),
        classify(sjob(S.RUNNING), young, NOW, T))


@pytest.mark.parametrize("stopped", [TERMINATED, dict(TERMINATED, reason=None)],
                         ids=["adaptor-noted-it", "agent-died-of-it-first"])
def test_an_outside_scancel_ends_the_job_cancelled_with_slurms_state(
        stopped: dict[str, Any]) -> None:
    """The adaptor wrote a result of a SIGTERM batchd did not send (`terminated`, or only the
    agent's death by it: scancel signals all at once): cancelled once Slurm says CANCELLED
    (waiting for its verdict meanwhile), the result's fields kept."""
    entry = sjob(S.RUNNING)
    waiting = tick(entry, dead(result=stopped, slurm=slurm("COMPLETING")), NOW, T)
    done = tick(entry, dead(result=stopped, slurm=slurm("CANCELLED", final_for=1.0)), NOW, T)
    fields = finalize_fields(done)
    assert (E.SLURM_WAIT, E.SLURM_CANCELLED) == (waiting.event, done.event)
    assert ("cancelled", "cancelled in Slurm: slurm job 12 CANCELLED", 15, "sess-1") == (
        fields["state"], fields["reason"], fields["signal"], fields["session_id"])


def test_a_failure_of_the_agents_own_is_not_held_for_slurms_verdict() -> None:
    """An agent that exits 3 failed by itself: no wait for Slurm."""
    obs = dead(result=result(exit_code=3), slurm=slurm("RUNNING"))
    assert E.RESULT_FAILED == classify(sjob(S.RUNNING), obs, NOW, T)


def test_a_terminated_result_without_slurms_verdict_is_the_results() -> None:
    """Slurm never says why (silent past the wait): the result decides (failed: terminated);
    an operator's cancel is always cancelled."""
    late = dict(TERMINATED, finished_at=iso_now(NOW - 600.0))
    assert E.RESULT_FAILED == classify(sjob(S.RUNNING), dead(result=late,
                                       slurm=slurm(known=False)), NOW, T)
    asked = sjob(S.RUNNING, cancel_requested=True, cancel_sent_at=iso_now(NOW - 2))
    assert E.RESULT_CANCELLED == classify(asked, dead(result=TERMINATED, slurm=slurm(
        "FAILED", final_for=10.0)), NOW, T)


def test_cancel_of_a_slurm_job_settles_when_slurm_ends_it() -> None:
    """cancel: signalled once; cancelled when Slurm has ended the job (a pending one has no
    result), or overdue."""
    entry = sjob(S.STARTING, cancel_requested=True)
    pending = Observation(slurm=slurm("PENDING"))
    first = tick(entry, pending, NOW, T)
    entry = apply(entry, first)
    settled = tick(entry, Observation(slurm=slurm("CANCELLED", final_for=31.0)), NOW + 40, T)
    assert (E.CANCEL_REQUESTED, E.CANCEL_SETTLED, "cancelled by operator") == (
        first.event, settled.event, finalize_fields(settled)["reason"])
    assert E.CANCEL_OVERDUE == classify(entry, pending, NOW + 26.0, T)


def test_held_after_a_failed_launch_is_released_but_an_operator_hold_is_not() -> None:
    """launch_failed_requeued_held (slurmctld restart, "Duplicate jobid"): released; a hold
    of someone else (JobHeldUser) is respected."""
    entry = sjob(S.STARTING)
    held = tick(entry, Observation(slurm=slurm("PENDING", "launch_failed_requeued_held")),
                NOW, T)
    user = tick(entry, Observation(slurm=slurm("PENDING", "JobHeldUser")), NOW, T)
    assert ((SlurmRelease(SID),), E.LAUNCH_PENDING) == (held.actions, user.event)


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


_seen = st.one_of(
    st.just(SlurmSeen()), st.just(SlurmSeen(known=True)),
    st.builds(SlurmSeen, known=st.just(True), slurm_job_id=st.sampled_from([SID, 13]),
              state=st.sampled_from(["PENDING", "RUNNING", "COMPLETING", "COMPLETED",
                                     "CANCELLED", "FAILED", "NODE_FAIL", "TIMEOUT"]),
              reason=st.sampled_from(["None", "launch_failed_requeued_held"]),
              final_for=st.floats(0.0, 100.0)))


@settings(max_examples=300, deadline=None)
@given(obs=_obs, seen=_seen, since=st.floats(0.0, 2000.0), attempts=st.integers(0, 5),
       cancel=st.booleans(), state=st.sampled_from([S.STARTING, S.RUNNING]))
def test_a_slurm_job_is_submitted_again_only_on_slurms_word(
        *, obs: Observation, seen: SlurmSeen, since: float, attempts: int, cancel: bool,
        state: State) -> None:
    """A Slurm job is submitted again only when it is starting, its adaptor never left a
    trace, Slurm answered that its job is over (ended for stale_after, or unknown) and the
    launch grace and attempts allow; never while Slurm holds it or says nothing."""
    entry = sjob(state, dispatched_at=iso_now(NOW - since), attempts=attempts)
    if cancel:
        entry["cancel_requested"] = True
    obs = Observation(**{**obs.__dict__, "slurm": seen})
    d = tick(entry, obs, NOW, T)
    if any(isinstance(a, Launch) for a in d.actions):
        assert state is S.STARTING
        assert (None, None, None, False, False, False) == (
            obs.sentinel, obs.result, obs.result_error, obs.lock_held, obs.alive, cancel)
        assert seen.known and not seen.live
        assert seen.final_for >= T.stale_after or not seen.found
        assert since > T.launch_grace and attempts < T.max_launch_attempts
    if d.terminal:
        assert d.next_state.value == finalize_fields(d)["state"]
