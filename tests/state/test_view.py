"""Tests for supervisor.ctl.view: batchctl's read-only view of workers, startups and jobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config
from supervisor.state.atomic import ensure_dir
from supervisor.state.jobs import cancel_request, submit_request
from supervisor.state.layout import (
    REQUEST,
    RESULT,
    STARTUP_LOG,
    WORKERS,
    Layout,
    write_record,
)
from supervisor.state.queue import SUBLOG_COUNTER, JobQueue
from supervisor.state.sublog import SubmissionLog
from supervisor.state.view import (
    STAT_KEYS,
    JobView,
    Pending,
    Unreadable,
    batchd_pid,
    open_queue,
    open_view,
    read_pending,
    read_startups,
    read_workers,
)


class MemQueue:
    """The in-memory twin of the read side of supervisor.state.queue.JobQueue."""

    def __init__(self, entries: dict[str, dict[str, Any]], stats: dict[str, int]) -> None:
        self.entries = entries
        self._stats = stats
        self.closed = False

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.entries.get(job_id)

    def ids(self, state: str | None = None) -> list[str]:
        return [i for i, e in self.entries.items() if state in (None, e["state"])]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries.values():
            out[e["state"]] = out.get(e["state"], 0) + 1
        return out

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def close(self) -> None:
        self.closed = True


def _layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "state")
    ensure_dir(layout.inbox("scheduler"))
    return layout


def _cfg(layout: Layout) -> Config:
    return Config(state_dir=layout.root, workspace_dir=layout.root / "ws")


def _drop(layout: Layout, req: dict[str, Any], mtime_ns: int | None = None) -> Path:
    path = layout.inbox("scheduler") / f"{req['id']}.json"
    write_record(REQUEST, path, req)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_read_workers_tolerates_missing_and_corrupt(tmp_path: Path) -> None:
    """A missing or corrupt workers.json reads as empty, and a reader never moves it."""
    layout = _layout(tmp_path)
    assert [] == read_workers(layout)
    layout.workers_file.write_text("{not json")
    assert [] == read_workers(layout)
    assert layout.workers_file.exists()
    write_record(WORKERS, layout.workers_file, {"workers": [{"name": "locks"}, "junk"]})
    assert [{"name": "locks"}] == read_workers(layout)


def test_batchd_pid_is_none_without_a_lock_holder(tmp_path: Path) -> None:
    """No batchd.lock, or nobody holding it: not running."""
    layout = _layout(tmp_path)
    assert batchd_pid(layout) is None
    layout.lock_file.write_bytes(b"")
    assert batchd_pid(layout) is None


def test_read_pending_orders_by_mtime_and_skips_junk(tmp_path: Path) -> None:
    """Submits oldest first, cancels collected; temp and corrupt files ignored, not moved."""
    layout = _layout(tmp_path)
    _drop(layout, submit_request([{"id": "b2"}], request_id="zzz"), 2_000_000_000)
    _drop(layout, submit_request([{"id": "a1"}, {"id": "b2"}], request_id="aaa"), 1_000_000_000)
    _drop(layout, cancel_request("a1"))
    (layout.inbox("scheduler") / ".tmp.x.json.1.ab").write_text("{")
    (layout.inbox("scheduler") / "broken.json").write_text("{")
    pending = read_pending(layout)
    assert (["a1", "b2"], {"a1"}) == (list(pending.jobs), pending.cancels)
    assert (layout.inbox("scheduler") / "broken.json").exists()


def test_job_view_merges_queue_then_pending(tmp_path: Path) -> None:
    """Queue entries first in queue order, then submissions the queue does not have yet."""
    layout = _layout(tmp_path)
    queue = MemQueue({"q1": {"id": "q1", "state": "running"},
                      "q2": {"id": "q2", "state": "completed"}}, {"submitted": 2})
    pending = Pending(jobs={"q2": {"id": "q2"}, "p1": {"id": "p1", "agent": "shell"}})
    view = JobView(_cfg(layout), layout, queue, pending)
    assert (["q1", "q2", "p1"], {"q1", "q2", "p1"}) == (view.ids(), view.known_ids())
    assert "completed" == view.state("q2")
    assert {"id": "p1", "agent": "shell", "state": "queued", "attempts": 0,
            "workspace": str(layout.root / "ws" / "p1")} == view.get("p1")
    assert view.get("nope") is None
    assert {"running": 1, "completed": 1, "queued": 1} == view.counts()
    view.close()
    assert queue.closed


def test_a_pending_resumed_job_shows_the_workspace_it_will_run_in(tmp_path: Path) -> None:
    """A submission that resumes another job's session shows that job's workspace, not a
    fresh <workspace_dir>/<id>."""
    layout = _layout(tmp_path)
    pending = Pending(jobs={"r1": {"id": "r1", "resume_of": "q1", "workspace": "/ws/q1"}})
    view = JobView(_cfg(layout), layout, None, pending)
    assert ("queued", "/ws/q1") == tuple((view.get("r1") or {})[k]
                                         for k in ("state", "workspace"))


def test_job_view_stats_has_every_counter(tmp_path: Path) -> None:
    """Every stats key present, zero when the queue has none (or no queue at all)."""
    layout = _layout(tmp_path)
    view = JobView(_cfg(layout), layout, MemQueue({}, {"completed": 3}), Pending())
    assert {**dict.fromkeys(STAT_KEYS, 0), "completed": 3} == view.stats()
    assert dict.fromkeys(STAT_KEYS, 0) == JobView(_cfg(layout), layout, None, Pending()).stats()


def test_open_view_without_a_queue_shows_pending_jobs(tmp_path: Path) -> None:
    """Before batchd ever ran (no WAL folder) the view is the inbox alone."""
    layout = _layout(tmp_path)
    _drop(layout, submit_request([{"id": "x1", "agent": "shell"}]))
    with open_view(_cfg(layout), layout) as view:
        assert (None, ["x1"], {"queued": 1}) == (view.queue, view.ids(), view.counts())


def test_open_view_shows_the_api_log_above_the_bookmark_only(tmp_path: Path) -> None:
    """A job the api logged is pending (queued) until the scheduler's bookmark passes its
    record; after that only the queue speaks for it, so a job enqueued and then forgotten
    does not come back from the log."""
    layout = _layout(tmp_path)
    log = SubmissionLog(layout.sublog_dir, consumed=0)
    log.append(submit_request([{"id": "l1", "agent": "shell"}]))
    log.append(submit_request([{"id": "l2", "agent": "shell"}]))
    with open_view(_cfg(layout), layout) as view:
        assert (["l1", "l2"], {"queued": 2}) == (view.ids(), view.counts())
    with JobQueue.open(layout.wal_dir) as queue:
        queue.enqueue_many([("l1", {"agent": "shell", "state": "completed"})],
                           counters={SUBLOG_COUNTER: 1})
        queue.forget(["l1"])
    with open_view(_cfg(layout), layout) as view:
        assert (["l2"], None) == (view.ids(), view.get("l1"))
    log.close()


def test_open_queue_missing_is_none_and_a_plain_file_is_unreadable(tmp_path: Path) -> None:
    """No WAL folder yet: no queue. A plain file in its place: Unreadable naming path and why."""
    layout = _layout(tmp_path)
    assert open_queue(layout.wal_dir) is None
    layout.wal_dir.write_bytes(b"junk")
    with pytest.raises(Unreadable) as info:
        open_queue(layout.wal_dir)
    assert f"cannot read the job queue at {layout.wal_dir}: it is not a directory" \
        == str(info.value)


def test_open_queue_under_a_plain_file_is_unreadable(tmp_path: Path) -> None:
    """scheduler/ itself a plain file: the OS error is named, not hidden as 'no queue'."""
    layout = Layout(tmp_path / "state")
    ensure_dir(layout.root)
    layout.worker_dir("scheduler").write_bytes(b"junk")
    with pytest.raises(Unreadable) as info:
        open_view(_cfg(layout), layout)
    assert (f"cannot read the scheduler's inbox at {layout.inbox('scheduler')}: "
            f"Not a directory ({layout.inbox('scheduler')})") == str(info.value)
    with pytest.raises(Unreadable) as info:
        open_queue(layout.wal_dir)
    assert (f"cannot read the job queue at {layout.wal_dir}: "
            f"Not a directory ({layout.wal_dir})") == str(info.value)


def test_read_startups_missing_is_empty_and_corrupt_raises(tmp_path: Path) -> None:
    """No log yet: []. A corrupt one: Unreadable, and the file stays where it is."""
    layout = _layout(tmp_path)
    assert [] == read_startups(layout)
    write_record(STARTUP_LOG, layout.startup_log, {"startups": [{"id": "s1"}, 3]})
    assert [{"id": "s1"}] == read_startups(layout)
    layout.startup_log.write_text("[1,")
    with pytest.raises(Unreadable):
        read_startups(layout)
    assert "[1," == layout.startup_log.read_text()


def test_a_running_job_with_a_result_shows_as_it_will_be_recorded(tmp_path: Path) -> None:
    """batchd down, the adaptor wrote result.json: the job shows its end (state, exit code,
    no pid) in get, in the state filters and in the counts; the WAL is untouched."""
    layout = _layout(tmp_path)
    queue = MemQueue({"r1": {"id": "r1", "state": "running", "pid": 4242, "started_at": "x"},
                      "r2": {"id": "r2", "state": "running", "pid": 4343}}, {})
    ensure_dir(layout.job_dir("r1"))
    write_record(RESULT, layout.job_result("r1"), {
        "id": "r1", "exit_code": 3, "signal": None, "reason": None, "timed_out": False,
        "finished_at": "2026-11-28T12:00:00.000Z"})
    view = JobView(_cfg(layout), layout, queue, Pending())
    r1 = view.get("r1")
    assert r1 is not None
    assert ("failed", 3, None, "exit 3", "2026-11-28T12:00:00.000Z") == (
        r1["state"], r1["exit_code"], r1["pid"], r1["reason"], r1["finished_at"])
    assert (["r1"], ["r2"]) == ([e["id"] for e in view.entries("failed")],
                                [e["id"] for e in view.entries("running")])
    assert {"failed": 1, "running": 1} == view.counts()
    assert "running" == queue.entries["r1"]["state"]


def test_a_result_with_a_cancel_waiting_in_the_inbox_shows_cancelled(tmp_path: Path) -> None:
    """A running job's adaptor wrote a failing result while a cancel of it waits in the
    scheduler's inbox: the scheduler takes the cancel before it ticks the job, so the job
    will be recorded cancelled; the view shows that, not `failed` first (chaos seed
    31711598 saw one job shown failed, then cancelled)."""
    layout = _layout(tmp_path)
    queue = MemQueue({"r1": {"id": "r1", "state": "running", "pid": 4242, "started_at": "x"}},
                     {})
    ensure_dir(layout.job_dir("r1"))
    write_record(RESULT, layout.job_result("r1"), {
        "id": "r1", "exit_code": 143, "signal": None, "reason": None, "timed_out": False,
        "finished_at": "2026-11-28T12:00:00.000Z"})
    pending = Pending()
    pending.cancels.add("r1")
    r1 = JobView(_cfg(layout), layout, queue, pending).get("r1")
    assert r1 is not None
    assert ("cancelled", "cancelled by operator", "2026-11-28T12:00:00.000Z") == (
        r1["state"], r1["reason"], r1["finished_at"])
    assert "running" == queue.entries["r1"]["state"]


def test_pending_ids_follow_the_inbox_and_parse_each_request_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PendingIds gives the ids read_pending gives (submits only, temp files and junk
    skipped), reads each request file once however often it refreshes, forgets a request
    the scheduler took, and reads again a request rewritten under its name (a new inode)."""
    from supervisor.state import view
    from supervisor.state.layout import send_request
    from supervisor.state.view import PendingIds

    layout = Layout(tmp_path)
    parsed: list[str] = []
    real = view._submitted_ids
    monkeypatch.setattr(view, "_submitted_ids",
                        lambda path: parsed.append(path.name) or real(path))
    pending = PendingIds(layout)
    assert set() == set(pending.refresh())
    first = send_request(layout, "scheduler", submit_request([{"id": "a1"}, {"id": "a2"}],
                                                             request_id="r1"))
    send_request(layout, "scheduler", submit_request([{"id": "b1"}], request_id="r2"))
    send_request(layout, "scheduler", cancel_request("a1"))
    (layout.inbox("scheduler") / ".tmp.r9.json.1.ab").write_text("{")
    assert {"a1", "a2", "b1"} == set(pending.refresh())
    assert set(read_pending(layout).jobs) == set(pending.refresh())
    assert 3 == len(parsed)                  # r1, r2, the cancel: once each
    first.unlink()                           # the scheduler took r1
    assert {"b1"} == set(pending.refresh())
    send_request(layout, "scheduler", submit_request([{"id": "c1"}], request_id="r2"))
    assert {"c1"} == set(pending.refresh())  # r2 rewritten: read again
    assert 4 == len(parsed)
