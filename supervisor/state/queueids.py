"""The ids in the job queue, kept current by reading only what the WAL appended since last time.

A submitter must know every id in use (state.submission.accept_many), and opening the
queue read-only replays its log: tens of milliseconds at a few thousand records, paid on
every submit. `QueueIds` opens it once, then follows the segments as they grow: each
`refresh()` lists the segment files and reads each from where it stopped (a new segment,
or one replaced, from its header), taking the ids of whole enqueue groups only
(wal.scan_groups: a group still being written, or torn, is taken next time). A
compaction (a new snapshot, seen by its file's identity before and after the segments are
read) may remove a segment before it was read to its end: then the queue is opened again,
once per compaction (every 8,192 records), and the reading starts over. Ids never leave
this set. The set may hold more than the queue (an id a damaged log lost):
that only makes a submitter refuse an id it could have taken, never the other way round.
Nothing is written. A read of the log that fails raises OSError; the caller falls back on
a full read (or refuses the submission).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from supervisor.state.queue import JobQueue
from supervisor.state.wal import SEG_HEADER, SNAPSHOT_NAME, scan_groups

__all__ = ["QueueIds"]

_SEGMENT = re.compile(r"^\d{12}\.wal$")
_ENQUEUE = ord("E")
_TRIES = 5


class QueueIds:
    """Every id the queue at `wal_dir` holds (a superset, see the module doc)."""

    def __init__(self, wal_dir: Path) -> None:
        self.wal_dir = wal_dir
        self.ids: set[str] = set()
        self._at: dict[str, tuple[int, int]] = {}      # segment -> (inode, offset read to)
        self._snapshot: tuple[int, int, int] | bool | None = False     # False: never read
        self.reloads = 0

    def _snapshot_id(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.wal_dir / SNAPSHOT_NAME)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _reload(self, snapshot: tuple[int, int, int] | None) -> None:
        """Open the queue read-only and take its ids; follow its segments from their start."""
        names = self._segments()
        if self.wal_dir.exists():
            with JobQueue.open(self.wal_dir, readonly=True) as q:
                self.ids.update(q.ids())
        self._at = {n: (-1, SEG_HEADER.size) for n in names}
        self._snapshot = snapshot
        self.reloads += 1

    def _segments(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.wal_dir) if _SEGMENT.match(n))
        except FileNotFoundError:
            return []

    def refresh(self) -> set[str]:
        """The ids now. On a reload, segments are listed before the queue is opened and
        then read from their start, so nothing appended in between is missed."""
        for _ in range(_TRIES):
            before = self._snapshot_id()
            if before != self._snapshot:
                self._reload(before)
            live = self._segments()
            for name in live:
                self._follow(name)
            for gone in set(self._at) - set(live):
                del self._at[gone]
            if self._snapshot_id() == before:
                return self.ids
            self._snapshot = False         # compacted while we read: read it all again
        raise OSError(f"the job queue at {self.wal_dir} kept compacting while read")

    def _follow(self, name: str) -> None:
        try:
            fd = os.open(self.wal_dir / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return                                     # compacted away meanwhile
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
            tail = b"".join(chunks)
            payloads, end = scan_groups(tail, 0)
            for p in payloads:
                if p[0] == _ENQUEUE:
                    self.ids.add(p[2:p.index(b"\n")].decode("ascii"))
            self._at[name] = (st.st_ino, offset + end)
        finally:
            os.close(fd)
