"""batchctl's job commands: status JOB, jobs, cancel, retry, pause, resume, wait, batches, stats.

All but the control commands only read (the queue read-only, the scheduler's inbox,
workers.json). `cancel`, `retry`, `pause` and `resume` hand the scheduler one durable
request each through state.jobcontrol, the code the api shares (its docstring has the
crash argument).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from supervisor.config import parse_duration
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
from supervisor.state import jobcontrol
from supervisor.state.clock import SYSTEM_CLOCK, Clock
from supervisor.state.documents import batch_records, stats_doc
from supervisor.state.jobs import valid_job_id
from supervisor.state.submission import DiskLow, JobError
from supervisor.state.view import TERMINAL, JobFilter, JobView, open_view

__all__ = [
    "check_id",
    "cmd_batch",
    "cmd_batches",
    "cmd_cancel",
    "cmd_jobs",
    "cmd_pause",
    "cmd_retry",
    "cmd_stats",
    "cmd_status_job",
    "cmd_wait",
    "duration_arg",
    "files_changed",
    "lookup",
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


def files_changed(record: dict[str, Any]) -> str:
    """The `jobs` column FILES: how many files the job changed in all its repositories
    ("3", "3+" when one repository's could not be counted); "-" before it has results, and
    for a job without repositories."""
    changes = record.get("changes")
    if not isinstance(changes, dict) or not changes:
        return "-"
    counts = [c.get("files") for c in changes.values() if isinstance(c, dict)]
    known = [n for n in counts if isinstance(n, int)]
    return f"{sum(known)}{'+' if len(known) < len(counts) else ''}"


def _job_rows(records: Iterable[dict[str, Any]]) -> list[str]:
    rows = []
    for r in records:
        info = r["reason"] or (f"exit {r['exit_code']}" if r["exit_code"] is not None else "")
        rows.append((r["id"], r["state"], r["agent"], r["repos"], r["batch"], r["created_at"],
                     files_changed(r), info))
    return table(rows, header=("ID", "STATE", "AGENT", "REPOS", "BATCH", "CREATED", "FILES",
                               "INFO"))


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
    try:
        doc = jobcontrol.cancel(ctx.cfg, ctx.layout, check_id(job_id))
    except jobcontrol.NoSuchJob:
        raise CtlError(f"no such job: {job_id}") from None
    state = doc["state"]
    if ctx.json:
        ctx.emit(doc)
    elif doc["requested"]:
        ctx.say(f"cancel requested for job {job_id} (state {state})")
    else:
        ctx.say(f"job {job_id} is already {state}: nothing to cancel")
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


def cmd_stats(ctx: Ctx) -> int:
    """`stats`: one object of counters."""
    doc = stats_doc(ctx.cfg, ctx.layout)
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

    Like `cancel`, a request into its inbox (state.jobcontrol): it works while batchd is
    down (taken at its next start), and it survives restarts until `resume`."""
    doc = jobcontrol.set_paused(ctx.layout, paused)
    if ctx.json:
        ctx.emit(doc)
    else:
        ctx.say("paused: running jobs go on, no new job starts until `batchctl resume`"
                if paused else "resumed: jobs start again")
    return EXIT_OK


def cmd_retry(ctx: Ctx, job_id: str) -> int:
    """`retry JOB`: a new job with JOB's spec (retry_of = JOB), through the job door;
    JOB must be terminal. Prints the new id."""
    try:
        new_id = jobcontrol.retry(ctx.cfg, ctx.layout, check_id(job_id))
    except jobcontrol.NoSuchJob:
        raise CtlError(f"no such job: {job_id}") from None
    except jobcontrol.NotTerminal as exc:
        raise CtlError(str(exc)) from None
    except (JobError, DiskLow) as exc:
        raise CtlError(f"cannot retry {job_id}: {exc}") from None
    if ctx.json:
        ctx.emit({"id": new_id, "retry_of": job_id})
    else:
        ctx.out.write(new_id + "\n")
    return EXIT_OK
