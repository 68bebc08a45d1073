"""batchctl's control requests to batchd: reading control/inbox, waiting, replying.

`Control` reads `control/inbox/<id>.json` (kind CONTROL, written by batchctl) through the
runtime's one inbox reader and hands batchd the requests to act on; batchd decides what
each means. A request is answered by `reply` (kind REPLY, `control/replies/<id>.json`),
written BEFORE the request is removed: a crash in between leaves both, and the next scan
sees the reply and only removes the request, so no request is acted on twice. Requests
written before this batchd started are answered "expired". A request that waits for
workers to reach a state is a `waiter`, answered by `resolve` when they do. Replies older
than REPLY_TTL are removed (`gc`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from structlog.typing import FilteringBoundLogger

from supervisor.batchd.procstate import Proc, State
from supervisor.batchd.workers import DONE
from supervisor.runtime import inbox_requests
from supervisor.state.atomic import clean_tmp, remove
from supervisor.state.clock import Clock, parse_iso
from supervisor.state.layout import CONTROL, REPLY, Layout, write_record

__all__ = ["CONTROL_OPS", "REPLY_TTL", "Control", "Request"]

CONTROL_OPS = ("start", "stop", "restart", "shutdown", "reload")
REPLY_TTL = 600.0            # control replies older than this are removed


@dataclass(frozen=True)
class Request:
    """One control request to act on."""

    id: str
    op: str
    worker: str | None


@dataclass
class _Waiter:
    """Requests answered when their workers reach the state they wait for."""

    rids: list[str]
    op: str                                # "stop", or "start" (start, restart, reload)
    workers: tuple[str, ...]
    message: str
    result: Any = None


def _problem(rec: dict[str, Any]) -> str | None:
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        return "'id' must be a non-empty string"
    return None


@dataclass
class Control:
    """The control inbox, its waiters and its replies."""

    layout: Layout
    clock: Clock
    log: FilteringBoundLogger
    started_wall: float
    handling: set[str] = field(default_factory=set)     # acted on, not yet answered
    waiters: list[_Waiter] = field(default_factory=list)
    replied: bool = False                                # a reply was written since asked

    def scan(self, *, accepting: bool) -> list[Request]:
        """New requests to act on, oldest first. Not `accepting` (startup recovery): only
        shutdown is taken, the others wait in the inbox. Answered before a crash: the
        request is only removed. Expired, unknown or malformed: answered at once."""
        inbox = self.layout.control_inbox
        todo: list[Request] = []
        for path, rec in inbox_requests(inbox, self.log, kind=CONTROL, problem=_problem,
                                        on_bad=self._malformed, skip=self._skip):
            rid = path.name[:-len(".json")] if path.name.endswith(".json") else path.name
            if self.layout.reply_file(rid).exists():
                remove(path)          # answered before a crash: only the removal was left
                continue
            op, worker = rec.get("op"), rec.get("worker")
            if not accepting and op != "shutdown":
                continue
            self.handling.add(rid)
            self.log.info("control request", request=rid, op=op, worker=worker)
            created = parse_iso(rec.get("created_at"))
            if created is None or created < self.started_wall - 0.001:
                self.reply(rid, False, "expired: written before this batchd started")
            elif op not in CONTROL_OPS:
                self.reply(rid, False, f"unknown operation {op!r} (expected one of "
                                       f"{', '.join(CONTROL_OPS)})")
            else:
                todo.append(Request(rid, str(op), worker if isinstance(worker, str) else None))
        return todo

    def _skip(self, name: str) -> bool:
        return not name.endswith(".json") or name[:-len(".json")] in self.handling

    def _malformed(self, name: str, why: str) -> None:
        rid = name[:-len(".json")] if name.endswith(".json") else name
        self.reply(rid, False, f"malformed request: {why}", remove_request=False)

    # -- replies ---------------------------------------------------------------------------

    def reply(self, rid: str, ok: bool, message: str, result: Any = None, *,
              remove_request: bool = True) -> None:
        """Write the reply durably, then remove the request (the crash-replay order)."""
        try:
            write_record(REPLY, self.layout.reply_file(rid),
                         {"id": rid, "ok": ok, "message": message, "result": result})
            if remove_request:
                remove(self.layout.control_inbox / f"{rid}.json")
        except OSError as exc:
            self.log.error("cannot answer control request", request=rid, error=str(exc))
        self.handling.discard(rid)
        self.replied = True
        self.log.info("control reply", request=rid, ok=ok, message=message)

    def gc(self) -> float | None:
        """Remove replies older than REPLY_TTL; when the oldest left expires (wall clock)."""
        folder = self.layout.control_replies
        now = self.clock.time()
        oldest: float | None = None
        with contextlib.suppress(FileNotFoundError):
            clean_tmp(folder, 60.0)
            for fname in os.listdir(folder):
                path = folder / fname
                try:
                    mtime = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if now - mtime >= REPLY_TTL:
                    remove(path)
                else:
                    oldest = mtime if oldest is None else min(oldest, mtime)
        return None if oldest is None else oldest + REPLY_TTL

    # -- waiting for workers ---------------------------------------------------------------

    def wait(self, rids: Sequence[str], op: str, workers: Sequence[str], message: str,
             result: Any = None) -> None:
        """Answer `rids` once `workers` are all down ("stop") or all RUNNING ("start")."""
        if rids:
            self.waiters.append(_Waiter(list(rids), op, tuple(workers), message, result))

    def resolve(self, procs: Mapping[str, Proc]) -> None:
        """Answer each waiter whose workers got where it waits (or could not)."""
        for waiter in list(self.waiters):
            states = {n: procs[n].state for n in waiter.workers}
            if waiter.op == "stop":
                if all(s in DONE for s in states.values()):
                    self._answer(waiter, True, waiter.message)
                continue
            bad = [n for n, s in states.items()
                   if s in (State.BACKOFF, State.FATAL, State.STOPPED, State.EXITED)]
            if bad:
                self._answer(waiter, False, "; ".join(
                    f"{n} {states[n].value}: {procs[n].message or 'did not start'}"
                    for n in bad))
            elif all(s is State.RUNNING for s in states.values()):
                self._answer(waiter, True, waiter.message)

    def refuse_all(self, message: str) -> None:
        """Answer every waiter with a failure (batchd is going down)."""
        for waiter in list(self.waiters):
            self._answer(waiter, False, message)

    def _answer(self, waiter: _Waiter, ok: bool, message: str) -> None:
        self.waiters.remove(waiter)
        for rid in waiter.rids:
            self.reply(rid, ok, message, result=waiter.result)
