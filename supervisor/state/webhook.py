"""Webhook records: event ids, delivery requests, the delivery record and its state machine.

The path of one event, the delivery state machine, the classification of answers and
the retry schedule are in docs/CALLBACKS.md.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import os
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from supervisor.state.atomic import CORRUPT_MARK, Corrupt, Missing, is_tmp_name, quarantine
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.fs import FS, REAL
from supervisor.state.layout import (
    DELIVERY,
    PRUNED,
    REQUEST,
    Layout,
    read_record,
    send_request,
)
from supervisor.state.machine import Row, Table

__all__ = [
    "DELIVERED",
    "DELIVERY_STATES",
    "EVENT_NAMESPACE",
    "FAILED",
    "LIVE_STATES",
    "RETRY",
    "RETRY_AFTER_CAP",
    "RETRY_AFTER_STATUSES",
    "SETTLED_STATES",
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
    "held",
    "host_of",
    "interrupted",
    "job_event_id",
    "job_payload",
    "list_deliveries",
    "new_delivery",
    "next_delay",
    "operator_retry",
    "postponed",
    "prune_request",
    "read_pruned",
    "retry_after_delay",
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
#: States of a record in `callbacks/outbox/` (read at every start) ...
LIVE_STATES: frozenset[str] = frozenset({"pending", "in_flight"})
#: ... and of one in `callbacks/done/` (never read at start; see docs/CALLBACKS.md).
SETTLED_STATES: frozenset[str] = frozenset({"delivered", "failed"})

#: Answers whose Retry-After header replaces the next delay of the schedule.
RETRY_AFTER_STATUSES: frozenset[int] = frozenset({429, 503})
#: A Retry-After is capped at the schedule's last step times this.
RETRY_AFTER_CAP = 10.0


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
    SETTLE_WAIT = "settle_wait"          # a held batch event's check says: not yet


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
    (D.PENDING, H.SETTLE_WAIT): Row(D.PENDING),
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
                     job: str | None = None, *, batch: str | None = None,
                     now: float | None = None) -> dict[str, Any]:
    """The REQUEST (kind "deliver") that hands one event to the callbacks worker.

    Its id is the event id, so the file `callbacks/inbox/<event id>.json` dedupes replays.
    A batch event names its `batch`: the worker holds it for `callbacks.batch_settle`
    after `created_at` and checks the batch is still done before the first try.
    """
    req = {"id": event_id, "kind": "deliver", "event_id": event_id, "url": url,
           "job": job, "payload": dict(payload), "created_at": iso_now(now)}
    if batch is not None:
        req["batch"] = batch
    return req


def retry_request(event_id: str, *, now: float | None = None) -> dict[str, Any]:
    """The REQUEST (kind "retry") asking the worker to try `event_id` again, now."""
    return {"id": f"retry-{event_id}-{secrets.token_hex(4)}", "kind": "retry",
            "event_id": event_id, "created_at": iso_now(now)}


def prune_request(event_ids: Sequence[str], older_than: float, *,
                  now: float | None = None) -> dict[str, Any]:
    """The REQUEST (kind "prune") by which the reaper asks the worker to remove these
    settled deliveries, each only if it is still settled and `older_than` seconds past its
    last change. Its id follows from the ids, so asking again before the worker took the
    first request rewrites the same file."""
    digest = hashlib.sha256("\n".join(event_ids).encode()).hexdigest()[:16]
    return {"id": f"prune-{digest}", "kind": "prune", "event_ids": list(event_ids),
            "older_than": older_than, "created_at": iso_now(now)}


def read_pruned(path: Path, *, owner: bool, fs: FS = REAL
                ) -> tuple[dict[str, Any], Corrupt | None]:
    """`callbacks/pruned.json` (Layout.callbacks_pruned): ({delivered, failed, step},
    None); zeros and an empty step when it was never written; zeros and the Corrupt when
    it cannot be read (moved aside when `owner`: the counts of removed records then
    restart from 0)."""
    zero: dict[str, Any] = {"delivered": 0, "failed": 0, "step": []}
    rec = read_record(PRUNED, path, owner=owner, fs=fs)
    if isinstance(rec, Missing):
        return zero, None
    if isinstance(rec, Corrupt):
        return zero, rec
    counts = [rec.get(k) for k in ("delivered", "failed")]
    step = rec.get("step")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts) \
            or not isinstance(step, list) or not all(valid_event_id(i) for i in step):
        bad = Corrupt(str(path), quarantine(path, fs=fs) if owner else None,
                      "counts must be integers >= 0 and step a list of event ids")
        return zero, bad
    return {"delivered": counts[0], "failed": counts[1], "step": list(step)}, None


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


def retry_after_delay(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header value asks for: delay-seconds ("120") or an HTTP date
    (a date in the past: 0); None when absent or unreadable (the schedule then applies)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:     # RFC 9110 dates are GMT; a zone-less one is taken as such
        return None
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass(frozen=True)
class Result:
    """What one try came to: DELIVERED, RETRY or FAILED, the error ("HTTP 503"), and the
    delay a 429 or 503 asked for with Retry-After (seconds; None: the schedule's)."""

    outcome: str
    error: str | None
    retry_after: float | None = None


# -- the delivery record -------------------------------------------------------------------

def _at(ts: float | None) -> str | None:
    return None if ts is None else iso_now(ts)


def _moved(rec: Mapping[str, Any], event: str, now: float, **fields: Any) -> dict[str, Any]:
    out = dict(rec)
    out["state"] = transition(str(rec["state"]), event)
    out["updated_at"] = iso_now(now)
    out.update(fields)
    return out


def new_delivery(request: Mapping[str, Any], now: float, *, settle: float = 0.0
                 ) -> dict[str, Any]:
    """The DELIVERY record for a "deliver" request: pending, no try yet, due now; a batch
    event (the request names its `batch`) with `settle` > 0 is held until `settle`
    seconds after the request was made (the batch's last job ended). `created_at` is
    when the request was made (the event's birth), `updated_at` now."""
    batch = request.get("batch") if settle > 0 else None
    made = parse_iso(request.get("created_at"))
    born = now if made is None else made        # when the event was made (handed over)
    due = born + settle if isinstance(batch, str) else now
    return {"id": request["event_id"], "job": request.get("job"), "url": request["url"],
            "payload": dict(request["payload"]), "state": "pending", "attempts": 0,
            "retry_base": 0, "next_attempt_at": iso_now(due), "batch": batch,
            "last_error": None, "created_at": iso_now(born), "updated_at": iso_now(now)}


def held(rec: Mapping[str, Any]) -> bool:
    """A batch event still in its settle window: pending, never tried, naming its batch."""
    return (rec.get("state") == "pending" and rec.get("attempts") == 0
            and isinstance(rec.get("batch"), str))


def postponed(rec: Mapping[str, Any], due: float, now: float) -> dict[str, Any]:
    """A held batch event checked too early (a job of its batch not yet terminal in the
    scheduler's queue): still pending, checked again at `due`."""
    return _moved(rec, "settle_wait", now, next_attempt_at=iso_now(due))


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
        if delay is not None and result.retry_after is not None:
            # the receiver's Retry-After replaces the schedule's delay, within reason
            delay = min(result.retry_after, float(schedule[-1]) * RETRY_AFTER_CAP)
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
#: Keys a record of an earlier version may lack (the default is None).
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {"batch": (str, type(None))}


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
    for key, types in _OPTIONAL_TYPES.items():
        if not isinstance(rec.get(key), types):
            return f"{key} is {rec.get(key)!r}"
    if isinstance(rec.get("batch"), str) and not _batch_members(rec["payload"]):
        return "a batch event whose payload lists no jobs"
    if rec["state"] == "pending" and parse_iso(rec["next_attempt_at"]) is None:
        return "a pending delivery without a valid next_attempt_at"
    return None



def _batch_members(payload: Mapping[str, Any]) -> list[str] | None:
    """The job ids a batch event's payload lists, or None when it lists none."""
    batch = payload.get("batch")
    jobs = batch.get("jobs") if isinstance(batch, dict) else None
    if isinstance(jobs, list) and jobs and all(isinstance(j, str) for j in jobs):
        return jobs
    return None


def host_of(url: str) -> str:
    """The receiver a URL names, for the per-host limit: scheme://host:port (the port
    filled in, the host lowercased), as an HTTP client pools its connections."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}"


# -- reading every delivery (batchctl, the API) -------------------------------------------

def _record_names(folder: Path) -> list[str]:
    """The record file names in `folder` ([] if it does not exist); OSError if unlistable."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(n for n in names
                  if n.endswith(".json") and not is_tmp_name(n) and CORRUPT_MARK not in n)


def _handed_over(layout: Layout) -> dict[str, dict[str, Any]]:
    """Events waiting in the worker's inbox as "deliver" requests: pending, no try yet."""
    out: dict[str, dict[str, Any]] = {}
    inbox = layout.inbox("callbacks")
    for name in _record_names(inbox):
        req = read_record(REQUEST, inbox / name, owner=False)
        if (isinstance(req, dict) and req.get("kind") == "deliver"
                and valid_event_id(req.get("event_id"))):
            out[req["event_id"]] = {
                "id": req["event_id"], "job": req.get("job"), "url": req.get("url"),
                "state": "pending", "attempts": 0, "next_attempt_at": req.get("created_at"),
                "last_error": None, "created_at": req.get("created_at"),
                "batch": req.get("batch"), "updated_at": req.get("created_at")}
    return out


def list_deliveries(layout: Layout) -> tuple[list[dict[str, Any]], list[str]]:
    """Every delivery, read-only: (records oldest first, one note per unreadable record).

    Reads the worker's inbox first (events handed over, not yet taken: pending, no try),
    then `callbacks/outbox/` (pending and in flight), then `callbacks/done/` (delivered
    and failed), then the outbox again for the names it lacked. The worker writes a
    record's new place before it removes the old one (outbox -> done when a delivery
    settles, done -> outbox on an operator retry), so no event slips between the reads;
    an event seen in two places is shown as the most recently updated copy (a tie: done).
    OSError when a folder exists but cannot be listed.
    """
    found: dict[str, dict[str, Any]] = {}
    rank: dict[str, tuple[str, bool]] = {}      # id -> (updated_at, read from done/)
    notes: list[str] = []
    pending = _handed_over(layout)

    def take(folder: Path, done: bool, skip: Iterable[str] = ()) -> None:
        skipped = set(skip)
        for name in _record_names(folder):
            if name in skipped:
                continue
            rec = read_record(DELIVERY, folder / name, owner=False)
            if isinstance(rec, dict):
                problem = delivery_problem(rec)
                if problem is None:
                    mine = (str(rec.get("updated_at")), done)
                    if rec["id"] not in rank or mine >= rank[rec["id"]]:
                        found[rec["id"]], rank[rec["id"]] = rec, mine
                    continue
                reason = problem
            elif isinstance(rec, Corrupt):
                reason = rec.reason
            else:
                continue    # taken away meanwhile
            notes.append(f"skipping unreadable delivery record {folder / name}: {reason}")

    live = _record_names(layout.callbacks_outbox)
    take(layout.callbacks_outbox, False)
    take(layout.callbacks_done, True)
    take(layout.callbacks_outbox, False, skip=live)
    for event_id, row in pending.items():
        found.setdefault(event_id, row)
    return sorted(found.values(), key=lambda r: (str(r["created_at"]), r["id"])), notes
