"""What the reaper asks other owners to remove (law 1): locks of finished or unknown jobs,
settled webhook records past retention.callbacks. The owner checks again and removes.

Each ask is a request in the owner's inbox whose id follows from what it names, so a
pass that asks again before the owner took the first request rewrites the same file; a
job or an event already named by a request still in the inbox is not asked (nor counted)
again. docs/REAPER.md has the rules.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from supervisor.state.atomic import CORRUPT_MARK, is_tmp_name
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.layout import DELIVERY, REQUEST, Layout, read_record, send_request
from supervisor.state.lockfiles import read_table
from supervisor.state.locktable import REAP, Table, reap_request
from supervisor.state.queue import TERMINAL_STATES
from supervisor.state.retention import Known
from supervisor.state.webhook import SETTLED_STATES, prune_request

__all__ = ["BATCH", "Removed", "ask_callbacks", "ask_locks", "asked", "count"]

#: At most this many jobs or events per request.
BATCH = 1000

#: (kind, what, why) -> None: how a removal is counted and logged (Reaper.removed).
Removed = Callable[[str, str, str], None]


def asked(layout: Layout, worker: str, kind: str, key: str) -> set[str]:
    """What the requests of `kind` still in `worker`'s inbox name (their `key` lists).
    Read only: a request that cannot be read is the owner's to quarantine."""
    folder = layout.inbox(worker)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return set()
    out: set[str] = set()
    for name in names:
        if not name.endswith(".json") or is_tmp_name(name) or CORRUPT_MARK in name:
            continue
        rec = read_record(REQUEST, folder / name, owner=False)
        if isinstance(rec, dict) and rec.get("kind") == kind \
                and isinstance(rec.get(key), list):
            out.update(str(x) for x in rec[key])
    return out


def _older(iso: str | None, now: float, grace: float) -> bool:
    at = parse_iso(iso)
    return at is not None and now - at >= grace


def ask_locks(layout: Layout, known: Known, now: float, grace: float,
              removed: Removed) -> int:
    """Ask the locks worker to free the locks held, and the places in line kept, by jobs
    that are finished or unknown — granted (held) or submitted (waiting) more than `grace`
    ago, so a job newer than `known` is never named. How many jobs were asked."""
    table = read_table(layout)
    if not isinstance(table, Table):
        return 0
    due: dict[str, str] = {}

    def gone(job: str) -> str | None:
        state = known.state(job)
        if state is None:
            return "unknown"
        return state if state in TERMINAL_STATES else None

    for repo, lock in table.held.items():
        state = gone(lock.job)
        if state is not None and _older(lock.since, now, grace):
            due.setdefault(lock.job, f"job {state} holds {repo}")
    for job, want in table.wants.items():
        state = gone(job)
        if state is not None and _older(want.created_at, now, grace):
            due.setdefault(job, f"job {state} waits for {', '.join(want.repos)}")
    before = asked(layout, "locks", REAP, "jobs")
    new = sorted(job for job in due if job not in before)
    for i in range(0, len(new), BATCH):
        part = new[i:i + BATCH]
        send_request(layout, "locks", reap_request(part, created_at=iso_now(now)))
        for job in part:
            removed("locks", job, due[job])
    return len(new)


def _settled_due(folder: Path, now: float, older_than: float) -> Iterator[str]:
    """The settled records in `folder` last changed `older_than` before `now` (its file's
    mtime first: a pass over recent records reads none of them)."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return
    for name in names:
        if not name.endswith(".json") or is_tmp_name(name) or CORRUPT_MARK in name:
            continue
        try:
            if now - os.lstat(folder / name).st_mtime < older_than:
                continue
        except FileNotFoundError:
            continue
        rec = read_record(DELIVERY, folder / name, owner=False)
        if isinstance(rec, dict) and rec.get("state") in SETTLED_STATES \
                and _older(rec.get("updated_at"), now, older_than) \
                and rec.get("id") == name.removesuffix(".json"):
            yield str(rec["id"])


def ask_callbacks(layout: Layout, now: float, keep: float | None, grace: float,
                  removed: Removed) -> int:
    """Ask the callbacks worker to remove the delivered and failed records past `keep`
    (retention.callbacks; never sooner than `grace`). How many were asked."""
    if keep is None:
        return 0
    older = max(keep, grace)
    before = asked(layout, "callbacks", "prune", "event_ids")
    new = [i for i in _settled_due(layout.callbacks_done, now, older) if i not in before]
    for i in range(0, len(new), BATCH):
        part = new[i:i + BATCH]
        send_request(layout, "callbacks", prune_request(part, older, now=now))
        for event_id in part:
            removed("callbacks", event_id, "settled past retention.callbacks")
    return len(new)


def count(did: Counter[str], log_removed: Callable[[Counter[str], str, str, str], None]
          ) -> Removed:
    """Bind Reaper.removed to this pass's counts."""
    return lambda kind, what, why: log_removed(did, kind, what, why)
