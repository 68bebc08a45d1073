"""Process identity: a pid is only meaningful together with its start time.

The start time is field 22 of /proc/<pid>/stat (clock ticks since boot), an exact
integer that changes when a pid is reused, so (pid, start) names one process for
its whole life. Every pid batchd records is stored with it.
"""

from __future__ import annotations

import os

__all__ = ["alive", "job_processes", "start_time"]


def start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])  # field 22 overall; rest starts at field 3
    except (IndexError, ValueError):
        return None


def alive(pid: int | None, start: int | None) -> bool:
    """True if the process `pid` exists, is not a zombie, and started at `start`."""
    if not pid or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    rest = raw[raw.rfind(b")") + 2 :].split()
    if not rest or rest[0] in (b"Z", b"X"):
        return False
    if start is None:
        return True
    try:
        return int(rest[19]) == start
    except (IndexError, ValueError):
        return False


def job_processes(job_dir: str, *, exclude: frozenset[int] = frozenset()) -> list[int]:
    """Live (non-zombie) pids whose environment carries BATCHD_JOB_DIR=`job_dir`.

    Every process of a job inherits that variable from its adaptor, including those that
    left the job's process group (setsid, double fork), so this finds what killpg misses.
    The job folder is an absolute path under one state dir, so two batchd instances with
    a job of the same id never match each other's processes (BATCHD_JOB_ID would).
    Processes whose environment cannot be read (another user's, when not root) are skipped:
    a process batchd cannot tie to the job is never signalled.
    """
    needle = b"\0BATCHD_JOB_DIR=" + os.fsencode(job_dir) + b"\0"
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = b"\0" + f.read()
        except OSError:
            continue
        if needle in env and alive(int(name), None):
            found.append(int(name))
    return found
