"""A power-cut simulator for the state layer (after SQLite's crash VFS and LevelDB's
fault-injection env).

The model of a power cut
------------------------
A workload (1-3 state-layer operations) runs against a real folder through `CrashFS`, an
implementation of the `FS` protocol that does each call for real and records every
*persistence operation*: a file opened for writing (created or truncated), write, pwrite,
ftruncate, fsync, fdatasync, rename, unlink, mkdir, fsync_dir. Reads and close persist
nothing and are not recorded.

Beside the real folder, `CrashFS` keeps a model of what the disk would hold if the power
went out now. The kernel keeps two things in its caches that only an explicit sync pushes
to the disk:

* **File data.** Each file (an inode: it keeps its data across renames) has its *synced*
  content, as of its last fsync/fdatasync, and the writes and truncations made since (the
  *pending* ones). At a power cut any of these may have happened to the pending writes:
  ``drop``  none reached the disk: the file holds its synced content;
  ``partial`` they reached it in order but the power went out half-way (a prefix kept);
  ``garbage`` the file has its new length, but the pending ranges hold random bytes;
  ``zeros``  the same with zero bytes (blocks allocated, never written);
  ``keep``  all of them reached the disk (lucky, but legal, so recovery must handle it).
* **Folder entries.** Every create, mkdir, rename and unlink changes a folder; the change
  is durable only once that folder was fsynced after it (for a rename: both folders). An
  fsync of a *file* does not make its name durable. At a power cut the durable changes
  hold and, of the others, only a prefix in their original order (a journaling file system
  commits metadata in order): a prefix of length 0 is the worst case — a file created but
  its folder not fsynced vanishes; a rename not followed by fsync_dir reverts to the old
  name, and the old target is back with its old content; an unlinked file comes back.

A crash state picks one prefix of the pending folder changes and one data variant per file
with pending writes (every combination when at most two files are dirty, else the same
variant for all), and is written into a fresh real folder (`CrashState.materialize`), so
recovery then runs with the real `OsFS` against a real disk.

Crash points
------------
``CrashFS(root, crash_at=k)`` raises `CrashNow` instead of doing persistence operation
number k (counted from 0): operations 0..k-1 happened, k and everything after did not. The
machine is dead from then on: every later call, reads included, raises `CrashNow` again.
`CrashNow` derives from BaseException so that `except Exception` / `except OSError`
handlers in the code under test do not swallow it. A crash *inside* a write (a torn
write) is the ``partial`` variant of the state at the next point.

Exploring
---------
`explore` runs a workload once without a crash to count its persistence points N, then
for every k in 0..N (N: the power goes out right after the workload returned) re-runs
it from the same set-up, crashes at k, and for every distinct crash state runs `recover`
on the materialized folder. The workload is a generator that yields after each
operation returns: those operations are *acknowledged*. Recovery must not raise and must
yield exactly the state after an acknowledged prefix of the operations: all acknowledged
ones, plus possibly the one in flight at the crash, nothing else. Recovering a second time
must give the same result (recovery is idempotent). An operation that is not atomic by
contract (a batch of log records may survive as a prefix) declares its in-between
pictures with `partial`; they are accepted only while that operation is in flight.

`explore_recovery` cuts the power during recovery too: each crash state of the workload
becomes the set-up of a second exploration whose workload is the owner's writable open
(its truncations, removals, quarantines); every state that leaves must recover to what
the untouched crash state recovers to.

After every run the model's view of the live folder is compared with the real one: a
write that bypassed the `FS` seam (an ``open(..., "w")`` on state) makes the run fail.

What the model leaves out (on purpose, to stay small): folder changes surviving out of
order (a non-journaling file system), sector-by-sector tearing beyond the half-way prefix,
mixed variants when more than two files are dirty, mtimes (materialized files are new),
and renames across folders are only tracked as far as "both folders fsynced".
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.state.fs import OsFS

__all__ = [
    "DATA_VARIANTS",
    "CrashFS",
    "CrashNow",
    "CrashState",
    "Exploration",
    "crash_states",
    "explore",
    "explore_recovery",
    "snapshot_tree",
]

#: What may have become of a file's pending (unsynced) writes at a power cut; see above.
DATA_VARIANTS: tuple[str, ...] = ("drop", "partial", "garbage", "zeros", "keep")

#: With more dirty files than this, all get the same variant (else every combination).
_MAX_COMBINED_FILES = 2

_ROOT, _OUTSIDE = 0, -1  # pseudo inodes: the root folder, anything outside it
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class CrashNow(BaseException):
    """The power went out. BaseException, so the code under test cannot catch it by accident."""


# -- the model of one file's data ----------------------------------------------------------
@dataclass
class _File:
    """One inode's data: what is synced, what the page cache holds, and what is pending."""

    synced: bytes = b""
    volatile: bytearray = field(default_factory=bytearray)
    # Writes since the last sync, in order: ("w", offset, data) or ("t", size, b"").
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)

    def write(self, offset: int, data: bytes) -> None:
        _apply_write(self.volatile, offset, data)
        self.pending.append(("w", offset, bytes(data)))

    def truncate(self, size: int) -> None:
        del self.volatile[size:]
        self.volatile.extend(b"\0" * (size - len(self.volatile)))
        self.pending.append(("t", size, b""))

    def sync(self) -> None:
        self.synced = bytes(self.volatile)
        self.pending.clear()

    def after_crash(self, variant: str, rng: random.Random) -> bytes:
        """The file's content on disk after a power cut, for one data variant."""
        if variant == "keep":
            return bytes(self.volatile)
        out = bytearray(self.synced)
        if variant == "drop":
            return bytes(out)
        budget = sum(len(d) for kind, _, d in self.pending if kind == "w") // 2
        for kind, arg, written in self.pending:
            if kind == "t":
                del out[arg:]
                out.extend(b"\0" * (arg - len(out)))
                continue
            data = written
            if variant == "partial":
                if budget <= 0:
                    break
                data, budget = written[:budget], budget - len(written)
            elif variant == "garbage":
                data = rng.randbytes(len(written))
            elif variant == "zeros":
                data = b"\0" * len(written)
            _apply_write(out, arg, data)
        return bytes(out)


def _apply_write(buf: bytearray, offset: int, data: bytes) -> None:
    if offset > len(buf):
        buf.extend(b"\0" * (offset - len(buf)))  # a hole reads as zeros
    buf[offset : offset + len(data)] = data


# -- the model of the namespace --------------------------------------------------------------
# A namespace maps relative paths ("." is the root) to an inode number; folders are the
# inode numbers in `_Model.dirs`. A change is one of:
#   ("link", path, inode)   create or mkdir
#   ("unlink", path, 0)
#   ("rename", src, dst)
@dataclass
class _NsChange:
    kind: str
    a: str
    b: Any
    unsynced: set[str]  # folders that still need an fsync_dir for this change to be durable

    @property
    def durable(self) -> bool:
        return not self.unsynced


def _parent(rel: str) -> str:
    return os.path.dirname(rel) or "."


def _apply_ns(ns: dict[str, int], change: _NsChange) -> None:
    """Apply one namespace change; a change whose source is absent is skipped."""
    if change.kind == "link":
        ns[change.a] = change.b
    elif change.kind == "unlink":
        ns.pop(change.a, None)
    elif change.kind == "rename":
        src, dst = change.a, change.b
        if src not in ns:
            return
        for p in [p for p in ns if p == dst or p.startswith(dst + "/")]:
            del ns[p]
        for p in [p for p in ns if p == src or p.startswith(src + "/")]:
            ns[dst + p[len(src):]] = ns.pop(p)


class _Model:
    """What the disk holds now (volatile) and what a power cut may leave of it."""

    def __init__(self, root: str) -> None:
        self.files: dict[int, _File] = {}
        self.dirs: set[int] = set()
        self.initial: dict[str, int] = {}
        self.ns: dict[str, int] = {}  # the volatile namespace
        self.changes: list[_NsChange] = []
        self._next = 0
        # Everything present before the workload starts is durable.
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            if rel != ".":
                self.initial[rel] = self._new_dir()
            for name in filenames:
                data = Path(dirpath, name).read_bytes()
                self.initial[os.path.normpath(os.path.join(rel, name))] = self._new_file(data)
            dirnames.sort()
        self.ns = dict(self.initial)

    def _new_file(self, data: bytes = b"") -> int:
        self._next += 1
        self.files[self._next] = _File(data, bytearray(data))
        return self._next

    def _new_dir(self) -> int:
        self._next += 1
        self.dirs.add(self._next)
        return self._next

    def change(self, kind: str, a: str, b: Any, folders: set[str]) -> None:
        c = _NsChange(kind, a, b, set(folders))
        self.changes.append(c)
        _apply_ns(self.ns, c)

    def create(self, rel: str) -> int:
        inode = self._new_file()
        self.change("link", rel, inode, {_parent(rel)})
        return inode

    def mkdir(self, rel: str) -> None:
        self.change("link", rel, self._new_dir(), {_parent(rel)})

    def fsync_dir(self, rel: str) -> None:
        for c in self.changes:
            c.unsynced.discard(rel)

    def volatile_tree(self) -> tuple[dict[str, bytes], set[str]]:
        """The tree the live folder should hold right now (checked against the real one)."""
        return _tree(self.ns, self.dirs, lambda ino: bytes(self.files[ino].volatile))

    def crash_states(self, point: int) -> Iterator[CrashState]:
        """Every crash state this model allows (see the module docstring)."""
        pending = [c for c in self.changes if not c.durable]
        for kept in range(len(pending) + 1):
            keep = {id(c) for c in pending[:kept]}
            ns = dict(self.initial)
            for c in self.changes:
                if c.durable or id(c) in keep:
                    _apply_ns(ns, c)
            dirty = sorted({ino for ino in ns.values()
                            if ino in self.files and self.files[ino].pending})
            if len(dirty) <= _MAX_COMBINED_FILES:
                combos = list(itertools.product(DATA_VARIANTS, repeat=len(dirty)))
            else:
                combos = [(v,) * len(dirty) for v in DATA_VARIANTS]
            for combo in combos:
                choice = dict(zip(dirty, combo, strict=True))
                rng = random.Random(f"{point}/{kept}/{combo}")

                def content(ino: int, choice: dict[int, str] = choice,
                            rng: random.Random = rng) -> bytes:
                    f = self.files[ino]
                    return f.after_crash(choice.get(ino, "drop"), rng)

                files, dirs = _tree(ns, self.dirs, content)
                yield CrashState(point, kept, len(pending), combo, files, frozenset(dirs))


def _tree(ns: dict[str, int], dir_inodes: set[int],
          content: Callable[[int], bytes]) -> tuple[dict[str, bytes], set[str]]:
    """Files and folders reachable from the root (an entry whose folder is gone is lost)."""
    dirs = {p for p, ino in ns.items() if ino in dir_inodes}
    reachable = {".", *(d for d in dirs if _reachable(d, dirs))}
    files = {p: content(ino) for p, ino in sorted(ns.items())
             if ino not in dir_inodes and _parent(p) in reachable}
    return files, reachable - {"."}


def _reachable(path: str, dirs: set[str]) -> bool:
    p = _parent(path)
    while p != ".":
        if p not in dirs:
            return False
        p = _parent(p)
    return True


@dataclass(frozen=True)
class CrashState:
    """One legal disk state after a power cut at persistence point `point`."""

    point: int
    ns_kept: int  # how many of the pending folder changes survived, in order
    ns_pending: int  # how many were pending
    data: tuple[str, ...]  # the data variant of each dirty file
    files: dict[str, bytes]
    dirs: frozenset[str]

    def key(self) -> tuple[Any, ...]:
        return (tuple(sorted(self.files.items())), tuple(sorted(self.dirs)))

    def materialize(self, root: str | os.PathLike[str]) -> None:
        """Write this state into the folder `root` (created if missing, else empty)."""
        os.makedirs(root, exist_ok=True)
        for d in sorted(self.dirs, key=lambda p: p.count("/")):
            os.mkdir(os.path.join(root, d))
        for rel, data in self.files.items():
            Path(root, rel).write_bytes(data)

    def describe(self) -> str:
        return (f"power cut at point {self.point}, {self.ns_kept} of {self.ns_pending} "
                f"pending folder changes kept, data variants {self.data}; files "
                + ", ".join(f"{p} ({len(d)} bytes)" for p, d in sorted(self.files.items())))


def snapshot_tree(root: str | os.PathLike[str]) -> tuple[dict[str, bytes], set[str]]:
    """The real tree under `root`: relative file paths -> bytes, and relative folders."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, _, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            dirs.add(rel)
        for name in filenames:
            files[os.path.normpath(os.path.join(rel, name))] = Path(dirpath, name).read_bytes()
    return files, dirs


# -- the recording FS -------------------------------------------------------------------------
class CrashFS:
    """An `FS` that does every call for real under `root` and models its durability."""

    def __init__(self, root: str | os.PathLike[str], crash_at: int | None = None) -> None:
        self.root = os.path.abspath(root)
        self.crash_at = crash_at
        self.crashed = False
        self.ops: list[str] = []  # the persistence operations done, for messages
        self.model = _Model(self.root)
        self._real = OsFS()
        self._fds: dict[int, int] = {}  # real fd -> inode

    # -- bookkeeping
    def _rel(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.root)
        if rel == ".." or rel.startswith("../"):
            raise AssertionError(f"the workload persisted outside its folder: {path}")
        return rel

    def _alive(self) -> None:
        if self.crashed:
            raise CrashNow("the machine is already down")

    def _point(self, what: str) -> None:
        """One persistence operation is about to happen: maybe crash instead."""
        self._alive()
        if self.crash_at is not None and len(self.ops) == self.crash_at:
            self.crashed = True
            self.ops.append(f"CRASH before {what}")
            raise CrashNow(what)
        self.ops.append(what)

    @property
    def points(self) -> int:
        """Persistence operations done so far (the crash marker not counted)."""
        return len(self.ops) - (1 if self.crashed else 0)

    def release(self) -> None:
        """Close the real fds the (crashed) workload left open."""
        for fd in list(self._fds):
            os.close(fd)
        self._fds.clear()

    def check_model(self, ignore: Callable[[str], bool] = lambda rel: False) -> None:
        """Fail if the real folder differs from the model (a write bypassed the seam)."""
        want_files, want_dirs = self.model.volatile_tree()
        got_files, got_dirs = snapshot_tree(self.root)
        got_files = {p: d for p, d in got_files.items() if not ignore(p)}
        want_files = {p: d for p, d in want_files.items() if not ignore(p)}
        got_dirs = {d for d in got_dirs if not ignore(d)}
        want_dirs = {d for d in want_dirs if not ignore(d)}
        if (want_files, want_dirs) != (got_files, got_dirs):
            diff = sorted(set(want_files.items()) ^ set(got_files.items()))
            raise AssertionError(
                f"the disk differs from the crash model (a write bypassed the FS seam?): "
                f"files {[p for p, _ in diff]}, folders {sorted(want_dirs ^ got_dirs)}")

    def crash_states(self) -> Iterator[CrashState]:
        return self.model.crash_states(self.points)

    # -- the FS protocol: persistence operations
    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if not flags & _WRITE_FLAGS:  # a read-only open persists nothing
            self._alive()
            fd = self._real.open(path, flags, mode)
            self._fds[fd] = self._inode(os.path.relpath(os.path.abspath(path), self.root))
            return fd
        rel = self._rel(path)
        self._point(f"open {rel} flags={flags:#o}")
        existed = os.path.lexists(path)
        fd = self._real.open(path, flags, mode)
        if not existed:
            inode = self.model.create(rel)
        else:
            inode = self._inode(rel)
            if flags & os.O_TRUNC and inode in self.model.files:
                self.model.files[inode].truncate(0)
        self._fds[fd] = inode
        return fd

    def _inode(self, rel: str) -> int:
        return _ROOT if rel == "." else self.model.ns.get(rel, _OUTSIDE)

    def write(self, fd: int, data: bytes) -> None:
        self._point(f"write {len(data)} bytes to fd {fd}")
        self._real.write(fd, data)
        end = os.lseek(fd, 0, os.SEEK_CUR)  # right for O_APPEND too
        self.model.files[self._fds[fd]].write(end - len(data), bytes(data))

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self._point(f"pwrite {len(data)} bytes at {offset} to fd {fd}")
        self._real.pwrite(fd, data, offset)
        self.model.files[self._fds[fd]].write(offset, bytes(data))

    def ftruncate(self, fd: int, size: int) -> None:
        self._point(f"ftruncate fd {fd} to {size}")
        self._real.ftruncate(fd, size)
        self.model.files[self._fds[fd]].truncate(size)

    def fsync(self, fd: int) -> None:
        self._point(f"fsync fd {fd}")
        self._real.fsync(fd)
        self._sync_fd(fd)

    def fdatasync(self, fd: int) -> None:
        self._point(f"fdatasync fd {fd}")
        self._real.fdatasync(fd)
        self._sync_fd(fd)

    def _sync_fd(self, fd: int) -> None:
        inode = self._fds[fd]
        if inode in self.model.files:
            self.model.files[inode].sync()
        elif inode == _ROOT:  # an fd on a folder: the same as fsync_dir
            self.model.fsync_dir(".")
        elif inode in self.model.dirs:
            self.model.fsync_dir(next(p for p, i in self.model.ns.items() if i == inode))

    def rename(self, src: str, dst: str) -> None:
        s, d = self._rel(src), self._rel(dst)
        self._point(f"rename {s} -> {d}")
        self._real.rename(src, dst)
        self.model.change("rename", s, d, {_parent(s), _parent(d)})

    def unlink(self, path: str) -> None:
        rel = self._rel(path)
        self._point(f"unlink {rel}")
        self._real.unlink(path)
        self.model.change("unlink", rel, 0, {_parent(rel)})

    def mkdir(self, path: str) -> None:
        rel = self._rel(path)
        self._point(f"mkdir {rel}")
        self._real.mkdir(path)
        self.model.mkdir(rel)

    def fsync_dir(self, path: str) -> None:
        # A folder above the root: its entries are taken as durable already.
        above = self.root.startswith(os.path.abspath(path).rstrip("/") + "/")
        rel = "<above root>" if above else self._rel(path)
        self._point(f"fsync_dir {rel}")
        self._real.fsync_dir(path)
        self.model.fsync_dir(rel)

    # -- the FS protocol: no persistence, but a dead machine answers nothing
    def close(self, fd: int) -> None:
        self._alive()
        self._real.close(fd)
        del self._fds[fd]

    def read(self, fd: int, n: int) -> bytes:
        self._alive()
        return self._real.read(fd, n)

    def read_file(self, path: str) -> bytes:
        self._alive()
        return self._real.read_file(path)

    def listdir(self, path: str) -> list[str]:
        self._alive()
        return self._real.listdir(path)

    def exists(self, path: str) -> bool:
        self._alive()
        return self._real.exists(path)

    def size(self, path: str) -> int:
        self._alive()
        return self._real.size(path)

    def mtime(self, path: str) -> float:
        self._alive()
        return self._real.mtime(path)


# -- exploring every crash point ----------------------------------------------------------------
Workload = Callable[[str, CrashFS], Iterator[Any]]


@dataclass
class Exploration:
    """What `explore` did: persistence points, distinct crash states, which prefix each
    state recovered to (prefix length -> number of states), and how many were torn."""

    points: int = 0
    states: int = 0
    torn: int = 0  # states that matched a `partial` picture
    recovered_to: dict[int, int] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)


def _run(root: str, workload: Workload, crash_at: int | None,
         ignore: Callable[[str], bool]) -> tuple[CrashFS, int]:
    """Run the workload on `root` (already set up); return the FS and how many operations
    were acknowledged before the crash."""
    fs = CrashFS(root, crash_at)
    acked = 0
    try:
        for _ in workload(root, fs):
            if fs.crashed:
                raise AssertionError("the workload swallowed CrashNow and went on")
            acked += 1
    except CrashNow:
        pass
    finally:
        fs.release()
    fs.check_model(ignore)
    return fs, acked


def crash_states(
    tmp: str | os.PathLike[str],
    setup: Callable[[str], None],
    workload: Workload,
    ignore: Callable[[str], bool] = lambda rel: False,
) -> Iterator[tuple[int, CrashState, list[str]]]:
    """Every distinct crash state of `workload`, as (acknowledged operations, state, ops
    done before the crash). Point 0..N-1 crash before that operation; point N (the dry
    run's count) lets the workload finish, then cuts the power."""
    work = Path(tmp)
    live = work / "dry-run"
    live.mkdir(parents=True)
    setup(str(live))
    dry, _ = _run(str(live), workload, None, ignore)
    shutil.rmtree(live)
    seen: set[tuple[Any, ...]] = set()
    for k in range(dry.points + 1):
        live = work / f"live-{k}"
        live.mkdir()
        setup(str(live))
        fs, acked = _run(str(live), workload, k if k < dry.points else None, ignore)
        if k < dry.points and not fs.crashed:
            raise AssertionError(f"no crash at point {k}: the workload is not deterministic")
        for state in fs.crash_states():
            key = (acked, state.key())
            if key not in seen:
                seen.add(key)
                yield acked, state, fs.ops
        shutil.rmtree(live)


def explore(
    tmp: str | os.PathLike[str],
    *,
    setup: Callable[[str], None],
    workload: Workload,
    recover: Callable[[str], Any],
    expected: Sequence[Any],
    idempotent: bool = True,
    ignore: Callable[[str], bool] = lambda rel: False,
    partial: Mapping[int, Sequence[Any]] | None = None,
) -> Exploration:
    """Crash `workload` at every persistence point, recover every crash state, check it.

    `setup(root)` builds the durable starting state with the real FS. `workload(root, fs)`
    yields once after each of its operations returns. `recover(root)` runs recovery with
    the real FS and returns a comparable picture of the state; `expected[i]` is that
    picture after the first i operations (so len(expected) == operations + 1). `ignore`
    names files (relative paths) deliberately written outside the seam, such as lock files.
    `partial[i]` lists the extra pictures allowed while operation i (1-based) is in flight
    and only then: for an operation that is not atomic by contract (a batch of log records
    survives a crash as a prefix of the batch).
    """
    work = Path(tmp)
    report = Exploration()
    live = work / "dry-run"
    live.mkdir(parents=True)
    setup(str(live))
    dry, acked = _run(str(live), workload, None, ignore)
    shutil.rmtree(live)
    if acked != len(expected) - 1:
        raise AssertionError(f"the workload acknowledged {acked} operations, "
                             f"expected has {len(expected)} entries")
    report.points, report.ops = dry.points, list(dry.ops)
    for acked, state, ops in crash_states(work, setup, workload, ignore):
        report.states += 1
        allowed = list(range(acked, min(acked + 2, len(expected))))
        torn = list((partial or {}).get(acked + 1, ())) if acked + 1 < len(expected) else []
        target = work / "crash"
        if target.exists():
            shutil.rmtree(target)
        state.materialize(target)
        where = f"{state.describe()}\nafter ops: {ops}"
        try:
            got = recover(str(target))
        except Exception as exc:
            raise AssertionError(f"recovery raised {exc!r}\n{where}") from exc
        matches = [i for i in allowed if expected[i] == got]
        if not matches and got in torn:
            matches = [acked]  # counted with the last acknowledged prefix
            report.torn += 1
        if not matches:
            raise AssertionError(
                f"recovered state is not an acknowledged prefix "
                f"({acked} acknowledged, allowed prefixes {allowed})\n"
                f"got      {got!r}\nexpected {[expected[i] for i in allowed]!r}\n{where}")
        report.recovered_to[matches[-1]] = report.recovered_to.get(matches[-1], 0) + 1
        if idempotent:
            again = recover(str(target))
            if again != got:
                raise AssertionError(f"recovery is not idempotent: first {got!r}, "
                                     f"then {again!r}\n{where}")
    return report


def explore_recovery(
    tmp: str | os.PathLike[str],
    *,
    setup: Callable[[str], None],
    workload: Workload,
    reopen: Callable[[str, CrashFS], None],
    recover: Callable[[str], Any],
    ignore: Callable[[str], bool] = lambda rel: False,
) -> Exploration:
    """A power cut during recovery: for every distinct crash state of `workload`, run
    `reopen(root, fs)` (the owner's writable open, with its repairs) on it as a workload of
    no operations, crash that at every point, and check that every resulting state
    recovers to the same picture as the crash state itself. Returns the totals (points
    and states summed over all the crash states)."""
    work = Path(tmp)
    total = Exploration()
    seen: set[tuple[Any, ...]] = set()
    for n, (_, state, _) in enumerate(crash_states(work / "outer", setup, workload, ignore)):
        if state.key() in seen:  # how many operations were acknowledged does not matter here
            continue
        seen.add(state.key())
        clean = work / "clean"
        if clean.exists():
            shutil.rmtree(clean)
        state.materialize(clean)
        want = recover(str(clean))

        def reopen_only(root: str, fs: CrashFS) -> Iterator[None]:
            reopen(root, fs)
            yield from ()

        try:
            got = explore(work / f"inner-{n}", setup=state.materialize, workload=reopen_only,
                          recover=recover, expected=[want], ignore=ignore)
        except AssertionError as exc:
            raise AssertionError(f"a crash during the recovery of this state broke it: "
                                 f"{state.describe()}\n{exc}") from exc
        shutil.rmtree(work / f"inner-{n}")
        total.points += got.points
        total.states += got.states
    return total
