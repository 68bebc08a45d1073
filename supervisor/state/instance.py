"""One batchd per state directory: a POSIX lock on `batchd.lock`, and the `batchd.pid` record.

`acquire` opens `batchd.lock` (created once, never replaced or written) and takes an
exclusive POSIX record lock on it (fcntl.lockf, non-blocking). The kernel drops the lock
when the process dies, however it dies, so a held lock IS "batchd is running"; there is
no stale-pid guessing. Then the PID record `batchd.pid` {pid, start, started_at,
state_dir, config} is written atomically (supervisor.state.atomic): a crash before or during
that write leaves the previous record or none, which only lacks details; a reader must
never trust it without `probe`.

`probe` asks the kernel who holds the lock (F_GETLK) WITHOUT taking it, so a batchctl
probing at the wrong instant can never make a starting batchd fail.

POSIX locks belong to the process and are released when that process closes ANY
descriptor of the file: the process holding the lock must therefore never call `probe`
(which opens and closes the file). Locks are not inherited across fork, so batchd's
workers hold nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from dataclasses import dataclass

from supervisor.state.atomic import ensure_dir, remove
from supervisor.state.clock import iso_now
from supervisor.state.flock import fcntl_holder, open_lock_file
from supervisor.state.layout import PID, Layout, write_record
from supervisor.state.proc import start_time

__all__ = ["Instance", "acquire", "probe"]

@dataclass
class Instance:
    """The held lock of one running batchd (keep it alive as long as batchd runs)."""

    layout: Layout
    fd: int
    pid: int

    def release(self) -> None:
        """Remove the pid record (durably), then drop the lock by closing the descriptor."""
        if self.fd < 0:
            return
        remove(self.layout.pid_file)
        os.close(self.fd)
        self.fd = -1


def _holder(fd: int) -> int | None:
    """The pid holding a conflicting lock on the file open at `fd`, or None."""
    return fcntl_holder(fd).pid


def probe(layout: Layout) -> int | None:
    """The pid of the batchd holding `layout`'s lock, or None. Never takes or creates the lock."""
    try:
        fd = os.open(layout.lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _holder(fd)
    finally:
        os.close(fd)


def acquire(layout: Layout, *, config: str | None = None) -> Instance | int:
    """Take the single-instance lock and write the pid record; or return the holder's pid.

    The state folder must exist. Returns -1 in the unlikely case the lock stays taken but
    its holder keeps vanishing before it can be named (a race repeated 50 times).
    """
    ensure_dir(layout.root)
    fd = open_lock_file(layout.lock_file, os.O_RDWR)
    holder: int | None = None
    for _ in range(50):
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)       # e.g. ENOLCK on NFS: a failure, not another batchd
                raise
            holder = _holder(fd)
            if holder is not None:
                os.close(fd)
                return holder
            time.sleep(0.01)     # the holder let go between our two calls: try again
            continue
        pid = os.getpid()
        write_record(PID, layout.pid_file, {
            "pid": pid,
            "start": start_time(pid),
            "started_at": iso_now(),
            "state_dir": str(layout.root),
            "config": config,
        })
        return Instance(layout, fd, pid)
    os.close(fd)
    return -1
