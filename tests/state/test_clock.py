"""supervisor.state.clock: the one writer and the one reader of batchd's timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

from supervisor.state.clock import MockClock, iso_now, parse_iso

T = datetime(2026, 11, 28, 11, 45, 2, 123000, tzinfo=UTC).timestamp()


def test_iso_now_writes_milliseconds_and_z() -> None:
    """2026-11-28T11:45:02.123Z: UTC, three decimals, a Z."""
    assert "2026-11-28T11:45:02.123Z" == iso_now(T)


def test_parse_iso_reads_ours_and_offsets_and_refuses_garbage() -> None:
    """Our form, an explicit offset and a naive (UTC) form read back; anything else None."""
    assert [T, T, T] == [parse_iso("2026-11-28T11:45:02.123Z"),
                         parse_iso("2026-11-28T12:45:02.123+01:00"),
                         parse_iso("2026-11-28T11:45:02.123")]
    assert [None, None] == [parse_iso("yesterday"), parse_iso(None)]


def test_mock_clock_stands_still_until_advanced_and_sleep_advances_it() -> None:
    """Both readings move only when told; a sleep moves them by its length; a jump moves
    the wall clock alone."""
    c = MockClock(T, monotonic_start=5.0)
    assert (T, 5.0) == (c.time(), c.monotonic())
    c.sleep(2.5)
    c.advance(0.5)
    assert (T + 3.0, 8.0, [2.5]) == (c.time(), c.monotonic(), c.slept)
    c.jump(-60.0)
    assert (T - 57.0, 8.0, iso_now(T - 57.0)) == (c.time(), c.monotonic(), c.iso_now())


def test_parse_iso_refuses_instants_iso_now_cannot_write() -> None:
    """A valid local time whose UTC instant falls before year 1 or after 9999 is not an
    instant batchd can store (iso_now raised "year 0 is out of range"): None, as garbage.
    The years at the edges are written so that they read back (zero-padded)."""
    assert [None, None] == [parse_iso("0001-01-01T00:00:00+01:00"),
                            parse_iso("9999-12-31T23:59:59-01:00")]
    first, last = parse_iso("0001-01-01T00:00:00Z"), parse_iso("9999-12-31T23:59:59Z")
    early = parse_iso("0999-06-01T00:00:00Z")
    assert first is not None and last is not None and early is not None
    assert ["0001-01-01T00:00:00.000Z", "0999-06-01T00:00:00.000Z",
            "9999-12-31T23:59:59.000Z"] == [iso_now(first), iso_now(early), iso_now(last)]
