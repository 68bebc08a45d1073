"""The scheduler worker: owns the job queue (its WAL), takes submissions and cancels, runs jobs.

Recovery replays the WAL and re-attaches every starting/running job before ready is
reported; then one loop: the inbox, a tick of the active jobs, dispatch. docs/JOBS.md
tells the inbox kinds, the crash argument and the loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from watchdog.events import FileModifiedEvent, FileMovedEvent

from supervisor import log as _log
from supervisor.config import Config
from supervisor.runtime import (
    EXIT_OK,
    EXIT_RECOVERY_FAILED,
    BadRequest,
    Log,
    NotYet,
    Watcher,
    handle_inbox,
    job_of,
    report_ready,
    stop_requested,
    until_written,
)
from supervisor.scheduler import dispatch as _dispatch
from supervisor.scheduler import queued as _queued
from supervisor.scheduler.dispatch import Jobs, Launcher
from supervisor.scheduler.launch import start_spawner
from supervisor.state.atomic import CORRUPT_MARK, utc_stamp, write_json
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.fs import FS, REAL
from supervisor.state.jobs import valid_job_id
from supervisor.state.layout import Layout
from supervisor.state.locktable import GRANTED, NEXT, is_lock_hint
from supervisor.state.queue import SUBLOG_COUNTER, JobQueue, QueueError
from supervisor.state.sublog import LogReader
from supervisor.state.submission import JobError, check_request
from supervisor.state.wal import WalError

__all__ = ["CANCEL_REASON", "HANDLERS", "NAME", "Scheduler", "cancel",
           "job_exited", "lock_granted", "lock_next", "main", "one_pass", "pause", "recover",
           "resume", "serve", "submit", "submit_many", "take_inbox"]

NAME = "scheduler"
CANCEL_REASON = "cancelled by operator"


@dataclass
class Scheduler:
    """What the worker holds: the open queue (all job state lives in it), where things go,
    and the running of jobs (`jobs`, whose only memory is rebuilt from the queue)."""

    cfg: Config
    layout: Layout
    queue: JobQueue
    log: Log
    jobs: Jobs
    fs: FS = REAL                    # the queue's file system seam (tests inject faults)
    sublog: LogReader | None = None  # follows the api's submission log (made on first use)


# -- submit ---------------------------------------------------------------------------------

def _former(path_of: Callable[[str], os.PathLike[str]]) -> Callable[[str], str]:
    """A fast `lambda job_id: str(path_of(job_id))` for valid job ids (no '/' in them).

    `path_of` (a Layout method, or the workspace rule) is called once with a probe id; the
    result's prefix and suffix are then joined around each id.
    """
    probe = "\0"
    parts = str(path_of(probe)).split(probe)
    if len(parts) != 2:
        return lambda job_id: str(path_of(job_id))
    prefix, suffix = parts
    return lambda job_id: f"{prefix}{job_id}{suffix}"


def submit(s: Scheduler, req: dict[str, Any]) -> None:
    """Enqueue the request's jobs not known yet (idempotent by job id)."""
    outcome = submit_many(s, [req])[0]
    if outcome is not None:
        raise outcome


def submit_many(s: Scheduler, reqs: list[dict[str, Any]],
                logged: Sequence[dict[str, Any]] = ()) -> list[Exception | None]:
    """Enqueue the jobs not known yet of every submit request waiting, and of the api's
    submission log records not enqueued yet (`logged`: state.sublog, each with its seq),
    in ONE atomic, durable WAL group (one fsync for them all) that also advances the
    queue's SUBLOG_COUNTER to the last record's seq: a crash keeps the jobs and the
    bookmark together, or neither. One group, so a job may name a dependency from the
    other door (`--after` an id the api took, or the other way round). Per request None,
    or BadRequest when its jobs fail the check (that one alone is quarantined, the others
    are enqueued; a record of the log that fails it is logged and passed over: the api
    wrote it after the same check, so only a bug makes one). Idempotent by job id, as
    `submit`; the jobs go in request order (created_at), whichever door."""
    workspace = _former(lambda job_id: s.cfg.workspace_dir / job_id)
    outcomes: list[Exception | None] = []
    entries: list[tuple[str, dict[str, Any]]] = []
    spans: list[tuple[dict[str, Any], int, int]] = []    # (request, first entry, end)
    taken: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for req in reqs:
        try:
            jobs = check_request(req)
        except JobError as exc:
            outcomes.append(BadRequest(str(exc)))
            continue
        outcomes.append(None)
        taken.append((req, jobs))
    consumed = s.queue.counter(SUBLOG_COUNTER)
    advance = 0
    for rec in logged:
        seq = rec["seq"]
        if seq <= consumed:                 # enqueued already (a stale reader)
            continue
        advance = max(advance, seq - consumed)
        try:
            taken.append((rec, check_request(rec)))
        except JobError as exc:
            _refused_record(s, rec, exc)
    if len(taken) > 1:
        taken.sort(key=lambda t: str(t[0].get("created_at") or ""))
    for req, jobs in taken:
        first = len(entries)
        for job in jobs:       # the request's own dicts become the entries: no copy
            job_id = job["id"]
            if "resume_of" not in job:   # a resumed job runs in its predecessor's workspace
                job["workspace"] = workspace(job_id)
            entries.append((job_id, job))
        spans.append((req, first, len(entries)))
    if not entries and not advance:
        return outcomes
    added = s.queue.enqueue_many(entries, count="submitted",
                                 counters={SUBLOG_COUNTER: advance})
    now = s.jobs.clock.time()
    for (job_id, body), fresh in zip(entries, added, strict=True):
        if fresh:
            doomed = _queued.add(s.jobs.runnable, s.queue, {**body, "state": "queued"}, now)
            if doomed is not None:
                s.jobs.doomed.append((job_id, doomed))
    for req, first, end in spans:
        new = sum(added[first:end])
        if new < end - first:
            known = [job_id for (job_id, _), ok in zip(entries[first:end], added[first:end],
                                                       strict=True) if not ok]
            s.log.info("submit: jobs already known skipped (replay)", request=req["id"],
                       skipped=len(known), first=known[:5])
        s.log.info("jobs submitted", request=req["id"], queued=new,
                   **({"seq": req["seq"]} if "seq" in req else {}))
    return outcomes


# -- cancel, job_exited ---------------------------------------------------------------------

def cancel(s: Scheduler, req: dict[str, Any]) -> None:
    """Cancel one job according to its current state (idempotent)."""
    job_id = job_of(req)
    if _dispatch.cancel(s.jobs, job_id) is None:
        # Its submit may not be here yet (batchctl saw it pending in the inbox, and a
        # listing can miss a file renamed in meanwhile): keep the request until it is.
        raise NotYet(f"no job {job_id!r} yet")


def job_exited(s: Scheduler, req: dict[str, Any]) -> None:
    """An adaptor wrote its result: tick that job now rather than at the next tick."""
    job_id = job_of(req)
    if job_id not in s.jobs.active:
        state = s.queue.state(job_id)
        s.log.info("job_exited: job not starting/running, nothing to do", job=job_id,
                   state=state, request=req["id"])
        return
    _dispatch.tick_job(s.jobs, job_id)


def pause(s: Scheduler, req: dict[str, Any]) -> None:
    """Start no new job until resumed (durable first: a restart stays paused)."""
    _set_paused(s, True, req)


def resume(s: Scheduler, req: dict[str, Any]) -> None:
    """Start jobs again."""
    _set_paused(s, False, req)


def _set_paused(s: Scheduler, paused: bool, req: dict[str, Any]) -> None:
    if s.jobs.paused == paused and s.layout.paused_file.exists():
        return                                    # a replay, or asked twice: no change
    since = req.get("created_at") if isinstance(req.get("created_at"), str) else iso_now()
    _queued.Paused(paused, since if paused else None).write(s.layout)
    s.jobs.paused = paused
    s.log.info("paused: no new job starts" if paused else "resumed: jobs start again",
               request=req["id"])


def forget(s: Scheduler, req: dict[str, Any]) -> None:
    """The reaper archived these finished jobs and removed their folders: they leave the
    queue (one WAL write; a job not finished, or already gone, is left as it is)."""
    asked = req.get("jobs")
    if not isinstance(asked, list) or not all(isinstance(i, str) and valid_job_id(i)
                                              for i in asked):
        raise BadRequest("'jobs' must be a list of job ids")
    gone = s.jobs.batches.forget(s.queue, lambda: s.queue.forget(asked))
    s.log.info("jobs forgotten", request=req["id"], forgotten=len(gone),
               kept=len(asked) - len(gone))


def lock_granted(s: Scheduler, req: dict[str, Any]) -> None:
    """The locks worker granted a job its locks: nothing to do here, the pass's dispatch
    reads the grant from locks/state.json (the hint only woke the loop)."""
    job_id = job_of(req)
    s.log.info("lock granted", job=job_id, state=s.queue.state(job_id))


def lock_next(s: Scheduler, req: dict[str, Any]) -> None:
    """The locks worker says a waiting job is first in line behind a holder that keeps its
    repository for its whole run: its workspace may be made meanwhile (scheduler.ahead;
    started by the pass's make_ahead). A job no longer waiting is passed over."""
    job_id = job_of(req)
    entry = s.queue.get(job_id)
    if entry is not None and entry.get("state") == "waiting" and s.jobs.ahead.want(entry):
        s.log.debug("next in line: its workspace may be made ahead", job=job_id)


#: request kind -> handler.
HANDLERS: dict[str, Callable[[Scheduler, dict[str, Any]], None]] = {
    "submit": submit,
    "cancel": cancel,
    "pause": pause,
    "resume": resume,
    "job_exited": job_exited,
    "forget": forget,
    GRANTED: lock_granted,
    NEXT: lock_next,
}


# -- the worker -------------------------------------------------------------------------------

def _refused_record(s: Scheduler, rec: dict[str, Any], exc: Exception) -> None:
    """A record of the api's log that fails the check (only a bug makes one: the api
    wrote it after the same check) is passed over, as a bad request file would be
    quarantined: its content is kept aside, durably, as the scheduler's own
    `sublog-<seq>.json.corrupted.<ts>` (removed by retention.corrupted), and said loudly.
    The bookmark moves past it: one bad record must not stop every later submission."""
    path = s.layout.worker_dir(NAME) / f"sublog-{rec['seq']}.json{CORRUPT_MARK}{utc_stamp()}"
    try:
        write_json(path, rec)
    except OSError as err:
        s.log.error("cannot keep a refused record aside", path=str(path), error=str(err))
    s.log.error("a record of the api's submission log refused: passed over, kept aside",
                seq=rec["seq"], request=rec.get("id"), error=str(exc), kept=str(path))


def take_inbox(s: Scheduler) -> int:
    """Handle every request waiting in the inbox and every record of the api's submission
    log not enqueued yet (the submits of both all at once: submit_many); how many were
    handled. The log is read before the inbox is listed: a request that names a job the
    api took earlier then finds that job's record in the same group."""
    logged = _logged(s)

    def submit_all(ctx: Scheduler, reqs: list[dict[str, Any]]) -> list[Exception | None]:
        return submit_many(ctx, reqs, logged)

    return len(logged) + handle_inbox(
        s.layout.inbox(NAME), HANDLERS, s, s.log, together={"submit": submit_all},
        always=("submit",) if logged else (), hint=is_lock_hint)


def _logged(s: Scheduler) -> list[dict[str, Any]]:
    """The api's submission log records above the queue's bookmark (none when the log
    cannot be read: said in the log, and read again at the next pass)."""
    if s.sublog is None:
        s.sublog = LogReader(s.layout.sublog_dir)
    unreadable = s.sublog.unreadable
    try:
        s.sublog.refresh()
    except OSError as exc:
        s.log.error("cannot read the api's submission log", path=str(s.sublog.folder),
                    error=str(exc))
        return []
    if s.sublog.unreadable > unreadable:
        s.log.error("records of the api's submission log that are not submissions: "
                    "passed over", path=str(s.sublog.folder),
                    records=s.sublog.unreadable - unreadable)
    return s.sublog.pending(s.queue.counter(SUBLOG_COUNTER))


def one_pass(s: Scheduler, *, inbox: bool = True) -> None:
    """One pass of the event loop: take the inbox (when told to), tick every starting/
    running job, then dispatch queued jobs to the free slots."""
    if inbox:
        take_inbox(s)
    if s.jobs.active and not stop_requested():
        _dispatch.tick_all(s.jobs)
    _dispatch.dispatch(s.jobs)
    _dispatch.make_ahead(s.jobs)


def _sleep_for(s: Scheduler, next_tick: float, clock: Clock) -> float | None:
    """How long the loop may sleep: not at all with work left over, until the next tick
    while jobs are active, until the first delayed job's time (a timer, not a poll)."""
    if s.jobs.backlog or s.jobs.doomed:
        return 0.0
    waits = []
    if s.jobs.active:
        waits.append(max(0.0, next_tick - clock.monotonic()))
    delayed = None if s.jobs.paused else s.jobs.next_due()
    if delayed is not None:
        waits.append(max(0.0, delayed - clock.time()))
    if s.jobs.disk_low is not None:
        waits.append(_dispatch.DISK_RECHECK)
    return min(waits) if waits else None


#: After a failed write (a full or failing disk) the scheduler reopens its queue from disk
#: after this many seconds, doubling up to WRITE_RETRY_MAX while writes keep failing.
WRITE_RETRY_FIRST = 1.0
WRITE_RETRY_MAX = 30.0


def _reopen(s: Scheduler, exc: Exception, delay: float, clock: Clock) -> Scheduler | None:
    """After a pass failed to write (ENOSPC, EIO, a poisoned WAL): what is in memory may
    be ahead of the disk, so drop it, wait `delay`, and rebuild everything from the disk
    (law 4) as a restart would — without exiting, so a full disk never makes a crash
    loop. Requests whose effect was not durable are still in the inbox (law 3) and are
    taken again. None if the reopen failed too (tried again later)."""
    s.log.error("a write failed: reopening the job queue from disk", error=str(exc),
                retry_in_s=delay)
    s.jobs.close_ahead(remove=True)
    s.queue.close()
    clock.sleep(delay)
    if stop_requested():
        return None
    try:
        fresh, _found, did, _degraded = recover(s.cfg, s.layout, s.log,
                                                launcher=s.jobs.launcher, fs=s.fs)
    except (OSError, WalError, QueueError) as again:
        s.log.error("reopening the job queue failed; tried again", error=str(again))
        return None
    fresh.jobs.measure = s.jobs.measure
    s.log.info("job queue reopened after a failed write", **{
        k: did[k] for k in ("reattached", "finalized", "lost") if k in did})
    return fresh


def serve(s: Scheduler, watcher: Watcher, *, clock: Clock = SYSTEM_CLOCK) -> Scheduler:
    """The loop until SIGTERM: a pass on every inbox hint (or rescan), while any job is
    starting/running every tick interval, and when a delayed job's time comes; with
    nothing to do, asleep until a hint. A pass that fails to write reopens the queue
    (see _reopen); the scheduler in use at the end is returned (its queue is open)."""
    interval = _dispatch.tick_interval(s.cfg)
    next_tick = clock.monotonic() + interval
    # a workspace clone that ends wakes the loop (a waiter without wake: the next tick)
    s.jobs.wake = getattr(watcher, "wake", s.jobs.wake)
    delay = WRITE_RETRY_FIRST
    reopened = False
    while not stop_requested():
        try:
            if reopened:                 # the inbox may hold what the failed pass left
                reopened = False
                one_pass(s, inbox=True)
            else:
                _serve_once(s, watcher, clock, next_tick)
            delay = WRITE_RETRY_FIRST
        except (OSError, WalError, QueueError) as exc:
            fresh = None
            while fresh is None and not stop_requested():
                fresh = _reopen(s, exc, delay, clock)
                delay = min(delay * 2, WRITE_RETRY_MAX)
            if fresh is None:
                break
            s, reopened = fresh, True
            s.jobs.wake = getattr(watcher, "wake", s.jobs.wake)
        if clock.monotonic() >= next_tick or not s.jobs.active:
            next_tick = clock.monotonic() + interval
    return s


def _serve_once(s: Scheduler, watcher: Watcher, clock: Clock, next_tick: float) -> None:
    """One wait and, when there is something to do, one pass."""
    timeout = _sleep_for(s, next_tick, clock)
    hinted = watcher.wait(timeout)
    if stop_requested():
        return
    due = clock.monotonic() >= next_tick
    delayed = s.jobs.next_due()
    ripe = delayed is not None and not s.jobs.paused and clock.time() >= delayed
    if hinted or due or ripe or s.jobs.backlog or s.jobs.doomed \
            or s.jobs.disk_low is not None:
        one_pass(s, inbox=hinted)


def recover(cfg: Config, layout: Layout, log: Log, *, launcher: Launcher | None = None,
            fs: FS = REAL) -> tuple[Scheduler, dict[str, Any], dict[str, Any], list[str]]:
    """Open (replay) the job queue and re-attach its jobs: (scheduler, found, did, degraded).

    OSError, WalError or QueueError: the queue cannot be opened at all.
    """
    queue = JobQueue.open(layout.wal_dir, fs=fs)
    report = queue.recovery
    jobs = Jobs.over(cfg, layout, queue, log, launcher=launcher)
    found = {
        "jobs": {state: n for state, n in queue.counts().items() if n},
        "records_replayed": report.records_replayed,
        "torn_bytes": report.torn_bytes_truncated,
        "quarantined": list(report.quarantined),
        "active": len(jobs.active),
    }
    degraded = [f"job queue: {error}" for error in report.errors]
    degraded += [f"job queue file quarantined: {path}" for path in report.quarantined]
    try:
        did: dict[str, Any] = {"truncated_bytes": report.torn_bytes_truncated,
                               "quarantined": len(report.quarantined),
                               **_dispatch.reattach(jobs),
                               "lock_requests_resent": _dispatch.resume_waiting(jobs)}
    except BaseException:
        queue.close()
        raise
    return Scheduler(cfg, layout, queue, log, jobs, fs), found, did, degraded


def main(cfg: Config) -> int:
    """Recover the queue and the jobs, report ready, then serve until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    spawner = start_spawner(cfg.launcher)     # it boots while the queue is recovered
    if spawner is not None:
        log.info("fork server started", pid=spawner)
    try:
        got = until_written("opening the job queue", lambda: recover(cfg, layout, log), log)
    except (OSError, WalError, QueueError) as exc:
        log.error("recovery failed: cannot open the job queue", wal=str(layout.wal_dir),
                  error=str(exc))
        return EXIT_RECOVERY_FAILED
    if got is None:
        return EXIT_OK                        # stopped while the disk was full
    s, found, did, degraded = got
    try:
        # a request arrives by a rename (layout.send_request): a moved event is the hint;
        # the temp file's create and writes, and the removals, are not (the periodic
        # rescan still finds a file dropped some other way)
        # the api's submission log grows by appends: a modification there is the hint
        with Watcher([layout.inbox(NAME), layout.sublog_dir], log=log,
                     events=[FileMovedEvent],
                     folder_events={layout.sublog_dir: [FileModifiedEvent]}) as watcher:
            report_ready(layout, NAME, found=found, did=did, degraded=degraded,
                         started_monotonic=started, started_at=started_at)
            log.info("ready", jobs=found["jobs"], replayed=found["records_replayed"],
                     reattached=did["reattached"], finalized=did["finalized"],
                     lost=did["lost"], stale=did["stale"])
            s = serve(s, watcher)
    finally:
        if s.jobs.slurm_side is not None:
            s.jobs.slurm_side.close()
        s.jobs.close_ahead()
        s.queue.close()
    return EXIT_OK

