"""The locks worker: repository locks and their FIFO waiting queues, kept in locks/ files.

It alone writes locks/state.json (what is held) and locks/wants/ (the waiting jobs, in
pages: a pass rewrites only what it changed); requests arrive in locks/inbox/. The
protocol, one pass, every crash window and the recovery from the WAL are in
docs/LOCKS.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor import log as _log
from supervisor.config import Config
from supervisor.runtime import (
    EXIT_OK,
    EXIT_RECOVERY_FAILED,
    BadRequest,
    Log,
    Waiter,
    Watcher,
    WriteRetry,
    inbox_requests,
    job_of,
    report_ready,
    run_standalone,
    stop_requested,
    until_written,
)
from supervisor.state.atomic import Corrupt, Missing, ensure_dir, quarantine, remove
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.layout import (
    WORKER_STATE,
    Layout,
    read_record,
    send_request,
    write_record,
)
from supervisor.state.lockfiles import Pages, page_numbers, read_pages
from supervisor.state.locktable import (
    ACQUIRE,
    REAP,
    RELEASE,
    Lock,
    Table,
    Want,
    acquire,
    blocked,
    drop,
    exclusive_for,
    from_parts,
    grant,
    granted_hint,
    held_record,
    next_hint,
    next_in_line,
    release,
)
from supervisor.state.queue import TERMINAL_STATES, JobQueue, QueueError
from supervisor.state.repos import all_repositories
from supervisor.state.wal import WalError

__all__ = [
    "HANDLERS",
    "NAME",
    "Locks",
    "acquire_handler",
    "main",
    "one_pass",
    "reap_handler",
    "rebuild",
    "reconcile",
    "recover",
    "release_handler",
    "save",
    "serve",
    "settle",
]

NAME = "locks"


@dataclass
class Locks:
    """What the worker holds: the table (rebuilt from its files at every start), the map
    of its pages, the state.json body last written and the jobs whose place in the
    queues a pass changed (a pass that changes nothing writes nothing; one that changes
    a few jobs rewrites a few pages, however many wait)."""

    cfg: Config
    layout: Layout
    log: Log
    table: Table = field(default_factory=Table)
    saved: dict[str, Any] | None = None
    clock: Clock = SYSTEM_CLOCK
    pages: Pages | None = None
    touched: set[str] = field(default_factory=set)
    #: The jobs the scheduler was last told are next in line (scheduler.ahead): each is
    #: told once while it stays so (a restarted worker tells them again: a hint is idempotent).
    told: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.pages is None:
            self.pages = Pages(self.layout)

    def known(self) -> dict[str, Any]:
        """The repositories that exist now: the config's plus the registered ones."""
        return dict(all_repositories(self.cfg, self.layout))


# -- the handlers (apply to the table in memory; validate everything first) ----------------

def acquire_handler(lk: Locks, req: dict[str, Any]) -> None:
    """acquire {job, repos, exclusive, seq, created_at}: queue the job (no-op if known)."""
    job = job_of(req)
    repos, exclusive, seq = req.get("repos"), req.get("exclusive", False), req.get("seq")
    if (not isinstance(repos, list) or not repos
            or not all(isinstance(r, str) and r for r in repos) or len(set(repos)) != len(repos)):
        raise BadRequest("'repos' must be a non-empty list of distinct repository names")
    if not isinstance(exclusive, bool):
        raise BadRequest("'exclusive' must be true or false")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise BadRequest("'seq' must be an integer")
    created = req.get("created_at")
    want = Want(tuple(repos), exclusive, seq, created if isinstance(created, str) else None)
    if acquire(lk.table, job, want):
        lk.touched.add(job)
        lk.log.info("lock requested", job=job, repos=repos, exclusive=exclusive)


def release_handler(lk: Locks, req: dict[str, Any]) -> None:
    """release {job}: free what the job holds, leave its queues (no-op if unknown)."""
    job = job_of(req)
    held = lk.table.holds(job)
    if release(lk.table, job):
        lk.touched.add(job)
        lk.log.info("locks released", job=job, repos=held, request=req["id"])


def reap_handler(lk: Locks, req: dict[str, Any]) -> None:
    """reap {jobs}: the reaper saw these jobs finished or unknown while they hold or wait
    for a lock. The worker decides (law 1): it frees each one the job queue, read now, says
    is finished or does not know; a job it says is live keeps its place (and is logged)."""
    jobs = req.get("jobs")
    if not isinstance(jobs, list) or not all(isinstance(j, str) and j for j in jobs):
        raise BadRequest("'jobs' must be a list of job ids")
    mentioned = [job for job in jobs if lk.table.knows(job)]
    if not mentioned:
        return
    try:
        queue = _open_queue(lk.layout)
    except (OSError, WalError, QueueError) as exc:
        lk.log.warning("cannot read the job queue: the reaper's request is dropped (it "
                       "asks again next pass)", error=str(exc), request=req["id"])
        return
    try:
        states = {job: None if queue is None else queue.state(job) for job in mentioned}
    finally:
        if queue is not None:
            queue.close()
    for job, state in states.items():
        if state is not None and state not in TERMINAL_STATES:
            lk.log.warning("the reaper asked to free the locks of a live job: kept", job=job,
                           state=state, request=req["id"])
            continue
        held = lk.table.holds(job)
        if release(lk.table, job):
            lk.touched.add(job)
            lk.log.info("locks of a finished or unknown job released (reaper)", job=job,
                        state=state, repos=held, request=req["id"])


#: request kind -> handler.
HANDLERS: dict[str, Callable[[Locks, dict[str, Any]], None]] = {
    ACQUIRE: acquire_handler,
    RELEASE: release_handler,
    REAP: reap_handler,
}


# -- saving, granting, hinting --------------------------------------------------------------

def save(lk: Locks, known: dict[str, Any] | None = None, *, pages_first: bool = False,
         between: Callable[[], object] = lambda: None) -> bool:
    """Write what the pass changed: state.json (held, and the jobs `blocked` on a
    repository not in `known`) unless it says that already, then `between()` (the grant
    hints: the scheduler needs state.json only), then the changed pages. state.json goes
    first, so a granted job is recorded holding before it leaves its page; `pages_first`
    when state.json is not yet the table's (rebuilt, or of an earlier version whose wants
    it held), so that it is replaced only once the pages are whole. True if state.json
    was written."""
    assert lk.pages is not None
    rec = held_record(lk.table, blocked(lk.table, lk.known() if known is None else known))
    wants = lk.table.wants        # new waiting jobs are paged in their order in line, so
    lk.pages.sync(lk.table, sorted(  # that FIFO grants empty the oldest pages first
        lk.touched, key=lambda job: (wants[job].seq, job) if job in wants else (0, job)))
    lk.touched.clear()
    if pages_first:
        lk.pages.flush(lk.table)
    wrote = rec != lk.saved
    if wrote:
        write_record(WORKER_STATE, lk.layout.worker_state(NAME), rec)
        lk.saved = rec
    between()
    if not pages_first:
        lk.pages.flush(lk.table)
    return wrote


def _hint(lk: Locks, jobs: Iterable[str]) -> int:
    """Drop `granted-<job>` into the scheduler's inbox for each job; how many. Without
    fsyncs: state.json, durable already, says the job holds (the hint wakes the
    scheduler, which dispatches from state.json; a hint a power cut takes changes nothing)."""
    n = 0
    for job in jobs:
        send_request(lk.layout, "scheduler", granted_hint(job, created_at=lk.clock.iso_now()),
                     durable=False)
        n += 1
    return n


def _hint_next(lk: Locks) -> int:
    """Drop `next-<job>` into the scheduler's inbox for each job newly first in line for a
    repository held for a whole run (locktable.next_in_line), after the grant hints and
    without fsyncs: the scheduler may make its workspace while the holder runs. How many."""
    now = next_in_line(lk.table)
    new = sorted(now - lk.told)
    for job in new:
        send_request(lk.layout, "scheduler", next_hint(job, created_at=lk.clock.iso_now()),
                     durable=False)
    lk.told = now
    return len(new)


def settle(lk: Locks, *, hint: bool = True, pages_first: bool = False) -> list[str]:
    """Grant what is free, save what changed, hinting the granted jobs as soon as
    state.json says they hold (before the pages are written: the hand-off waits for no
    page)."""
    known = lk.known()
    granted = grant(lk.table, lk.clock.iso_now(), lambda repo: repo in known)
    lk.touched.update(granted)

    def hints() -> None:
        for job in granted:
            lk.log.info("locks granted", job=job, repos=lk.table.holds(job))
        if hint:
            _hint(lk, granted)

    save(lk, known, pages_first=pages_first, between=hints)
    if hint:
        _hint_next(lk)    # after the pages: off the hand-off, which the grant hint began
    return granted


def _order(item: tuple[int, tuple[Path, dict[str, Any]]]) -> tuple[int, int, int]:
    """Acquires first, by seq; then everything else in arrival order."""
    i, (_, req) = item
    seq = req.get("seq")
    if req.get("kind") == ACQUIRE and isinstance(seq, int) and not isinstance(seq, bool):
        return (0, seq, i)
    return (0, 0, i) if req.get("kind") == ACQUIRE else (1, 0, i)


def _reject(path: Path, why: str, log: Log) -> None:
    log.warning("malformed request quarantined", path=str(path), moved_to=quarantine(path),
                reason=why)


def one_pass(lk: Locks) -> int:
    """Apply every request in the inbox, grant, save, hint, then remove them; how many."""
    if stop_requested():
        return 0
    taken: list[Path] = []
    requests = sorted(enumerate(inbox_requests(lk.layout.inbox(NAME), lk.log)), key=_order)
    for _, (path, req) in requests:
        handler = HANDLERS.get(req["kind"])
        if handler is None:
            _reject(path, f"unknown request kind {req['kind']!r}", lk.log)
            continue
        try:
            handler(lk, req)
        except BadRequest as exc:
            _reject(path, str(exc), lk.log)
            continue
        taken.append(path)
    settle(lk)            # state.json is durable before any request that changed it goes
    for path in taken:    # acquires before releases (the sort order)
        remove(path)
    return len(taken)


# -- recovery ----------------------------------------------------------------------------------

def rebuild(queue: JobQueue, repositories: dict[str, Any], log: Log, now: str) -> Table:
    """The table the WAL implies (state.json lost): starting jobs and running ones that
    hold for their whole run hold their repos; waiting jobs queue again in FIFO order."""
    table = Table()
    for state in ("starting", "running"):
        for job in queue.ids(state):
            entry = queue.get(job)
            repos = [str(r) for r in (entry or {}).get("repos") or []]
            if entry is None or not repos:
                continue
            whole_run = exclusive_for(entry, repositories)
            if state == "running" and not whole_run:
                continue
            dispatched = entry.get("dispatched_at")
            since = dispatched if isinstance(dispatched, str) else now
            for repo in repos:
                other = table.holder(repo)
                if other is None:
                    table.held[repo] = Lock(job, since, whole_run)
                else:
                    log.warning("two active jobs claim one repository lock; the first keeps it",
                                repo=repo, holder=other, job=job)
    seq = 0
    for job in queue.ids("waiting"):
        entry = queue.get(job)
        repos = [str(r) for r in (entry or {}).get("repos") or []]
        if entry is None or not repos:
            continue
        recorded = entry.get("lock_seq")
        seq = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) \
            else seq + 1
        created = entry.get("created_at")
        acquire(table, job, Want(tuple(repos), exclusive_for(entry, repositories), seq,
                                 created if isinstance(created, str) else None))
    return table


def reconcile(table: Table, state_of: Callable[[str], str | None]) -> list[str]:
    """Drop the jobs the WAL says are terminal or does not know, the wants of jobs it does
    not say are waiting (a job wants only while it waits), and the non-exclusive locks of
    running jobs (their clone is done); the jobs dropped, sorted. One look per job."""
    states = {job: state_of(job) for job in table.jobs()}
    stale = {job for job, state in states.items() if state is None or state in TERMINAL_STATES}
    stale |= {job for job in table.wants if states[job] != "waiting"}
    stale |= {lock.job for lock in table.held.values()
              if not lock.exclusive and states[lock.job] == "running"}
    return drop(table, sorted(stale))


def _open_queue(layout: Layout) -> JobQueue | None:
    """The scheduler's WAL, read-only; None when it was never created (no jobs yet)."""
    if not layout.wal_dir.exists():
        return None
    return JobQueue.open(layout.wal_dir, readonly=True)


def _read_table(layout: Layout) -> tuple[Table | None, Missing | Corrupt | None,
                                         dict[int, dict[str, Want]], dict[str, Any] | None]:
    """The table from state.json and its pages, as the owner reads it (anything unusable
    is moved aside: state.json as Corrupt; a page makes the table Corrupt too, since what
    it held is lost and the WAL must be asked), and the pages as read."""
    path = layout.worker_state(NAME)
    rec = read_record(WORKER_STATE, path, owner=True)
    if not isinstance(rec, dict):
        return None, rec, {}, None
    pages, problems = read_pages(layout, owner=True)
    if problems:
        return None, Corrupt(str(layout.lock_pages), None,
                             "a page of waiting jobs was corrupt: " + problems[0]), {}, None
    table = from_parts(rec, pages.values())
    if isinstance(table, Table):
        return table, None, pages, {k: v for k, v in rec.items() if k not in ("schema", "v")}
    return None, Corrupt(str(path), quarantine(path), table), {}, None


def _waiting_holders(table: Table, state_of: Callable[[str], str | None] | None
                     ) -> list[str]:
    holders = list(dict.fromkeys(lock.job for lock in table.held.values()))
    return [job for job in holders if state_of is None or state_of(job) == "waiting"]


def recover(cfg: Config, layout: Layout, log: Log, *, clock: Clock = SYSTEM_CLOCK
            ) -> tuple[Locks, dict[str, Any], dict[str, Any], list[str]]:
    """Rebuild the table from state.json and the WAL: (locks, found, did, degraded).

    OSError: the state folder cannot be used.
    """
    ensure_dir(layout.lock_pages)               # and locks/, made durable, if missing
    table, problem, pages, rec = _read_table(layout)
    lk = Locks(cfg, layout, log, clock=clock)
    assert lk.pages is not None
    degraded: list[str] = []
    if isinstance(problem, Corrupt):
        log.warning("locks state corrupt, rebuilding it from the job queue", path=problem.path,
                    moved_to=problem.moved_to, reason=problem.reason)
        where = f"moved to {problem.moved_to}" if problem.moved_to else problem.reason
        degraded.append(f"locks state was corrupt: {where}; rebuilt from the job queue")
    found = {"state": "read" if table is not None
             else "missing" if isinstance(problem, Missing) else "corrupt",
             "held": 0 if table is None else len(table.held),
             "waiting": 0 if table is None else len(table.wants)}
    queue: JobQueue | None = None
    readable = True
    try:
        queue = _open_queue(layout)
    except (OSError, WalError, QueueError) as exc:
        readable = False
        log.error("cannot read the job queue: locks not reconciled", error=str(exc))
        degraded.append(f"job queue unreadable ({exc}): locks not reconciled")
    try:
        state_of: Callable[[str], str | None] = (
            queue.state if queue is not None else lambda job: None)   # no WAL: no jobs
        # Wants not on a page yet (a table rebuilt from the WAL, or read from a state.json
        # of an earlier version, which held them) are paged anew: pages first, state.json
        # last, so that what it replaces stays the table until the pages are whole.
        anew = table is None
        if table is None:
            table = Table() if queue is None else rebuild(queue, lk.known(), log, clock.iso_now())
            lk.pages.abandon(page_numbers(layout))
        else:
            lk.pages.load(pages, table)
            lk.saved = rec
        lk.touched.update(job for job in table.wants if job not in lk.pages.page_of)
        anew = anew or bool(lk.touched)
        lk.table = table
        dropped = reconcile(table, state_of) if readable else []
        lk.touched.update(dropped)
        granted = settle(lk, hint=False, pages_first=anew)
        hinted = _hint(lk, _waiting_holders(table, state_of if readable else None))
        _hint_next(lk)
    finally:
        if queue is not None:
            queue.close()
    for job in dropped:
        log.info("locks of a finished or unknown job dropped", job=job)
    did = {"state": "read" if found["state"] == "read" else "rebuilt", "dropped": dropped,
           "granted": granted, "hinted": hinted, "held": len(table.held),
           "waiting": len(table.wants)}
    return lk, found, did, degraded


# -- the loop ----------------------------------------------------------------------------------

def serve(lk: Locks, waiter: Waiter, *, stop: Callable[[], bool] = stop_requested,
          retry: WriteRetry | None = None) -> Locks:
    """A pass on every hint (or rescan) until `stop()`. A pass that fails to write
    (ENOSPC, EIO: state.json, a page, a hint, a request's removal) rebuilds the worker
    from its files after a backoff and passes again (see _pass), never an exit. The
    Locks in use at the end."""
    retry = retry if retry is not None else WriteRetry(lk.clock)
    while not stop():
        if waiter.wait(None) and not stop():
            lk = _pass(lk, retry, stop)
    return lk


def _pass(lk: Locks, retry: WriteRetry, stop: Callable[[], bool]) -> Locks:
    """One pass; after a failed write, wait (1, 2, 4 .. 30 s), rebuild from the files as
    a restart would (law 4: what the failed pass held in memory is dropped, its requests
    are still in the inbox, since they go only once state.json is durable) and pass
    again, until one pass succeeds or a stop. A grant is hinted only once state.json
    says it holds, and the rebuild hints a holder still waiting: none is lost, and a
    holder is never granted twice (its acquire, taken again, finds it holding)."""
    broken = False
    while not stop():
        try:
            if broken:
                lk, _, did, _ = recover(lk.cfg, lk.layout, lk.log, clock=lk.clock)
                lk.log.info("lock table read again after a failed write", held=did["held"],
                            waiting=did["waiting"], granted=len(did["granted"]))
                broken = False
            one_pass(lk)
            retry.ok()
            return lk
        except OSError as exc:
            broken = True
            lk.log.error("a write failed: the lock table is read again from its files",
                         error=str(exc), errno=exc.errno, retry_in_s=retry.delay)
            if not retry.wait(stop):
                break
    return lk


def main(cfg: Config) -> int:
    """Recover the lock table, report ready, then serve the inbox until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    try:
        got = until_written("recovery", lambda: recover(cfg, layout, log), log)
    except OSError as exc:
        log.error("recovery failed", error=str(exc))
        return EXIT_RECOVERY_FAILED
    if got is None:
        return EXIT_OK                        # stopped while the disk was full
    lk, found, did, degraded = got
    inbox = layout.inbox(NAME)
    with Watcher([inbox], log=log) as watcher:
        report_ready(layout, NAME, found=found, did=did, degraded=degraded,
                     started_monotonic=started, started_at=started_at)
        log.info("ready", held=did["held"], waiting=did["waiting"], dropped=len(did["dropped"]),
                 granted=len(did["granted"]))
        serve(lk, watcher)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_standalone(NAME, main))
