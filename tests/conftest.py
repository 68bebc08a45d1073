"""Fixtures every test module may use (plain helpers are in tests/helpers.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.state.clock import MockClock

#: The wall-clock instant a MockClock starts at in the tests: 2027-01-15T08:00:00Z.
T0 = 1_800_000_000.0


@pytest.fixture
def clock() -> MockClock:
    """A clock that stands still until the test moves it (state.clock.MockClock)."""
    return MockClock(T0)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 32 MiB tmpfs to fill (tests.helpers.fill); skipped, with the reason, where
    mounting is not allowed."""
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(where)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
