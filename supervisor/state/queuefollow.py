"""Following the job queue's log from another process: read only what was appended since.

A long-lived reader (the api) must not replay the whole log on every request: opening a
100,000-job queue read-only costs tens of milliseconds (the snapshot's CRC, the replay of
the records since). `Tail` reads each segment from where it stopped last time (a new or
replaced segment from its header) and hands over the payloads of whole groups only
(wal.scan_groups: a group still being written, or torn, is taken next time). A compaction
(a new snapshot, seen by the snapshot file's identity before and after the segments are
read) may remove a segment before it was read to its end: `Tail` then says so, and the
reader opens the queue again (once per compaction, every 8,192 records).

    LiveQueue   a read-only JobQueue kept current (JobQueue.follow), for views
    QueueIds    only the ids (what a submitter must not reuse)

Nothing here writes. Readers call `refresh()` before each use, after reading the inbox
(as state.view.open_view does: the scheduler enqueues a job before it removes its request,
so a job cannot slip between the two reads). A read of the log that fails raises OSError.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.state.queue import SUBLOG_COUNTER, JobQueue
from supervisor.state.wal import SEG_HEADER, SNAPSHOT_NAME, scan_groups

__all__ = ["LiveQueue", "QueueIds", "ReadTo", "Tail", "follow_or_reload"]

_SEGMENT = re.compile(r"^\d{12}\.wal$")
_ENQUEUE, _FORGET, _COUNT = ord("E"), ord("F"), ord("C")
_SUBLOG = b"C" + SUBLOG_COUNTER.encode() + b"\n"      # state.queue's counter record
_TRIES = 5

_Snap = tuple[int, int, int] | None
#: Where a full read of the log stopped: (snapshot's next epoch, {segment: end}).
ReadTo = tuple[int, dict[str, int]] | None
_SKIP = 1 << 62                 # an offset past any segment's end: nothing more to read


class Tail:
    """Where each segment of a WAL folder was read to, and what was appended since."""

    def __init__(self, wal_dir: Path) -> None:
        self.wal_dir = wal_dir
        self._at: dict[str, tuple[int, int]] = {}      # segment -> (inode, offset read to)
        self.snapshot: _Snap | bool = False            # False: never read

    def snapshot_id(self) -> _Snap:
        try:
            st = os.stat(self.wal_dir / SNAPSHOT_NAME)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def segments(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.wal_dir) if _SEGMENT.match(n))
        except FileNotFoundError:
            return []

    def restart(self, names: list[str], snapshot: _Snap, at: ReadTo = None) -> None:
        """After a full read: follow `names` from where that read stopped. `at` is the
        read's (snapshot's next epoch, end of each segment it replayed): a segment below
        that epoch is in the snapshot (skipped), a replayed one goes on from its end, a
        newer one from its start. Without `at`, every segment from its start (only for a
        reader whose records are idempotent: a counter's increment is not)."""
        if at is None:
            self._at = {n: (-1, SEG_HEADER.size) for n in names}
        else:
            floor, ends = at
            self._at = {n: (-1, ends[n] if n in ends else
                            _SKIP if int(n[:12]) < floor else SEG_HEADER.size)
                        for n in names}
            for name, end in ends.items():
                self._at.setdefault(name, (-1, end))
        self.snapshot = snapshot

    def read(self) -> list[bytes] | None:
        """The payloads appended since the last read, or None when a compaction happened
        (the caller reads the queue whole, then calls restart)."""
        before = self.snapshot_id()
        if before != self.snapshot:
            return None
        out: list[bytes] = []
        live = self.segments()
        for name in live:
            out += self._follow(name)
        for gone in set(self._at) - set(live):
            del self._at[gone]
        return out if self.snapshot_id() == before else None

    def _follow(self, name: str) -> list[bytes]:
        try:
            fd = os.open(self.wal_dir / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []                                  # compacted away meanwhile
        try:
            st = os.fstat(fd)
            inode, offset = self._at.get(name, (st.st_ino, SEG_HEADER.size))
            if inode not in (-1, st.st_ino):           # replaced: read it from the start
                offset = SEG_HEADER.size
            chunks = []
            pos = offset
            while True:
                data = os.pread(fd, 1 << 20, pos)
                if not data:
                    break
                chunks.append(data)
                pos += len(data)
            payloads, end = scan_groups(b"".join(chunks), 0)
            self._at[name] = (st.st_ino, offset + end)
            return payloads
        finally:
            os.close(fd)


def follow_or_reload(tail: Tail, reload: Callable[[], ReadTo],
                      take: Callable[[list[bytes]], None]) -> None:
    """One refresh: the appended records to `take`, or a full `reload` after a compaction
    (which says where it read the log to, so no record is taken twice)."""
    for _ in range(_TRIES):
        if tail.snapshot is False or tail.snapshot_id() != tail.snapshot:
            snap, names = tail.snapshot_id(), tail.segments()
            at = reload()
            tail.restart(names, snap, at)
        payloads = tail.read()
        if payloads is not None:
            take(payloads)
            return
        tail.snapshot = False
    raise OSError(f"the job queue at {tail.wal_dir} kept compacting while read")


class QueueIds:
    """Every id the queue at `wal_dir` holds: an enqueue adds one, a forget (retention)
    frees it again, a reload takes the queue's own list. `consumed` follows the queue's
    SUBLOG_COUNTER (the last record of the api's submission log enqueued)."""

    def __init__(self, wal_dir: Path) -> None:
        self.wal_dir = wal_dir
        self.ids: set[str] = set()
        self.consumed = 0
        self.reloads = 0
        self._tail = Tail(wal_dir)

    def _reload(self) -> ReadTo:
        ids: set[str] = set()
        consumed = 0
        at: ReadTo = None
        if self.wal_dir.exists():
            with JobQueue.open(self.wal_dir, readonly=True) as q:
                ids = set(q.ids())
                consumed = q.counter(SUBLOG_COUNTER)
                at = q.replayed_to()
        self.ids = ids
        self.consumed = consumed
        self.reloads += 1
        return at

    def _take(self, payloads: list[bytes]) -> None:
        for p in payloads:
            if p[0] == _ENQUEUE:
                self.ids.add(p[2:p.index(b"\n")].decode("ascii"))
            elif p[0] == _FORGET:
                self.ids.discard(p[1:].decode("ascii", "replace"))
            elif p[0] == _COUNT and p.startswith(_SUBLOG):
                self.consumed += int(p[len(_SUBLOG):])

    def refresh(self) -> set[str]:
        """The ids now."""
        follow_or_reload(self._tail, self._reload, self._take)
        return self.ids


class _Shared:
    """A JobQueue handed to views that must not close it (LiveQueue owns it)."""

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)

    def close(self) -> None:
        """The view is done with it; the queue stays open for the next."""


class LiveQueue:
    """A read-only JobQueue kept current by following the log; `current()` refreshes it
    and returns it for one view (whose close() leaves it open). Thread-safe: one refresh
    at a time, and the queue's own lock guards its reads."""

    def __init__(self, wal_dir: Path) -> None:
        self.wal_dir = wal_dir
        self.queue: JobQueue | None = None
        self.reloads = 0
        self._tail = Tail(wal_dir)
        self._lock = threading.Lock()

    def _reload(self) -> ReadTo:
        old, self.queue = self.queue, None
        if old is not None:
            old.close()
        self.reloads += 1
        if not self.wal_dir.exists():
            return None
        self.queue = JobQueue.open(self.wal_dir, readonly=True)
        return self.queue.replayed_to()

    def _take(self, payloads: list[bytes]) -> None:
        if payloads and self.queue is not None:
            self.queue.follow(payloads)

    def current(self) -> Any:
        """The queue as the log is now (None: there is no queue yet); a view's QueueReader."""
        with self._lock:
            if self.queue is None and self.wal_dir.exists():
                self._tail.snapshot = False            # it appeared: read it whole
            follow_or_reload(self._tail, self._reload, self._take)
            return None if self.queue is None else _Shared(self.queue)

    def close(self) -> None:
        with self._lock:
            if self.queue is not None:
                self.queue.close()
                self.queue = None
