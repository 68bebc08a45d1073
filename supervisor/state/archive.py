"""The archive of forgotten jobs: `history/YYYY-MM.jsonl.gz`, append-only, one gzip member
per append.

The reaper is its one writer. A job's record goes into the file of the month it finished
in (else the month it was created in), one JSON object per line; each `append` adds one
complete gzip member per file it touches and fsyncs it. A crash mid-append leaves a
readable prefix: every earlier member is whole, and readers stop at the torn one (saying
so). The writer makes appends idempotent with `sizes` before and `truncate` after a crash
(the reaper's FORGETTING record keeps the sizes), so a record is never archived twice.
`read` gives records newest first, with notes about anything it could not read.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from supervisor.state.atomic import ensure_dir, quarantine
from supervisor.state.clock import parse_iso
from supervisor.state.fs import FS, REAL
from supervisor.state.layout import Layout

__all__ = ["MONTH", "append", "month_of", "months", "read", "sizes", "truncate"]

#: A month as the archive names it.
MONTH = re.compile(r"(?!0000)\d{4}-(0[1-9]|1[0-2])")      # years 1..9999, as every instant
_SUFFIX = ".jsonl.gz"


def month_of(record: Mapping[str, Any], now: float | None = None) -> str:
    """YYYY-MM of the record's finished_at, else created_at, else `now` (UTC)."""
    for key in ("finished_at", "created_at"):
        t = parse_iso(record.get(key))
        if t is not None:
            break
    else:
        t = time.time() if now is None else now
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m")


def _by_month(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[month_of(rec)].append(rec)
    return dict(sorted(groups.items()))


def sizes(layout: Layout, records: Iterable[Mapping[str, Any]], *,
          fs: FS = REAL) -> dict[str, int]:
    """The current size of each month file `records` would go to (0: none yet)."""
    out = {}
    for month in _by_month(records):
        path = os.fspath(layout.history_file(month))
        out[month] = fs.size(path) if fs.exists(path) and not _folder(path, fs) else 0
    return out


def _folder(path: str, fs: FS) -> bool:
    """Whether a folder stands where a month file belongs (damage: `append` moves it aside)."""
    try:
        fs.listdir(path)
    except OSError:
        return False
    return True


def _open_month(path: str, flags: int, fs: FS) -> int:
    """Open a month file; a folder in its place is moved aside first (NAME.corrupted.<ts>):
    left there, it would fail every append of the reaper, its one writer, for ever."""
    try:
        return fs.open(path, flags, 0o644)
    except IsADirectoryError:
        quarantine(path, fs=fs)
        return fs.open(path, flags | os.O_CREAT, 0o644)


def append(layout: Layout, records: Iterable[Mapping[str, Any]], *, fs: FS = REAL) -> int:
    """Append `records` (one gzip member per month file), durably; the bytes written."""
    written = 0
    groups = _by_month(records)
    if groups:
        ensure_dir(layout.history_dir, fs=fs)
    for month, recs in groups.items():
        path = os.fspath(layout.history_file(month))
        created = not fs.exists(path) or _folder(path, fs)
        lines = b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":"),
                                    sort_keys=True).encode() + b"\n" for r in recs)
        member = _gzip_member(lines)
        fd = _open_month(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, fs)
        try:
            fs.write(fd, member)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        if created:
            fs.fsync_dir(os.fspath(layout.history_dir))
        written += len(member)
    return written


def _gzip_member(data: bytes) -> bytes:
    """One complete gzip member (a fixed header: the same bytes for the same records)."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def truncate(layout: Layout, before: Mapping[str, int], *, fs: FS = REAL) -> None:
    """Cut each month file back to its size `before` an append that may have been cut
    short or may be about to be done again (an idempotent undo)."""
    for month, size in before.items():
        path = os.fspath(layout.history_file(month))
        if not fs.exists(path) or _folder(path, fs) or fs.size(path) <= size:
            continue
        fd = fs.open(path, os.O_WRONLY)
        try:
            fs.ftruncate(fd, size)
            fs.fsync(fd)
        finally:
            fs.close(fd)


def months(layout: Layout) -> list[str]:
    """The archived months, newest first."""
    try:
        names = os.listdir(layout.history_dir)
    except FileNotFoundError:
        return []
    found = [n[:-len(_SUFFIX)] for n in names if n.endswith(_SUFFIX)]
    return sorted((m for m in found if MONTH.fullmatch(m)), reverse=True)


def read(layout: Layout, month: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """(records newest first by finished_at, notes on what could not be read) of one
    month or of all. A torn last member (an append a crash cut short, which the reaper
    undoes) and a damaged member are skipped with a note naming the file and offset."""
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for m in ([month] if month is not None else months(layout)):
        path = layout.history_file(m)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except IsADirectoryError:
            notes.append(f"{path.name}: a folder, not an archive file; skipped (the reaper "
                         "moves it aside at its next archiving)")
            continue
        for pos, member, problem in _members(data):
            if problem is not None:
                notes.append(f"{path.name}: {problem} at byte {pos}; the rest of the file "
                             "is skipped")
                break
            for n, line in enumerate(member.splitlines(), 1):
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if not isinstance(rec, dict):
                    notes.append(f"{path.name}: member at byte {pos}, line {n}: not a JSON "
                                 "object; skipped")
                    continue
                records.append(rec)
    records.sort(key=lambda r: str(r.get("finished_at") or r.get("created_at") or ""),
                 reverse=True)
    return records, notes


def _members(data: bytes) -> Iterable[tuple[int, bytes, str | None]]:
    """(offset, decompressed bytes, None) per whole member; (offset, b"", why) at the
    first one that is torn or damaged."""
    pos = 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        try:
            out = d.decompress(data[pos:])
        except zlib.error as exc:
            yield pos, b"", f"damaged data ({exc})"
            return
        if not d.eof:
            yield pos, b"", "an unfinished append"
            return
        yield pos, out, None
        pos = len(data) - len(d.unused_data)
