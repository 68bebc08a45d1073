"""Removing a folder so that a crash halfway is finished, never left half done.

A folder is first renamed to `.reap.<name>` in the same parent (atomic; the parent is
fsynced), then deleted; a crash in the deletion leaves a `.reap.` folder, which no one
uses and the next pass deletes (`finish`). A job's folder and workspace, a mirror: each
goes this way, so no reader ever sees a half-deleted one under its real name.
"""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.state.atomic import remove_tree
from supervisor.state.retention import TRASH

__all__ = ["discard", "finish"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def discard(path: Path) -> bool:
    """Rename `path` to its trash name, then delete it; False if it was already gone."""
    path = Path(path)
    trash = path.parent / f"{TRASH}{path.name}"
    if os.path.lexists(trash):
        remove_tree(trash)                 # an earlier removal of the same name, cut short
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return False
    _fsync_dir(path.parent)
    remove_tree(trash)
    _fsync_dir(path.parent)
    return True


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
