"""batchctl's job commands: status JOB, jobs, cancel, wait, batches, batch, stats.

All but `cancel` only read (the queue read-only, the scheduler's inbox, workers.json).
`cancel` writes one REQUEST file `scheduler/inbox/<request id>.json` (kind "cancel")
through write_record: temp file, fsync, rename, fsync folder. A crash before the rename
leaves a `.tmp.` file that is never read as a request; after it, the scheduler handles the
request once its turn comes (idempotent by job id: cancelling a terminal job does nothing).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from supervisor.config import WORKER_NAMES, parse_duration
from supervisor.ctl.out import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CtlError,
    Ctx,
    cell,
    table,
)
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.jobs import (
    batch_record,
    cancel_request,
    retry_spec,
    usage_stats,
    valid_job_id,
)
from supervisor.state.layout import send_request
from supervisor.state.submission import Checker, DiskLow, JobError, accept, known
from supervisor.state.view import (
    TERMINAL,
    JobFilter,
    JobView,
    open_view,
    read_reaped,
    read_workers,
)

__all__ = [
    "batch_records",
    "check_id",
    "cmd_batch",
    "cmd_batches",
    "cmd_cancel",
    "cmd_jobs",
    "cmd_stats",
    "cmd_status_job",
    "cmd_wait",
    "duration_arg",
    "lookup",
    "stats_doc",
    "wait_for",
]


def check_id(job_id: str) -> str:
    """`job_id` if well formed, else a usage error (exit 2)."""
    if not valid_job_id(job_id):
        raise CtlError(f"invalid job id {job_id!r} (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,63}})",
                       EXIT_USAGE)
    return job_id


def duration_arg(text: str, what: str) -> float:
    """A duration from the command line (`90`, `30s`, `2m`); a usage error otherwise."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CtlError(f"{what}: {exc}", EXIT_USAGE) from None


def lookup(view: JobView, job_id: str) -> dict[str, Any]:
    """The job's record; exit 1 if there is no such job."""
    entry = view.get(check_id(job_id))
    if entry is None:
        raise CtlError(f"no such job: {job_id}")
    return view.record(entry)


def _job_rows(records: Iterable[dict[str, Any]]) -> list[str]:
    rows = []
    for r in records:
        info = r["reason"] or (f"exit {r['exit_code']}" if r["exit_code"] is not None else "")
        rows.append((r["id"], r["state"], r["agent"], r["repos"], r["batch"], r["created_at"],
                     info))
    return table(rows, header=("ID", "STATE", "AGENT", "REPOS", "BATCH", "CREATED", "INFO"))


def cmd_status_job(ctx: Ctx, job_id: str) -> int:
    """`status JOB`: the job record (a submission still in the inbox shows as queued)."""
    with open_view(ctx.cfg, ctx.layout) as view:
        record = lookup(view, job_id)
    if ctx.json:
        ctx.emit(record)
        return EXIT_OK
    for line in table((f"{k}:", v) for k, v in record.items()):
        ctx.say(line)
    return EXIT_OK


def cmd_jobs(ctx: Ctx, state: str | None, batch: str | None,
             flt: JobFilter | None = None) -> int:
    """`jobs [--state S] [--batch B] [--agent A] [--label K=V]... [--since T] [--limit N]`:
    records in submission order (pending ones last); --limit keeps the N most recent."""
    flt = replace(flt or JobFilter(), state=state, batch=batch)
    with open_view(ctx.cfg, ctx.layout) as view:
        records = [view.record(e) for e in view.select(flt)]
    if ctx.json:
        ctx.emit(records)
        return EXIT_OK
    if records:
        for line in _job_rows(records):
            ctx.say(line)
    else:
        ctx.note("no jobs")
    return EXIT_OK


def cmd_cancel(ctx: Ctx, job_id: str) -> int:
    """`cancel JOB`: ask the scheduler to cancel it. An already-terminal job: say so, exit 0."""
    with open_view(ctx.cfg, ctx.layout) as view:
        record = lookup(view, job_id)
    state = record["state"]
    if state in TERMINAL:
        doc = {"job": job_id, "state": state, "requested": False, "request": None}
        message = f"job {job_id} is already {state}: nothing to cancel"
    else:
        request = cancel_request(job_id)
        send_request(ctx.layout, "scheduler", request)
        doc = {"job": job_id, "state": state, "requested": True, "request": request["id"]}
        message = f"cancel requested for job {job_id} (state {state})"
    if ctx.json:
        ctx.emit(doc)
    else:
        ctx.say(message)
    return EXIT_OK


def wait_for(ctx: Ctx, job_ids: list[str], timeout: float | None, *,
             clock: Clock = SYSTEM_CLOCK) -> list[dict[str, Any]]:
    """The records of `job_ids` once all are terminal, or as they were when `timeout` passed
    (then some are not terminal: that is how the caller tells a timeout).

    An unknown job id raises CtlError (exit 1). Polls the files with a growing interval
    (50 ms to 500 ms), so it keeps working across batchd restarts.
    """
    for job_id in job_ids:
        check_id(job_id)
    deadline = None if timeout is None else clock.monotonic() + timeout
    interval = 0.05
    while True:
        with open_view(ctx.cfg, ctx.layout) as view:
            records = [lookup(view, j) for j in job_ids]
        if _all_ended(records) or (deadline is not None and clock.monotonic() >= deadline):
            return records
        left = None if deadline is None else max(0.0, deadline - clock.monotonic())
        pause = interval if left is None else min(interval, left)
        clock.sleep(pause)
        interval = min(interval * 1.5, 0.5)


def _all_ended(records: list[dict[str, Any]]) -> bool:
    return all(r["state"] in TERMINAL for r in records)


def cmd_wait(ctx: Ctx, job_ids: list[str], timeout: str | None) -> int:
    """`wait JOB... [--timeout D]`: 0 all completed, 1 any other end, 124 timed out.

    --json prints the records (their current state) in every outcome, timeout included.
    """
    limit = None if timeout is None else duration_arg(timeout, "--timeout")
    records = wait_for(ctx, job_ids, limit)
    ended = _all_ended(records)
    if ctx.json:
        ctx.emit(records)
    elif ended:
        for line in table((r["id"], r["state"], r["reason"] or "") for r in records):
            ctx.say(line)
    if not ended:
        left = ", ".join(f"{r['id']} ({r['state']})" for r in records
                         if r["state"] not in TERMINAL)
        ctx.error(f"timed out after {limit:g}s waiting for: {left}")
        return EXIT_TIMEOUT
    return EXIT_OK if all(r["state"] == "completed" for r in records) else EXIT_FAILED


def batch_records(view: JobView) -> list[dict[str, Any]]:
    """One record per batch, in order of its first job: {batch, counts, done, jobs}."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for entry in view.entries():
        name = entry.get("batch")
        if isinstance(name, str):
            groups.setdefault(name, []).append((str(entry["id"]), str(entry.get("state"))))
    return [batch_record(name, jobs) for name, jobs in groups.items()]


def _batch_line(rec: dict[str, Any]) -> tuple[str, str, str, str]:
    counts = ", ".join(f"{n} {s}" for s, n in rec["counts"].items())
    return (rec["batch"], "done" if rec["done"] else "active", f"{len(rec['jobs'])} jobs", counts)


def cmd_batches(ctx: Ctx) -> int:
    """`batches`: every batch's record."""
    with open_view(ctx.cfg, ctx.layout) as view:
        records = batch_records(view)
    if ctx.json:
        ctx.emit(records)
        return EXIT_OK
    if not records:
        ctx.note("no batches")
    for line in table(_batch_line(r) for r in records):
        ctx.say(line)
    return EXIT_OK


def cmd_batch(ctx: Ctx, name: str) -> int:
    """`batch B`: one batch's record; exit 1 if no job carries that batch."""
    with open_view(ctx.cfg, ctx.layout) as view:
        found = [r for r in batch_records(view) if r["batch"] == name]
    if not found:
        raise CtlError(f"no such batch: {name}")
    rec = found[0]
    if ctx.json:
        ctx.emit(rec)
        return EXIT_OK
    for line in table([_batch_line(rec)]):
        ctx.say(line)
    ctx.say("jobs: " + cell(rec["jobs"]).replace(",", " "))
    return EXIT_OK


def stats_doc(ctx: Ctx) -> dict[str, Any]:
    """The queue's counters, restarts per worker, what the reaper removed (zeros when
    unknown), and the agents' usage: `usage` (tokens, cost in dollars, turns, jobs that
    reported usage, summed over every finished job) and `usage_by_agent` (the same per
    agent)."""
    with open_view(ctx.cfg, ctx.layout) as view:
        counters = view.stats()
    doc: dict[str, Any] = {k: n for k, n in counters.items() if not k.startswith("usage/")}
    doc["usage"], doc["usage_by_agent"] = usage_stats(counters)
    restarts = dict.fromkeys(WORKER_NAMES, 0)
    for w in read_workers(ctx.layout):
        if isinstance(w.get("name"), str) and isinstance(w.get("restarts"), int):
            restarts[w["name"]] = w["restarts"]
    doc["restarts"] = restarts
    doc["reaped"] = read_reaped(ctx.layout)
    return doc


def cmd_stats(ctx: Ctx) -> int:
    """`stats`: one object of counters."""
    doc = stats_doc(ctx)
    if ctx.json:
        ctx.emit(doc)
        return EXIT_OK
    rows = [(f"{k}:", v) for k, v in doc.items()
            if k not in ("restarts", "reaped", "usage", "usage_by_agent")]
    rows += [(f"restarts {w}:", n) for w, n in doc["restarts"].items()]
    rows += [(f"reaped {k}:", n) for k, n in doc["reaped"].items()]
    for who, sums in [("all agents", doc["usage"]), *doc["usage_by_agent"].items()]:
        rows.append((f"usage {who}:", f"{sums['input_tokens']} tokens in, "
                     f"{sums['output_tokens']} out, ${sums['cost_usd']:.4f}, "
                     f"{sums['turns']} turns, {sums['jobs']} jobs"))
    for line in table(rows):
        ctx.say(line)
    return EXIT_OK


def cmd_pause(ctx: Ctx, paused: bool) -> int:
    """`pause` / `resume`: ask the scheduler to stop (start again) starting new jobs.

    Like `cancel`, a request into its inbox: it works while batchd is down (taken at its
    next start), and it survives restarts until `resume` (scheduler/paused.json)."""
    kind = "pause" if paused else "resume"
    send_request(ctx.layout, "scheduler", {"id": f"{kind}-{uuid.uuid4().hex}", "kind": kind,
                                           "created_at": iso_now()})
    if ctx.json:
        ctx.emit({"paused": paused})
    else:
        ctx.say("paused: running jobs go on, no new job starts until `batchctl resume`"
                if paused else "resumed: jobs start again")
    return EXIT_OK


def cmd_retry(ctx: Ctx, job_id: str) -> int:
    """`retry JOB`: a new job with JOB's spec (retry_of = JOB), through the job door;
    JOB must be terminal. Prints the new id."""
    with open_view(ctx.cfg, ctx.layout) as view:
        entry = view.get(check_id(job_id))
    if entry is None:
        raise CtlError(f"no such job: {job_id}")
    if entry.get("state") not in TERMINAL:
        raise CtlError(f"job {job_id} is {entry.get('state')}: only a finished job can be "
                       "retried (cancel it first)")
    try:
        job = Checker(known(ctx.cfg, ctx.layout)).check(retry_spec(entry))
        job["retry_of"] = job_id
        (new_id,) = accept(ctx.cfg, ctx.layout, [job])
    except (JobError, DiskLow) as exc:
        raise CtlError(f"cannot retry {job_id}: {exc}") from None
    if ctx.json:
        ctx.emit({"id": new_id, "retry_of": job_id})
    else:
        ctx.out.write(new_id + "\n")
    return EXIT_OK
