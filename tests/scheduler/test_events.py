"""The webhook events the scheduler emits when jobs end (scheduler.events), on a real queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.scheduler.events import BatchIndex, emit_job_end
from supervisor.state.layout import REQUEST, Layout, read_record
from supervisor.state.queue import JobQueue
from supervisor.state.webhook import batch_event_id, job_event_id


@pytest.fixture
def env(tmp_path: Path) -> tuple[Layout, JobQueue]:
    layout = Layout(tmp_path / "state")
    layout.wal_dir.mkdir(parents=True)
    return layout, JobQueue.open(layout.wal_dir)


def _job(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"agent": "shell", "prompt": "true", "repos": [], "created_at": "2026-01-01T00:00:00Z",
            "callback": None, "batch": None, **fields}


def _requests(layout: Layout) -> dict[str, dict[str, Any]]:
    inbox = layout.inbox("callbacks")
    out = {}
    for path in sorted(inbox.glob("*.json")) if inbox.exists() else []:
        rec = read_record(REQUEST, path, owner=False)
        assert isinstance(rec, dict)
        out[path.stem] = rec
    return out


def _end(layout: Layout, q: JobQueue, index: BatchIndex, job_id: str, state: str) -> int:
    entry = {**(q.get(job_id) or {}), "state": state, "exit_code": 0}
    written = emit_job_end(layout, q, index, entry, lambda i: state if i == job_id else q.state(i))
    q.update(job_id, state=state)
    return written


def test_a_job_with_a_callback_gets_one_job_event(env: tuple[Layout, JobQueue]) -> None:
    """A job with --callback ending: one deliver request named by its event id, the job record
    inside; replaying the same end writes the same file again (same name: a replay)."""
    layout, q = env
    q.enqueue("a", _job("a", callback="http://127.0.0.1:9/hook"))
    index = BatchIndex()
    assert 1 == _end(layout, q, index, "a", "completed")
    eid = job_event_id("a", "2026-01-01T00:00:00Z")
    reqs = _requests(layout)
    assert [eid] == list(reqs)
    req = reqs[eid]
    assert ("deliver", "http://127.0.0.1:9/hook", "a") == (req["kind"], req["url"], req["job"])
    assert (eid, "a", "completed") == (req["payload"]["event_id"], req["payload"]["job"]["id"],
                                       req["payload"]["job"]["state"])
    assert 1 == _end(layout, q, index, "a", "completed")
    assert [eid] == list(_requests(layout))


def test_a_job_without_a_callback_emits_nothing(env: tuple[Layout, JobQueue]) -> None:
    """No callback, no batch: no request is written."""
    layout, q = env
    q.enqueue("a", _job("a"))
    assert 0 == _end(layout, q, BatchIndex(), "a", "failed")
    assert {} == _requests(layout)


def test_a_batch_event_per_distinct_url_once_every_job_is_terminal(
        env: tuple[Layout, JobQueue]) -> None:
    """Three jobs of batch B, two URLs among them: nothing until the last one ends; then
    one batch event per distinct URL with the batch record, naming its batch (so that the
    callbacks worker holds it for the settle window); a job event names no batch."""
    layout, q = env
    u1, u2 = "http://127.0.0.1:9/one", "http://127.0.0.1:9/two"
    q.enqueue("a", _job("a", batch="B", callback=u1))
    q.enqueue("b", _job("b", batch="B", callback=u2))
    q.enqueue("c", _job("c", batch="B", callback=u1))
    q.enqueue("x", _job("x", batch="other"))
    index = BatchIndex()
    assert 1 == _end(layout, q, index, "a", "completed")
    assert 1 == _end(layout, q, index, "b", "failed")
    assert 3 == _end(layout, q, index, "c", "completed")
    reqs = _requests(layout)
    batch_ids = {batch_event_id("B", u, ["a", "b", "c"]): u for u in (u1, u2)}
    assert set(batch_ids) <= set(reqs)
    assert "batch" not in reqs[job_event_id("a", "2026-01-01T00:00:00Z")]
    for eid, url in batch_ids.items():
        assert (url, "B") == (reqs[eid]["url"], reqs[eid]["batch"])
        assert {"batch": "B", "counts": {"completed": 2, "failed": 1}, "done": True,
                "jobs": ["a", "b", "c"]} == reqs[eid]["payload"]["batch"]


def test_batch_index_catches_up_with_jobs_enqueued_later(env: tuple[Layout, JobQueue]) -> None:
    """A job joining the batch after the index was built is seen: the batch is not done."""
    layout, q = env
    q.enqueue("a", _job("a", batch="B", callback="http://127.0.0.1:9/b"))
    index = BatchIndex()
    assert ["a"] == index.jobs(q, "B")
    q.enqueue("b", _job("b", batch="B"))
    assert 1 == _end(layout, q, index, "a", "completed")   # the job event only
    assert ["a", "b"] == index.jobs(q, "B")
