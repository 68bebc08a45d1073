"""The settle check of held batch events (callbacks.settle) against a real job queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor import log as _log
from supervisor.callbacks.settle import Verdict, check_batches, members_of, wal_check
from supervisor.state.queue import JobQueue
from supervisor.state.webhook import batch_payload, delivery_request, new_delivery

T0 = 1_800_000_000.0


def held(event_id: str, jobs: list[str], batch: str = "B") -> dict[str, Any]:
    record = {"batch": batch, "counts": {}, "done": True, "jobs": jobs}
    req = delivery_request(event_id, "http://127.0.0.1:9/b", batch_payload(event_id, record),
                           batch=batch, now=T0)
    return new_delivery(req, T0, settle=2.0)


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    q = JobQueue.open(tmp_path / "wal")
    for job, batch in (("a", "B"), ("x", "other"), ("b", "B")):
        q.enqueue(job, {"agent": "shell", "prompt": "true", "batch": batch})
    return q


def test_a_done_batch_with_the_same_jobs_is_sent(queue: JobQueue) -> None:
    """Every listed job terminal, none joined: SEND (an unrelated later job is ignored)."""
    queue.update("a", state="completed")
    queue.update("b", state="failed")
    queue.enqueue("y", {"agent": "shell", "prompt": "true", "batch": "other"})
    assert {"e": Verdict.SEND} == check_batches(queue, [held("e", ["a", "b"])])


def test_a_listed_job_not_terminal_yet_waits(queue: JobQueue) -> None:
    """The scheduler emits before it records the last end: WAIT until the queue says so."""
    queue.update("a", state="completed")
    assert {"e": Verdict.WAIT} == check_batches(queue, [held("e", ["a", "b"])])


def test_a_batch_that_gained_a_job_is_superseded(queue: JobQueue) -> None:
    """A job joined the batch after the event listed its jobs (a later submit): SUPERSEDED,
    whether that job has ended or not; the event listing all three jobs is SENT once they
    are terminal."""
    queue.update("a", state="completed")
    queue.update("b", state="completed")
    queue.enqueue("c", {"agent": "shell", "prompt": "true", "batch": "B"})
    first = held("e1", ["a", "b"])
    assert {"e1": Verdict.SUPERSEDED} == check_batches(queue, [first])
    queue.update("c", state="completed")
    assert {"e1": Verdict.SUPERSEDED, "e2": Verdict.SEND} == check_batches(
        queue, [first, held("e2", ["a", "b", "c"])])


def test_a_forgotten_job_counts_as_terminal(queue: JobQueue) -> None:
    """A listed job the queue no longer knows (forgotten) does not hold the event back."""
    queue.update("a", state="completed")
    queue.update("b", state="completed")
    assert {"e": Verdict.SEND} == check_batches(queue, [held("e", ["a", "b", "gone"])])


def test_members_are_the_payloads_job_list() -> None:
    """The jobs a held event lists are its payload's batch record's jobs."""
    assert ["a", "b"] == members_of(held("e", ["a", "b"]))


def test_wal_check_reads_the_log_read_only(tmp_path: Path, queue: JobQueue) -> None:
    """The production check opens the scheduler's WAL read-only (the writer keeps it open)."""
    queue.update("a", state="completed")
    queue.update("b", state="completed")
    check = wal_check(tmp_path / "wal", _log.get("test"))
    assert {"e": Verdict.SEND} == check([held("e", ["a", "b"])])
    queue.update("a", state="completed")          # the writer is unaffected


def test_wal_check_without_a_readable_log_waits(tmp_path: Path) -> None:
    """No job queue to read: nothing is decided (every event waits), nothing is created."""
    check = wal_check(tmp_path / "nowhere", _log.get("test"))
    assert ({}, False) == (check([held("e", ["a"])]), (tmp_path / "nowhere").exists())
