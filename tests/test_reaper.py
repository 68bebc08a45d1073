"""Tests for supervisor.reaper: stale temp files removed by age and place, passes recorded."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import log as _log
from supervisor import reaper
from supervisor import runtime as _runtime
from supervisor.config import Config, ReaperConfig
from supervisor.state.atomic import CORRUPT_MARK
from supervisor.state.layout import READY, WORKER_STATE, Layout, read_record

GRACE = 600.0
DEADLINE = 30.0


@pytest.fixture(autouse=True)
def _no_stop() -> Iterator[None]:
    """Each test starts and ends without a pending stop request."""
    _runtime._state.stop = False
    yield
    _runtime._state.stop = False


def make_cfg(tmp_path: Path, *, interval: float = 60.0, workspace: Path | None = None) -> Config:
    state = tmp_path / "state"
    return Config(state_dir=state, workspace_dir=workspace or state / "workspaces",
                  reaper=ReaperConfig(interval=interval, grace=GRACE))


def touch(path: Path, age: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_only_temp_files_older_than_grace_are_removed(tmp_path: Path) -> None:
    """Old temp files go; young temp files, ordinary files and quarantined files stay."""
    cfg = make_cfg(tmp_path)
    s = cfg.state_dir
    old = [touch(s / ".tmp.batchd.pid.1.aa", GRACE + 60),
           touch(s / "scheduler" / "inbox" / ".tmp.r.json.2.bb", GRACE * 10),
           touch(s / "jobs" / "j1" / ".tmp.result.json.3.cc", GRACE + 60)]
    kept = [touch(s / "scheduler" / "inbox" / ".tmp.r2.json.4.dd", GRACE - 60),
            touch(s / "scheduler" / "inbox" / "r3.json", GRACE * 10),
            touch(s / "locks" / f"state.json{CORRUPT_MARK}20260101T000000.000000Z", GRACE * 10)]
    seen, removed = reaper.sweep(Layout(s), cfg.workspace_dir, GRACE)
    assert (4, 3) == (seen, removed)
    assert [False, False, False] == [p.exists() for p in old]
    assert [True, True, True] == [p.exists() for p in kept]


def test_workspaces_and_job_content_are_never_entered(tmp_path: Path) -> None:
    """The sweep skips the workspaces folder and anything below jobs/<id>/."""
    cfg = make_cfg(tmp_path)
    s = cfg.state_dir
    kept = [touch(s / "workspaces" / "j1" / ".tmp.x.1.aa", GRACE * 10),
            touch(s / "workspaces" / ".tmp.y.1.aa", GRACE * 10),
            touch(s / "jobs" / "j1" / "repo" / ".tmp.z.1.aa", GRACE * 10)]
    gone = touch(s / "jobs" / ".tmp.w.1.aa", GRACE * 10)
    reaper.sweep(Layout(s), cfg.workspace_dir, GRACE)
    assert [True, True, True, False] == [p.exists() for p in [*kept, gone]]


def test_repository_mirrors_are_never_entered(tmp_path: Path) -> None:
    """mirrors/<name>.git is git's own store: the sweep does not walk into it."""
    cfg = make_cfg(tmp_path)
    kept = touch(cfg.state_dir / "mirrors" / "app.git" / "objects" / ".tmp.o.1.aa", GRACE * 10)
    reaper.sweep(Layout(cfg.state_dir), cfg.workspace_dir, GRACE)
    assert kept.exists()


def test_a_configured_workspace_dir_inside_the_state_dir_is_skipped(tmp_path: Path) -> None:
    """workspace_dir is skipped wherever the config puts it under the state dir."""
    cfg = make_cfg(tmp_path, workspace=tmp_path / "state" / "ws")
    kept = touch(cfg.workspace_dir / "j1" / ".tmp.x.1.aa", GRACE * 10)
    reaper.sweep(Layout(cfg.state_dir), cfg.workspace_dir, GRACE)
    assert kept.exists()


def test_each_pass_is_recorded_and_the_total_survives_a_restart(tmp_path: Path) -> None:
    """reaper/state.json holds the last pass and the running total across restarts."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    touch(cfg.state_dir / ".tmp.a.1.aa", GRACE * 2)
    touch(cfg.state_dir / ".tmp.b.1.aa", GRACE * 2)
    _, found, did, degraded = reaper.recover(cfg, layout, _log.get("test"))
    assert ({"tmp_files": 2}, {"removed": 2}, []) == (found, did, degraded)
    touch(cfg.state_dir / "ready" / ".tmp.c.1.aa", GRACE * 2)
    state, found, did, _ = reaper.recover(cfg, layout, _log.get("test"))
    assert ({"tmp_files": 1}, {"removed": 1}, 3) == (found, did, state.total_removed)
    rec = read_record(WORKER_STATE, layout.worker_state("reaper"), owner=False)
    assert isinstance(rec, dict)
    assert ("reaper", 1, 3) == (rec["worker"], rec["removed"], rec["total_removed"])
    assert isinstance(rec["last_pass_at"], str)


def test_corrupt_state_is_quarantined_and_the_total_restarts(tmp_path: Path) -> None:
    """A corrupt reaper/state.json is moved aside and noted; the reaper still sweeps."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    touch(layout.worker_state("reaper"), 0).write_bytes(b"{oops")
    state, _, _, degraded = reaper.recover(cfg, layout, _log.get("test"))
    moved = [n for n in os.listdir(layout.worker_dir("reaper")) if CORRUPT_MARK in n]
    assert [f"reaper state was corrupt: moved to {layout.worker_dir('reaper') / moved[0]}"] \
        == degraded
    assert 0 == state.total_removed


def test_main_sweeps_every_interval(tmp_path: Path) -> None:
    """After ready, the running reaper removes a stale temp file at its next interval."""
    cfg = make_cfg(tmp_path, interval=0.2)
    layout = Layout(cfg.state_dir)
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(reaper.main(cfg)))
    worker.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while not layout.ready_file("reaper").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        rec = read_record(READY, layout.ready_file("reaper"), owner=False)
        assert isinstance(rec, dict)
        assert ({"tmp_files": 0}, {"removed": 0}) == (rec["found"], rec["did"])
        stale = touch(cfg.state_dir / "reaper" / ".tmp.late.1.aa", GRACE * 2)
        while stale.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not stale.exists()
    finally:
        _runtime.request_stop()
        worker.join(DEADLINE)
    assert [0] == result


def test_write_metrics_writes_the_textfile_only_when_configured(tmp_path: Path) -> None:
    """metrics.textfile set: the exposition lands there atomically; unset: nothing."""
    import dataclasses

    from supervisor.config import MetricsConfig
    from supervisor.reaper import Reaper, write_metrics

    base = Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws")
    layout = Layout(base.state_dir)
    assert write_metrics(Reaper(base, layout, _log.get("test"))) is False
    prom = tmp_path / "prom" / "batchd.prom"
    cfg = dataclasses.replace(base, metrics=MetricsConfig(textfile=prom))
    assert write_metrics(Reaper(cfg, layout, _log.get("test"))) is True
    assert "# TYPE batchd_jobs gauge" in prom.read_text()
