"""QueueIds: the queue's ids, followed in the log as it grows, across compactions."""

from __future__ import annotations

from pathlib import Path

from supervisor.state.queue import SUBLOG_COUNTER, JobQueue
from supervisor.state.queuefollow import LiveQueue, QueueIds
from supervisor.state.wal import Wal


def test_ids_follow_appends_and_compactions(tmp_path: Path) -> None:
    """Opened once, then only the new records are read: enqueues seen at the next refresh,
    updates ignored, ids kept when a compaction moves them into the snapshot."""
    wal = tmp_path / "wal"
    ids = QueueIds(wal)
    assert set() == ids.refresh()
    q = JobQueue.over(Wal.open(wal, compact_records=50))
    try:
        q.enqueue("a", {"agent": "shell", "prompt": "p"})
        assert {"a"} == ids.refresh()
        q.enqueue_many([(f"b{i}", {"agent": "shell", "prompt": "p"}) for i in range(30)])
        q.update("a", state="running")
        assert 31 == len(ids.refresh())
        for i in range(120):                        # past compact_records: snapshots
            q.enqueue(f"c{i}", {"agent": "shell", "prompt": "p"})
        got = ids.refresh()
    finally:
        q.close()
    assert {"a", *(f"b{i}" for i in range(30)), *(f"c{i}" for i in range(120))} == got
    with JobQueue.open(wal, readonly=True) as r:
        assert set(r.ids()) == got


def test_a_fresh_reader_sees_what_a_full_open_sees(tmp_path: Path) -> None:
    """Opened after the fact (snapshot plus segments): the same ids as the queue's."""
    wal = tmp_path / "wal"
    q = JobQueue.over(Wal.open(wal, compact_records=20))
    q.enqueue_many([(f"x{i}", {"agent": "shell", "prompt": "p"}) for i in range(25)])
    q.enqueue("y", {"agent": "shell", "prompt": "p"})
    q.close()
    assert {*(f"x{i}" for i in range(25)), "y"} == QueueIds(wal).refresh()


def test_a_compaction_between_two_looks_reloads_the_queue(tmp_path: Path) -> None:
    """Segments compacted away before they were read: the new snapshot is noticed and the
    queue opened again, so no id is missed."""
    wal = tmp_path / "wal"
    q = JobQueue.over(Wal.open(wal, compact_records=10))
    ids = QueueIds(wal)
    ids.refresh()
    q.enqueue_many([(f"z{i}", {"agent": "shell", "prompt": "p"}) for i in range(5)])
    for i in range(40):
        q.enqueue(f"w{i}", {"agent": "shell", "prompt": "p"})
    got = ids.refresh()
    q.close()
    assert 45 == len(got) and ids.reloads >= 2


def test_a_live_queue_follows_states_and_fields_across_compactions(tmp_path: Path) -> None:
    """LiveQueue: the read-only queue shows what the owner appended since (new jobs, state
    changes, fields), reopened only when a compaction moved the log into a snapshot; a
    view's close() leaves it open."""
    from supervisor.state.queuefollow import LiveQueue

    wal = tmp_path / "wal"
    live = LiveQueue(wal)
    assert live.current() is None
    q = JobQueue.over(Wal.open(wal, compact_records=30))
    try:
        q.enqueue("a", {"agent": "shell", "prompt": "p"})
        view = live.current()
        assert ["a"] == view.ids()
        view.close()
        q.update("a", state="running", pid=42)
        got = live.current().get("a")
        assert ("running", 42) == (got["state"], got["pid"])
        reloads = live.reloads
        for i in range(60):
            q.enqueue(f"n{i}", {"agent": "shell", "prompt": "p"})
        q.update("n5", state="completed")
        current = live.current()
        assert 61 == len(current.ids()) and "completed" == current.state("n5")
        assert live.reloads > reloads
        with JobQueue.open(wal, readonly=True) as fresh:
            assert fresh.counts() == current.counts()
    finally:
        q.close()
        live.close()


def test_views_of_a_following_process_share_the_live_queue(tmp_path: Path) -> None:
    """After follow_queue, open_view serves the followed queue (kept open across views)."""
    from supervisor.config import Config
    from supervisor.state.layout import Layout
    from supervisor.state.view import _LIVE, follow_queue, open_view

    cfg = Config(state_dir=tmp_path, workspace_dir=tmp_path / "ws")
    layout = Layout(tmp_path)
    with JobQueue.open(layout.wal_dir) as q:
        q.enqueue("j", {"agent": "shell", "prompt": "p"})
    live = follow_queue(layout)
    try:
        with open_view(cfg, layout) as view:
            assert "queued" == view.state("j")
        with JobQueue.open(layout.wal_dir) as q:
            q.update("j", state="running")
        with open_view(cfg, layout) as view:
            assert "running" == view.state("j")
        assert 1 == live.reloads
    finally:
        live.close()
        _LIVE.pop(str(layout.wal_dir), None)


def test_ids_follow_the_api_log_bookmark_across_compactions(tmp_path: Path) -> None:
    """`consumed` is the queue's SUBLOG_COUNTER: advanced as the records are followed,
    and read from the queue again after a compaction."""
    wal = tmp_path / "wal"
    ids = QueueIds(wal)
    ids.refresh()
    q = JobQueue.over(Wal.open(wal, compact_records=10))
    try:
        q.enqueue_many([("a", {"agent": "shell", "prompt": "p"})], counters={SUBLOG_COUNTER: 2})
        ids.refresh()
        assert 2 == ids.consumed
        for i in range(30):
            q.enqueue_many([(f"b{i}", {"agent": "shell", "prompt": "p"})],
                           counters={SUBLOG_COUNTER: 1})
        ids.refresh()
    finally:
        q.close()
    assert (32, 31) == (ids.consumed, len(ids.ids))
    assert 32 == _fresh(wal)


def _fresh(wal: Path) -> int:
    fresh = QueueIds(wal)
    fresh.refresh()
    return fresh.consumed


def test_a_live_queue_counts_each_record_once_across_compactions(tmp_path: Path) -> None:
    """After a compaction the queue is read again and followed from where that read
    stopped, not from each segment's start: a counter (not idempotent, unlike an
    enqueue) is never counted twice (it was, until the reload said where it read to)."""
    wal = tmp_path / "wal"
    q = JobQueue.over(Wal.open(wal, compact_records=10))
    live = LiveQueue(wal)
    live.current()
    seen = []
    try:
        for i in range(25):
            q.enqueue_many([(f"j{i}", {"agent": "shell"})], count="submitted")
            seen.append(live.current().stats()["submitted"])
    finally:
        q.close()
        live.close()
    assert list(range(1, 26)) == seen
    assert live.reloads >= 2
