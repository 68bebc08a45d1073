"""Fixtures of the reaper's tests: a config with a known grace, a clean stop flag."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import runtime as _runtime
from supervisor.config import Config, ReaperConfig, RetentionConfig, SchedulerConfig

GRACE = 600.0


@pytest.fixture(autouse=True)
def _no_stop() -> Iterator[None]:
    """Each test starts and ends without a pending stop request."""
    _runtime._state.stop = False
    yield
    _runtime._state.stop = False


def make_cfg(tmp_path: Path, *, interval: float = 60.0, workspace: Path | None = None,
             retention: RetentionConfig | None = None, kill_grace: float = 10.0) -> Config:
    state = tmp_path / "state"
    return Config(state_dir=state, workspace_dir=workspace or state / "workspaces",
                  reaper=ReaperConfig(interval=interval, grace=GRACE),
                  scheduler=SchedulerConfig(kill_grace=kill_grace),
                  retention=retention or RetentionConfig())


def touch(path: Path, age: float, data: bytes = b"x") -> Path:
    """A file `age` seconds old (its folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return aged(path, age)


def aged(path: Path, age: float, now: float | None = None) -> Path:
    t = (time.time() if now is None else now) - age
    os.utime(path, (t, t), follow_symlinks=False)
    return path
