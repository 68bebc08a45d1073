"""Fixtures every test module may use (plain helpers are in tests/helpers.py)."""

from __future__ import annotations

import pytest

from supervisor.state.clock import MockClock

#: The wall-clock instant a MockClock starts at in the tests: 2027-01-15T08:00:00Z.
T0 = 1_800_000_000.0


@pytest.fixture
def clock() -> MockClock:
    """A clock that stands still until the test moves it (state.clock.MockClock)."""
    return MockClock(T0)
