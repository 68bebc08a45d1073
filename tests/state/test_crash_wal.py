"""Crash points of the job-queue WAL (supervisor/_wal.py) and the queue over it
(supervisor/_queue.py), explored with tests/crashfs.py: a power cut at every persistence
point, every legal disk state, recovery must give an acknowledged prefix, twice the same."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.fs import FS, REAL
from supervisor.state.queue import JobQueue, MemoryStorage
from supervisor.state.wal import Wal
from tests.crashfs import CrashFS, explore, explore_recovery, snapshot_tree


# -- the log alone, with a minimal owner ---------------------------------------------------------
class ListLog:
    """The smallest owner of a Wal: its state is a list of strings; the snapshot image is
    the JSON of the whole list. It compacts when the log says it is due, as the queue does."""

    def __init__(self, directory: str, fs: FS = REAL, *, readonly: bool = False,
                 compact_records: int = 8192) -> None:
        self.wal = Wal.open(directory, fs=fs, readonly=readonly,
                            compact_records=compact_records)
        got = self.wal.take_recovered()
        base = json.loads(bytes(got.snapshot)) if got.snapshot is not None else []
        self.items: list[str] = base + [r.decode() for r in got.records]
        self.errors = list(got.report.errors)
        self._compact()

    def append(self, *items: str) -> None:
        self.wal.append([i.encode() for i in items])
        self.items += items
        self._compact()

    def _compact(self) -> None:
        if self.wal.compaction_due():
            epoch = self.wal.rotate()
            self.wal.install_snapshot(json.dumps(self.items).encode(), epoch)

    def close(self) -> None:
        self.wal.close()


def _wal_dir(root: str) -> str:
    return os.path.join(root, "wal")


def _recover_list(root: str) -> list[str]:
    """Read-only open first (it must change nothing on disk and see the same), then the
    owner's writable open: the recovered list."""
    before = snapshot_tree(root)
    ro = ListLog(_wal_dir(root), readonly=True)
    ro.close()
    assert snapshot_tree(root) == before, "a read-only open changed the disk"
    log = ListLog(_wal_dir(root))
    log.close()
    assert ro.items == log.items, (ro.items, log.items)
    return log.items


def _setup_list(*items: str) -> Any:
    def setup(root: str) -> None:
        log = ListLog(_wal_dir(root))
        if items:
            log.append(*items)
        log.close()
    return setup


def test_wal_append_one_record_survives_every_crash(tmp_path: Path) -> None:
    """One durable append: every power cut recovers without it or with it, never torn."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        log = ListLog(_wal_dir(root), fs)
        log.append("a")
        yield
        log.close()

    report = explore(tmp_path, setup=_setup_list("x0"), workload=workload,
                     recover=_recover_list, expected=[["x0"], ["x0", "a"]])
    assert {0, 1} == set(report.recovered_to)


def test_wal_batch_survives_as_a_prefix_and_whole_once_acknowledged(tmp_path: Path) -> None:
    """A batch of 3 records in one write: while in flight a crash may keep a prefix of it
    (the WAL's contract; atomicity is the owner's business), once acknowledged all 3."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        log = ListLog(_wal_dir(root), fs)
        log.append("b", "c", "d")
        yield
        log.close()

    report = explore(tmp_path, setup=_setup_list("x0"), workload=workload,
                     recover=_recover_list, expected=[["x0"], ["x0", "b", "c", "d"]],
                     partial={1: [["x0", "b"], ["x0", "b", "c"]]})
    assert {0, 1} == set(report.recovered_to)


def test_wal_first_open_and_append_survive_every_crash(tmp_path: Path) -> None:
    """Creating the log (folder, first segment) and appending to it, from nothing."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        log = ListLog(_wal_dir(root), fs)
        log.append("a")
        yield
        log.append("b")
        yield
        log.close()

    explore(tmp_path, setup=lambda root: None, workload=workload, recover=_recover_list,
            expected=[[], ["a"], ["a", "b"]])


def test_wal_compaction_survives_every_crash(tmp_path: Path) -> None:
    """An append that triggers a compaction (rotate, snapshot, drop old segments), then one
    more append: no crash point loses or duplicates a record."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        log = ListLog(_wal_dir(root), fs, compact_records=2)
        log.append("a")  # 2 records since the last snapshot: compacts
        yield
        log.append("b")
        yield
        log.close()

    report = explore(tmp_path, setup=_setup_list("x0"), workload=workload,
                     recover=_recover_list,
                     expected=[["x0"], ["x0", "a"], ["x0", "a", "b"]])
    assert {0, 1, 2} == set(report.recovered_to)


def test_a_power_cut_during_wal_recovery_changes_nothing(tmp_path: Path) -> None:
    """Recovery's repairs (truncating a torn tail, removing stale segments and temp
    snapshots, quarantining) may themselves be cut at any point: the state left behind
    recovers to the same list as before."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        log = ListLog(_wal_dir(root), fs, compact_records=2)
        log.append("a", "b")  # a batch that then triggers a compaction
        yield
        log.close()

    def reopen(root: str, fs: CrashFS) -> None:
        ListLog(_wal_dir(root), fs, compact_records=2).close()

    report = explore_recovery(tmp_path, setup=_setup_list("x0"), workload=workload,
                              reopen=reopen, recover=_recover_list)
    assert report.states > report.points > 0


def _errors_after_every_crash(tmp_path: Path) -> dict[str, int]:
    """Loud recovery errors seen over every crash state of append + compaction."""
    seen: dict[str, int] = {}

    def recover(root: str) -> list[str]:
        log = ListLog(_wal_dir(root))
        log.close()
        for e in log.errors:
            key = e.split(": ", 1)[-1]
            seen[key] = seen.get(key, 0) + 1
        return log.items

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        log = ListLog(_wal_dir(root), fs, compact_records=2)
        log.append("a")
        yield
        log.close()

    explore(tmp_path, setup=_setup_list("x0"), workload=workload, recover=recover,
            expected=[["x0"], ["x0", "a"]], idempotent=False)
    return seen


def test_a_power_cut_is_not_reported_as_corruption(tmp_path: Path) -> None:
    """A power cut is normal: recovery after one must not raise loud corruption errors."""
    assert {} == _errors_after_every_crash(tmp_path)


# -- the job queue -------------------------------------------------------------------------------
Op = Callable[[JobQueue], object]
BODY = {"agent": "shell", "prompt": "echo hi", "repos": []}


def _picture(q: JobQueue) -> dict[str, Any]:
    """Everything a reader of the queue can observe: jobs in FIFO order with their fields,
    the first queued job, counts by state, counters."""
    ids = q.ids()
    return {"jobs": [q.get(i) for i in ids], "queued": q.ids("queued"),
            "first_queued": q.first_queued(), "counts": q.counts(), "stats": q.stats(),
            "len": len(q)}


def _qdir(root: str) -> str:
    return os.path.join(root, "wal")


def _recover_queue(root: str) -> dict[str, Any]:
    """batchctl's read-only open (changes nothing on disk, sees the same), then the
    scheduler's writable open (recovery with repairs): the picture."""
    before = snapshot_tree(root)
    with JobQueue.open(_qdir(root), readonly=True) as ro:
        seen_ro = _picture(ro)
    assert snapshot_tree(root) == before, "a read-only open changed the disk"
    with JobQueue.open(_qdir(root)) as q:
        got = _picture(q)
        # A power cut is not corruption: no loud error.
        assert [] == q.recovery.errors
    assert seen_ro == got, (seen_ro, got)
    return got


def _reference(setup_ops: list[Op], ops: list[Op]) -> list[dict[str, Any]]:
    """The picture after each prefix of `ops`, from the in-memory twin."""
    q = JobQueue.over(MemoryStorage())
    for op in setup_ops:
        op(q)
    pictures = [_picture(q)]
    for op in ops:
        op(q)
        pictures.append(_picture(q))
    return pictures


def _setup_queue(setup_ops: list[Op]) -> Callable[[str], None]:
    def setup(root: str) -> None:
        with JobQueue.open(_qdir(root)) as q:
            for op in setup_ops:
                op(q)
    return setup


def _queue_workload(ops: list[Op], compact_records: int | None = None) -> Any:
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        if compact_records is None:
            q = JobQueue.open(_qdir(root), fs=fs)
        else:
            q = JobQueue.over(Wal.open(_qdir(root), fs=fs, compact_records=compact_records))
        for op in ops:
            op(q)
            yield
        q.close()
    return workload


def _explore_queue(tmp_path: Path, setup_ops: list[Op], ops: list[Op], *,
                   compact_records: int | None = None,
                   partial: dict[int, list[Any]] | None = None) -> Any:
    expected = _reference(setup_ops, ops)
    return explore(tmp_path, setup=_setup_queue(setup_ops),
                   workload=_queue_workload(ops, compact_records),
                   recover=_recover_queue, expected=expected, partial=partial)


SEED: list[Op] = [lambda q: q.enqueue("j0", BODY), lambda q: q.incr("submitted")]


def test_queue_enqueue_one_survives_every_crash(tmp_path: Path) -> None:
    """enqueue: after any power cut the job is absent or complete, behind j0 in FIFO order."""
    ops: list[Op] = [lambda q: q.enqueue("j1", {**BODY, "prompt": "two"})]
    expected = _reference(SEED, ops)
    assert ["j0", "j1"] == expected[1]["queued"]
    report = _explore_queue(tmp_path, SEED, ops)
    assert {0, 1} == set(report.recovered_to)


def test_queue_enqueue_then_update_then_incr_survive_every_crash(tmp_path: Path) -> None:
    """enqueue, a state change with fields, a counter: every crash shows an acknowledged
    prefix (the running job is no longer first_queued; the counter moves by exactly 1)."""
    ops: list[Op] = [
        lambda q: q.enqueue("j1", BODY),
        lambda q: q.update("j0", state="running", pid=4242, start=777, attempts=1),
        lambda q: q.incr("completed"),
    ]
    expected = _reference(SEED, ops)
    assert "j1" == expected[2]["first_queued"]
    assert "running" == expected[2]["jobs"][0]["state"]
    assert 1 == expected[3]["stats"]["completed"]
    report = _explore_queue(tmp_path, SEED, ops)
    assert {0, 1, 2, 3} == set(report.recovered_to)


MANY: list[Op] = [lambda q: q.enqueue_many([("a", BODY), ("b", BODY), ("c", BODY)])]


def test_queue_enqueue_many_keeps_a_fifo_prefix_of_the_batch(tmp_path: Path) -> None:
    """enqueue_many of 3: once acknowledged all 3 survive in order; while in flight, a power
    cut keeps none, or a prefix of the batch in order (never a later job without the
    earlier ones, never a half-recorded job)."""
    torn = [_reference(SEED, [lambda q, ids=ids: q.enqueue_many([(i, BODY) for i in ids])])[1]
            for ids in (["a"], ["a", "b"])]
    report = _explore_queue(tmp_path, SEED, MANY, partial={1: torn})
    assert {0, 1} == set(report.recovered_to)


def test_queue_enqueue_many_is_all_or_nothing(tmp_path: Path) -> None:
    """enqueue_many of 3 as one operation: every crash recovers to none or all three."""
    _explore_queue(tmp_path, SEED, MANY)


def test_queue_compaction_survives_every_crash(tmp_path: Path) -> None:
    """With a compaction threshold of 2 records, every operation here snapshots: a power
    cut anywhere in rotate / snapshot write / segment removal loses nothing."""
    ops: list[Op] = [
        lambda q: q.enqueue("j1", BODY),
        lambda q: q.update("j0", state="completed", exit_code=0),
        lambda q: q.enqueue("j2", BODY),
    ]
    report = _explore_queue(tmp_path, SEED, ops, compact_records=2)
    assert {0, 1, 2, 3} == set(report.recovered_to)
    assert any(op.startswith("rename wal/.tmp.snapshot") for op in report.ops)


def test_queue_forget_and_the_compaction_that_drops_it_survive_every_crash(
        tmp_path: Path) -> None:
    """forget of a finished job, then a compaction that leaves it out of the snapshot, then
    its id used again: a power cut anywhere shows an acknowledged prefix (the job whole,
    or gone; never a half-forgotten job, never the new job under the old record)."""
    ops: list[Op] = [
        lambda q: q.update("j0", state="completed", exit_code=0),
        lambda q: q.forget(["j0"]),
        lambda q: q.enqueue("j1", BODY),
        lambda q: q.enqueue("j0", {**BODY, "prompt": "again"}),
    ]
    expected = _reference(SEED, ops)
    assert ([], ["j1", "j0"]) == (expected[2]["queued"], expected[4]["queued"])
    report = _explore_queue(tmp_path, SEED, ops, compact_records=2)
    assert {0, 1, 2, 3, 4} == set(report.recovered_to)


def _reopen_compacting(root: str, fs: CrashFS) -> None:
    JobQueue.over(Wal.open(_qdir(root), fs=fs, compact_records=2)).close()


def test_a_power_cut_during_queue_recovery_changes_nothing(tmp_path: Path) -> None:
    """The scheduler's own recovery (truncate a torn tail, drop stale segments and a temp
    snapshot, compact) cut at any point leaves a queue that recovers to the same picture.
    The outer workload is one enqueue that triggers a compaction."""
    ops: list[Op] = [lambda q: q.enqueue("j1", BODY)]
    report = explore_recovery(tmp_path, setup=_setup_queue(SEED),
                              workload=_queue_workload(ops, compact_records=2),
                              reopen=_reopen_compacting, recover=_recover_queue)
    assert report.states > report.points > 0


@pytest.mark.chaos
def test_a_power_cut_during_queue_recovery_changes_nothing_longer(tmp_path: Path) -> None:
    """The same with two compacting operations (enqueue, then a state change)."""
    ops: list[Op] = [lambda q: q.enqueue("j1", BODY),
                     lambda q: q.update("j0", state="running", pid=1, start=2)]
    report = explore_recovery(tmp_path, setup=_setup_queue(SEED),
                              workload=_queue_workload(ops, compact_records=2),
                              reopen=_reopen_compacting, recover=_recover_queue)
    assert report.states > report.points > 0


def test_the_exploration_catches_a_log_that_acknowledges_before_fdatasync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sensitivity check: with Wal.sync made a no-op, an acknowledged enqueue can vanish
    at a power cut, and the exploration says so."""
    monkeypatch.setattr(Wal, "sync", lambda self, ticket: None)
    ops: list[Op] = [lambda q: q.enqueue("j1", BODY)]
    with pytest.raises(AssertionError, match="1 acknowledged"):
        _explore_queue(tmp_path, SEED, ops)
