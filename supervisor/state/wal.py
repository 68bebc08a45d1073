"""The write-ahead log: framed, CRC-checked, group-committed appends, snapshots and recovery.

Segments, epochs, group commit, snapshots, recovery and every crash window are argued
in docs/WAL.md.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from supervisor.state.atomic import clean_tmp, ensure_dir, quarantine, write_bytes
from supervisor.state.fs import FS, REAL

__all__ = [
    "DEFAULT_COMPACT_BYTES",
    "DEFAULT_COMPACT_RECORDS",
    "FRAME",
    "GROW",
    "MORE",
    "REC_MAGIC",
    "SEG_HEADER",
    "SNAPSHOT_NAME",
    "SNAP_HEADER",
    "Recovered",
    "RecoveryReport",
    "Wal",
    "WalBusy",
    "WalError",
    "WalFailed",
    "frame",
    "scan_groups",
    "segment_name",
]

def _logger() -> Any:
    """This module's logger, made on first use: importing the state layer stays light (no
    structlog, no config) for the processes that only read or append."""
    from supervisor import log

    return log.component("wal")

SEG_MAGIC = b"BATCHWAL"
SNAP_MAGIC = b"BATCHSNP"
REC_MAGIC = b"\xfeREC"
VERSION = 1
SEG_HEADER = struct.Struct("<8sIIQII")      # magic, version, flags, epoch, crc, reserved
SNAP_HEADER = struct.Struct("<8sIIQQII")    # magic, version, flags, next_epoch, len, crc, rsv
FRAME = struct.Struct("<4sII")              # magic, payload length, crc32(payload)
MAX_RECORD = 1 << 28
MORE = 1 << 31                              # length flag: the write's group continues
GROW = 64 << 10                             # segments grow by this many zero bytes
SNAPSHOT_NAME = "snapshot"
DEFAULT_COMPACT_RECORDS = 8192
DEFAULT_COMPACT_BYTES = 8 << 20
_SEGMENT_RE = re.compile(r"^(\d{12})\.wal$")


class WalError(Exception):
    """The log cannot be used as asked (closed, read-only, or a bad argument)."""


class WalFailed(WalError):
    """An earlier write or fdatasync failed: durability is unknown; reopen to recover."""


class WalBusy(WalError):
    """A read-only open saw the log change under it twice in a row; try again."""


@dataclass
class RecoveryReport:
    """What one open found and did. `errors` are the loud ones (corruption, gaps)."""

    readonly: bool = False
    snapshot_loaded: bool = False
    snapshot_next_epoch: int = 0
    segments_replayed: list[str] = field(default_factory=list)
    # Where each replayed segment's whole groups end (a follower of the log goes on from
    # there: state.queuefollow).
    segment_ends: dict[str, int] = field(default_factory=dict)
    records_replayed: int = 0
    torn_bytes_truncated: int = 0
    # Damage (see "Damage"): byte ranges not replayed, as (segment, start, end); groups
    # that lost a member (the records after a damaged region whose end is unknown count
    # as one more); the intact records dropped with them; (the queue's) updates of a job
    # whose enqueue was lost.
    skipped: list[tuple[str, int, int]] = field(default_factory=list)
    groups_dropped: int = 0
    records_dropped: int = 0
    orphan_updates: int = 0
    quarantined: list[str] = field(default_factory=list)
    stale_removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    jobs: int = 0
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for the startup log)."""
        return asdict(self)

    def error(self, message: str) -> None:
        """Record and log one loud finding."""
        self.errors.append(message)
        _logger().error("wal recovery finding", finding=message)


@dataclass
class Recovered:
    """The durable content handed to the owner once, at open."""

    snapshot: memoryview | None
    records: list[bytes]
    report: RecoveryReport


# -- framing ------------------------------------------------------------------------------

def frame(payloads: Sequence[bytes]) -> bytes:
    """The bytes appended for `payloads`: each framed with magic, length and CRC32; all
    but the last carry the MORE flag, so the group is replayed whole or not at all."""
    pack, crc32 = FRAME.pack, zlib.crc32
    last = len(payloads) - 1
    if last == 0 and 0 < len(payloads[0]) <= MAX_RECORD:     # the common case, quickly
        p = payloads[0]
        return pack(REC_MAGIC, len(p), crc32(p)) + p
    parts: list[bytes] = []
    for i, p in enumerate(payloads):
        if not p or len(p) > MAX_RECORD:
            raise WalError(f"payload length {len(p)} is outside 1..{MAX_RECORD}")
        parts.append(pack(REC_MAGIC, len(p) | (MORE if i < last else 0), crc32(p)))
        parts.append(p)
    return b"".join(parts)


def segment_name(epoch: int) -> str:
    """The file name of segment `epoch`."""
    return f"{epoch:012d}.wal"


def _segment_header(epoch: int) -> bytes:
    head = struct.pack("<8sIIQ", SEG_MAGIC, VERSION, 0, epoch)
    return head + struct.pack("<II", zlib.crc32(head), 0)


def _scan_records(data: bytes, pos: int) -> tuple[list[bytes], int]:
    """Payloads of the whole valid groups from `pos` up to the first invalid frame, and
    where they end (the fast path: no search, no copy beyond the payloads)."""
    out: list[bytes] = []
    add, unpack, crc32 = out.append, FRAME.unpack_from, zlib.crc32
    n = len(data)
    hsize = FRAME.size
    kept, kept_end = 0, pos
    while pos + hsize <= n:
        magic, length, crc = unpack(data, pos)
        more = length & MORE
        length &= ~MORE
        start = pos + hsize
        end = start + length
        if magic != REC_MAGIC or length == 0 or end > n:
            break
        payload = data[start:end]
        if crc32(payload) != crc:
            break
        add(payload)
        pos = end
        if not more:
            kept, kept_end = len(out), pos
    del out[kept:]
    return out, kept_end


def scan_groups(data: bytes, pos: int) -> tuple[list[bytes], int]:
    """The payloads of the whole valid groups in `data` from `pos`, and where they end: what
    a reader following a segment as it grows may take (a group still being written, or a
    torn one, is left for later)."""
    return _scan_records(data, pos)


def _frame_end(data: bytes, pos: int) -> int:
    """Where the valid frame at `pos` ends, or 0 if there is none (slow path only)."""
    if pos + FRAME.size > len(data):
        return 0
    magic, length, crc = FRAME.unpack_from(data, pos)
    length &= ~MORE
    start = pos + FRAME.size
    end: int = start + length
    if (magic != REC_MAGIC or length == 0 or end > len(data)
            or zlib.crc32(memoryview(data)[start:end]) != crc):
        return 0
    return end


def _next_frame(data: bytes, pos: int) -> int:
    """Where the first whole valid record after `pos` starts, or -1 (the resync search)."""
    q = data.find(REC_MAGIC, pos + 1)
    while q != -1 and not _frame_end(data, q):
        q = data.find(REC_MAGIC, q + 1)
    return q


def _damaged_frames(data: bytes, pos: int, stop: int) -> list[bool] | None:
    """The MORE flags of the damaged records filling [pos, stop), or None if their
    boundaries are lost.

    Known when the length fields still chain from `pos` exactly to `stop` (the damage hit
    magics, CRCs or payloads), or when a single record spans the range and its payload
    still matches its CRC, so that only its length field was hit, below the top byte
    (the one holding the MORE bit).
    """
    flags: list[bool] = []
    p = pos
    while p + FRAME.size <= stop:
        length = FRAME.unpack_from(data, p)[1]
        if length & ~MORE == 0:
            break
        p += FRAME.size + (length & ~MORE)
        flags.append(bool(length & MORE))
    if p == stop and flags:
        return flags
    magic, length, crc = FRAME.unpack_from(data, pos)
    actual = stop - pos - FRAME.size
    if (magic == REC_MAGIC and actual > 0 and (length ^ actual) & 0x7F000000 == 0
            and zlib.crc32(memoryview(data)[pos + FRAME.size:stop]) == crc):
        return [bool(length & MORE)]
    return None


@dataclass
class _Salvage:
    """What a scan of a damaged segment kept and lost (the slow path, never run on a
    clean segment)."""

    records: list[bytes]
    valid_end: int                   # end of the last whole group kept
    kept_before: int                 # records kept before the first damage
    skipped: list[tuple[int, int, str]] = field(default_factory=list)  # [start, end), what
    resynced: bool = False           # a valid record follows some damage
    groups_dropped: int = 0          # groups with a damaged (or unknown) member
    records_dropped: int = 0         # intact records dropped with such a group

    def drop(self, group: list[bytes]) -> None:
        self.groups_dropped += 1
        self.records_dropped += len(group)


def _salvage(data: bytes, pos: int, kept: list[bytes], skipped: list[tuple[int, int, str]]
             ) -> _Salvage:
    """Replay from `pos` (a group boundary; `kept` is everything before it) past any
    damage: resynchronise at the next whole valid record after it and go on.

    A group that lost a member is dropped whole (its write was atomic). Whether the
    record found after the damage opens a new group is read from the damaged records'
    MORE flags when their frames still chain (`_damaged_frames`); when they do not, its
    group is dropped too, as possibly the rest of the damaged one (counted as one more).
    """
    s = _Salvage(list(kept), pos, 0 if skipped else len(kept), list(skipped))
    used = len(data.rstrip(b"\0"))  # zeros after this are free space
    group: list[bytes] = []
    tainted = False                  # the open group already lost a member
    while True:
        end = _frame_end(data, pos)
        if end:
            group.append(data[pos + FRAME.size:end])
            more = FRAME.unpack_from(data, pos)[1] & MORE
            pos = end
            if not more:
                if tainted:
                    s.drop(group)
                else:
                    s.records += group
                    s.valid_end = pos
                group, tainted = [], False
            continue
        if pos >= used:              # only zeros (free space) from here on
            break
        if not s.skipped and not s.resynced:
            s.kept_before = len(s.records)
        q = _next_frame(data, pos)
        if q < 0:                    # damage (or a torn write) runs to the end
            s.skipped.append((pos, used, "to the end of the data"))
            s.drop(group)
            group, tainted = [], False
            break
        s.resynced = True
        flags = _damaged_frames(data, pos, q)
        if flags is None:
            s.skipped.append((pos, q, "record boundaries lost: the group after it is "
                                      "dropped too"))
            s.drop(group)
            group, tainted = [], True
        else:
            s.skipped.append((pos, q, f"{len(flags)} damaged record"
                                      f"{'s' if len(flags) > 1 else ''}"))
            ends = flags.count(False)      # groups that end inside the damage
            if ends:
                s.drop(group)
                s.groups_dropped += ends - 1
                group = []
            tainted = flags[-1]            # the last damaged record's group goes on
        pos = q
    if group or tainted:             # a group still open at the end is incomplete
        s.drop(group)
    return s


# -- reading ------------------------------------------------------------------------------

@dataclass
class _Segment:
    """One segment file as read: its valid records and what follows them."""

    epoch: int
    path: str
    size: int
    records: list[bytes]
    valid_end: int
    tail: str     # clean | torn | corrupt | partial (header cut) | foreign | badheader
    detail: str = ""
    loss: _Salvage | None = None     # torn or corrupt: what was skipped and dropped


def _loss_detail(s: _Salvage) -> str:
    """The loud account of a damaged segment: every range skipped, what was dropped."""
    ranges = ", ".join(f"bytes {a}..{b} ({what})" for a, b, what in s.skipped)
    after = len(s.records) - s.kept_before
    return (f"skipped {ranges}; {s.groups_dropped} group(s) dropped with "
            f"{s.records_dropped} intact record(s) in them; {s.kept_before} record(s) "
            f"kept before the damage and {after} after")


def _scan_segment(path: str, epoch: int, data: bytes) -> _Segment:
    size = len(data)
    if size < SEG_HEADER.size:
        return _Segment(epoch, path, size, [], 0, "partial",
                        f"{size} bytes, shorter than its {SEG_HEADER.size}-byte header")
    magic, version, _flags, head_epoch, crc, _rsv = SEG_HEADER.unpack_from(data, 0)
    skipped: list[tuple[int, int, str]] = []
    if crc != zlib.crc32(data[:24]):
        if size == SEG_HEADER.size:   # header written, never synced: a cut creation
            return _Segment(epoch, path, size, [], 0, "partial", "unsynced header")
        if head_epoch != epoch:
            return _Segment(epoch, path, size, [], 0, "badheader",
                            "segment header is damaged")
        # the epoch field agrees with the name: our segment; its records can be salvaged
        skipped.append((0, SEG_HEADER.size, "segment header damaged"))
    elif magic != SEG_MAGIC or version != VERSION:
        return _Segment(epoch, path, size, [], 0, "badheader",
                        "not a batchd segment of this version")
    elif head_epoch != epoch:
        return _Segment(epoch, path, size, [], 0, "foreign",
                        f"header says epoch {head_epoch}, name says {epoch}")
    records, end = _scan_records(data, SEG_HEADER.size)
    if not skipped and (end == size or data.count(0, end) == size - end):
        return _Segment(epoch, path, size, records, end, "clean")
    loss = _salvage(data, end, records, skipped)
    if not loss.resynced and not skipped:
        return _Segment(epoch, path, size, records, end, "torn", f"{size - end} bytes",
                        loss)
    return _Segment(epoch, path, size, loss.records, loss.valid_end, "corrupt",
                    _loss_detail(loss), loss)


@dataclass
class _Snapshot:
    next_epoch: int
    image: memoryview


def _map_file(path: str, fs: FS) -> bytes | mmap.mmap:
    """The file's bytes, mapped read-only (no copy: the snapshot is the big file).

    The map stays valid after the file is renamed over or unlinked (the inode lives on);
    batchd never truncates a snapshot in place.
    """
    fd = fs.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return b""
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    finally:
        fs.close(fd)


def _parse_snapshot(data: bytes | mmap.mmap) -> _Snapshot | str:
    """The snapshot, or why it cannot be used."""
    if len(data) < SNAP_HEADER.size:
        return f"snapshot is {len(data)} bytes, shorter than its header"
    magic, version, _flags, next_epoch, length, crc, _rsv = SNAP_HEADER.unpack_from(data, 0)
    if magic != SNAP_MAGIC or version != VERSION:
        return "snapshot header is not a batchd snapshot (magic/version)"
    if length != len(data) - SNAP_HEADER.size:
        return f"snapshot image is {len(data) - SNAP_HEADER.size} bytes, header says {length}"
    view = memoryview(data)
    if zlib.crc32(view[SNAP_HEADER.size:], zlib.crc32(view[:32])) != crc:
        return "snapshot CRC mismatch"
    return _Snapshot(next_epoch, view[SNAP_HEADER.size:])


def _snapshot_bytes(image: bytes, next_epoch: int) -> bytes:
    head = struct.pack("<8sIIQQ", SNAP_MAGIC, VERSION, 0, next_epoch, len(image))
    crc = zlib.crc32(image, zlib.crc32(head))
    return head + struct.pack("<II", crc, 0) + image


class _Vanished(Exception):
    """A file went away (or a segment is missing) while a read-only open was reading."""


@dataclass
class _LogImage:
    """Everything one pass over the folder read, before any decision."""

    snapshot: _Snapshot | None
    snapshot_problem: str | None
    segments: list[_Segment]


def _segment_epochs(directory: str, fs: FS) -> list[int]:
    try:
        names = fs.listdir(directory)
    except FileNotFoundError:
        return []
    found = (_SEGMENT_RE.match(n) for n in names)
    return sorted(int(m.group(1)) for m in found if m)


def _read_log(directory: str, fs: FS, *, racing: bool) -> _LogImage:
    """Read snapshot, then segments. With `racing`, a vanished file raises _Vanished."""
    snap_path = os.path.join(directory, SNAPSHOT_NAME)
    snapshot: _Snapshot | None = None
    problem: str | None = None
    try:
        parsed = _parse_snapshot(_map_file(snap_path, fs))
    except FileNotFoundError:
        parsed = None
    except OSError as exc:          # a folder in its place (mmap: ENODEV), unreadable
        parsed = f"snapshot unreadable: {exc.strerror or exc}"
    if isinstance(parsed, str):
        problem = parsed
    else:
        snapshot = parsed
    segments = []
    for epoch in _segment_epochs(directory, fs):
        path = os.path.join(directory, segment_name(epoch))
        try:
            data = fs.read_file(path)
        except FileNotFoundError:
            if racing:
                raise _Vanished(path) from None
            continue
        except IsADirectoryError:   # a folder in its place: rejected (quarantined)
            segments.append(_Segment(epoch, path, 0, [], 0, "badheader",
                                     "a folder, not a segment file"))
            continue
        segments.append(_scan_segment(path, epoch, data))
    if racing and snapshot is not None:
        live = [s.epoch for s in segments if s.epoch >= snapshot.next_epoch]
        if live and live[0] != snapshot.next_epoch:
            raise _Vanished(f"segment {snapshot.next_epoch} missing")
    return _LogImage(snapshot, problem, segments)


# -- deciding what to replay ----------------------------------------------------------------

@dataclass
class _Plan:
    """What recovery replays, and what a writable open must repair."""

    replay: list[_Segment] = field(default_factory=list)
    stale: list[_Segment] = field(default_factory=list)
    reject: list[_Segment] = field(default_factory=list)     # quarantine now
    corrupt: list[_Segment] = field(default_factory=list)    # quarantine after a snapshot
    cut: _Segment | None = None                              # last, header incomplete
    torn: _Segment | None = None                             # last, torn tail


def _plan(image: _LogImage, report: RecoveryReport) -> _Plan:
    plan = _Plan()
    next_epoch = image.snapshot.next_epoch if image.snapshot else 0
    live: list[_Segment] = []
    for seg in image.segments:
        if seg.tail in ("foreign", "badheader"):
            plan.reject.append(seg)
            report.error(f"{seg.path}: rejected ({seg.detail})")
        elif seg.epoch < next_epoch:
            plan.stale.append(seg)
        else:
            live.append(seg)
    # Any later segment file, even a rejected one, proves this one was complete.
    newest = max((s.epoch for s in image.segments if s.epoch >= next_epoch), default=-1)
    for seg in live:
        last = seg.epoch == newest
        if seg.tail == "partial" and last and (image.snapshot is None
                                               or seg.epoch != next_epoch):
            plan.cut = seg
            continue
        if last and seg.tail == "torn":
            plan.torn = seg
        elif seg.tail != "clean":
            plan.corrupt.append(seg)
            _report_corrupt(seg, last, report)
        plan.replay.append(seg)
    _check_gaps(plan.replay, next_epoch if image.snapshot else None, report)
    return plan


def _report_corrupt(seg: _Segment, last: bool, report: RecoveryReport) -> None:
    """The loud account of one damaged segment that is replayed (and will be quarantined):
    why it is corruption, the byte ranges skipped, the groups and records dropped."""
    name = os.path.basename(seg.path)
    if seg.tail == "partial":
        why = ("a later segment exists (a segment is complete before its successor is "
               "created)" if not last else "the snapshot names it as its next epoch, so "
               "its header was durable before")
        report.skipped.append((name, 0, seg.size))
        report.error(f"{seg.path}: corrupt: {seg.detail}, but {why}; whatever it held is "
                     "lost")
        return
    loss = seg.loss
    assert loss is not None
    report.skipped += [(name, a, b) for a, b, _what in loss.skipped]
    report.groups_dropped += loss.groups_dropped
    report.records_dropped += loss.records_dropped
    where = ("at the end of a segment that is not the last (it was complete before its "
             "successor was created)" if seg.tail == "torn" else
             "followed by valid records" if loss.resynced else "in the segment header")
    report.error(f"{seg.path}: corrupt: damage {where}; {_loss_detail(loss)}")


def _check_gaps(replay: list[_Segment], first: int | None, report: RecoveryReport) -> None:
    expected = first if first is not None else (replay[0].epoch if replay else 0)
    for seg in replay:
        if seg.epoch != expected:
            report.error(f"segments {expected}..{seg.epoch - 1} are missing: "
                         "their records are lost")
        expected = seg.epoch + 1


# -- the log --------------------------------------------------------------------------------

class Wal:
    """One open log: the recovered content, and (unless read-only) the append side."""

    def __init__(self, directory: str, fs: FS, readonly: bool,
                 compact_records: int, compact_bytes: int) -> None:
        self.directory = directory
        self.readonly = readonly
        self._fs = fs
        self._compact_records = compact_records
        self._compact_bytes = compact_bytes
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._fd: int | None = None
        self._epoch = 0
        self._end = 0              # where the next record goes
        self._alloc = 0            # the segment's size: zeros from _end to here
        self._written = 0          # tickets issued (one per write call)
        self._durable = 0          # every ticket <= this is on disk
        self._syncing = False
        self._failed: str | None = None
        self._closed = False
        self._tail_records = 0     # records since the last snapshot (bounds recovery)
        self._tail_bytes = 0
        self._force_compaction = False
        self._to_quarantine: set[str] = set()
        self._recovered: Recovered | None = None
        self.report = RecoveryReport(readonly=readonly)

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, fs: FS = REAL, readonly: bool = False,
             compact_records: int = DEFAULT_COMPACT_RECORDS,
             compact_bytes: int = DEFAULT_COMPACT_BYTES) -> Wal:
        """Recover the log in `directory` (created unless read-only) and return it."""
        t0 = time.monotonic()
        wal = cls(os.fspath(directory), fs, readonly, compact_records, compact_bytes)
        if readonly:
            image = wal._read_racing()
        else:
            ensure_dir(wal.directory, fs=fs)
            clean_tmp(wal.directory, 0.0, fs=fs)
            image = _read_log(wal.directory, fs, racing=False)
        plan = _plan(image, wal.report)
        snapshot = wal._take_snapshot(image)
        records = [r for seg in plan.replay for r in seg.records]
        if not readonly:
            wal._repair(plan)
            wal._start_writer(plan, image)
        wal.report.segments_replayed = [os.path.basename(s.path) for s in plan.replay]
        wal.report.segment_ends = {os.path.basename(s.path): s.valid_end for s in plan.replay}
        wal.report.records_replayed = len(records)
        wal._tail_records = len(records)
        wal._tail_bytes = sum(s.valid_end for s in plan.replay)
        wal.report.duration_ms = (time.monotonic() - t0) * 1000.0
        wal._recovered = Recovered(snapshot, records, wal.report)
        return wal

    def _read_racing(self) -> _LogImage:
        try:
            return _read_log(self.directory, self._fs, racing=True)
        except _Vanished:
            pass
        try:
            return _read_log(self.directory, self._fs, racing=True)
        except _Vanished as exc:
            raise WalBusy(f"{self.directory}: the log changed twice while it was being read "
                          f"({exc}); try again") from None

    def _take_snapshot(self, image: _LogImage) -> memoryview | None:
        snap_path = os.path.join(self.directory, SNAPSHOT_NAME)
        if image.snapshot_problem is not None:
            self.report.error(f"{snap_path}: {image.snapshot_problem}; "
                              "replaying the segments that exist")
            self._force_compaction = True
            if not self.readonly:
                self._quarantine(snap_path)
        if image.snapshot is None:
            return None
        self.report.snapshot_loaded = True
        self.report.snapshot_next_epoch = image.snapshot.next_epoch
        return image.snapshot.image

    def _quarantine(self, path: str) -> None:
        moved = quarantine(path, fs=self._fs)
        if moved is not None:
            self.report.quarantined.append(moved)
            _logger().error("wal file moved aside", path=path, moved_to=moved)

    def _repair(self, plan: _Plan) -> None:
        """Writable open only: make the folder match what was replayed."""
        for seg in plan.reject:
            self._quarantine(seg.path)
        removed = False
        for seg in plan.stale:
            if seg.tail == "clean":
                self._fs.unlink(seg.path)
                self.report.stale_removed.append(seg.path)
                removed = True
            else:
                self.report.error(f"{seg.path}: stale segment that does not read clean "
                                  f"({seg.tail}); kept as evidence")
                self._quarantine(seg.path)
        if plan.cut is not None:
            self._fs.unlink(plan.cut.path)
            removed = True
        if removed:
            self._fs.fsync_dir(self.directory)
        if plan.corrupt:
            self._to_quarantine = {s.path for s in plan.corrupt}
            self._force_compaction = True

    def _start_writer(self, plan: _Plan, image: _LogImage) -> None:
        last = plan.replay[-1] if plan.replay else None
        if last is not None and last.tail in ("clean", "torn"):
            fd = self._fs.open(last.path, os.O_WRONLY)
            if last.tail == "torn":
                self._fs.ftruncate(fd, last.valid_end)
                self._fs.fdatasync(fd)
                self.report.torn_bytes_truncated = last.size - last.valid_end
                _logger().warning("wal: truncated a torn tail", bytes=last.size - last.valid_end,
                            path=last.path)
            self._fd, self._epoch, self._end = fd, last.epoch, last.valid_end
            self._alloc = last.valid_end if last.tail == "torn" else last.size
            return
        floor = image.snapshot.next_epoch if image.snapshot else 1
        epochs = [s.epoch + 1 for s in plan.replay]
        self._create_segment(max([floor, 1, *epochs]))

    def _create_segment(self, epoch: int) -> None:
        path = os.path.join(self.directory, segment_name(epoch))
        fd = self._fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            self._fs.write(fd, _segment_header(epoch))
            self._fs.fdatasync(fd)
        except BaseException:
            self._fs.close(fd)
            raise
        self._fs.fsync_dir(self.directory)
        self._fd, self._epoch, self._end = fd, epoch, SEG_HEADER.size
        self._alloc = SEG_HEADER.size

    def take_recovered(self) -> Recovered:
        """The snapshot image and tail records recovered at open (handed out once)."""
        got = self._recovered
        if got is None:
            raise WalError("the recovered content was already taken")
        self._recovered = None
        return got

    # -- appending ------------------------------------------------------------------------
    def _usable(self) -> int:
        if self._closed:
            raise WalError("the log is closed")
        if self.readonly:
            raise WalError("the log is open read-only")
        if self._failed is not None:
            raise WalFailed(self._failed)
        assert self._fd is not None
        return self._fd

    def write(self, payloads: Sequence[bytes]) -> int:
        """Append `payloads` in order (not yet durable); return the ticket to `sync`."""
        data = frame(payloads)
        with self._lock:
            fd = self._usable()
            try:
                if self._end + len(data) > self._alloc:
                    self._grow(fd, self._end + len(data))
                self._fs.pwrite(fd, data, self._end)
            except OSError:
                self._undo_partial_write(fd)
                raise
            self._end += len(data)
            self._written += 1
            self._tail_records += len(payloads)
            self._tail_bytes += len(data)
            return self._written

    def _grow(self, fd: int, need: int) -> None:
        """Write zeros up to the next GROW boundary past `need` (see "Free space")."""
        size = -(-need // GROW) * GROW
        self._fs.pwrite(fd, bytes(size - self._alloc), self._alloc)
        self._alloc = size

    def _undo_partial_write(self, fd: int) -> None:
        try:
            self._fs.ftruncate(fd, self._end)
            self._alloc = self._end
        except OSError as exc:
            self._failed = f"a failed write could not be undone: {exc}"
            raise

    def sync(self, ticket: int) -> None:
        """Return once every record up to `ticket` is on disk (one fdatasync per group)."""
        with self._cond:
            while self._durable < ticket:
                fd = self._usable()
                if self._syncing:
                    self._cond.wait()
                    continue
                self._sync_locked(fd)

    def _sync_locked(self, fd: int) -> None:
        """With the lock held: run one fdatasync outside it for everything written so far."""
        target = self._written
        self._syncing = True
        self._lock.release()
        try:
            self._fs.fdatasync(fd)
        except BaseException as exc:
            self._lock.acquire()
            self._failed = f"fdatasync failed: {exc!r}"
            self._syncing = False
            self._cond.notify_all()
            raise
        self._lock.acquire()
        self._syncing = False
        self._durable = max(self._durable, target)
        self._cond.notify_all()

    def append(self, payloads: Sequence[bytes]) -> None:
        """Append durably: returns after the records are fdatasync'd."""
        self.sync(self.write(payloads))

    # -- compaction -------------------------------------------------------------------
    def compaction_due(self) -> bool:
        """True when the tail since the last snapshot is past a threshold (or after damage)."""
        return (not self.readonly and self._fd is not None
                and (self._force_compaction
                     or self._tail_records >= self._compact_records
                     or self._tail_bytes >= self._compact_bytes))

    def rotate(self) -> int:
        """Sync the current segment, start the next one; return the new epoch.

        Everything written before the call is in segments below the returned epoch: a
        snapshot of the state as of this call covers exactly those.
        """
        with self._cond:
            fd = self._usable()
            while self._syncing:
                self._cond.wait()
            if self._durable < self._written:
                self._sync_locked(fd)
            self._fs.close(fd)
            self._fd = None
            try:
                self._create_segment(self._epoch + 1)
            except BaseException as exc:
                self._failed = f"could not start segment {self._epoch + 1}: {exc!r}"
                raise
            self._tail_records = 0
            self._tail_bytes = 0
            self._force_compaction = False
            return self._epoch

    def install_snapshot(self, image: bytes, next_epoch: int) -> None:
        """Write the snapshot covering segments < `next_epoch`, then drop those segments.

        The old segments go only after the snapshot is durable; corrupt ones found at open
        are quarantined rather than deleted.
        """
        if self.readonly:
            raise WalError("the log is open read-only")
        path = os.path.join(self.directory, SNAPSHOT_NAME)
        try:
            write_bytes(path, _snapshot_bytes(image, next_epoch), fs=self._fs)
        except BaseException:
            # rotate() reset the tail counters; without this the retry would wait for a
            # whole new threshold, and a compaction forced by damage would never come.
            with self._cond:
                self._force_compaction = True
            raise
        removed = False
        for epoch in _segment_epochs(self.directory, self._fs):
            if epoch >= next_epoch:
                break
            seg = os.path.join(self.directory, segment_name(epoch))
            if seg in self._to_quarantine:
                self._quarantine(seg)
                continue
            self._fs.unlink(seg)
            removed = True
        self._to_quarantine.clear()
        if removed:
            self._fs.fsync_dir(self.directory)

    def close(self) -> None:
        """Sync anything written and release the file. Idempotent."""
        with self._cond:
            if self._closed:
                return
            while self._syncing:
                self._cond.wait()
            fd, self._fd, self._closed = self._fd, None, True
            if fd is None:
                return
            try:
                if self._durable < self._written and self._failed is None:
                    self._fs.fdatasync(fd)
                    self._durable = self._written
            finally:
                self._fs.close(fd)

    # -- introspection (tests, bench) --------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch of the segment appends go to (0 when read-only)."""
        return self._epoch
