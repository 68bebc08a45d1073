"""Free space on the filesystems batchd writes to, against `disk.min_free`.

One question, asked by every door that makes data (submit, the scheduler before it starts
a job, status): is there less free space than the floor on `state_dir`'s or
`workspace_dir`'s filesystem? `low()` answers with a sentence naming the path, the free
space and the floor, or None. A path that cannot be measured (not made yet) is measured
at its nearest existing parent. The measure is `statvfs`'s blocks available to
unprivileged users (what a job's files can still use).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from supervisor.config import Config, FreeSpace, size_text

__all__ = ["Usage", "low", "usage"]

#: (free bytes, total bytes) of the filesystem holding a path.
Usage = tuple[int, int]


def usage(path: Path) -> Usage:
    """(bytes available to unprivileged users, filesystem size) where `path` is, or would be."""
    try:
        st = os.statvfs(path)               # the common case: one call, no Path made
    except (FileNotFoundError, NotADirectoryError):    # not made yet: its nearest parent
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def low(cfg: Config, measure: Callable[[Path], Usage] = usage) -> str | None:
    """Why the disk is below `disk.min_free` ("disk: 12.0MiB free on /var/lib/batchd,
    below min_free 1GiB"), or None when both filesystems have room."""
    floor: FreeSpace = cfg.disk.min_free
    if floor.amount <= 0:
        return None
    for path in (cfg.state_dir, cfg.workspace_dir):
        try:
            free, total = measure(path)
        except OSError:
            continue            # unmeasurable: not the floor's business (writes will say)
        if free < floor.bytes_of(total):
            return f"disk: {size_text(free)} free on {path}, below min_free {floor}"
    return None

