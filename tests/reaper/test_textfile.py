"""The reaper's metrics textfile: written when configured, at start and every INTERVAL."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from supervisor import log as _log
from supervisor.config import Config, MetricsConfig
from supervisor.reaper.textfile import INTERVAL, Textfile
from supervisor.state.clock import MockClock
from supervisor.state.layout import Layout


def test_written_at_start_then_every_interval(tmp_path: Path, clock: MockClock) -> None:
    """tick(): written at once, not again before INTERVAL, again after it; atomically."""
    prom = tmp_path / "node" / "batchd.prom"
    cfg = dataclasses.replace(Config(state_dir=tmp_path / "s", workspace_dir=tmp_path / "w"),
                              metrics=MetricsConfig(textfile=prom))
    t = Textfile(cfg, Layout(cfg.state_dir), _log.get("test"), clock=clock)
    assert 0.0 == t.wait()
    assert (True, INTERVAL) == (t.tick(), t.wait())
    assert "# TYPE batchd_jobs gauge" in prom.read_text()
    assert (False, INTERVAL) == (t.tick(), t.wait())
    clock.advance(INTERVAL)
    assert t.tick() is True
    assert ["batchd.prom"] == [p.name for p in prom.parent.iterdir()]


def test_nothing_without_a_textfile(tmp_path: Path, clock: MockClock) -> None:
    """metrics.textfile null: no waiting, no writing."""
    cfg = Config(state_dir=tmp_path / "s", workspace_dir=tmp_path / "w")
    t = Textfile(cfg, Layout(cfg.state_dir), _log.get("test"), clock=clock)
    assert (None, False) == (t.wait(), t.tick())
