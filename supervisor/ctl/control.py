"""batchctl's daemon commands: workers, start/stop/restart, shutdown, reload, status, startup-log.

Control requests follow docs/SUPERVISOR.md: probe the lock first (batchd not running: exit 1,
nothing written), then write `control/inbox/<uuid>.json` (kind CONTROL) atomically and
durably, then wait for the parent's `control/replies/<uuid>.json`. batchctl writes only
that request file. A crash of batchctl after the rename leaves a complete request that the
parent answers once (or answers "expired" if a later batchd finds it); a crash before the
rename leaves at most a `.tmp.` file that the reaper removes. batchctl never deletes a
request or a reply: the parent owns both folders' cleanup.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, CtlError, Ctx, age, cell, table
from supervisor.state import disk
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.layout import CONTROL, REPLY, Layout, read_record, write_record
from supervisor.state.repos import read_registry
from supervisor.state.view import (
    Unreadable,
    batchd_pid,
    open_view,
    read_startups,
    read_workers,
)

__all__ = [
    "WORKER_KEYS",
    "cmd_control",
    "cmd_startup_log",
    "cmd_status_summary",
    "cmd_workers",
    "not_running",
    "reply_timeout",
    "send_control",
    "summary",
    "wait_reply",
]

#: The keys every worker entry of `workers --json` has (CONTRACT.md), in order.
WORKER_KEYS: tuple[str, ...] = ("name", "state", "pid", "since", "restarts")

#: Worker states that make batchd degraded.
_DEGRADED_STATES = ("FATAL", "BACKOFF")

#: Poll interval while waiting for a reply (docs/SUPERVISOR.md).
_POLL_S = 0.02


def not_running(layout: Layout) -> CtlError:
    """The error of a command that needs batchd while it is down (exit 1)."""
    return CtlError(f"batchd is not running (state dir {layout.root})", EXIT_FAILED)


def reply_timeout(ctx: Ctx, op: str, worker: str | None) -> float:
    """How long to wait for a reply: stopwaitsecs + 10 s for stop/restart, else 10 s."""
    if op in ("stop", "restart") and worker is not None:
        wcfg = ctx.cfg.workers.get(worker)
        return (wcfg.stopwaitsecs if wcfg is not None else 10.0) + 10.0
    return 10.0


def wait_reply(layout: Layout, request_id: str, timeout: float, *,
               clock: Clock = SYSTEM_CLOCK, path: Path | None = None,
               inbox: Path | None = None) -> dict[str, Any]:
    """The reply to `request_id` (batchd's, or at `path` a worker's to a request in
    `inbox`); CtlError if batchd stops or `timeout` passes."""
    path = layout.reply_file(request_id) if path is None else path
    inbox = layout.control_inbox if inbox is None else inbox
    deadline = clock.monotonic() + timeout
    while True:
        reply = read_record(REPLY, path, owner=False)
        if isinstance(reply, dict):
            return reply
        if batchd_pid(layout) is None:
            reply = read_record(REPLY, path, owner=False)
            if isinstance(reply, dict):
                return reply
            raise CtlError(f"batchd stopped before answering request {request_id}")
        if clock.monotonic() >= deadline:
            raise CtlError(f"no reply from batchd within {timeout:g}s "
                           f"(request {request_id} is still in {inbox})")
        clock.sleep(_POLL_S)


def send_control(ctx: Ctx, op: str, worker: str | None) -> dict[str, Any]:
    """Write one CONTROL request (batchd must run) and return the parent's reply."""
    layout = ctx.layout
    if batchd_pid(layout) is None:
        raise not_running(layout)
    request_id = uuid.uuid4().hex
    now = time.time()
    ensure_dir(layout.control_inbox)
    write_record(CONTROL, layout.control_inbox / f"{request_id}.json", {
        "id": request_id, "op": op, "worker": worker,
        "created_at": iso_now(now),
    })
    return wait_reply(layout, request_id, reply_timeout(ctx, op, worker))


def _wait_stopped(ctx: Ctx, timeout: float) -> bool:
    """After a shutdown reply: wait until the lock is released. False if still held."""
    deadline = time.monotonic() + timeout
    while batchd_pid(ctx.layout) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def cmd_control(ctx: Ctx, op: str, worker: str | None) -> int:
    """start/stop/restart W, shutdown, reload: send, wait, report; exit 0 if ok else 1."""
    reply = send_control(ctx, op, worker)
    ok = bool(reply.get("ok"))
    message = str(reply.get("message") or "")
    shown = {k: reply.get(k) for k in ("id", "ok", "message", "result")}
    if ok and op == "shutdown":
        grace = sum(w.stopwaitsecs for w in ctx.cfg.workers.values()) + 10.0
        if not _wait_stopped(ctx, grace):
            message = f"{message or 'shutting down'}; batchd still running after {grace:g}s"
    prefix = f"{worker}: " if worker else ""
    text = prefix + (message or ("ok" if ok else f"{op} failed"))
    if ctx.json:
        ctx.emit(shown)
        if not ok:
            ctx.error(text)
    elif ok:
        ctx.say(text)
    else:
        ctx.error(text)
    return EXIT_OK if ok else EXIT_FAILED


def _worker_entry(raw: dict[str, Any]) -> dict[str, Any]:
    """A workers.json entry with every key of WORKER_KEYS present (others kept)."""
    entry = {k: raw.get(k) for k in WORKER_KEYS}
    entry["restarts"] = int(raw.get("restarts") or 0)
    entry.update({k: v for k, v in raw.items() if k not in entry})
    return entry


def _describe(w: dict[str, Any]) -> str:
    """supervisorctl's description column: pid and uptime, or why it is not running."""
    parts: list[str] = []
    if w.get("pid") and w.get("state") in ("RUNNING", "STARTING", "STOPPING"):
        parts.append(f"pid {w['pid']}, uptime {age(w.get('since'))}")
    else:
        if w.get("exitstatus") is not None:
            parts.append(f"exit status {w['exitstatus']}")
        parts.append(f"since {cell(w.get('since'))}")
    parts.append(f"restarts {w.get('restarts', 0)}")
    if w.get("paused"):
        parts.append("paused: starts no new job (batchctl resume)")
    if w.get("message"):
        parts.append(str(w["message"]))
    return ", ".join(parts)


def _worker_lines(workers: list[dict[str, Any]]) -> list[str]:
    return table([(w.get("name"), w.get("state"), _describe(w)) for w in workers])


def cmd_workers(ctx: Ctx) -> int:
    """`workers`: name, state, pid, since, restarts of each worker; exit 1 if batchd is down."""
    if batchd_pid(ctx.layout) is None:
        raise not_running(ctx.layout)
    workers = [_worker_entry(w) for w in read_workers(ctx.layout)]
    with open_view(ctx.cfg, ctx.layout) as view:
        _mark_paused(workers, view.paused())
    if ctx.json:
        ctx.emit(workers)
        return EXIT_OK
    if not workers:
        ctx.note("batchd is starting: no worker state yet")
    for line in _worker_lines(workers):
        ctx.say(line)
    return EXIT_OK


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


def summary(ctx: Ctx) -> dict[str, Any]:
    """The `status` document: daemon, workers (if running), job counts, degraded notes.

    What cannot be read (the job queue, a corrupt startup log) is one more degraded note,
    never an error: `status` always answers.
    """
    pid = batchd_pid(ctx.layout)
    running = pid is not None
    workers = [_worker_entry(w) for w in read_workers(ctx.layout)] if running else []
    unreadable: list[str] = []
    startups: list[dict[str, Any]] = []
    if running:
        try:
            startups = read_startups(ctx.layout)
        except Unreadable as exc:
            unreadable.append(str(exc))
    jobs: dict[str, int] = {}
    paused = False
    try:
        with open_view(ctx.cfg, ctx.layout) as view:
            jobs = view.counts()
            paused = view.paused()
    except Unreadable as exc:
        unreadable.append(str(exc))
    _mark_paused(workers, paused)
    # A corrupt registry reads as empty: its repositories are unavailable until `repo
    # add/remove` moves it aside, so say so rather than let their jobs fail unexplained.
    unreadable += [f"repositories: {p}" for p in read_registry(ctx.layout).problems]
    low = disk.low(ctx.cfg)
    degraded = _degraded(workers, startups) + unreadable + ([low] if low else [])
    return {"batchd": {"running": running, "pid": pid}, "workers": workers,
            "jobs": jobs, "degraded": degraded, "paused": paused}


def _mark_paused(workers: list[dict[str, Any]], paused: bool) -> None:
    """The scheduler's entry says whether it starts new jobs (`batchctl pause`)."""
    for w in workers:
        if w.get("name") == "scheduler":
            w["paused"] = paused


def cmd_status_summary(ctx: Ctx) -> int:
    """`status` without JOB: exit 0 whether or not batchd runs."""
    doc = summary(ctx)
    if ctx.json:
        ctx.emit(doc)
        return EXIT_OK
    daemon = doc["batchd"]
    if daemon["running"]:
        ctx.say(f"batchd: running, pid {daemon['pid']} (state dir {ctx.layout.root})")
    else:
        ctx.say(f"batchd: not running (state dir {ctx.layout.root})")
    for line in _worker_lines(doc["workers"]):
        ctx.say("  " + line)
    counts = ", ".join(f"{n} {state}" for state, n in doc["jobs"].items())
    ctx.say(f"jobs: {counts or 'none'}" + ("  (paused: no new job starts)" if doc["paused"]
                                           else ""))
    for note in doc["degraded"]:
        ctx.say(f"degraded: {note}")
    return EXIT_OK


def _kv(d: object) -> str:
    if not isinstance(d, dict) or not d:
        return "-"
    return " ".join(f"{k}={v}" for k, v in d.items())


def cmd_startup_log(ctx: Ctx) -> int:
    """`startup-log`: the last startups (oldest first), phase by phase; corrupt log: exit 1."""
    startups = read_startups(ctx.layout)
    if ctx.json:
        ctx.emit(startups)
        return EXIT_OK
    if not startups:
        ctx.say("no startups recorded")
    for s in startups:
        ctx.say(f"{cell(s.get('started_at'))}  {cell(s.get('outcome'))}  "
                f"{cell(s.get('duration_ms'))} ms  ({cell(s.get('id'))})")
        rows = []
        for p in s.get("phases") or []:
            if not isinstance(p, dict):
                continue
            status = "ok" if p.get("ok") else f"FAILED: {p.get('error') or '?'}"
            rows.append((p.get("worker"), status, f"{cell(p.get('duration_ms'))} ms",
                         f"found {_kv(p.get('found'))}", f"did {_kv(p.get('did'))}",
                         "degraded: " + "; ".join(map(str, p.get("degraded") or []))
                         if p.get("degraded") else ""))
        for line in table(rows):
            ctx.say("  " + line)
    return EXIT_OK
