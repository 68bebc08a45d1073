"""Listing jobs: the filters (`jobs --state/--batch/--agent/--label/--since`) and pages.

One reading of a job listing for every door: `batchctl jobs` and the api's `GET /v1/jobs`.
Jobs come in listing order (the view's: submission order, then submissions still in the
inbox). Candidates are found from the queue's columns first (ids, state codes: no body
decoded), and a job's body is decoded only when a filter needs it or it is shown, so a
page of 100 from 100,000 jobs decodes about 100 bodies.

A page's cursor is opaque to clients: base64url of {"after": last id shown, "at": its
position}. The next page starts right after that id (before it, newest first); should the
id have vanished meanwhile, at the position it had. A cursor that does not decode is
CursorError (the api's 400).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.config import parse_duration
from supervisor.state.clock import parse_iso
from supervisor.state.jobs import valid_job_id
from supervisor.state.queue import JOB_STATES, TERMINAL_STATES
from supervisor.state.view import JobView

__all__ = [
    "MAX_LIMIT",
    "CursorError",
    "JobFilter",
    "Page",
    "decode_cursor",
    "encode_cursor",
    "page",
    "parse_label",
    "parse_since",
    "select",
]

#: The largest page the api serves.
MAX_LIMIT = 1000


class CursorError(ValueError):
    """A cursor that is not one this module made; str() says why."""


def parse_label(text: str) -> tuple[str, str]:
    """`K=V` as (K, V); ValueError when there is no `=` or K is empty."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"label filter {text!r} must be KEY=VALUE")
    return key, value


def parse_since(text: str, now: float | None = None) -> float:
    """An instant (epoch seconds): ISO-8601, or a duration meaning that long ago (`2h`).

    ValueError naming what was given otherwise."""
    at = parse_iso(text)
    if at is not None:
        return at
    try:
        ago = parse_duration(text)
    except ValueError:
        raise ValueError(f"since {text!r} is neither an ISO-8601 time nor a duration "
                         "(30s, 2m, 1h, 7d)") from None
    return (time.time() if now is None else now) - ago


@dataclass(frozen=True)
class JobFilter:
    """What a listing keeps; None (or empty) keeps everything."""

    state: str | None = None
    batch: str | None = None
    agent: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    since: float | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in JOB_STATES:
            raise ValueError(f"state {self.state!r} is not one of {', '.join(JOB_STATES)}")

    def needs_body(self) -> bool:
        return bool(self.batch is not None or self.agent is not None or self.labels
                    or self.since is not None)

    def matches(self, entry: dict[str, Any]) -> bool:
        """Whether a job entry (as the view shows it) passes every filter."""
        if self.state is not None and entry.get("state") != self.state:
            return False
        if self.batch is not None and entry.get("batch") != self.batch:
            return False
        if self.agent is not None and entry.get("agent") != self.agent:
            return False
        if self.labels:
            labels = entry.get("labels")
            if not isinstance(labels, dict) or any(labels.get(k) != v for k, v in self.labels):
                return False
        if self.since is not None:
            created = parse_iso(entry.get("created_at"))
            if created is None or created < self.since:
                return False
        return True


def _candidates(view: JobView, f: JobFilter) -> list[str]:
    """Ids that may match, in listing order, from the columns alone (no body decoded)."""
    ids = view.ids()
    if f.state is None or view.queue is None:
        return ids
    keep = set(view.queue.ids(f.state))
    if f.state == "queued":
        keep.update(view.pending_ids())
    if f.state in TERMINAL_STATES:     # an active job whose result settles it to f.state
        keep.update(view.queue.ids("starting"))
        keep.update(view.queue.ids("running"))
    return [i for i in ids if i in keep]


def select(view: JobView, f: JobFilter) -> Iterator[dict[str, Any]]:
    """Every job entry passing `f`, in listing order."""
    for job_id in _candidates(view, f):
        entry = view.get(job_id)
        if entry is not None and f.matches(entry):
            yield entry


def encode_cursor(after: str, at: int) -> str:
    raw = json.dumps({"after": after, "at": at}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    """(id, position) of a cursor; CursorError if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        obj = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise CursorError("cursor is not one this server made") from None
    if (not isinstance(obj, dict) or not valid_job_id(obj.get("after"))
            or type(obj.get("at")) is not int or obj["at"] < 0):
        raise CursorError("cursor is not one this server made")
    return str(obj["after"]), int(obj["at"])


@dataclass(frozen=True)
class Page:
    """One page of a listing: its entries and the cursor of the next (None: the last)."""

    entries: list[dict[str, Any]]
    next_cursor: str | None


def _start(ids: Sequence[str], cursor: str | None, newest_first: bool) -> int:
    """Where a page begins in `ids` (ascending positions; for newest first, the position
    the walk down starts from)."""
    if cursor is None:
        return len(ids) - 1 if newest_first else 0
    after, at = decode_cursor(cursor)
    where = at if at < len(ids) and ids[at] == after else None
    if where is None:
        try:
            where = ids.index(after)
        except ValueError:
            where = None
    if where is None:                 # vanished: carry on from where it was
        return min(at, len(ids)) - 1 if newest_first else min(at, len(ids))
    return where - 1 if newest_first else where + 1


def page(view: JobView, f: JobFilter, *, limit: int, cursor: str | None = None,
         newest_first: bool = False) -> Page:
    """At most `limit` entries passing `f` after `cursor`, and the next page's cursor."""
    ids = _candidates(view, f)
    pos = _start(ids, cursor, newest_first)
    step = -1 if newest_first else 1
    out: list[dict[str, Any]] = []
    last = -1
    while 0 <= pos < len(ids) and len(out) < limit:
        entry = view.get(ids[pos])
        if entry is not None and f.matches(entry):
            out.append(entry)
            last = pos
        pos += step
    if out and 0 <= pos < len(ids):      # stopped at the limit with ids left to look at
        return Page(out, encode_cursor(ids[last], last))
    return Page(out, None)
