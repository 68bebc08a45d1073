"""batchctl's `locks` command: repository locks held, jobs waiting in FIFO order (read-only).

It reads `locks/state.json`, the locks worker's table, with owner=False: never moving,
writing or locking anything, so it works while batchd is down (showing the table as the
worker last wrote it; the file is replaced atomically, so a read sees the old table or the
new one). `unavailable` is recomputed here from the configuration and the `repo add`
registry, so a repository removed while batchd is down already shows. No table yet (the
locks worker never ran): nothing held, nothing waiting. An unreadable table: exit 1 with
the reason (the worker, its owner, moves it aside and rebuilds it when it next starts).

    --json: {"held": [{"repo", "job", "since"}], "waiting": {"<repo>": [job ids, first in
             line first]}, "unavailable": [repos]}
"""

from __future__ import annotations

import argparse

from supervisor.ctl.out import EXIT_OK, Ctx, table
from supervisor.state.documents import locks_doc

__all__ = ["run_locks", "setup_locks"]


def setup_locks(parser: argparse.ArgumentParser) -> None:
    """`locks` takes no argument (besides --json, which batchctl adds)."""


def run_locks(ctx: Ctx, args: argparse.Namespace) -> int:
    """`locks`: who holds which repository, who waits for it, which are gone."""
    doc = locks_doc(ctx.cfg, ctx.layout)
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
