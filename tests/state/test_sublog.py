"""The api's submission log (supervisor.state.sublog): seqs, readers, reopen, compaction,
torn tails and power cuts."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.fs import OsFS
from supervisor.state.queue import SUBLOG_COUNTER, JobQueue
from supervisor.state.queuefollow import QueueIds
from supervisor.state.sublog import LogReader, SubmissionLog, decode, encode, read_log
from supervisor.state.wal import Wal
from tests.crashfs import CrashFS, explore


def _req(*ids: str) -> dict[str, Any]:
    return {"id": f"submit-{'-'.join(ids)}", "kind": "submit",
            "created_at": "2026-12-03T23:00:00.000000Z",
            "jobs": [{"id": i, "agent": "shell", "prompt": "true"} for i in ids]}


def _ids(records: list[dict[str, Any]]) -> list[tuple[int, list[str]]]:
    return [(r["seq"], [j["id"] for j in r["jobs"]]) for r in records]


def test_appends_get_consecutive_seqs_and_a_reader_sees_them_in_order(tmp_path: Path) -> None:
    """Each append is one record with the next seq; a reader shows every record above
    the consumed seq it is given, oldest first."""
    log = SubmissionLog(tmp_path / "log", consumed=0)
    assert [1, 2, 3] == [log.append(_req("a")), log.append(_req("b", "c")),
                         log.append(_req("d"))]
    log.close()
    reader = read_log(tmp_path / "log")
    assert [(1, ["a"]), (2, ["b", "c"]), (3, ["d"])] == _ids(reader.pending(0))
    assert [(3, ["d"])] == _ids(reader.pending(2))


def test_a_reader_follows_what_is_appended_after_it_read(tmp_path: Path) -> None:
    """refresh() reads only what was appended since; records consumed are forgotten."""
    log = SubmissionLog(tmp_path / "log", consumed=0)
    log.append(_req("a"))
    reader = LogReader(tmp_path / "log")
    reader.refresh()
    assert [(1, ["a"])] == _ids(reader.pending(0))
    log.append(_req("b"))
    reader.refresh()
    assert [(2, ["b"])] == _ids(reader.pending(1))
    log.close()


def test_a_missing_log_has_nothing_pending(tmp_path: Path) -> None:
    """No api has written yet: nothing pending, nothing created by the reader."""
    reader = read_log(tmp_path / "none")
    assert [] == reader.pending(0)
    assert not (tmp_path / "none").exists()


def test_a_reopened_log_goes_on_above_its_last_seq_and_the_consumed_one(tmp_path: Path) -> None:
    """A new writer starts above the log's last seq, and above the queue's bookmark when
    that is higher (a record the scheduler enqueued, then lost with the page cache, must
    not have its seq given again: the scheduler would pass the new record over)."""
    log = SubmissionLog(tmp_path / "log", consumed=0)
    log.append(_req("a"))
    log.append(_req("b"))
    log.close()
    again = SubmissionLog(tmp_path / "log", consumed=1)
    assert 3 == again.append(_req("c"))
    assert {"b", "c"} == set(again.pending_ids())
    again.close()
    ahead = SubmissionLog(tmp_path / "log", consumed=10)
    assert 11 == ahead.append(_req("d"))
    ahead.close()
    assert [(11, ["d"])] == _ids(read_log(tmp_path / "log").pending(10))


def test_prune_drops_what_the_scheduler_enqueued(tmp_path: Path) -> None:
    """pending_ids holds the ids of records above the bookmark given to prune."""
    log = SubmissionLog(tmp_path / "log", consumed=0)
    log.append(_req("a"))
    log.append(_req("b", "c"))
    log.append(_req("a", "d"))          # an id twice (never from the api): kept until both go
    assert {"a", "b", "c", "d"} == set(log.pending_ids())
    log.prune(1)
    assert {"a", "b", "c", "d"} == set(log.pending_ids())
    log.prune(2)
    assert {"a", "d"} == set(log.pending_ids())
    log.prune(0)                    # a stale bookmark changes nothing
    assert {"a", "d"} == set(log.pending_ids())
    log.close()


def test_compaction_keeps_what_is_pending_and_readers_lose_nothing(tmp_path: Path) -> None:
    """Past its threshold the writer snapshots the records still pending and drops the
    old segments: a reader that followed all along and a fresh one both see every record
    above the bookmark exactly once."""
    folder = tmp_path / "log"
    log = SubmissionLog(folder, consumed=0, compact_records=4)
    follower = LogReader(folder)
    for n in range(1, 7):                   # the 4th append compacts: 3 and 4 pending
        log.append(_req(f"j{n}"))
        if n == 3:
            log.prune(2)
        follower.refresh()
    log.close()
    assert ["000000000002.wal", "snapshot"] == sorted(os.listdir(folder))
    want = [(n, [f"j{n}"]) for n in (3, 4, 5, 6)]
    assert want == _ids(follower.pending(2))
    assert want == _ids(read_log(folder).pending(2))
    assert 7 == SubmissionLog(folder, consumed=2).append(_req("k"))


def test_no_compaction_while_the_backlog_is_large(tmp_path: Path) -> None:
    """With more than half of COMPACT_RECORDS waiting (the scheduler down), the writer
    does not rewrite them into a snapshot at every threshold: the log grows instead, and
    compacts once the scheduler has taken them."""
    folder = tmp_path / "log"
    log = SubmissionLog(folder, consumed=0, compact_records=4)
    for n in range(8):
        log.append(_req(f"j{n}"))
    assert "snapshot" not in os.listdir(folder)
    log.prune(8)
    log.append(_req("k"))
    assert "snapshot" in os.listdir(folder)
    log.close()
    assert [(9, ["k"])] == _ids(read_log(folder).pending(8))


def test_a_torn_tail_is_not_a_record_and_the_writer_truncates_it(tmp_path: Path) -> None:
    """Half a frame at the end (a crash mid-append) is invisible to readers; the next
    writer cuts it off and appends after the last whole record."""
    folder = tmp_path / "log"
    log = SubmissionLog(folder, consumed=0)
    log.append(_req("a"))
    log.close()
    [segment] = [folder / n for n in os.listdir(folder) if n.endswith(".wal")]
    whole = encode(2, _req("b"))
    data = segment.read_bytes()
    end = data.rstrip(b"\0")
    torn = b"\xfeREC" + len(whole).to_bytes(4, "little") + b"\0\0\0\0" + whole[:5]
    segment.write_bytes(end + torn + bytes(len(data) - len(end) - len(torn)))
    assert [(1, ["a"])] == _ids(read_log(folder).pending(0))
    again = SubmissionLog(folder, consumed=0)
    assert 2 == again.append(_req("c"))
    again.close()
    assert [(1, ["a"]), (2, ["c"])] == _ids(read_log(folder).pending(0))


def test_decode_refuses_what_is_not_a_record() -> None:
    """Only an S record with an int seq is a submission."""
    assert {"seq": 4, "jobs": []} == decode(encode(4, {"jobs": []}))
    assert decode(b"E1\nx") is None
    assert decode(b"S{not json") is None
    assert decode(b'S{"seq": "4"}') is None


class _FailingSync(OsFS):
    """fdatasync fails once (a disk error), then works."""

    def __init__(self) -> None:
        self.fail = True

    def fdatasync(self, fd: int) -> None:
        if self.fail:
            self.fail = False
            raise OSError(5, "Input/output error")
        super().fdatasync(fd)


def test_a_failed_sync_is_an_oserror_and_the_next_append_reopens(tmp_path: Path) -> None:
    """An append whose fdatasync fails raises OSError (its POST answered 503); the log is
    reopened by the next append, which goes on with the next seq. The record whose sync
    failed may still be read (it is in the file): like a request file renamed before its
    folder's fsync failed, its jobs may be taken, and the client's retry is a replay."""
    fs = _FailingSync()
    fs.fail = False
    log = SubmissionLog(tmp_path / "log", consumed=0, fs=fs)
    log.append(_req("a"))
    fs.fail = True
    with pytest.raises(OSError, match="could not be synced"):
        log.append(_req("b"))
    assert 3 == log.append(_req("c"))
    log.close()
    assert [(1, ["a"]), (2, ["b"]), (3, ["c"])] == _ids(read_log(tmp_path / "log").pending(0))


def _recover(root: str) -> list[list[str]]:
    return [[j["id"] for j in r["jobs"]] for r in read_log(Path(root) / "log").pending(0)]


def test_an_acknowledged_append_survives_every_power_cut(tmp_path: Path) -> None:
    """A power cut at every persistence point of opening the log and two appends: the
    log holds the records whose append returned, and at most the one in flight."""
    def setup(root: str) -> None:
        SubmissionLog(Path(root) / "log", consumed=0).close()

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        log = SubmissionLog(Path(root) / "log", consumed=0, fs=fs)
        log.append(_req("a"))
        yield
        log.append(_req("b", "c"))
        yield
        log.close()

    report = explore(tmp_path, setup=setup, workload=workload, recover=_recover,
                     expected=[[], [["a"]], [["a"], ["b", "c"]]])
    assert {0, 1, 2} == set(report.recovered_to)


class _Durable(OsFS):
    """Notes, at each fdatasync, the bytes of the file synced: what a power cut keeps
    (the test's stand-in for the disk, shared by the scheduler's and the api's FS)."""

    disk: dict[str, bytes] = {}

    def __init__(self) -> None:
        self.paths: dict[int, str] = {}
        self.block: threading.Event | None = None
        self.entered = threading.Event()

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = str(path)
        return fd

    def fdatasync(self, fd: int) -> None:
        if self.block is not None:
            self.entered.set()
            assert self.block.wait(10)
        super().fdatasync(fd)
        path = self.paths.get(fd)
        if path is not None:
            with open(path, "rb") as f:
                _Durable.disk[path] = f.read()


def test_a_compaction_never_drops_records_on_a_bookmark_a_power_cut_can_take(
        tmp_path: Path) -> None:
    """The api prunes by the bookmark it reads from the scheduler's page cache, perhaps
    while the scheduler's fdatasync of it is still running. Its compaction then drops
    those records from the log; so it first makes the queue's segments durable. A power
    cut right after (the queue's segment back to its last synced bytes) keeps the jobs
    and the bookmark in the queue: nothing answered 201 is lost."""
    qdir, ldir = tmp_path / "wal", tmp_path / "log"
    _Durable.disk = {}
    sched_fs, api_fs = _Durable(), _Durable()
    queue = JobQueue.over(Wal.open(qdir, fs=sched_fs))
    [segment] = [str(p) for p in qdir.iterdir() if p.suffix == ".wal"]
    log = SubmissionLog(ldir, consumed=0, queue_dir=qdir, fs=api_fs, compact_records=4)
    for n in range(1, 5):
        log.append(_req(f"job{n}"))
    taken = read_log(ldir).pending(0)
    sched_fs.block = threading.Event()
    enqueue = threading.Thread(target=lambda: queue.enqueue_many(
        [(j["id"], j) for r in taken for j in r["jobs"]], count="submitted",
        counters={SUBLOG_COUNTER: taken[-1]["seq"]}))
    enqueue.start()
    assert sched_fs.entered.wait(10)           # the scheduler's fdatasync is running
    ids = QueueIds(qdir)
    ids.refresh()
    assert 4 == ids.consumed                   # seen in the page cache
    log.prune(ids.consumed)
    log.append(_req("job5"))                   # the threshold: the log compacts
    assert "snapshot" in os.listdir(ldir)
    with open(segment, "wb") as f:             # the power cut: the last synced bytes
        f.write(_Durable.disk.get(segment, b""))
    sched_fs.block.set()
    enqueue.join(10)
    queue.close()
    log.close()
    with JobQueue.open(qdir, readonly=True) as after:
        consumed = after.counter(SUBLOG_COUNTER)
        assert (4, [f"job{n}" for n in range(1, 5)]) == (consumed, after.ids())
    assert [(5, ["job5"])] == _ids(read_log(ldir).pending(consumed))


def test_a_snapshot_that_cannot_be_read_is_moved_aside_and_the_log_goes_on(
        tmp_path: Path) -> None:
    """A snapshot whose CRC holds but whose content is not the log's (only a bug makes
    one) is quarantined (`snapshot.corrupted.<ts>`), not a reason for the api never to
    start: the writer reopens without it and appends after the records it still has."""
    from supervisor.state.wal import _snapshot_bytes

    folder = tmp_path / "log"
    log = SubmissionLog(folder, consumed=0, compact_records=2)
    for n in range(3):
        log.append(_req(f"j{n}"))
        log.prune(n + 1)
    log.close()
    assert "snapshot" in os.listdir(folder)
    (folder / "snapshot").write_bytes(_snapshot_bytes(b"not json", 99))
    again = SubmissionLog(folder, consumed=3)
    assert 4 == again.append(_req("k"))
    again.close()
    assert ["snapshot.corrupted."] == [n[:19] for n in os.listdir(folder)
                                       if n.startswith("snapshot")]
    assert [(4, ["k"])] == _ids(read_log(folder).pending(3))
