"""The scheduler worker: owns the job queue (its WAL), takes submissions and cancels, runs jobs.

Recovery replays the WAL and re-attaches every starting/running job before ready is
reported; then one loop: the inbox, a tick of the active jobs, dispatch. docs/JOBS.md
tells the inbox kinds, the crash argument and the loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
)
from supervisor.scheduler import dispatch as _dispatch
from supervisor.scheduler.dispatch import Jobs, Launcher
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.layout import Layout
from supervisor.state.locktable import GRANTED
from supervisor.state.queue import JobQueue, QueueError
from supervisor.state.submission import JobError, check_request
from supervisor.state.wal import WalError

__all__ = ["CANCEL_REASON", "HANDLERS", "NAME", "Scheduler", "cancel",
           "job_exited", "lock_granted", "main", "one_pass", "recover", "serve", "submit",
           "take_inbox"]

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
    try:
        jobs = check_request(req)
    except JobError as exc:
        raise BadRequest(str(exc)) from None
    workspace = _former(lambda job_id: s.cfg.workspace_dir / job_id)
    entries = []
    for job in jobs:       # the request's own dicts become the entries: no copy
        job_id = job["id"]
        job["workspace"] = workspace(job_id)
        entries.append((job_id, job))
    added = s.queue.enqueue_many(entries, count="submitted")
    new = sum(added)
    if new < len(entries):
        known = [job_id for (job_id, _), ok in zip(entries, added, strict=True) if not ok]
        s.log.info("submit: jobs already known skipped (replay)", request=req["id"],
                   skipped=len(known), first=known[:5])
    s.log.info("jobs submitted", request=req["id"], queued=new)


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


def lock_granted(s: Scheduler, req: dict[str, Any]) -> None:
    """The locks worker granted a job its locks: nothing to do here, the pass's dispatch
    reads the grant from locks/state.json (the hint only woke the loop)."""
    job_id = job_of(req)
    s.log.info("lock granted", job=job_id, state=s.queue.state(job_id))


#: request kind -> handler.
HANDLERS: dict[str, Callable[[Scheduler, dict[str, Any]], None]] = {
    "submit": submit,
    "cancel": cancel,
    "job_exited": job_exited,
    GRANTED: lock_granted,
}


# -- the worker -------------------------------------------------------------------------------

def take_inbox(s: Scheduler) -> int:
    """Handle every request waiting in the inbox; how many were handled."""
    return handle_inbox(s.layout.inbox(NAME), HANDLERS, s, s.log)


def one_pass(s: Scheduler, *, inbox: bool = True) -> None:
    """One pass of the event loop: take the inbox (when told to), tick every starting/
    running job, then dispatch queued jobs to the free slots."""
    if inbox:
        take_inbox(s)
    if s.jobs.active and not stop_requested():
        _dispatch.tick_all(s.jobs)
    _dispatch.dispatch(s.jobs)


def serve(s: Scheduler, watcher: Watcher, *, clock: Clock = SYSTEM_CLOCK) -> None:
    """The loop until SIGTERM: a pass on every inbox hint (or rescan) and, while any job is
    starting/running, every tick interval; with none, asleep until a hint."""
    interval = _dispatch.tick_interval(s.cfg)
    next_tick = clock.monotonic() + interval
    # a workspace clone that ends wakes the loop (a waiter without wake: the next tick)
    s.jobs.wake = getattr(watcher, "wake", s.jobs.wake)
    while not stop_requested():
        timeout = (0.0 if s.jobs.backlog
                   else max(0.0, next_tick - clock.monotonic()) if s.jobs.active else None)
        hinted = watcher.wait(timeout)
        if stop_requested():
            break
        due = clock.monotonic() >= next_tick
        if hinted or due or s.jobs.backlog:
            one_pass(s, inbox=hinted)
        if due or not s.jobs.active:
            next_tick = clock.monotonic() + interval


def recover(cfg: Config, layout: Layout, log: Log, *, launcher: Launcher | None = None
            ) -> tuple[Scheduler, dict[str, Any], dict[str, Any], list[str]]:
    """Open (replay) the job queue and re-attach its jobs: (scheduler, found, did, degraded).

    OSError, WalError or QueueError: the queue cannot be opened at all.
    """
    queue = JobQueue.open(layout.wal_dir)
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
    return Scheduler(cfg, layout, queue, log, jobs), found, did, degraded


def main(cfg: Config) -> int:
    """Recover the queue and the jobs, report ready, then serve until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    try:
        s, found, did, degraded = recover(cfg, layout, log)
    except (OSError, WalError, QueueError) as exc:
        log.error("recovery failed: cannot open the job queue", wal=str(layout.wal_dir),
                  error=str(exc))
        return EXIT_RECOVERY_FAILED
    try:
        with Watcher([layout.inbox(NAME)], log=log) as watcher:
            report_ready(layout, NAME, found=found, did=did, degraded=degraded,
                         started_monotonic=started, started_at=started_at)
            log.info("ready", jobs=found["jobs"], replayed=found["records_replayed"],
                     reattached=did["reattached"], finalized=did["finalized"],
                     lost=did["lost"], stale=did["stale"])
            serve(s, watcher)
    finally:
        s.queue.close()
    return EXIT_OK

