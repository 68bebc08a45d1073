"""Atomic, durable files: the one module through which state files reach the disk.

Write: a temp file in the same folder (named `.tmp.<name>.<pid>.<rand>`), write, fsync,
rename over the target, fsync the folder. A crash at any step leaves the target either
old or new; the temp file left behind is recognisable by name and removed by
`clean_tmp` once older than a grace period.

Read: a file that cannot be used (empty, unparseable, wrong schema or version, a folder in
its place) is moved aside as `NAME.corrupted.<UTC timestamp>` and reported as `Corrupt`
(a writer finding a folder in its target's place moves it aside too); a file
that is not there is `Missing`. Evidence is never deleted and nothing raises a bare
traceback at the caller.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from supervisor.state.fs import FS, REAL

__all__ = [
    "CORRUPT_MARK",
    "TMP_PREFIX",
    "Corrupt",
    "Missing",
    "clean_tmp",
    "discard",
    "dump_json",
    "ensure_dir",
    "file_stamp",
    "is_tmp_name",
    "quarantine",
    "read_bytes",
    "read_json",
    "remove",
    "remove_many",
    "remove_tree",
    "utc_stamp",
    "write_bytes",
    "write_json",
    "write_many",
]

TMP_PREFIX = ".tmp."
CORRUPT_MARK = ".corrupted."


@dataclass(frozen=True)
class Missing:
    """The file does not exist (a normal state: nothing was ever written)."""

    path: str


@dataclass(frozen=True)
class Corrupt:
    """The file existed but could not be used; it now lives at `moved_to`."""

    path: str
    moved_to: str | None
    reason: str


def utc_stamp(now: float | None = None) -> str:
    """A UTC timestamp usable in a file name: 20261128T114502.123456Z."""
    t = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return t.strftime("%Y%m%dT%H%M%S.%fZ")


def is_tmp_name(name: str) -> bool:
    """True for the names `write_bytes` gives its temp files."""
    return name.startswith(TMP_PREFIX)


def _tmp_path(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TMP_PREFIX}{name}.{os.getpid()}.{secrets.token_hex(4)}")


def _write_file(target: str, data: bytes, *, fs: FS, mode: int, durable: bool) -> None:
    """Temp file, fsync (if `durable`), rename over `target`; the folder is not fsynced."""
    tmp = _tmp_path(target)
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        fs.write(fd, data)
        if durable:
            fs.fsync(fd)
    except BaseException:
        fs.close(fd)
        try:
            fs.unlink(tmp)
        except OSError:
            pass
        raise
    fs.close(fd)
    try:
        try:
            fs.rename(tmp, target)
        except IsADirectoryError:
            # A folder where the record belongs (damage, a mistake) would fail every write
            # of its one writer, for ever: the writer moves it aside, as its owning reader
            # would (NAME.corrupted.<UTC ts>), and the record goes in.
            quarantine(target, fs=fs)
            fs.rename(tmp, target)
    except BaseException:
        try:
            fs.unlink(tmp)
        except OSError:
            pass
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fs: FS = REAL,
                mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` atomically and durably (temp, fsync, rename, fsync dir).

    `durable=False` leaves out both fsyncs: still all or nothing for every process (a
    reader, a crash of the writer), but a power cut may undo it or leave the file empty
    or torn. Only for a record whose loss at a power cut another durable file makes good
    and whose owner recognises the leftover (see docs/CALLBACKS.md: a webhook's first
    try, whose request stays in the inbox until the outcome is durable)."""
    target = os.fspath(path)
    _write_file(target, data, fs=fs, mode=mode, durable=durable)
    if durable:
        fs.fsync_dir(os.path.dirname(target) or ".")


def write_many(items: list[tuple[str | os.PathLike[str], bytes]], *, fs: FS = REAL,
               mode: int = 0o644) -> None:
    """Replace each path with its data atomically and durably, as `write_bytes` does each
    (temp, fsync, rename), with one fsync per folder after all its renames instead of one
    per file: every file is durable when this returns. A crash (power cut) before the
    folder fsync may undo any of the renames, each file whole: its old content or none."""
    folders: dict[str, None] = {}
    for path, data in items:
        target = os.fspath(path)
        _write_file(target, data, fs=fs, mode=mode, durable=True)
        folders[os.path.dirname(target) or "."] = None
    for folder in folders:
        fs.fsync_dir(folder)


def dump_json(obj: Any) -> bytes:
    """The canonical JSON encoding of state records (UTF-8, sorted keys, one trailing newline)."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            + "\n").encode()


def write_json(path: str | os.PathLike[str], obj: Any, *, fs: FS = REAL,
               mode: int = 0o644, durable: bool = True) -> None:
    """Atomically and durably replace `path` with `obj` as JSON (file mode `mode`; see
    write_bytes for `durable`)."""
    write_bytes(path, dump_json(obj), fs=fs, mode=mode, durable=durable)


def quarantine(path: str | os.PathLike[str], *, fs: FS = REAL,
               now: float | None = None) -> str | None:
    """Move a corrupt file aside as `NAME.corrupted.<UTC timestamp>`; return the new path.

    Returns None if the file vanished meanwhile. The folder is fsynced so the move holds.
    """
    src = os.fspath(path)
    dst = f"{src}{CORRUPT_MARK}{utc_stamp(now)}"
    n = 1
    while fs.exists(dst):
        dst = f"{src}{CORRUPT_MARK}{utc_stamp(now)}.{n}"
        n += 1
    try:
        fs.rename(src, dst)
    except FileNotFoundError:
        return None
    fs.fsync_dir(os.path.dirname(src) or ".")
    return dst


def read_bytes(path: str | os.PathLike[str], *, fs: FS = REAL) -> bytes | Missing:
    """The file's bytes, or Missing. A folder where the file should be raises
    IsADirectoryError (read_json reports it as Corrupt, without moving it)."""
    p = os.fspath(path)
    try:
        return fs.read_file(p)
    except FileNotFoundError:
        return Missing(p)


def read_json(
    path: str | os.PathLike[str],
    *,
    validate: Callable[[Any], str | None] | None = None,
    fs: FS = REAL,
    move_corrupt: bool = True,
) -> Any | Missing | Corrupt:
    """Parse a JSON state file.

    `validate(obj)` returns None when the object is usable, else the reason it is not.
    Empty, unparseable or invalid content is quarantined (unless `move_corrupt` is
    False: readers that do not own the file must not move it) and reported as Corrupt.
    """
    p = os.fspath(path)
    try:
        raw = read_bytes(p, fs=fs)
    except IsADirectoryError:
        # Something else in the record's place: its owner moves it aside like any corrupt
        # record (else its own writes would fail there for ever); other readers only say so.
        return Corrupt(p, quarantine(p, fs=fs) if move_corrupt else None,
                       "a folder, not a file")
    if isinstance(raw, Missing):
        return raw
    reason: str | None
    obj: Any = None
    if not raw.strip():
        reason = "empty file"
    else:
        try:
            obj = json.loads(raw)
            reason = validate(obj) if validate is not None else None
        except (ValueError, RecursionError) as exc:
            # ValueError covers bad UTF-8 and bad JSON, and also integers longer than
            # int()'s digit limit; RecursionError is nesting too deep for the parser.
            reason = f"not valid JSON: {exc}"
    if reason is None:
        return obj
    moved = quarantine(p, fs=fs) if move_corrupt else None
    return Corrupt(p, moved, reason)


def ensure_dir(path: str | os.PathLike[str], *, fs: FS = REAL) -> None:
    """Create `path` and missing parents, fsyncing each parent so the entries hold.

    An existing `path` gets its parent fsynced too: a process killed between its mkdir
    and that fsync leaves a folder that exists but would vanish at a power cut, with
    everything later written in it. (Creation goes top-down with an fsync per level, so
    only the deepest level a killed process made can be in that state.)
    """
    p = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(p)
    if parent == p:
        return
    if not fs.exists(p):
        ensure_dir(parent, fs=fs)
        try:
            fs.mkdir(p)
        except FileExistsError:
            pass
    fs.fsync_dir(parent)


def remove(path: str | os.PathLike[str], *, fs: FS = REAL) -> bool:
    """Unlink `path` durably (fsync the folder). False if it was already gone.

    The folder is fsynced even then: the file may be gone only because a process was
    killed between its unlink and its fsync, and that removal could still revert.
    """
    p = os.fspath(path)
    folder = os.path.dirname(p) or "."
    try:
        fs.unlink(p)
        removed = True
    except FileNotFoundError:
        removed = False
    if removed or fs.exists(folder):
        fs.fsync_dir(folder)
    return removed


def remove_many(paths: list[str | os.PathLike[str]], *, fs: FS = REAL) -> None:
    """Unlink every path durably, as `remove` does each, with one fsync per folder (after
    all its unlinks) instead of one per file."""
    folders: dict[str, None] = {}
    for path in paths:
        p = os.fspath(path)
        folder = os.path.dirname(p) or "."
        try:
            fs.unlink(p)
        except FileNotFoundError:
            if not fs.exists(folder):
                continue
        folders[folder] = None
    for folder in folders:
        fs.fsync_dir(folder)


def discard(path: str | os.PathLike[str], *, fs: FS = REAL) -> bool:
    """Unlink `path` WITHOUT making the removal durable; False if it was already gone.

    Only for a file whose return after a power cut is harmless by construction: its
    owner, finding it again, recognises it as already handled (a request whose record
    exists, a copy superseded by a newer one elsewhere) and removes it then. Saves the
    folder fsync on hot paths; everything else uses `remove`."""
    try:
        fs.unlink(os.fspath(path))
    except FileNotFoundError:
        return False
    return True


def clean_tmp(folder: str | os.PathLike[str], grace_s: float, *, fs: FS = REAL,
              now: float | None = None) -> list[str]:
    """Remove temp files in `folder` older than `grace_s` seconds; return what was removed.

    A temp file younger than the grace may belong to a write in progress and is kept.
    """
    d = os.fspath(folder)
    t = time.time() if now is None else now
    removed: list[str] = []
    try:
        names = fs.listdir(d)
    except FileNotFoundError:
        return removed
    for name in names:
        if not is_tmp_name(name):
            continue
        p = os.path.join(d, name)
        try:
            if t - fs.mtime(p) < grace_s:
                continue
            fs.unlink(p)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            continue
        removed.append(p)
    if removed:
        fs.fsync_dir(d)
    return removed


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a folder and everything in it, or a file or symlink, if it exists (symlinks
    are never followed). Not atomic by itself: a folder whose removal a crash may cut in
    half is first renamed to a name its owner recognises (a `.prep.` or trash name)."""
    p = os.fspath(path)
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
    elif os.path.lexists(p):
        os.unlink(p)


#: A file's identity and version, as file_stamp gives it.
Stamp = tuple[int, int, int, int]


def file_stamp(path: str | os.PathLike[str]) -> Stamp | None:
    """(device, inode, size, mtime_ns) of `path`, None when it cannot be stat'ed: a reader
    that caches what it parsed re-reads when this changes (every atomic write renames a new
    inode over the file, so a rewrite is always seen)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
