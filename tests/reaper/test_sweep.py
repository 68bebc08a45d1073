"""reaper.sweep: stale temp files and old quarantined files, by age and by place."""

from __future__ import annotations

import time
from pathlib import Path

from supervisor.reaper import sweep
from supervisor.state.atomic import CORRUPT_MARK, utc_stamp
from supervisor.state.layout import Layout
from tests.reaper.conftest import GRACE, make_cfg, touch


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
    seen, removed = sweep.sweep_tmp(Layout(s), cfg.workspace_dir, GRACE)
    assert (4, sorted(map(str, old))) == (seen, sorted(removed))
    assert [True, True, True] == [p.exists() for p in kept]


def test_workspaces_job_content_and_mirrors_are_never_entered(tmp_path: Path) -> None:
    """The sweeps skip the workspaces folder (wherever the config puts it), anything
    below jobs/<id>/, and git's own stores in mirrors/."""
    cfg = make_cfg(tmp_path, workspace=tmp_path / "state" / "ws")
    s = cfg.state_dir
    kept = [touch(s / "ws" / "j1" / ".tmp.x.1.aa", GRACE * 10),
            touch(s / "ws" / ".tmp.y.1.aa", GRACE * 10),
            touch(s / "jobs" / "j1" / "repo" / ".tmp.z.1.aa", GRACE * 10),
            touch(s / "mirrors" / "app.git" / "objects" / ".tmp.o.1.aa", GRACE * 10),
            touch(s / "ws" / f"x{CORRUPT_MARK}20200101T000000.000000Z", GRACE * 10)]
    gone = touch(s / "jobs" / ".tmp.w.1.aa", GRACE * 10)
    sweep.sweep_tmp(Layout(s), cfg.workspace_dir, GRACE)
    sweep.sweep_corrupted(Layout(s), cfg.workspace_dir, 0.0, time.time())
    assert [True, True, True, True, True, False] == [p.exists() for p in [*kept, gone]]


def test_quarantined_files_go_after_retention_counted_from_their_stamp(tmp_path: Path) -> None:
    """A quarantined file is kept retention.corrupted after it was moved aside (the stamp
    in its name, not its mtime, says when); null keeps them forever."""
    cfg = make_cfg(tmp_path)
    s = cfg.state_dir
    now = time.time()
    day = 86400.0
    old = touch(s / "locks" / f"state.json{CORRUPT_MARK}{utc_stamp(now - 31 * day)}", 0)
    old_n = touch(s / "jobs" / "j1" / f"result.json{CORRUPT_MARK}{utc_stamp(now - 40 * day)}.2",
                  0)
    young = touch(s / "reaper" / f"state.json{CORRUPT_MARK}{utc_stamp(now - 29 * day)}", 99 * day)
    layout = Layout(s)
    assert [] == sweep.sweep_corrupted(layout, cfg.workspace_dir, None, now)
    assert sorted([str(old), str(old_n)]) == sorted(
        sweep.sweep_corrupted(layout, cfg.workspace_dir, 30 * day, now))
    assert (False, False, True) == (old.exists(), old_n.exists(), young.exists())


def test_a_quarantined_folder_is_removed_whole(tmp_path: Path) -> None:
    """A folder quarantined as a whole (a damaged segment set) goes as one."""
    cfg = make_cfg(tmp_path)
    folder = cfg.state_dir / f"wal{CORRUPT_MARK}20200101T000000.000000Z"
    touch(folder / "000000000001.wal", 0)
    assert [str(folder)] == sweep.sweep_corrupted(Layout(cfg.state_dir), cfg.workspace_dir,
                                                  1.0, time.time())
    assert not folder.exists()


def test_one_walk_does_both_sweeps(tmp_path: Path) -> None:
    """sweep(): the old temp files and the quarantined files past retention, anywhere
    the two sweeps look (a job folder among many included), from one listing of each
    folder; keep=None keeps every quarantined file."""
    cfg = make_cfg(tmp_path)
    s = cfg.state_dir
    now = time.time()
    for i in range(50):
        touch(s / "jobs" / f"j{i:02d}" / "output", GRACE * 10)
    tmp = [touch(s / "jobs" / "j17" / ".tmp.sentinel.json.1.aa", GRACE + 60),
           touch(s / "scheduler" / "inbox" / ".tmp.r.json.2.bb", GRACE * 10)]
    corrupt = [touch(s / "jobs" / "j33" / f"result.json{CORRUPT_MARK}{utc_stamp(now - 40 * 86400)}",
                     0),
               touch(s / "locks" / f"state.json{CORRUPT_MARK}{utc_stamp(now - 31 * 86400)}", 0)]
    young = touch(s / "jobs" / "j18" / ".tmp.result.json.3.cc", GRACE - 60)
    layout = Layout(s)
    assert ([], []) == sweep.sweep(layout, cfg.workspace_dir, GRACE * 100, None, now)
    assert (sorted(map(str, tmp)), sorted(map(str, corrupt))) == tuple(
        sorted(found) for found in sweep.sweep(layout, cfg.workspace_dir, GRACE, 30 * 86400.0,
                                               now))
    assert [False, False, False, False, True] == [p.exists() for p in [*tmp, *corrupt, young]]
