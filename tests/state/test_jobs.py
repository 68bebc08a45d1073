"""supervisor.state.jobs and _clock: job ids, timestamps, job records, the request bodies."""

from __future__ import annotations

import pytest

from supervisor.state.clock import epoch_of, iso_now
from supervisor.state.jobs import (
    RECORD_FIELDS,
    batch_record,
    cancel_request,
    job_record,
    new_job_id,
    submit_request,
    valid_job_id,
)

T = 1_800_000_000.25


@pytest.mark.parametrize("job_id, ok", [
    ("a", True), ("A9._-z", True), ("x" * 64, True), ("", False), ("x" * 65, False),
    (".a", False), ("-a", False), ("a/b", False), ("a b", False), ("é", False),
    ("a\n", False), (7, False)])
def test_valid_job_id(job_id: object, ok: bool) -> None:
    """[A-Za-z0-9][A-Za-z0-9._-]{0,63}, nothing else (no path tricks)."""
    assert ok == valid_job_id(job_id)


def test_iso_now_and_epoch_of_round_trip() -> None:
    """iso_now writes milliseconds and Z; epoch_of reads it back, or prefers the ts field."""
    text = iso_now(T)
    assert "2027-01-15T08:00:00.250Z" == text
    assert T == epoch_of({"at": text}, "ts", "at")
    assert 5.0 == epoch_of({"ts": 5, "at": text}, "ts", "at")
    assert (None, None) == (epoch_of({"ts": True, "at": "soon"}, "ts", "at"),
                            epoch_of({}, "ts", "at"))


def test_new_job_ids_are_valid_time_sortable_and_distinct() -> None:
    """A fresh id is a valid id starting with the UTC second; two are never equal."""
    a, b = new_job_id(T), new_job_id(T)
    assert (True, "20270115T080000-", True) == (valid_job_id(a), a[:16], a != b)


def test_job_record_has_every_field_and_shows_pid_only_while_active() -> None:
    """Every contract field is present; pid is null unless starting or running."""
    running = job_record({"id": "j", "state": "running", "pid": 42, "repos": None})
    done = job_record({"id": "j", "state": "completed", "pid": 42})
    assert (RECORD_FIELDS, 42, [], 0, None) == (
        tuple(running), running["pid"], running["repos"], running["attempts"], done["pid"])


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
