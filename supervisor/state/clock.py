"""Timestamps as batchd writes and reads them: ISO-8601 UTC with milliseconds and a Z.

One writer of the format (`iso_now`) and one reader (`parse_iso`, and `epoch_of` for
records that carry an instant as epoch seconds or as ISO text); no other module formats
or parses a timestamp. Quarantine file names use `_atomic.utc_stamp` (a file-name form).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["epoch_of", "iso_now", "parse_iso"]


def iso_now(now: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a Z: 2026-11-28T11:45:02.123Z."""
    t = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_iso(text: object) -> float | None:
    """The epoch seconds of an ISO-8601 timestamp (a naive one is taken as UTC); None if
    `text` is not one."""
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


def epoch_of(record: Mapping[str, Any], ts_key: str, iso_key: str) -> float | None:
    """record[ts_key] (epoch seconds), else record[iso_key] (ISO-8601) parsed, else None:
    the instant a record states, whichever form it carries."""
    ts = record.get(ts_key)
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return float(ts)
    return parse_iso(record.get(iso_key))
