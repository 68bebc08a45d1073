"""`batchctl clean` and `history`: forgetting finished jobs now, and reading the archive.

`clean` asks the reaper (its inbox; batchd must run) to forget finished jobs as retention
does — archived first, then folders, then the queue — and prints what went from the
reaper's reply (`reaper/replies/<id>.json`). `--dry-run` decides the same way
(state.retention), here, without asking anyone or writing anything: it works with batchd
down. `history` reads `history/YYYY-MM.jsonl.gz` (state.archive), newest first; what it
cannot read is said on stderr, never silently dropped.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from supervisor.ctl.control import not_running, wait_reply
from supervisor.ctl.jobs import duration_arg
from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CtlError, Ctx, cell, table
from supervisor.state import archive
from supervisor.state.clock import iso_now
from supervisor.state.layout import send_request
from supervisor.state.retention import Known, expired
from supervisor.state.view import batchd_pid, open_view

__all__ = ["CLEAN_TIMEOUT", "cmd_clean", "cmd_history"]

#: How long `clean` waits for the reaper's answer.
CLEAN_TIMEOUT = 300.0


def cmd_clean(ctx: Ctx, older_than: str | None, states: list[str], dry_run: bool) -> int:
    """`clean [--older-than D] [--state S]... [--dry-run]`: forget finished jobs now."""
    older = 0.0 if older_than is None else duration_arg(older_than, "--older-than")
    if dry_run:
        with open_view(ctx.cfg, ctx.layout) as view:
            chosen = expired(Known.read(view), time.time(), older, states=states, why="clean")
        gone = [{"id": e.id, "state": e.state, "finished_at": e.finished_at, "why": e.why}
                for e in chosen]
        return _show(ctx, gone, "would be forgotten")
    if batchd_pid(ctx.layout) is None:
        raise not_running(ctx.layout)
    request_id = f"clean-{uuid.uuid4().hex}"
    send_request(ctx.layout, "reaper", {"id": request_id, "kind": "clean",
                                        "older_than": older, "states": states,
                                        "created_at": iso_now()})
    reply = wait_reply(ctx.layout, request_id, CLEAN_TIMEOUT,
                       path=ctx.layout.reaper_replies / f"{request_id}.json",
                       inbox=ctx.layout.inbox("reaper"))
    if not reply.get("ok"):
        raise CtlError(f"clean failed: {reply.get('message')}", EXIT_FAILED)
    result = reply.get("result")
    return _show(ctx, result if isinstance(result, list) else [], "forgotten")


def _show(ctx: Ctx, gone: list[dict[str, Any]], verb: str) -> int:
    if ctx.json:
        ctx.emit(gone)
        return EXIT_OK
    for line in table([(g.get("id"), g.get("state"), cell(g.get("finished_at")),
                        cell(g.get("why"))) for g in gone]):
        ctx.say(line)
    ctx.note(f"{len(gone)} job(s) {verb}")
    return EXIT_OK


def cmd_history(ctx: Ctx, month: str | None) -> int:
    """`history [--month YYYY-MM]`: archived job records, newest first."""
    if month is not None and not archive.MONTH.fullmatch(month):
        raise CtlError(f"--month: expected YYYY-MM, got {month!r}", EXIT_USAGE)
    records, notes = archive.read(ctx.layout, month)
    for note in notes:
        ctx.error(f"history: {note}")
    if ctx.json:
        ctx.emit(records)
        return EXIT_OK
    rows = [(cell(r.get("finished_at")), r.get("id"), r.get("state"), r.get("agent"),
             cell(r.get("reason"))) for r in records]
    if rows:
        for line in table(rows, header=("FINISHED", "ID", "STATE", "AGENT", "REASON")):
            ctx.say(line)
    else:
        ctx.note("no archived jobs" + (f" in {month}" if month else ""))
    return EXIT_OK
