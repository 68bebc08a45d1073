"""Fixtures every test module may use (plain helpers are in tests/helpers.py)."""

from __future__ import annotations

import os

import pytest

from supervisor.state.clock import MockClock
from tests.proc.slurm.slurmlab import available

#: The wall-clock instant a MockClock starts at in the tests: 2027-01-15T08:00:00Z.
T0 = 1_800_000_000.0


@pytest.fixture
def clock() -> MockClock:
    """A clock that stands still until the test moves it (state.clock.MockClock)."""
    return MockClock(T0)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `slurm` start a real slurmctld, slurmd and munged (as root): they run
    under `make test-slurm` (SLURMLAB_REQUIRED=1, where a missing binary fails them) and
    are skipped elsewhere, saying why."""
    if item.get_closest_marker("slurm") is None:
        return
    why = available()
    if os.environ.get("SLURMLAB_REQUIRED"):
        if why is not None:
            pytest.fail(f"make test-slurm: {why}")
        return
    pytest.skip(why or "starts a real Slurm cluster (slurmctld, slurmd, munged as root): "
                "run by `make test-slurm`")
