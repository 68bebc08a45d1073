"""The locks worker: repository locks and their FIFO waiting queues, kept in locks/state.json.

Recovery (its start-up): read `locks/state.json`, a WORKER_STATE record
{worker: "locks", held: [{repo, job, since}], waiting: {repo: [job ids in order]}}.
Missing (first start) -> an empty table, written at once so the file exists from then on.
Corrupt (unparseable, wrong schema or a wrong shape) -> moved aside as
`state.json.corrupted.<UTC ts>`, the worker starts with an empty table and says so in its
ready record's `degraded`; no other worker is affected.

Crash safety: this worker is the file's only writer, and every write replaces it
atomically (temp file, fsync, rename, fsync of the folder): a crash leaves the old table
or the new one. Recovery only reads it, quarantines it or writes the empty table, so a
crash during recovery is recovered again by the next start.

Inbox `locks/inbox/`: acquire and release arrive with the locks issue; until then the
handler table is empty, so every request is quarantined as of an unknown kind (logged,
never silently dropped).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor import _log
from supervisor._atomic import Corrupt, Missing, ensure_dir, quarantine
from supervisor._config import Config
from supervisor._jobs import iso_now
from supervisor._layout import WORKER_STATE, Layout, read_record, write_record
from supervisor._runtime import (
    EXIT_OK,
    EXIT_RECOVERY_FAILED,
    Log,
    Watcher,
    handle_inbox,
    report_ready,
    run_loop,
    run_standalone,
)

__all__ = ["HANDLERS", "NAME", "Locks", "main", "recover", "save"]

NAME = "locks"


@dataclass
class Locks:
    """The lock table as the worker holds it: rebuilt from state.json at every start."""

    layout: Layout
    log: Log
    held: list[dict[str, Any]] = field(default_factory=list)
    waiting: dict[str, list[str]] = field(default_factory=dict)


#: request kind -> handler (acquire and release arrive with the locks issue).
HANDLERS: dict[str, Callable[[Locks, dict[str, Any]], None]] = {}


def _shape_problem(rec: dict[str, Any]) -> str | None:
    """None if the record's held/waiting have the documented shape, else what is wrong."""
    held, waiting = rec.get("held"), rec.get("waiting")
    if not isinstance(held, list):
        return "'held' must be a list"
    for i, lock in enumerate(held):
        if not (isinstance(lock, dict)
                and all(isinstance(lock.get(k), str) for k in ("repo", "job", "since"))):
            return f"held[{i}] must be an object with string repo, job and since"
    if not isinstance(waiting, dict):
        return "'waiting' must be an object"
    for repo, ids in waiting.items():
        if not (isinstance(ids, list) and all(isinstance(j, str) for j in ids)):
            return f"waiting[{repo!r}] must be a list of job ids"
    return None


def save(locks: Locks) -> None:
    """Replace locks/state.json with the table (atomic, durable)."""
    write_record(WORKER_STATE, locks.layout.worker_state(NAME),
                 {"worker": NAME, "held": locks.held, "waiting": locks.waiting})


def recover(layout: Layout, log: Log) -> tuple[Locks, dict[str, Any], dict[str, Any], list[str]]:
    """Rebuild the table from state.json: (locks, found, did, degraded). OSError: cannot."""
    ensure_dir(layout.worker_dir(NAME))
    path = layout.worker_state(NAME)
    rec = read_record(WORKER_STATE, path, owner=True)
    if isinstance(rec, dict) and (problem := _shape_problem(rec)) is not None:
        rec = Corrupt(str(path), quarantine(path), problem)
    locks = Locks(layout, log)
    degraded: list[str] = []
    if isinstance(rec, dict):
        locks.held, locks.waiting = rec["held"], rec["waiting"]
    else:
        if isinstance(rec, Corrupt):
            log.warning("locks state corrupt, starting empty", path=str(path),
                        moved_to=rec.moved_to, reason=rec.reason)
            degraded.append(f"locks state was corrupt: moved to {rec.moved_to}")
        save(locks)
    found = {"held": len(locks.held), "waiting": sum(len(v) for v in locks.waiting.values())}
    did = {"state": "read" if isinstance(rec, dict)
           else "created" if isinstance(rec, Missing) else "reset"}
    return locks, found, did, degraded


def main(cfg: Config) -> int:
    """Recover the lock table, report ready, then serve the inbox until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    try:
        locks, found, did, degraded = recover(layout, log)
    except OSError as exc:
        log.error("recovery failed", error=str(exc))
        return EXIT_RECOVERY_FAILED
    inbox = layout.inbox(NAME)
    with Watcher([inbox], log=log) as watcher:
        report_ready(layout, NAME, found=found, did=did, degraded=degraded,
                     started_monotonic=started, started_at=started_at)
        log.info("ready", **found)
        run_loop(watcher, lambda: handle_inbox(inbox, HANDLERS, locks, log))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_standalone(NAME, main))
