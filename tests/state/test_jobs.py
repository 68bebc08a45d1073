"""supervisor.state.jobs and _clock: job ids, timestamps, job records, the request bodies."""

from __future__ import annotations

import pytest

from supervisor.state.jobs import (
    RECORD_FIELDS,
    batch_record,
    cancel_request,
    job_record,
    new_job_id,
    settled_fields,
    submit_request,
    valid_job_id,
)
from supervisor.state.layout import Layout

T = 1_800_000_000.25


@pytest.mark.parametrize("job_id, ok", [
    ("a", True), ("A9._-z", True), ("x" * 64, True), ("", False), ("x" * 65, False),
    (".a", False), ("-a", False), ("a/b", False), ("a b", False), ("é", False),
    ("a\n", False), (7, False)])
def test_valid_job_id(job_id: object, ok: bool) -> None:
    """[A-Za-z0-9][A-Za-z0-9._-]{0,63}, nothing else (no path tricks)."""
    assert ok == valid_job_id(job_id)


def test_settled_fields_read_a_result_as_the_scheduler_records_it() -> None:
    """exit 0 and no reason: completed with the result's times; a killed job that was
    cancelled: cancelled by operator; the adaptor's timeout: timed_out naming the limit;
    anything else: failed with the adaptor's reason, the signal or the exit status."""
    ok = settled_fields({"id": "a", "state": "running"},
                        {"exit_code": 0, "reason": None, "finished_at": "T",
                         "started_at": "S", "session_id": "s1"}, 60.0, "NOW")
    assert ("completed", 0, "T", "S", "s1", None) == (
        ok["state"], ok["exit_code"], ok["finished_at"], ok["started_at"], ok["session_id"],
        ok["reason"])
    cancelled = settled_fields({"id": "b", "state": "running", "cancel_requested": True},
                               {"exit_code": None, "signal": 15, "reason": "terminated"},
                               None, "NOW")
    assert ("cancelled", "cancelled by operator", "NOW") == (
        cancelled["state"], cancelled["reason"], cancelled["finished_at"])
    timed = settled_fields({"id": "c"}, {"exit_code": None, "reason": "timed_out"}, 90.0, "N")
    assert ("timed_out", "timed out after 90s") == (timed["state"], timed["reason"])
    assert [("failed", "agent_not_found: x"), ("failed", "killed by signal 9"),
            ("failed", "exit 3")] == [
        (f["state"], f["reason"]) for f in (
            settled_fields({}, {"exit_code": 127, "reason": "agent_not_found: x"}, None, "N"),
            settled_fields({}, {"exit_code": None, "signal": 9}, None, "N"),
            settled_fields({}, {"exit_code": 3}, None, "N"))]

def test_new_job_ids_are_valid_time_sortable_and_distinct() -> None:
    """A fresh id is a valid id starting with the UTC second; two are never equal."""
    a, b = new_job_id(T), new_job_id(T)
    assert (True, "20270115T080000-", True) == (valid_job_id(a), a[:16], a != b)


def test_job_record_has_every_field_and_shows_pid_only_while_active() -> None:
    """Every contract field is present; pid is null unless starting or running; the
    output path is the layout's (derived, not stored in the entry)."""
    layout = Layout("/var/lib/batchd")
    running = job_record({"id": "j", "state": "running", "pid": 42, "repos": None}, layout)
    done = job_record({"id": "j", "state": "completed", "pid": 42}, layout)
    assert (RECORD_FIELDS, 42, [], 0, None, "/var/lib/batchd/jobs/j/output") == (
        tuple(running), running["pid"], running["repos"], running["attempts"], done["pid"],
        done["output_path"])


def test_request_bodies() -> None:
    """submit carries the jobs; cancel names its job; both are REQUEST bodies with ids."""
    sub = submit_request([{"id": "j"}], request_id="r1", now=T)
    can = cancel_request("j", now=T)
    assert ("r1", "submit", [{"id": "j"}]) == (sub["id"], sub["kind"], sub["jobs"])
    assert ("cancel", "j", True) == (can["kind"], can["job"], can["id"].startswith("cancel-j-"))


def test_batch_record_counts_states_and_is_done_only_when_all_are_terminal() -> None:
    """{batch, counts, done, jobs}: the shape `batchctl batch` and batch webhooks share."""
    assert {"batch": "B", "counts": {"running": 1, "completed": 1}, "done": False,
            "jobs": ["a", "b"]} == batch_record("B", [("a", "running"), ("b", "completed")])
    assert batch_record("B", [("a", "lost"), ("b", "cancelled")])["done"]
