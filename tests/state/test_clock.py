"""supervisor.state.clock: the one writer and the one reader of batchd's timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

from supervisor.state.clock import epoch_of, iso_now, parse_iso

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


def test_epoch_of_prefers_the_epoch_field() -> None:
    """The ts field when it is a number (not a bool), else the ISO field, else None."""
    assert [5.0, T, None] == [epoch_of({"ts": 5, "at": "x"}, "ts", "at"),
                              epoch_of({"ts": True, "at": iso_now(T)}, "ts", "at"),
                              epoch_of({}, "ts", "at")]
