"""reaper.forget: archive, folders, the scheduler's forget request — whole after any crash."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from supervisor.reaper import forget
from supervisor.state import archive
from supervisor.state import layout as _layout
from supervisor.state.atomic import is_tmp_name
from supervisor.state.layout import FORGETTING, REQUEST, Layout, read_record, write_record
from tests.crashfs import CrashFS, explore

NOW = 1_800_000_000.0
RECORDS = {i: {"id": i, "state": "completed", "finished_at": "2026-10-01T00:00:00.000Z",
               "workspace": None} for i in ("a", "b")}
OLD = {"id": "old", "state": "failed", "finished_at": "2026-10-01T00:00:00.000Z"}


def _read(ids: Sequence[str]) -> list[dict[str, Any]]:
    return [RECORDS[i] for i in ids]


def _setup(root: str) -> None:
    layout = Layout(root)
    archive.append(layout, [OLD])
    for i in RECORDS:
        (layout.job_dir(i)).mkdir(parents=True)
        (layout.job_output(i)).write_bytes(b"out")


def _picture(layout: Layout) -> dict[str, Any]:
    records, notes = archive.read(layout)
    inbox = layout.inbox("scheduler")
    requests = []
    for name in sorted(os.listdir(inbox)) if inbox.exists() else []:
        if is_tmp_name(name):
            continue                     # a write a crash cut short: no reader takes it
        rec = read_record(REQUEST, inbox / name, owner=False)
        assert isinstance(rec, dict)
        requests.append((rec["kind"], rec["jobs"]))
    return {"archived": sorted(r["id"] for r in records), "notes": notes,
            "requests": requests, "step": layout.forgetting_file.exists(),
            "folders": sorted(n for n in os.listdir(layout.jobs_dir) if not n.startswith("."))}


def _recover(root: str) -> dict[str, Any]:
    """resume, then the picture without the job folders: their removal is real-disk work
    outside the FS seam (the crash model cannot take it back), idempotent, pinned by the
    test above."""
    layout = Layout(root)
    forget.resume(layout, _read, NOW)
    picture = _picture(layout)
    del picture["folders"]
    return picture


def _workload(root: str, fs: CrashFS) -> Iterator[None]:
    _layout._ENSURED.clear()        # each run starts in a fresh folder: nothing made yet
    forget.begin(Layout(root), list(RECORDS.values()), [], NOW, fs=fs)
    yield


def test_a_step_archives_each_record_once_then_asks_the_scheduler(tmp_path: Path) -> None:
    """begin: the records appended (with forgotten_at), the folders gone, one forget
    request naming the jobs, no step record left."""
    layout = Layout(tmp_path)
    _setup(str(tmp_path))
    forget.begin(layout, list(RECORDS.values()), [], NOW)
    assert {"archived": ["a", "b", "old"], "notes": [], "requests": [("forget", ["a", "b"])],
            "step": False, "folders": []} == _picture(layout)
    records, _ = archive.read(layout)
    assert {"2027-01-15T08:00:00.000Z"} == {r.get("forgotten_at") for r in records
                                           if r["id"] != "old"}


def test_a_power_cut_anywhere_in_a_step_is_finished_by_resume(tmp_path: Path) -> None:
    """Crash the step at every persistence point, every disk state: resume gives either
    nothing done (no step record survived) or the whole step with every record archived
    exactly once — never a job asked to be forgotten before its record is archived."""
    before = {"archived": ["old"], "notes": [], "requests": [], "step": False}
    after = {"archived": ["a", "b", "old"], "notes": [], "requests": [("forget", ["a", "b"])],
             "step": False}
    report = explore(tmp_path, setup=_setup, workload=_workload, recover=_recover,
                     expected=[before, after], ignore=lambda rel: rel.startswith("jobs/"))
    assert {0, 1} == set(report.recovered_to)


def test_a_corrupt_step_record_is_moved_aside_and_said(tmp_path: Path) -> None:
    """A step record that is not one (bad sizes) is quarantined; resume says what that
    may cost and does nothing else."""
    layout = Layout(tmp_path)
    layout.forgetting_file.parent.mkdir(parents=True)
    write_record(FORGETTING, layout.forgetting_file,
                 {"ids": ["a"], "workspaces": [], "sizes": {"../x": 1}, "archived": False,
                  "request": "forget-1"})
    step, note = forget.resume(layout, _read, NOW)
    assert (None, True, False) == (step, (note or "").startswith(
        "the retention step record was corrupt (moved to "), layout.forgetting_file.exists())
