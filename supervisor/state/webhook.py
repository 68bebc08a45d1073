"""Webhook records: event ids, delivery requests, the delivery record and its state machine.

The path of one event, the delivery state machine, the classification of answers and
the retry schedule are in docs/CALLBACKS.md.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeGuard

from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.fs import FS, REAL
from supervisor.state.layout import Layout, send_request
from supervisor.state.machine import Row, Table

__all__ = [
    "DELIVERED",
    "DELIVERY_STATES",
    "EVENT_NAMESPACE",
    "FAILED",
    "RETRY",
    "STATUS_CLASS_OUTCOME",
    "STATUS_OUTCOME",
    "TABLE",
    "Delivery",
    "Happening",
    "InvalidTransition",
    "Result",
    "batch_event_id",
    "batch_payload",
    "begin",
    "classify",
    "delivery_problem",
    "delivery_request",
    "drop_request",
    "due_at",
    "earliest",
    "finish",
    "interrupted",
    "job_event_id",
    "job_payload",
    "new_delivery",
    "next_delay",
    "operator_retry",
    "retry_request",
    "transition",
    "valid_event_id",
    "valid_url",
]

#: The namespace of every event id (uuid5). Fixed forever: changing it re-keys every event.
EVENT_NAMESPACE = uuid.UUID("7ca2426c-a75e-44ca-b0f1-1b853f0c5499")

_EVENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

DELIVERED = "delivered"
RETRY = "retry"
FAILED = "failed"

#: Delivery record states (CONTRACT.md: pending, in_flight, delivered, failed).
DELIVERY_STATES: tuple[str, ...] = ("pending", "in_flight", "delivered", "failed")


#: Statuses whose outcome is not their class's.
STATUS_OUTCOME: dict[int, str] = {408: RETRY, 429: RETRY}
#: status // 100 -> outcome; a class not listed (1xx, >= 6xx) is retried.
STATUS_CLASS_OUTCOME: dict[int, str] = {2: DELIVERED, 3: FAILED, 4: FAILED, 5: RETRY}

class Delivery(StrEnum):
    """A delivery record's state (CONTRACT.md: pending, in_flight, delivered, failed)."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    FAILED = "failed"


class Happening(StrEnum):
    """What happens to a delivery: a table column."""

    SEND = "send"                        # a try begins (written before the POST)
    DELIVERED = "delivered"              # 2xx
    RETRY = "retry"                      # retriable, and the schedule has a next delay
    EXHAUSTED = "exhausted"              # retriable, no delay left
    FAILED = "failed"                    # not retriable
    INTERRUPTED = "interrupted"          # recovery found it in flight
    OPERATOR_RETRY = "operator_retry"    # `batchctl callbacks retry`


D, H = Delivery, Happening
#: (state, happening) -> Row(new state). A pair not listed is an invalid transition.
TABLE: Table[Delivery, Happening, None] = Table({
    (D.PENDING, H.SEND): Row(D.IN_FLIGHT),
    (D.IN_FLIGHT, H.DELIVERED): Row(D.DELIVERED),
    (D.IN_FLIGHT, H.RETRY): Row(D.PENDING),
    (D.IN_FLIGHT, H.EXHAUSTED): Row(D.FAILED),
    (D.IN_FLIGHT, H.FAILED): Row(D.FAILED),
    (D.IN_FLIGHT, H.INTERRUPTED): Row(D.PENDING),
    (D.PENDING, H.OPERATOR_RETRY): Row(D.PENDING),
    (D.FAILED, H.OPERATOR_RETRY): Row(D.PENDING),
})
del D, H


class InvalidTransition(Exception):
    """An event the record's state does not accept (e.g. a retry of a delivered event)."""


def transition(state: str, event: str) -> str:
    """The state after `event` in `state` (TABLE); InvalidTransition if none."""
    try:
        row = TABLE.get(Delivery(state), Happening(event))
    except ValueError:
        row = None
    if row is None or row.next is None:
        raise InvalidTransition(f"a {state} delivery does not take {event!r}")
    return row.next.value


# -- event ids and requests ---------------------------------------------------------------

def valid_event_id(event_id: object) -> TypeGuard[str]:
    """True for ids usable as a file name: [A-Za-z0-9][A-Za-z0-9._-]{0,127} (uuids are)."""
    return isinstance(event_id, str) and _EVENT_ID_RE.fullmatch(event_id) is not None


def valid_url(url: object) -> TypeGuard[str]:
    """True for an http:// or https:// URL with something after the scheme."""
    return (isinstance(url, str) and url.lower().startswith(("http://", "https://"))
            and len(url.split("://", 1)[1]) > 0)


def job_event_id(job_id: str, created_at: str | None = None) -> str:
    """The id of the event "job `job_id` reached a terminal state" (the same on a replay).

    Pass the job's `created_at` (fixed at submit) so that two state directories posting
    the same job id to one receiver do not share a key the receiver would dedupe.
    """
    name = f"job\0{job_id}" if created_at is None else f"job\0{job_id}\0{created_at}"
    return str(uuid.uuid5(EVENT_NAMESPACE, name))


def batch_event_id(batch: str, url: str, jobs: Iterable[str] = ()) -> str:
    """The id of the event "every job of `batch` is terminal", for one callback URL.

    Pass the batch's job ids: a batch name reused later (more jobs joining a done batch)
    then completes again as a new event instead of replaying the old one.
    """
    members = ",".join(sorted(jobs))
    return str(uuid.uuid5(EVENT_NAMESPACE, f"batch\0{batch}\0{url}\0{members}"))


def job_payload(event_id: str, job: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a job event: {"event_id", "job": the job record (supervisor.state.jobs)}."""
    return {"event_id": event_id, "job": dict(job)}


def batch_payload(event_id: str, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a batch event: {"event_id", "batch": {batch, counts, done, jobs}}."""
    return {"event_id": event_id, "batch": dict(batch)}


def delivery_request(event_id: str, url: str, payload: Mapping[str, Any],
                     job: str | None = None, *, now: float | None = None) -> dict[str, Any]:
    """The REQUEST (kind "deliver") that hands one event to the callbacks worker.

    Its id is the event id, so the file `callbacks/inbox/<event id>.json` dedupes replays.
    """
    return {"id": event_id, "kind": "deliver", "event_id": event_id, "url": url,
            "job": job, "payload": dict(payload), "created_at": iso_now(now)}


def retry_request(event_id: str, *, now: float | None = None) -> dict[str, Any]:
    """The REQUEST (kind "retry") asking the worker to try `event_id` again, now."""
    return {"id": f"retry-{event_id}-{secrets.token_hex(4)}", "kind": "retry",
            "event_id": event_id, "created_at": iso_now(now)}


def drop_request(layout: Layout, request: Mapping[str, Any], *, fs: FS = REAL) -> Path:
    """Write `request` as `callbacks/inbox/<its id>.json` (supervisor.state.layout.send_request:
    atomic and durable; the worker's handlers are idempotent under a replay)."""
    return send_request(layout, "callbacks", request, fs=fs)


# -- HTTP ---------------------------------------------------------------------------------

def classify(status: int) -> str:
    """DELIVERED, RETRY or FAILED for an HTTP status (see the module docstring)."""
    return STATUS_OUTCOME.get(status) or STATUS_CLASS_OUTCOME.get(status // 100, RETRY)


def next_delay(attempts: int, schedule: Sequence[float]) -> float | None:
    """Seconds to wait after the `attempts`-th try of a round; None: no retry left."""
    if 1 <= attempts <= len(schedule):
        return float(schedule[attempts - 1])
    return None


@dataclass(frozen=True)
class Result:
    """What one try came to: DELIVERED, RETRY or FAILED, and the error ("HTTP 503")."""

    outcome: str
    error: str | None


# -- the delivery record -------------------------------------------------------------------

def _at(ts: float | None) -> str | None:
    return None if ts is None else iso_now(ts)


def _moved(rec: Mapping[str, Any], event: str, now: float, **fields: Any) -> dict[str, Any]:
    out = dict(rec)
    out["state"] = transition(str(rec["state"]), event)
    out["updated_at"] = iso_now(now)
    out.update(fields)
    return out


def new_delivery(request: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The DELIVERY record for a "deliver" request: pending, due now, no try yet."""
    return {"id": request["event_id"], "job": request.get("job"), "url": request["url"],
            "payload": dict(request["payload"]), "state": "pending", "attempts": 0,
            "retry_base": 0, "next_attempt_at": iso_now(now),
            "last_error": None, "created_at": iso_now(now), "updated_at": iso_now(now)}


def begin(rec: Mapping[str, Any], now: float) -> dict[str, Any]:
    """pending -> in_flight, one more try counted (write it before the POST)."""
    return _moved(rec, "send", now, attempts=int(rec["attempts"]) + 1)


def finish(rec: Mapping[str, Any], result: Result, now: float,
           schedule: Sequence[float]) -> dict[str, Any]:
    """in_flight -> delivered | pending (next retry due) | failed, after one try."""
    delay = None
    event = result.outcome
    if event == RETRY:
        delay = next_delay(int(rec["attempts"]) - int(rec.get("retry_base") or 0), schedule)
        event = "exhausted" if delay is None else RETRY
    ts = None if delay is None else now + delay
    error = result.error if result.error is not None else rec.get("last_error")
    return _moved(rec, event, now, next_attempt_at=_at(ts), last_error=error)


def interrupted(rec: Mapping[str, Any], now: float) -> dict[str, Any]:
    """in_flight found at recovery -> pending, due now (the try may or may not have landed)."""
    return _moved(rec, "interrupted", now, next_attempt_at=iso_now(now),
                  last_error=f"interrupted: the callbacks worker stopped during try "
                             f"{rec['attempts']}")


def operator_retry(rec: Mapping[str, Any], now: float) -> dict[str, Any]:
    """failed | pending -> pending, due now, with a fresh retry schedule; attempts kept."""
    return _moved(rec, "operator_retry", now, next_attempt_at=iso_now(now),
                  retry_base=int(rec["attempts"]))


def earliest(records: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pending record whose next try comes first (ties: oldest, then id); None if none.

    One pass (no sort): it is asked before every try, with any number of records pending.
    """
    return min((r for r in records if r["state"] == "pending"), default=None,
               key=lambda r: (due_at(r), r["created_at"], r["id"]))


def due_at(rec: Mapping[str, Any]) -> float:
    """When a pending delivery's next try is due (epoch seconds; unreadable: now)."""
    due = parse_iso(rec.get("next_attempt_at"))
    return 0.0 if due is None else due


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "job": (str, type(None)), "payload": (dict,), "attempts": (int,), "retry_base": (int,),
    "next_attempt_at": (str, type(None)),
    "last_error": (str, type(None)), "created_at": (str,),
}


def delivery_problem(rec: Mapping[str, Any]) -> str | None:
    """None if `rec` is a usable DELIVERY record, else what is wrong with it."""
    if not valid_event_id(rec.get("id")):
        return f"id {rec.get('id')!r} is not an event id"
    if not valid_url(rec.get("url")):
        return f"url {rec.get('url')!r} is not an http(s) URL"
    if rec.get("state") not in DELIVERY_STATES:
        return f"state {rec.get('state')!r} is not one of {', '.join(DELIVERY_STATES)}"
    for key, types in _FIELD_TYPES.items():
        value = rec.get(key)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"{key} is {value!r}"
    if rec["state"] == "pending" and parse_iso(rec["next_attempt_at"]) is None:
        return "a pending delivery without a valid next_attempt_at"
    return None

