"""Advisory locks on files of the state dir: holding one for a block, and asking who
holds one without ever taking it (liveness by a held lock, as s6's s6_svc_ok).

Lock files are created empty and never written, so they have no writer to argue about;
the kernel drops a lock when its holder dies, whatever way it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

from supervisor.state.atomic import quarantine

__all__ = ["LockProbe", "exclusive", "fcntl_holder", "open_lock_file", "probe_lock"]

# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid (native alignment, padded to sizeof(struct flock) == 32).
_FLOCK = struct.Struct("@hhqqi4x")
_PROC_LOCKS = "/proc/locks"


class LockProbe(NamedTuple):
    """Whether a lock file is held, and by which pid when the kernel says (else None)."""

    held: bool
    pid: int | None


def open_lock_file(path: str | os.PathLike[str], flags: int = os.O_RDONLY) -> int:
    """Open (create empty if missing) a lock file. A folder in its place is moved aside
    (NAME.corrupted.<UTC ts>) first: no lock can be held on it here (every taker opens
    with O_CREAT, which a folder refuses), and left there it would refuse every taker."""
    flags |= os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except IsADirectoryError:
        quarantine(path)
        return os.open(path, flags, 0o644)


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created empty if missing; its folder must exist)
    for the block; blocks while another process holds it."""
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def fcntl_holder(fd: int) -> LockProbe:
    """F_GETLK: who holds a POSIX (or OFD) lock conflicting with a write lock on `fd`."""
    query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    l_type, _, _, _, l_pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))
    if l_type == fcntl.F_UNLCK:
        return LockProbe(False, None)
    return LockProbe(True, int(l_pid) if l_pid > 0 else None)   # OFD locks report -1


def _flock_holder(st: os.stat_result, proc_locks: str) -> LockProbe:
    """Scan /proc/locks for a FLOCK (or POSIX/OFD) lock on st's device and inode."""
    try:
        with open(proc_locks, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return LockProbe(False, None)
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in text.splitlines():
        # "7: FLOCK  ADVISORY  WRITE 1234 fe:00:2148294 0 EOF"; "7: -> FLOCK ..." = a waiter
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or parts[1] not in ("FLOCK", "POSIX", "OFDLCK"):
            continue
        try:
            major, minor, ino = parts[5].split(":")
            found = (int(major, 16), int(minor, 16), int(ino))
            pid = int(parts[4])
        except ValueError:
            continue
        if found == want:
            return LockProbe(True, pid if pid > 0 else None)
    return LockProbe(False, None)


def probe_lock(path: str | os.PathLike[str], *, proc_locks: str = _PROC_LOCKS) -> LockProbe:
    """Who holds a lock on `path`, WITHOUT taking it or creating the file.

    F_GETLK answers for POSIX/OFD locks; /proc/locks for flock locks (which F_GETLK does
    not see). A missing file is not held.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return LockProbe(False, None)
    try:
        probe = fcntl_holder(fd)
        if probe.held:
            return probe
        return _flock_holder(os.fstat(fd), proc_locks)
    finally:
        os.close(fd)
