"""The api's submission log: POSTed jobs appended durably to a WAL the scheduler enqueues from.

A request file costs the api two journal commits (the file's fsync, then the folder's
after the rename) and the scheduler a removal and a third; an append to a preallocated
WAL segment costs one fdatasync, shared by every append in flight (group commit). So
the api writes what it accepts here, one record per decision, each with a `seq` one
higher than the last; `batchctl submit` keeps writing request files into the
scheduler's inbox. docs/API.md "Submissions" and docs/STATE.md have the argument.

    SubmissionLog   the writer (the api, the log's one writer)
    LogReader       a reader (the scheduler, which enqueues; views, which show pending jobs)

What is consumed is the scheduler's to say: it enqueues a record's jobs and advances the
queue's SUBLOG_COUNTER to that record's seq in ONE atomic WAL group, so a record is
either still pending (seq above the counter) or in the queue, never both lost and never
enqueued twice (a replayed record's seq is at or below the counter). Readers read the log
BEFORE the queue (as the inbox: see view.open_view), then keep the records above the
counter. The writer compacts the log (a snapshot holding the records still pending,
state.wal) so it stays small; nobody else writes it.

A record may be seen before its fdatasync (the page cache): the scheduler can enqueue a
record whose POST is then answered 503 or never, as it can take a request file renamed
before its folder's fsync; the client's retry of the same ids is a replay. A record seen,
enqueued and then lost with the page cache (a power cut) must not have its seq reused: a
writer starts above both the log's last seq and the counter (SubmissionLog(consumed=)).
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any

from supervisor.state.atomic import quarantine
from supervisor.state.fs import FS, REAL
from supervisor.state.queuefollow import ReadTo, Tail, follow_or_reload
from supervisor.state.wal import SNAPSHOT_NAME, Recovered, Wal, WalError


def _logger() -> Any:
    """This module's logger, made on first use (the state layer stays light to import)."""
    from supervisor import log

    return log.component("sublog")

__all__ = [
    "COMPACT_BYTES",
    "COMPACT_RECORDS",
    "LogReader",
    "SubmissionLog",
    "decode",
    "encode",
    "read_log",
]

#: The writer compacts past this many records or bytes since its last snapshot (small:
#: every reader that shows pending jobs reads the log whole once), once at most half of
#: COMPACT_RECORDS records wait to be taken: while the scheduler is down the log grows
#: instead (a snapshot rewritten whole every 1,024 appends would grow with the backlog).
COMPACT_RECORDS = 1024
COMPACT_BYTES = 1 << 20

_TAG = b"S"


def encode(seq: int, request: dict[str, Any]) -> bytes:
    """One record: the submit request (state.jobs.submit_request) with its `seq`."""
    return _TAG + json.dumps({**request, "seq": seq}, ensure_ascii=False,
                             separators=(",", ":")).encode()


def decode(payload: bytes | memoryview) -> dict[str, Any] | None:
    """The request of a record (with its int `seq`), or None when it is not one."""
    data = bytes(payload)
    if not data.startswith(_TAG):
        return None
    try:
        rec = json.loads(data[1:])
    except ValueError:
        return None
    if not isinstance(rec, dict) or type(rec.get("seq")) is not int:
        return None
    return rec


def _image(last_seq: int, pending: Iterable[dict[str, Any]]) -> bytes:
    return json.dumps({"last_seq": last_seq, "records": list(pending)},
                      separators=(",", ":")).encode()


def _recovered(got: Recovered) -> tuple[int, dict[int, dict[str, Any]], int]:
    """(last seq of the snapshot, every record by seq, records not understood)."""
    last, records, bad = 0, {}, 0
    if got.snapshot is not None:
        try:
            image = json.loads(bytes(got.snapshot))
            last = int(image["last_seq"])
            for rec in image["records"]:
                if isinstance(rec, dict) and type(rec.get("seq")) is int:
                    records[rec["seq"]] = rec
                else:
                    bad += 1
        except (ValueError, KeyError, TypeError) as exc:
            raise WalError(f"the submission log's snapshot is not readable: {exc}") from None
    for payload in got.records:
        rec = decode(payload)
        if rec is None:
            bad += 1
        else:
            records[rec["seq"]] = rec
    return last, records, bad


class SubmissionLog:
    """The writer: `append(request)` returns once the record is durable, with its seq.

    Thread-safe: appends from several threads share fdatasyncs (state.wal group commit);
    the seqs follow the records' order in the log. A failed write or fdatasync leaves the
    log unusable until reopened: the next append reopens it (recovery, as at start)."""

    def __init__(self, folder: Path, *, consumed: int, queue_dir: Path | None = None,
                 fs: FS = REAL, compact_records: int = COMPACT_RECORDS,
                 compact_bytes: int = COMPACT_BYTES) -> None:
        self.folder = folder
        self.queue_dir = queue_dir
        self._fs = fs
        self._compact = (compact_records, compact_bytes)
        self._lock = threading.Lock()
        self._wal: Wal | None = None
        self._last = 0
        self._consumed = consumed
        self._pending: dict[int, dict[str, Any]] = {}
        self._ids: dict[int, list[str]] = {}        # seq -> its job ids
        self._live: dict[str, int] = {}             # job id -> pending records holding it
        self._open()

    def _open(self) -> None:
        wal = Wal.open(self.folder, fs=self._fs, compact_records=self._compact[0],
                       compact_bytes=self._compact[1])
        try:
            last, records, bad = _recovered(wal.take_recovered())
        except WalError as exc:         # a snapshot whose CRC holds but not its JSON
            wal.close()
            moved = quarantine(self.folder / SNAPSHOT_NAME, fs=self._fs)
            _logger().error("the api's submission log: its snapshot moved aside, the "
                            "records it alone held are lost", error=str(exc), moved=moved)
            wal = Wal.open(self.folder, fs=self._fs, compact_records=self._compact[0],
                           compact_bytes=self._compact[1])
            last, records, bad = _recovered(wal.take_recovered())
        except BaseException:
            wal.close()
            raise
        for finding in wal.report.errors:
            _logger().error("the api's submission log was damaged", finding=finding)
        if bad:
            _logger().error("the api's submission log holds records that are not "
                            "submissions: passed over", records=bad)
        self._wal = wal
        self._last = max([last, self._consumed, self._last, *records])
        self._pending = {seq: rec for seq, rec in records.items() if seq > self._consumed}
        self._ids = {}
        self._live = {}
        for seq, rec in self._pending.items():
            self._add_ids(seq, rec)

    @property
    def last_seq(self) -> int:
        """The seq of the last record written."""
        return self._last

    def pending_ids(self) -> Container[str]:
        """The job ids of the records written and not yet consumed (as far as prune
        knows): a live container (membership only), kept up to date by append and prune,
        so a decision never copies it. An id is in it before its append returns."""
        return self._live

    def _add_ids(self, seq: int, rec: dict[str, Any]) -> None:
        ids = self._ids[seq] = _job_ids(rec)
        for job_id in ids:
            self._live[job_id] = self._live.get(job_id, 0) + 1

    def prune(self, consumed: int) -> None:
        """The scheduler has enqueued every record up to `consumed` (the queue's counter)."""
        with self._lock:
            if consumed <= self._consumed:
                return
            self._consumed = consumed
            for seq in [s for s in self._pending if s <= consumed]:
                del self._pending[seq]
                for job_id in self._ids.pop(seq):
                    left = self._live[job_id] - 1
                    if left:
                        self._live[job_id] = left
                    else:
                        del self._live[job_id]

    def append(self, request: dict[str, Any]) -> int:
        """Write one record durably; its seq. OSError when it may not be durable (the
        disk; the log is reopened at the next append)."""
        with self._lock:
            wal = self._usable()
            seq = self._last + 1
            payload = encode(seq, request)
            try:
                ticket = wal.write([payload])
            except OSError:
                self._drop()
                raise
            self._last = seq
            self._pending[seq] = {**request, "seq": seq}
            self._add_ids(seq, request)
        try:
            wal.sync(ticket)
        except (OSError, WalError) as exc:
            with self._lock:
                if self._wal is wal:
                    self._drop()
            raise OSError(errno.EIO, f"the submission log could not be synced: {exc}",
                          str(self.folder)) from None
        if wal.compaction_due() and len(self._pending) <= self._compact[0] // 2:
            self._compact_now(wal)      # most of the log is taken: the snapshot is small
        return seq

    def _usable(self) -> Wal:
        if self._wal is None:
            try:
                self._open()
            except WalError as exc:
                raise OSError(errno.EIO, f"the submission log cannot be opened: {exc}",
                              str(self.folder)) from None
        assert self._wal is not None
        return self._wal

    def _drop(self) -> None:
        wal, self._wal = self._wal, None
        if wal is not None:
            try:
                wal.close()
            except (OSError, WalError):
                pass

    def _compact_now(self, wal: Wal) -> None:
        """Snapshot what is still pending and drop the segments before it (the records
        appended meanwhile go to the new segment). The bookmarks prune was given were read
        from the page cache, perhaps before the scheduler's fdatasync of them returned: the
        queue's segments are made durable first (sync_queue), so a power cut cannot take
        a bookmark whose records this snapshot leaves out."""
        with self._lock:
            if self._wal is not wal or not wal.compaction_due():
                return
            try:
                self._sync_queue()
                epoch = wal.rotate()
                wal.install_snapshot(_image(self._last, self._pending.values()), epoch)
            except (OSError, WalError):
                self._drop()            # reopened (and compacted later) at the next append

    def _sync_queue(self) -> None:
        """fdatasync every segment of the job queue's WAL (read-only descriptors: this
        writes nothing, it only flushes what the scheduler wrote). A segment compacted
        away meanwhile is in the scheduler's snapshot, durable before the segment goes."""
        if self.queue_dir is None:
            return
        for name in Tail(self.queue_dir).segments():
            try:
                fd = self._fs.open(str(self.queue_dir / name), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                self._fs.fdatasync(fd)
            finally:
                self._fs.close(fd)

    def close(self) -> None:
        """Release the log."""
        with self._lock:
            self._drop()


def _job_ids(request: dict[str, Any]) -> list[str]:
    jobs = request.get("jobs")
    if not isinstance(jobs, list):
        return []
    return [j["id"] for j in jobs if isinstance(j, dict) and isinstance(j.get("id"), str)]


class LogReader:
    """A reader that follows the log: `refresh()` reads what was appended since (all of
    it after a compaction), `pending(consumed)` the records above the queue's counter,
    oldest first. Read the log, then the queue, then ask (see the module's docstring).
    Nothing here writes. A log that cannot be read raises OSError from refresh.
    Thread-safe: one refresh or pending at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._tail = Tail(folder)
        self._records: dict[int, dict[str, Any]] = {}
        #: The api's views share one reader from several threads: state.view.open_view
        #: holds this lock from the log's refresh through the queue's to pending(), so a
        #: view never asks with a bookmark older than one another view forgot records by.
        self.lock = threading.RLock()
        self.unreadable = 0             # records that are not submissions (logged by owners)

    def _reload(self) -> ReadTo:
        self._records = {}
        if not self.folder.is_dir():
            return None
        try:
            wal = Wal.open(self.folder, readonly=True)
        except WalError as exc:
            raise OSError(errno.EIO, f"the submission log cannot be read: {exc}",
                          str(self.folder)) from None
        try:
            _last, self._records, self.unreadable = _recovered(wal.take_recovered())
        except WalError as exc:
            raise OSError(errno.EIO, str(exc), str(self.folder)) from None
        finally:
            wal.close()
        return wal.report.snapshot_next_epoch, dict(wal.report.segment_ends)

    def _take(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            rec = decode(payload)
            if rec is None:
                self.unreadable += 1
            else:
                self._records[rec["seq"]] = rec

    def refresh(self) -> None:
        """Read what the log gained since the last refresh."""
        with self.lock:
            if not self.folder.is_dir():
                self._records = {}
                return
            follow_or_reload(self._tail, self._reload, self._take)

    def pending(self, consumed: int) -> list[dict[str, Any]]:
        """The records whose seq is above `consumed`, by seq (forgets the others)."""
        with self.lock:
            for seq in [s for s in self._records if s <= consumed]:
                del self._records[seq]
            return [self._records[s] for s in sorted(self._records)]


def read_log(folder: Path) -> LogReader:
    """A reader that has read the log once (a one-shot reader such as batchctl)."""
    reader = LogReader(folder)
    reader.refresh()
    return reader

