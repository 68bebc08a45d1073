"""Time: the injectable clock every loop reads, and timestamps in batchd's one written form.

`Clock` is the time of day (`time`), a monotonic reading (`monotonic`), `sleep` and
`iso_now`, behind one object passed to whatever waits or dates anything; `MockClock`
(modelled on trio's) is the twin tests use: time stands still until the test advances it,
and a sleep advances it instead of waiting. Timestamps: one writer of the format
(`iso_now`) and one reader (`parse_iso`); every record carries an instant in this one
form, ISO-8601 UTC with milliseconds and a Z. Quarantine file names use `atomic.utc_stamp`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["SYSTEM_CLOCK", "Clock", "MockClock", "iso_now", "parse_iso"]


def iso_now(now: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a Z: 2026-11-28T11:45:02.123Z."""
    t = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
            f"{t.second:02d}.{t.microsecond // 1000:03d}Z")   # %Y: no zero padding before 1000


def parse_iso(text: object) -> float | None:
    """The epoch seconds of an ISO-8601 timestamp (a naive one is taken as UTC); None if
    `text` is not one, or names an instant before year 1 or after 9999 in UTC."""
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    at = (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()
    return at if _FIRST <= at <= _LAST else None


#: The instants iso_now can write (years 1..9999 in UTC): an offset can carry a valid
#: local time (0001-01-01T00:00+01:00, 9999-12-31T23:59-01:00) outside them.
_FIRST = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_LAST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp()


class Clock:
    """The real clocks: epoch seconds, a monotonic reading, sleeping."""

    def time(self) -> float:
        """Seconds since the epoch (what records date things by)."""
        return time.time()

    def monotonic(self) -> float:
        """A reading that never goes back (what timers and timeouts measure with)."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (no-op for <= 0)."""
        if seconds > 0:
            time.sleep(seconds)

    def iso_now(self) -> str:
        """`time()` as batchd writes an instant."""
        return iso_now(self.time())


#: The clock of production code.
SYSTEM_CLOCK = Clock()


class MockClock(Clock):
    """A clock tests move: it stands still until `advance`, and `sleep` advances it.

    Both readings move together; the wall clock starts at `start` (epoch seconds), the
    monotonic one at `monotonic_start`. `jump` moves only the wall clock (a clock step)."""

    def __init__(self, start: float = 1_800_000_000.0, *, monotonic_start: float = 1000.0
                 ) -> None:
        self._wall = start
        self._mono = monotonic_start
        self.slept: list[float] = []

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        self._wall += seconds
        self._mono += seconds

    def jump(self, seconds: float) -> None:
        """Step the wall clock alone (by NTP or an operator), forward or back."""
        self._wall += seconds
