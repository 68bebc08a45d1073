"""The scheduler worker: owns the job queue (its WAL), takes submissions and cancels, runs jobs.

Recovery (its start-up): `JobQueue.open(layout.wal_dir)` replays the write-ahead log —
loads the snapshot, truncates a torn tail, quarantines unreadable files — then every job
the WAL says is starting or running is looked at once (`_dispatch.reattach`): a result
finalizes it, a live adaptor with a fresh heartbeat is re-attached (counter `recovered`),
a stale one is warned about and kept, a dead one without a result is `lost`. Only then is
ready reported; the ready record says what it found (jobs by state, records replayed,
torn bytes, quarantined files, active jobs) and did (truncated, quarantined, reattached,
stale, finalized, lost, pending, relaunched). If the queue cannot be opened at all (the
wal folder is not a folder, unreadable) the worker exits 3 without reporting ready; it is
critical, so batchd stops its startup.

Inbox `scheduler/inbox/`: batchctl drops one REQUEST file per `submit` (all jobs of a
`--from` file in one) or `cancel`, atomically. The handler table `HANDLERS` maps the kind:

- submit {jobs: [job, ...]}: the whole request is checked first (a list of objects with
  valid, distinct ids, checked by state.submission's one validator: a submission cannot
  set a job's state, attempts or pid); a bad one is quarantined with no job queued (all
  or nothing, as batchctl promises). Then the jobs whose id the queue does not know yet go
  in with one `enqueue_many` (one fsync, `submitted` counted in the same write), each with
  its `workspace` (<workspace_dir>/<id>; a job that resumes another's session keeps the
  workspace the door gave it, its predecessor's) and `output_path`
  (<state_dir>/jobs/<id>/output).
- cancel {job} (always after the submits of the same pass; one for a job not known yet
  waits in the inbox until the job arrives, see runtime.NotYet): by the job's state
  (`_dispatch.cancel`, the lifecycle's table): queued/
  waiting -> cancelled now (finished_at, reason "cancelled by operator", counter
  `cancelled`); starting/running -> `cancel_requested: true`, then SIGTERM to the job's
  process group; cancelled when its result arrives, SIGKILL if it overstays; terminal ->
  nothing.
- job_exited {job}: an adaptor says its job has written its result: tick that job now
  (idempotent; an unknown or finished job is logged and the request removed).
- lock_granted {job} (`granted-<job>`, from the locks worker): a hint that the job now
  holds its repository locks. It only wakes the loop; the pass after the inbox reads the
  grant from locks/state.json (`_dispatch.dispatch`), so a lost hint costs a rescan.

Repository locks (LOCKS.md, and supervisor/locks.py for the crash windows): a queued job
with repositories becomes `waiting` and asks the locks worker for them; once state.json
shows it holding all of them it is dispatched, fetches and clones under them, and
releases them after the clone unless it holds them for its whole run (exclusive). At
start, after the re-attachment, every waiting job the lock table does not know asks
again (`_dispatch.resume_waiting`: the crash between its `waiting` record and its
acquire request), and every re-attached running non-exclusive job releases again.

Crash safety: the queue is durable when enqueue_many/update return; the request file is
removed only after that, so a crash in between leaves it and the next pass replays it.
The replay changes nothing: known ids are skipped (no duplicate job), a cancelled job is
terminal. A counter is written in the same atomic WAL group as what it counts (the jobs
enqueued, the terminal states), so a crash keeps both or neither: `stats` never drifts
from the jobs.

The loop (`serve`): on an inbox hint (or the watcher's rescan) and, while any job is
starting/running, every `_dispatch.tick_interval` (min(1 s, heartbeat/2)), one pass: take
the inbox (on a hint), tick every starting/running job, dispatch granted waiting jobs and
queued jobs while slots are free (`_dispatch.dispatch`). When that pass left queued jobs
it could have moved to waiting (`Jobs.backlog`: at most WAIT_BATCH per pass), the next
pass follows at once. With no active job the worker sleeps until a hint.
SIGTERM ends the loop after the current step; the jobs keep running and the next start
re-attaches them.

Ingestion speed: a 100,000-job request is checked and turned into queue entries with no
per-job Path arithmetic or repeated set building (the workspace and output paths are
string joins of prefixes computed once).
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
from supervisor.state.clock import iso_now
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
    output = _former(s.layout.job_output)
    entries = []
    for job in jobs:       # the request's own dicts become the entries: no copy
        job_id = job["id"]
        if "resume_of" not in job:   # a resumed job runs in its predecessor's workspace
            job["workspace"] = workspace(job_id)
        job["output_path"] = output(job_id)
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


def serve(s: Scheduler, watcher: Watcher, *,
          clock: Callable[[], float] = time.monotonic) -> None:
    """The loop until SIGTERM: a pass on every inbox hint (or rescan) and, while any job is
    starting/running, every tick interval; with none, asleep until a hint."""
    interval = _dispatch.tick_interval(s.cfg)
    next_tick = clock() + interval
    while not stop_requested():
        timeout = (0.0 if s.jobs.backlog else max(0.0, next_tick - clock()) if s.jobs.active
                   else None)
        hinted = watcher.wait(timeout)
        if stop_requested():
            break
        due = clock() >= next_tick
        if hinted or due or s.jobs.backlog:
            one_pass(s, inbox=hinted)
        if due or not s.jobs.active:
            next_tick = clock() + interval


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

