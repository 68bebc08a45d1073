"""The callbacks worker: the webhook outbox and its deliveries (at-least-once, any crash).

Recovery reads the whole outbox (an in_flight record goes back to pending, due now);
then the inbox and the due tries. docs/CALLBACKS.md has the files and the crash argument.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from supervisor import log as _log
from supervisor.callbacks.transport import RequestsTransport, Transport, attempt
from supervisor.config import CallbacksConfig, Config
from supervisor.runtime import (
    EXIT_OK,
    EXIT_RECOVERY_FAILED,
    BadRequest,
    Log,
    Waiter,
    Watcher,
    handle_inbox,
    report_ready,
    stop_requested,
)
from supervisor.state.atomic import CORRUPT_MARK, Corrupt, ensure_dir, is_tmp_name, quarantine
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.fs import FS, REAL
from supervisor.state.layout import DELIVERY, Layout, read_record, write_record
from supervisor.state.webhook import (
    DELIVERY_STATES,
    InvalidTransition,
    begin,
    delivery_problem,
    due_at,
    earliest,
    finish,
    interrupted,
    new_delivery,
    operator_retry,
    valid_event_id,
    valid_url,
)

__all__ = [
    "HANDLERS",
    "NAME",
    "Callbacks",
    "DirOutbox",
    "Outbox",
    "deliver_next",
    "handle_deliver",
    "handle_retry",
    "main",
    "recover",
    "serve",
    "sleep_for",
]

NAME = "callbacks"


class Outbox(Protocol):
    """Where DELIVERY records live (the real one is a folder; tests may use a dict)."""

    def scan(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every usable record, and one note per unusable one (which is moved aside)."""
        ...

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The record of `event_id`, or None (none, or it was unusable and moved aside)."""
        ...

    def put(self, rec: dict[str, Any]) -> None:
        """Replace the record `rec["id"]` atomically and durably."""
        ...


class DirOutbox:
    """`callbacks/outbox/`: one DELIVERY record per event, `<event id>.json`."""

    def __init__(self, folder: Path, log: Log, *, fs: FS = REAL) -> None:
        self.folder = folder
        self.log = log
        self.fs = fs

    def _read(self, name: str) -> dict[str, Any] | str | None:
        """The record, a note saying it was moved aside, or None (not there)."""
        path = self.folder / name
        rec = read_record(DELIVERY, path, owner=True, fs=self.fs)
        if isinstance(rec, Corrupt):
            moved, reason = rec.moved_to, rec.reason
        elif isinstance(rec, dict):
            problem = delivery_problem(rec)
            if problem is None and rec["id"] == name.removesuffix(".json"):
                return rec
            reason = problem or f"id {rec['id']!r} does not match the file name"
            moved = quarantine(path, fs=self.fs)
        else:
            return None
        self.log.warning("corrupt delivery quarantined", path=str(path), moved_to=moved,
                         reason=reason)
        return f"callback delivery {name} was corrupt: moved to {moved}"

    def scan(self) -> tuple[list[dict[str, Any]], list[str]]:
        ensure_dir(self.folder, fs=self.fs)
        records: list[dict[str, Any]] = []
        notes: list[str] = []
        for name in sorted(self.fs.listdir(str(self.folder))):
            if is_tmp_name(name) or CORRUPT_MARK in name or not name.endswith(".json"):
                continue
            got = self._read(name)
            if isinstance(got, dict):
                records.append(got)
            elif isinstance(got, str):
                notes.append(got)
        return records, notes

    def get(self, event_id: str) -> dict[str, Any] | None:
        got = self._read(f"{event_id}.json")
        return got if isinstance(got, dict) else None

    def put(self, rec: dict[str, Any]) -> None:
        write_record(DELIVERY, self.folder / f"{rec['id']}.json", rec, fs=self.fs)


@dataclass
class Callbacks:
    """What the worker holds: the pending deliveries, rebuilt from the outbox at each start."""

    log: Log
    outbox: Outbox
    transport: Transport
    settings: CallbacksConfig
    clock: Clock = SYSTEM_CLOCK
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)

    def store(self, rec: dict[str, Any]) -> None:
        """Write `rec` durably, then mirror it (only pending ones are kept in memory)."""
        self.outbox.put(rec)
        if rec["state"] == "pending":
            self.pending[rec["id"]] = rec
        else:
            self.pending.pop(rec["id"], None)


def recover(state: Callbacks) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Load the outbox into `state`; in_flight -> pending. (found, did, degraded); OSError."""
    records, degraded = state.outbox.scan()
    found = dict.fromkeys(DELIVERY_STATES, 0)
    requeued = 0
    for rec in records:
        found[rec["state"]] += 1
        if rec["state"] == "in_flight":
            state.store(interrupted(rec, state.clock.time()))     # durable before ready
            state.log.warning("delivery interrupted by a crash: it will be sent again",
                              event_id=rec["id"], url=rec["url"], attempts=rec["attempts"])
            requeued += 1
        elif rec["state"] == "pending":
            state.pending[rec["id"]] = rec
    found["corrupt"] = len(degraded)
    return found, {"requeued": requeued, "quarantined": len(degraded)}, degraded


# -- handlers -------------------------------------------------------------------------------

def _event_id(req: dict[str, Any]) -> str:
    event_id = req.get("event_id")
    if not valid_event_id(event_id):
        raise BadRequest(f"'event_id' {event_id!r} is not an event id")
    return event_id


def handle_deliver(state: Callbacks, req: dict[str, Any]) -> None:
    """A new event to deliver: write its pending record, unless it exists (a replay)."""
    event_id = _event_id(req)
    if not valid_url(req.get("url")):
        raise BadRequest(f"'url' {req.get('url')!r} is not an http(s) URL")
    if not isinstance(req.get("payload"), dict):
        raise BadRequest("'payload' must be a JSON object")
    if not isinstance(req.get("job"), (str, type(None))):
        raise BadRequest("'job' must be a job id or null")
    if event_id in state.pending or state.outbox.get(event_id) is not None:
        state.log.info("delivery request replayed: already in the outbox", event_id=event_id)
        return
    state.store(new_delivery(req, state.clock.time()))
    state.log.info("delivery queued", event_id=event_id, job=req.get("job"), url=req["url"])


def handle_retry(state: Callbacks, req: dict[str, Any]) -> None:
    """The operator's retry: a failed or pending delivery is due now, on a fresh schedule."""
    event_id = _event_id(req)
    rec = state.pending.get(event_id) or state.outbox.get(event_id)
    if rec is None:
        state.log.warning("retry of an unknown delivery ignored", event_id=event_id)
        return
    try:
        rec = operator_retry(rec, state.clock.time())
    except InvalidTransition as exc:
        state.log.warning("retry ignored", event_id=event_id, reason=str(exc))
        return
    state.store(rec)
    state.log.info("delivery retry requested", event_id=event_id, attempts=rec["attempts"])


#: request kind -> handler.
HANDLERS: dict[str, Callable[[Callbacks, dict[str, Any]], None]] = {
    "deliver": handle_deliver,
    "retry": handle_retry,
}


# -- delivering -----------------------------------------------------------------------------

def deliver_next(state: Callbacks) -> bool:
    """Make one try of the earliest due delivery; False if none is due."""
    first = earliest(state.pending.values())
    if first is None or due_at(first) > state.clock.time():
        return False
    rec = begin(first, state.clock.time())
    state.store(rec)                     # durable "in_flight" before the POST
    result = attempt(state.transport, rec, secret=state.settings.secret,
                     timeout=state.settings.timeout)
    rec = finish(rec, result, state.clock.time(), state.settings.retry_schedule)
    state.store(rec)
    state.log.info("delivery try", event_id=rec["id"], url=rec["url"], attempts=rec["attempts"],
                   outcome=result.outcome, error=result.error, state=rec["state"],
                   next_attempt_at=rec["next_attempt_at"])
    return True


def sleep_for(state: Callbacks) -> float | None:
    """Seconds until the earliest pending try (0 if one is due), None if nothing pends."""
    first = earliest(state.pending.values())
    if first is None:
        return None
    return max(0.0, due_at(first) - state.clock.time())


def serve(state: Callbacks, waiter: Waiter, inbox: Path, *,
          stop: Callable[[], bool] = stop_requested) -> None:
    """Until `stop()`: take the inbox on a hint or rescan, then make at most one due try,
    sleeping until the earliest next try or the next hint."""
    while not stop():
        if waiter.wait(sleep_for(state)) and not stop():
            handle_inbox(inbox, HANDLERS, state, state.log)
        if not stop():
            deliver_next(state)


def main(cfg: Config) -> int:
    """Recover the outbox, report ready, then deliver and serve the inbox until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    state = Callbacks(log=log, outbox=DirOutbox(layout.callbacks_outbox, log),
                      transport=RequestsTransport(), settings=cfg.callbacks)
    try:
        found, did, degraded = recover(state)
    except OSError as exc:
        log.error("recovery failed", error=str(exc))
        return EXIT_RECOVERY_FAILED
    inbox = layout.inbox(NAME)
    with Watcher([inbox], log=log) as watcher:
        report_ready(layout, NAME, found=found, did=did, degraded=degraded,
                     started_monotonic=started, started_at=started_at)
        log.info("ready", pid=os.getpid(), **found)
        serve(state, watcher, inbox)
    return EXIT_OK

