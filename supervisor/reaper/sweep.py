"""Stale temp files and old quarantined files, anywhere batchd keeps its own files.

A writer killed between creating its temp file (`.tmp.<name>.<pid>.<rand>`) and renaming
it leaves the temp file behind: removed once older than `reaper.grace` (a younger one may
be a write in progress). A corrupt record moved aside (`NAME.corrupted.<UTC stamp>`) is
kept for the operator `retention.corrupted` after it was moved (the stamp says when), then
removed. The walk never follows symlinks, never enters the workspaces (job content) or the
mirrors (git's own stores), and under `jobs/` looks only in each `jobs/<id>/` itself (a
job's own files are the job's). Each removal is an idempotent unlink.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from supervisor.reaper import trash
from supervisor.state.atomic import CORRUPT_MARK, clean_tmp, is_tmp_name, remove
from supervisor.state.layout import Layout
from supervisor.state.retention import corrupted_at

__all__ = ["folders", "sweep_corrupted", "sweep_tmp"]


def _subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def folders(layout: Layout, workspace_dir: Path) -> Iterator[Path]:
    """Every folder of the state dir the sweeps look in (see the module docstring)."""
    skip = {os.path.abspath(workspace_dir), os.path.abspath(layout.mirrors_dir)}
    jobs = layout.jobs_dir
    stack = [layout.root]
    while stack:
        folder = stack.pop()
        yield folder
        for sub in reversed(_subdirs(folder)):
            if os.path.abspath(sub) in skip:
                continue
            if folder == jobs:
                yield sub          # jobs/<id>/ itself, never what the job put below it
            else:
                stack.append(sub)


def sweep_tmp(layout: Layout, workspace_dir: Path, grace: float,
              now: float | None = None) -> tuple[int, list[str]]:
    """Remove temp files older than `grace` seconds: (temp files seen, paths removed)."""
    seen, removed = 0, []
    for folder in folders(layout, workspace_dir):
        try:
            found = sum(1 for name in os.listdir(folder) if is_tmp_name(name))
        except FileNotFoundError:
            continue               # removed by its owner meanwhile
        seen += found
        if found:                  # most folders hold none: one listing, not two
            removed += clean_tmp(folder, grace, now=now)
    return seen, removed


def sweep_corrupted(layout: Layout, workspace_dir: Path, keep: float | None,
                    now: float) -> list[str]:
    """Remove quarantined files moved aside at least `keep` seconds ago (None: never)."""
    if keep is None:
        return []
    removed = []
    for folder in folders(layout, workspace_dir):
        try:
            names = [n for n in os.listdir(folder) if CORRUPT_MARK in n]
        except FileNotFoundError:
            continue
        for name in names:
            at = corrupted_at(name)
            if at is None or now - at < keep:
                continue
            try:
                gone = remove(folder / name)
            except IsADirectoryError:
                gone = trash.discard(folder / name)
            if gone:
                removed.append(str(folder / name))
    return removed
