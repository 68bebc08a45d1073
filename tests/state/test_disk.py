"""state.disk: the free-space floor, as every door asks it."""

from __future__ import annotations

from pathlib import Path

from supervisor.config import Config, DiskConfig, FreeSpace
from supervisor.state import disk


def _cfg(tmp_path: Path, floor: FreeSpace) -> Config:
    return Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws",
                  disk=DiskConfig(min_free=floor))


def test_low_names_the_path_the_free_space_and_the_floor(tmp_path: Path) -> None:
    """Below the floor on the workspace filesystem: the sentence names it; at or above
    it on both: None."""
    cfg = _cfg(tmp_path, FreeSpace(float(1 << 30)))
    sizes = {cfg.state_dir: (5 << 30, 100 << 30), cfg.workspace_dir: (12 << 20, 100 << 30)}
    assert (f"disk: 12MiB free on {cfg.workspace_dir}, below min_free 1GiB"
            == disk.low(cfg, sizes.__getitem__))
    sizes[cfg.workspace_dir] = (1 << 30, 100 << 30)
    assert disk.low(cfg, sizes.__getitem__) is None


def test_a_percentage_floor_follows_the_filesystem_size(tmp_path: Path) -> None:
    """min_free 5%: 4% free is low, 6% is not; a floor of 0 never is."""
    cfg = _cfg(tmp_path, FreeSpace(5.0, percent=True))
    assert "below min_free 5%" in (disk.low(cfg, lambda p: (40, 1000)) or "")
    assert disk.low(cfg, lambda p: (60, 1000)) is None
    assert disk.low(_cfg(tmp_path, FreeSpace(0.0)), lambda p: (0, 1000)) is None


def test_an_unmeasurable_path_is_not_low(tmp_path: Path) -> None:
    """A filesystem that cannot be measured is left to the writes to report."""
    def fail(path: Path) -> disk.Usage:
        raise OSError(5, "Input/output error")
    assert disk.low(_cfg(tmp_path, FreeSpace(1.0)), fail) is None


def test_usage_measures_a_path_not_made_yet_at_its_parent(tmp_path: Path) -> None:
    """A state dir not created yet is measured where it will be (its nearest parent)."""
    free, total = disk.usage(tmp_path / "not" / "yet")
    assert (True, True) == (0 < free <= total, (free, total)[1] == disk.usage(tmp_path)[1])
    assert disk.low(_cfg(tmp_path, FreeSpace(100.0, percent=True))) is not None
