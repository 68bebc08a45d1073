"""Pages of a job listing, and the parsing of its filters, for every door (batchctl, the api).

The filters themselves are the view's (state.view.JobFilter, JobView.candidates): ids come
from the queue's columns or a byte search of the raw bodies first, and a job's body is
decoded only when a page shows it (or a filter must check it), so a page of 100 from
100,000 jobs decodes about 100 bodies.

A page's cursor is opaque to clients: base64url of {"after": the last id shown, "at": its
position among the candidates}. The next page starts right after that id (before it,
newest first); should the id have vanished meanwhile, at the position it had. A cursor
that does not decode is CursorError (the api's 400).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.config import parse_duration
from supervisor.state.clock import parse_iso
from supervisor.state.jobs import valid_job_id
from supervisor.state.view import JobFilter, JobView

__all__ = [
    "MAX_LIMIT",
    "CursorError",
    "Page",
    "decode_cursor",
    "encode_cursor",
    "filter_text",
    "page",
    "parse_label",
    "parse_since",
]

#: The largest page the api serves.
MAX_LIMIT = 1000


class CursorError(ValueError):
    """A cursor that is not one this module made; str() says why."""


def filter_text(flag: str, text: str) -> str:
    """`text` as a filter value; ValueError when no job can hold it (a command-line byte
    that is not UTF-8, which Python decodes to a lone surrogate, or a NUL)."""
    if "\0" in text:
        raise ValueError(f"{flag}: {text!r} contains a NUL character")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{flag}: {text!r} is not valid UTF-8 text") from None
    return text


def parse_label(text: str) -> tuple[str, str]:
    """`K=V` as (K, V); ValueError when there is no `=`, K is empty, or it is not text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--label: expected K=V, got {text!r}")
    filter_text("--label", text)
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
        raise ValueError(f"--since: {text!r} is neither an ISO-8601 time nor a duration "
                         "(30s, 2m, 1h, 7d; at most 36500d)") from None
    return (time.time() if now is None else now) - ago


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
    """Where a page begins in `ids`: the position to walk from (down, newest first)."""
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


def page(view: JobView, flt: JobFilter, *, limit: int, cursor: str | None = None,
         newest_first: bool = False) -> Page:
    """At most `limit` entries passing `flt` after `cursor`, and the next page's cursor
    (`flt.limit` is not used: a page has its own)."""
    ids = view.candidates(flt)
    pos = _start(ids, cursor, newest_first)
    step = -1 if newest_first else 1
    out: list[dict[str, Any]] = []
    last = -1
    while 0 <= pos < len(ids) and len(out) < limit:
        entry = view.get(ids[pos])
        if entry is not None and flt.matches(entry):
            out.append(entry)
            last = pos
        pos += step
    if out and 0 <= pos < len(ids):      # stopped at the limit with ids left to look at
        return Page(out, encode_cursor(ids[last], last))
    return Page(out, None)
