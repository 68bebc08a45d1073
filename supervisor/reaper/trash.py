"""Removing a folder so that a crash halfway is finished, never left half done.

A folder is first renamed to `.reap.<name>` in the same parent (atomic; the parent is
fsynced), then deleted; a crash in the deletion leaves a `.reap.` folder, which no one
uses and the next pass deletes (`finish`). A job's folder and workspace, a mirror: each
goes this way, so no reader ever sees a half-deleted one under its real name. Many go
together (`discard_many`: a retention step, a pass's due workspaces) with one fsync per
parent folder after all the renames and one after all the deletions: a removal costs its
unlinks, not two journal commits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from supervisor.state.atomic import remove_tree
from supervisor.state.retention import TRASH

__all__ = ["discard", "discard_many", "finish"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def discard(path: Path) -> bool:
    """Rename `path` to its trash name, then delete it; False if it was already gone."""
    return bool(discard_many([path]))


def discard_many(paths: Iterable[Path]) -> list[Path]:
    """`discard` each of `paths`, all renamed before any is deleted: one fsync of each
    parent folder after the renames (before any deletion) and one after the deletions,
    whatever the number; the paths that were there (and are gone)."""
    moved: list[tuple[Path, Path]] = []
    for path in map(Path, paths):
        trash = path.parent / f"{TRASH}{path.name}"
        if os.path.lexists(trash):
            remove_tree(trash)             # an earlier removal of the same name, cut short
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            continue
        moved.append((path, trash))
    parents = sorted({path.parent for path, _ in moved})
    for parent in parents:
        _fsync_dir(parent)                 # every rename durable before any deletion
    for _, trash in moved:
        remove_tree(trash)
    for parent in parents:
        _fsync_dir(parent)
    return [path for path, _ in moved]


def finish(folder: Path) -> list[str]:
    """Delete the trash a crash left in `folder`; the paths deleted."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TRASH)]
    except FileNotFoundError:
        return []
    for name in names:
        remove_tree(folder / name)
    if names:
        _fsync_dir(folder)
    return [str(folder / n) for n in names]
