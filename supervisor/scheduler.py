"""The scheduler worker: owns the job queue (its WAL) and takes submissions and cancels.

Recovery (its start-up): `JobQueue.open(layout.wal_dir)` replays the write-ahead log —
loads the snapshot, truncates a torn tail, quarantines unreadable files — and the ready
record says what it found: jobs by state, records replayed, torn bytes, quarantined
files. If the queue cannot be opened at all (the wal folder is not a folder, unreadable)
the worker exits 3 without reporting ready; it is critical, so batchd stops its startup.

Inbox `scheduler/inbox/`: batchctl drops one REQUEST file per `submit` (all jobs of a
`--from` file in one) or `cancel`, atomically. The handler table `HANDLERS` maps the kind:

- submit {jobs: [job, ...]}: the whole request is checked first (a list of objects with
  valid, distinct ids, an agent, and no key outside JOB_KEYS: a submission cannot set a
  job's state, attempts or pid); a bad one is quarantined with no job queued (all or
  nothing, as batchctl promises). Then the jobs whose id the queue does not know yet go in with one
  `enqueue_many` (one fsync), each with its `workspace` (<workspace_dir>/<id>) and
  `output_path` (<state_dir>/jobs/<id>/output); `submitted` is incremented by their number.
- cancel {job}: by the job's state, per the table `CANCEL`: queued/waiting -> cancelled now
  (finished_at, reason "cancelled by operator", counter `cancelled`); starting/running ->
  `cancel_requested: true` (the kill arrives with the jobs issue); terminal -> nothing.

Crash safety: the queue is durable when enqueue_many/update return; the request file is
removed only after that, so a crash in between leaves it and the next pass replays it.
The replay changes nothing: known ids are skipped (no duplicate job), a cancelled job is
terminal. A counter is a separate WAL record written after its effect, so a crash between
the two loses that one increment and never counts twice (also when a power cut keeps only a
prefix of an enqueue_many batch: the replay queues and counts only the rest).

Dispatching queued jobs to adaptors arrives with the jobs issue: it slots into `one_pass`,
after the inbox.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor import _log
from supervisor._config import Config
from supervisor._jobs import SUBMIT_KEYS, iso_now, valid_job_id
from supervisor._layout import Layout
from supervisor._queue import TERMINAL_STATES, JobQueue, QueueError
from supervisor._runtime import (
    EXIT_OK,
    EXIT_RECOVERY_FAILED,
    BadRequest,
    Log,
    Watcher,
    handle_inbox,
    report_ready,
    run_loop,
    run_standalone,
)
from supervisor._wal import WalError

__all__ = ["CANCEL", "CANCEL_REASON", "HANDLERS", "JOB_KEYS", "NAME", "Scheduler", "cancel",
           "main", "one_pass", "recover", "submit"]

NAME = "scheduler"
CANCEL_REASON = "cancelled by operator"
#: What a submitted job may carry; everything else (state, attempts, pid...) is the queue's.
JOB_KEYS = SUBMIT_KEYS | {"created_at"}


@dataclass
class Scheduler:
    """What the worker holds: the open queue (all job state lives in it) and where things go."""

    cfg: Config
    layout: Layout
    queue: JobQueue
    log: Log


# -- submit ---------------------------------------------------------------------------------

def _checked_jobs(req: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's jobs if every one is usable, else BadRequest naming the first problem."""
    jobs = req.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise BadRequest("'jobs' must be a non-empty list")
    seen: set[str] = set()
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise BadRequest(f"jobs[{i}] is not an object")
        job_id = job.get("id")
        if not isinstance(job_id, str) or not valid_job_id(job_id):
            raise BadRequest(f"jobs[{i}].id {job_id!r} is not a valid job id")
        if job_id in seen:
            raise BadRequest(f"jobs[{i}].id {job_id!r} appears twice in the request")
        seen.add(job_id)
        extra = sorted(job.keys() - JOB_KEYS)
        if extra:
            raise BadRequest(f"jobs[{i}] ({job_id}) has keys a submission may not set: "
                             f"{', '.join(extra)}")
        if not isinstance(job.get("agent"), str):
            raise BadRequest(f"jobs[{i}].agent must be a string")
    return jobs


def submit(s: Scheduler, req: dict[str, Any]) -> None:
    """Enqueue the request's jobs not known yet (idempotent by job id)."""
    jobs = _checked_jobs(req)
    entries = []
    for job in jobs:
        entry = dict(job)
        entry["workspace"] = str(s.cfg.workspace_dir / job["id"])
        entry["output_path"] = str(s.layout.job_output(job["id"]))
        entries.append((job["id"], entry))
    added = s.queue.enqueue_many(entries)
    new = sum(added)
    if new:
        s.queue.incr("submitted", new)
    known = [job_id for (job_id, _), ok in zip(entries, added, strict=True) if not ok]
    if known:
        s.log.info("submit: jobs already known skipped (replay)", request=req["id"],
                   skipped=len(known), first=known[:5])
    s.log.info("jobs submitted", request=req["id"], queued=new)


# -- cancel ---------------------------------------------------------------------------------

def _cancel_now(s: Scheduler, job_id: str) -> None:
    s.queue.update(job_id, state="cancelled", finished_at=iso_now(), reason=CANCEL_REASON)
    s.queue.incr("cancelled")
    s.log.info("job cancelled", job=job_id)


def _cancel_requested(s: Scheduler, job_id: str) -> None:
    s.queue.update(job_id, cancel_requested=True)
    s.log.info("cancel requested for a started job", job=job_id)


def _already_over(s: Scheduler, job_id: str) -> None:
    s.log.info("cancel: job already finished, nothing to do", job=job_id,
               state=s.queue.state(job_id))


#: job state -> what `cancel` does to it (a state missing here is not a job state).
CANCEL: dict[str, Callable[[Scheduler, str], None]] = {
    "queued": _cancel_now,
    "waiting": _cancel_now,
    "starting": _cancel_requested,
    "running": _cancel_requested,
    **{state: _already_over for state in TERMINAL_STATES},
}


def cancel(s: Scheduler, req: dict[str, Any]) -> None:
    """Cancel one job according to its current state (idempotent)."""
    job_id = req.get("job")
    if not isinstance(job_id, str) or not valid_job_id(job_id):
        raise BadRequest(f"'job' {job_id!r} is not a valid job id")
    state = s.queue.state(job_id)
    if state is None:
        s.log.warning("cancel: no such job", job=job_id, request=req["id"])
        return
    action = CANCEL.get(state)
    if action is None:
        s.log.error("cancel: job in an unknown state, left alone", job=job_id, state=state)
        return
    action(s, job_id)


#: request kind -> handler.
HANDLERS: dict[str, Callable[[Scheduler, dict[str, Any]], None]] = {
    "submit": submit,
    "cancel": cancel,
}


# -- the worker -------------------------------------------------------------------------------

def one_pass(s: Scheduler) -> None:
    """One pass of the event loop: take the inbox (dispatching arrives here later)."""
    handle_inbox(s.layout.inbox(NAME), HANDLERS, s, s.log)


def recover(cfg: Config, layout: Layout,
            log: Log) -> tuple[Scheduler, dict[str, Any], list[str]]:
    """Open (replay) the job queue: (scheduler, found, degraded).

    OSError, WalError or QueueError: the queue cannot be opened at all.
    """
    queue = JobQueue.open(layout.wal_dir)
    report = queue.recovery
    found = {
        "jobs": {state: n for state, n in queue.counts().items() if n},
        "records_replayed": report.records_replayed,
        "torn_bytes": report.torn_bytes_truncated,
        "quarantined": list(report.quarantined),
    }
    degraded = [f"job queue: {error}" for error in report.errors]
    degraded += [f"job queue file quarantined: {path}" for path in report.quarantined]
    return Scheduler(cfg, layout, queue, log), found, degraded


def main(cfg: Config) -> int:
    """Recover the queue, report ready, then serve the inbox until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    try:
        s, found, degraded = recover(cfg, layout, log)
    except (OSError, WalError, QueueError) as exc:
        log.error("recovery failed: cannot open the job queue", wal=str(layout.wal_dir),
                  error=str(exc))
        return EXIT_RECOVERY_FAILED
    try:
        with Watcher([layout.inbox(NAME)], log=log) as watcher:
            report_ready(layout, NAME, found=found,
                         did={"truncated_bytes": found["torn_bytes"],
                              "quarantined": len(found["quarantined"])},
                         degraded=degraded, started_monotonic=started, started_at=started_at)
            log.info("ready", jobs=found["jobs"], replayed=found["records_replayed"])
            run_loop(watcher, lambda: one_pass(s))
    finally:
        s.queue.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_standalone(NAME, main))
