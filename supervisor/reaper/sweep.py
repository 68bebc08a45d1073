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
from supervisor.state.atomic import CORRUPT_MARK, TMP_PREFIX, clean_tmp, is_tmp_name, remove
from supervisor.state.layout import Layout
from supervisor.state.retention import corrupted_at

__all__ = ["listings", "sweep", "sweep_corrupted", "sweep_tmp"]

_TMP_START = "\n" + TMP_PREFIX


def _scan(folder: str) -> tuple[list[str], list[str]] | None:
    """(the names in `folder`, those of its sub-folders), sorted; None if it is gone."""
    try:
        with os.scandir(folder) as entries:
            found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return None
    found.sort()
    return [n for n, _ in found], [n for n, d in found if d]


def _slash(folder: str) -> str:
    return folder if folder.endswith("/") else folder + "/"


def listings(layout: Layout, workspace_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, the names in it) for every folder of the state dir the sweeps look in (see
    the module docstring): one listing per folder, which both sweeps share."""
    skip = {os.path.abspath(workspace_dir), os.path.abspath(layout.mirrors_dir)}
    jobs = os.path.abspath(layout.jobs_dir)
    stack = [(os.fspath(layout.root), os.path.abspath(layout.root))]
    while stack:
        folder, where = stack.pop()
        scanned = _scan(folder)
        if scanned is None:
            continue               # removed by its owner meanwhile
        names, subdirs = scanned
        yield folder, names
        inside_folder, inside_where = _slash(folder), _slash(where)
        for sub in reversed(subdirs):
            path, at = inside_folder + sub, inside_where + sub
            if where != jobs:
                if at not in skip:
                    stack.append((path, at))
                continue
            if at in skip:
                continue
            try:           # jobs/<id>/ itself, never what the job put below it
                inside = sorted(os.listdir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            yield path, inside


def _tmp(folder: str, names: list[str], grace: float, now: float | None) -> list[str]:
    if not any(is_tmp_name(n) for n in names):
        return []                  # most folders hold none: no second listing
    return clean_tmp(folder, grace, now=now)


def _corrupted(folder: str, names: list[str], keep: float, now: float) -> list[str]:
    removed = []
    for name in names:
        if CORRUPT_MARK not in name:
            continue
        at = corrupted_at(name)
        if at is None or now - at < keep:
            continue
        path = Path(folder, name)
        try:
            gone = remove(path)
        except IsADirectoryError:
            gone = trash.discard(path)
        if gone:
            removed.append(str(path))
    return removed


def sweep(layout: Layout, workspace_dir: Path, grace: float, keep: float | None,
          now: float) -> tuple[list[str], list[str]]:
    """Both sweeps over one walk: (temp files older than `grace` removed, quarantined
    files moved aside at least `keep` seconds ago removed (None: never))."""
    tmp: list[str] = []
    corrupted: list[str] = []
    for folder, names in listings(layout, workspace_dir):
        joined = "\n" + "\n".join(names)          # one search each: most folders hold none
        if _TMP_START in joined:
            tmp += _tmp(folder, names, grace, now)
        if keep is not None and CORRUPT_MARK in joined:
            corrupted += _corrupted(folder, names, keep, now)
    return tmp, corrupted


def sweep_tmp(layout: Layout, workspace_dir: Path, grace: float,
              now: float | None = None) -> tuple[int, list[str]]:
    """Remove temp files older than `grace` seconds: (temp files seen, paths removed)."""
    seen, removed = 0, []
    for folder, names in listings(layout, workspace_dir):
        seen += sum(1 for name in names if is_tmp_name(name))
        removed += _tmp(folder, names, grace, now)
    return seen, removed


def sweep_corrupted(layout: Layout, workspace_dir: Path, keep: float | None,
                    now: float) -> list[str]:
    """Remove quarantined files moved aside at least `keep` seconds ago (None: never)."""
    if keep is None:
        return []
    removed = []
    for folder, names in listings(layout, workspace_dir):
        removed += _corrupted(folder, names, keep, now)
    return removed
