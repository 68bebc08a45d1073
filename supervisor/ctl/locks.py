"""batchctl's `locks` command: repository locks held, jobs waiting in FIFO order (read-only).

It reads the locks worker's table (state.lockfiles.read_table: `locks/state.json` and the
pages of waiting jobs under `locks/wants/`), never moving, writing or locking anything,
so it works while batchd is down (showing the table as the worker last wrote it; each
file is replaced atomically, and the pages are read before state.json, so a job is never
missed between the two). `unavailable` is recomputed here from the configuration and the `repo add`
registry, so a repository removed while batchd is down already shows. No table yet (the
locks worker never ran): nothing held, nothing waiting. An unreadable table: exit 1 with
the reason (the worker, its owner, moves it aside and rebuilds it when it next starts).

    --json: {"held": [{"repo", "job", "since"}], "waiting": {"<repo>": [job ids, first in
             line first]}, "unavailable": [repos]}
"""

from __future__ import annotations

import argparse
from typing import Any

from supervisor.ctl.out import EXIT_OK, CtlError, Ctx, table
from supervisor.state.atomic import Missing
from supervisor.state.lockfiles import read_table
from supervisor.state.locktable import Table, unavailable
from supervisor.state.repos import all_repositories

__all__ = ["locks_doc", "run_locks", "setup_locks"]


def _read_table(ctx: Ctx) -> Table:
    got = read_table(ctx.layout)
    if isinstance(got, Missing):
        return Table()
    if isinstance(got, str):
        raise CtlError(f"cannot read the lock table: {got}")
    return got


def locks_doc(ctx: Ctx) -> dict[str, Any]:
    """The `locks --json` document (CONTRACT.md)."""
    t = _read_table(ctx)
    known = all_repositories(ctx.cfg, ctx.layout)
    return {
        "held": [{"repo": repo, "job": lock.job, "since": lock.since}
                 for repo, lock in t.held.items()],
        "waiting": {repo: list(queue) for repo, queue in t.waiting.items()},
        "unavailable": unavailable(t, known),
    }


def setup_locks(parser: argparse.ArgumentParser) -> None:
    """`locks` takes no argument (besides --json, which batchctl adds)."""


def run_locks(ctx: Ctx, args: argparse.Namespace) -> int:
    """`locks`: who holds which repository, who waits for it, which are gone."""
    doc = locks_doc(ctx)
    if ctx.json:
        ctx.emit(doc)
        return EXIT_OK
    if not doc["held"] and not doc["waiting"]:
        ctx.note("no repository lock is held or waited for")
    gone = set(doc["unavailable"])
    repos = list(dict.fromkeys([*(h["repo"] for h in doc["held"]), *doc["waiting"]]))
    holder = {h["repo"]: h for h in doc["held"]}
    rows = [(repo + (" (unavailable)" if repo in gone else ""),
             holder[repo]["job"] if repo in holder else None,
             holder[repo]["since"] if repo in holder else None,
             doc["waiting"].get(repo)) for repo in repos]
    for line in table(rows, header=("REPO", "HELD_BY", "SINCE", "WAITING")) if rows else []:
        ctx.say(line)
    return EXIT_OK
