"""The JSON documents readers show: status, workers, locks, callbacks, batches, stats.

One function per document, called by `batchctl ... --json` and by the api's `GET /v1/...`,
so the two always print the same thing (CONTRACT.md: "the --json documents of batchctl").
Everything here only reads the state directory, never moving or writing a file: what
cannot be read is either a note in the document (`status` always answers) or `Unreadable`
naming the file and why (its owner moves it aside, not a reader).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisor.config import Config, enabled_workers
from supervisor.state import disk
from supervisor.state.atomic import Missing
from supervisor.state.jobs import batch_record, usage_stats
from supervisor.state.layout import Layout
from supervisor.state.lockfiles import read_table
from supervisor.state.locktable import Table, unavailable
from supervisor.state.repos import all_repositories, read_registry
from supervisor.state.view import (
    JobView,
    Unreadable,
    batchd_pid,
    open_view,
    read_reaped,
    read_startups,
    read_workers,
)
from supervisor.state.webhook import list_deliveries

__all__ = [
    "DELIVERY_FIELDS",
    "WORKER_KEYS",
    "batch_records",
    "deliveries",
    "locks_doc",
    "stats_doc",
    "status_doc",
    "worker_entry",
    "workers_doc",
]

#: The keys every worker entry of `workers --json` has (CONTRACT.md), in order.
WORKER_KEYS: tuple[str, ...] = ("name", "state", "pid", "since", "restarts")

#: The keys of each record `callbacks --json` prints (CONTRACT.md), in order.
DELIVERY_FIELDS: tuple[str, ...] = (
    "id", "job", "url", "state", "attempts", "next_attempt_at", "last_error", "created_at")

#: Worker states that make batchd degraded.
_DEGRADED_STATES = ("FATAL", "BACKOFF")


# -- workers and status -----------------------------------------------------------------------

def worker_entry(raw: dict[str, Any]) -> dict[str, Any]:
    """A workers.json entry with every key of WORKER_KEYS present (others kept)."""
    entry = {k: raw.get(k) for k in WORKER_KEYS}
    entry["restarts"] = int(raw.get("restarts") or 0)
    entry.update({k: v for k, v in raw.items() if k not in entry})
    return entry


def workers_doc(cfg: Config, layout: Layout) -> list[dict[str, Any]]:
    """The `workers --json` document (the caller checks that batchd runs): the scheduler's
    entry says whether it starts new jobs (`paused`)."""
    workers = [worker_entry(w) for w in read_workers(layout)]
    with open_view(cfg, layout) as view:
        _mark_paused(workers, view.paused())
    return workers


def _mark_paused(workers: list[dict[str, Any]], paused: bool) -> None:
    """The scheduler's entry says whether it starts new jobs (`batchctl pause`)."""
    for w in workers:
        if w.get("name") == "scheduler":
            w["paused"] = paused


def _degraded(workers: list[dict[str, Any]], startups: list[dict[str, Any]]) -> list[str]:
    """Workers in FATAL/BACKOFF, then the degraded notes of the latest startup."""
    notes = []
    for w in workers:
        if w.get("state") in _DEGRADED_STATES:
            msg = f" ({w['message']})" if w.get("message") else ""
            notes.append(f"{w.get('name')}: {w.get('state')}{msg}")
    if startups:
        for phase in startups[-1].get("phases") or []:
            if not isinstance(phase, dict):
                continue
            name = phase.get("worker")
            if phase.get("ok") is False:
                notes.append(f"{name}: recovery failed: {phase.get('error') or 'unknown error'}")
            for note in phase.get("degraded") or []:
                notes.append(f"{name}: {note}")
    return notes


def status_doc(cfg: Config, layout: Layout) -> dict[str, Any]:
    """The `status --json` document: daemon, workers (if running), job counts, degraded
    notes, paused. What cannot be read (the job queue, a corrupt startup log) is one more
    degraded note, never an error: `status` always answers."""
    pid = batchd_pid(layout)
    running = pid is not None
    workers = [worker_entry(w) for w in read_workers(layout)] if running else []
    unreadable: list[str] = []
    startups: list[dict[str, Any]] = []
    if running:
        try:
            startups = read_startups(layout)
        except Unreadable as exc:
            unreadable.append(str(exc))
    jobs: dict[str, int] = {}
    paused = False
    try:
        with open_view(cfg, layout) as view:
            jobs = view.counts()
            paused = view.paused()
    except Unreadable as exc:
        unreadable.append(str(exc))
    _mark_paused(workers, paused)
    # A corrupt registry reads as empty: its repositories are unavailable until `repo
    # add/remove` moves it aside, so say so rather than let their jobs fail unexplained.
    unreadable += [f"repositories: {p}" for p in read_registry(layout).problems]
    low = disk.low(cfg)
    degraded = _degraded(workers, startups) + unreadable + ([low] if low else [])
    return {"batchd": {"running": running, "pid": pid}, "workers": workers,
            "jobs": jobs, "degraded": degraded, "paused": paused}


# -- locks ------------------------------------------------------------------------------------

def _lock_table(layout: Layout) -> Table:
    """The whole lock table (state.lockfiles.read_table: what is held, and the waiting
    jobs' pages); none yet: an empty one."""
    got = read_table(layout)
    if isinstance(got, Missing):
        return Table()
    if isinstance(got, str):
        raise Unreadable(f"cannot read the lock table: {got}")
    return got


def locks_doc(cfg: Config, layout: Layout) -> dict[str, Any]:
    """The `locks --json` document: {"held": [{repo, job, since}], "waiting": {repo: [job
    ids, first in line first]}, "unavailable": [repos]}. No table yet: nothing held."""
    t = _lock_table(layout)
    known = all_repositories(cfg, layout)
    return {
        "held": [{"repo": repo, "job": lock.job, "since": lock.since}
                 for repo, lock in t.held.items()],
        "waiting": {repo: list(queue) for repo, queue in t.waiting.items()},
        "unavailable": unavailable(t, known),
    }


# -- callbacks --------------------------------------------------------------------------------

def deliveries(layout: Layout, note: Callable[[str], None] = lambda _line: None
               ) -> list[dict[str, Any]]:
    """The `callbacks --json` records (DELIVERY_FIELDS), oldest first, as
    state.webhook.list_deliveries reads them (the worker's inbox: events handed over, not
    tried yet; then callbacks/outbox/: pending and in flight; then callbacks/done/:
    delivered and failed). A record that cannot be read is told to `note` and skipped; a
    folder that cannot be listed is Unreadable."""
    try:
        records, notes = list_deliveries(layout)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise Unreadable(f"cannot read the webhook deliveries: {exc.strerror or exc}{where}"
                         ) from None
    for line in notes:
        note(line)
    return [{k: rec.get(k) for k in DELIVERY_FIELDS} for rec in records]


# -- batches and stats ------------------------------------------------------------------------

def batch_records(view: JobView) -> list[dict[str, Any]]:
    """One record per batch, in order of its first job: {batch, counts, done, jobs}."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for entry in view.entries():
        name = entry.get("batch")
        if isinstance(name, str):
            groups.setdefault(name, []).append((str(entry["id"]), str(entry.get("state"))))
    return [batch_record(name, jobs) for name, jobs in groups.items()]


def stats_doc(cfg: Config, layout: Layout) -> dict[str, Any]:
    """The `stats --json` document: the queue's counters, restarts per worker (every
    worker the configuration runs; zeros when unknown), what the reaper removed, and the
    agents' usage: `usage` (tokens, cost in dollars, turns, jobs that reported usage,
    summed over every finished job) and `usage_by_agent` (the same per agent)."""
    with open_view(cfg, layout) as view:
        counters = view.stats()
    doc: dict[str, Any] = {k: n for k, n in counters.items() if not k.startswith("usage/")}
    doc["usage"], doc["usage_by_agent"] = usage_stats(counters)
    restarts = dict.fromkeys(enabled_workers(cfg), 0)
    for w in read_workers(layout):
        if isinstance(w.get("name"), str) and isinstance(w.get("restarts"), int):
            restarts[w["name"]] = w["restarts"]
    doc["restarts"] = restarts
    doc["reaped"] = read_reaped(layout)
    return doc
