"""Process identity: a pid is only meaningful together with its start time.

The start time is field 22 of /proc/<pid>/stat (clock ticks since boot), an exact
integer that changes when a pid is reused, so (pid, start) names one process for
its whole life. Every pid batchd records is stored with it.
"""

from __future__ import annotations

__all__ = ["alive", "start_time"]


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

