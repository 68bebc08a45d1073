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
from pathlib import Path
from typing import Any

from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, CtlError, Ctx, age, cell, table
from supervisor.state.clock import SYSTEM_CLOCK, Clock
from supervisor.state.control import NoReply, NotRunning, reply_timeout
from supervisor.state.control import send_control as _send_control
from supervisor.state.control import wait_reply as _wait_reply
from supervisor.state.documents import status_doc, workers_doc
from supervisor.state.layout import Layout
from supervisor.state.view import batchd_pid, read_startups

__all__ = [
    "cmd_control",
    "cmd_startup_log",
    "cmd_status_summary",
    "cmd_workers",
    "not_running",
    "reply_timeout",
    "send_control",
    "wait_reply",
]

#: Poll interval while waiting for batchd to let go of its lock after a shutdown.
_POLL_S = 0.02


def not_running(layout: Layout) -> CtlError:
    """The error of a command that needs batchd while it is down (exit 1)."""
    return CtlError(f"batchd is not running (state dir {layout.root})", EXIT_FAILED)


def wait_reply(layout: Layout, request_id: str, timeout: float, *,
               clock: Clock = SYSTEM_CLOCK, path: Path | None = None,
               inbox: Path | None = None) -> dict[str, Any]:
    """state.control.wait_reply for a command: CtlError (exit 1) if no reply comes."""
    try:
        return _wait_reply(layout, request_id, timeout, clock=clock, path=path, inbox=inbox)
    except NoReply as exc:
        raise CtlError(str(exc)) from None


def send_control(ctx: Ctx, op: str, worker: str | None) -> dict[str, Any]:
    """Write one CONTROL request (batchd must run) and return the parent's reply."""
    try:
        return _send_control(ctx.cfg, ctx.layout, op, worker)
    except NotRunning:
        raise not_running(ctx.layout) from None
    except NoReply as exc:
        raise CtlError(str(exc)) from None


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
    workers = workers_doc(ctx.cfg, ctx.layout)
    if ctx.json:
        ctx.emit(workers)
        return EXIT_OK
    if not workers:
        ctx.note("batchd is starting: no worker state yet")
    for line in _worker_lines(workers):
        ctx.say(line)
    return EXIT_OK


def cmd_status_summary(ctx: Ctx) -> int:
    """`status` without JOB: exit 0 whether or not batchd runs."""
    doc = status_doc(ctx.cfg, ctx.layout)
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
