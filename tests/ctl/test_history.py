"""`batchctl clean` and `history` (ctl.history): dry runs, the archive, exit codes."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config
from supervisor.ctl.history import cmd_clean, cmd_history
from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CtlError, Ctx
from supervisor.state import archive
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import iso_now
from supervisor.state.layout import Layout
from supervisor.state.queue import JobQueue


@pytest.fixture
def ctx(tmp_path: Path) -> Ctx:
    state = tmp_path / "state"
    ensure_dir(state)
    return Ctx(cfg=Config(state_dir=state, workspace_dir=state / "ws"), layout=Layout(state),
               out=io.StringIO(), err=io.StringIO())


def _out(ctx: Ctx) -> Any:
    assert isinstance(ctx.out, io.StringIO)
    return json.loads(ctx.out.getvalue())


def _queue(ctx: Ctx, *jobs: tuple[str, str, float | None]) -> None:
    ensure_dir(ctx.layout.wal_dir)
    with JobQueue.open(ctx.layout.wal_dir) as q:
        for job_id, state, ended in jobs:
            q.enqueue(job_id, {"agent": "shell", "prompt": "x", "repos": [],
                               "created_at": iso_now(time.time() - 99 * 86400)})
            q.update(job_id, state=state,
                     **({} if ended is None else {"finished_at": iso_now(time.time() - ended)}))


def test_clean_dry_run_lists_what_would_go_and_changes_nothing(ctx: Ctx) -> None:
    """--dry-run works with batchd down: the finished jobs past --older-than, of --state,
    listed with why; the queue and the reaper's inbox untouched."""
    _queue(ctx, ("a", "completed", 3 * 86400 + 60), ("b", "failed", 3600),
           ("c", "lost", 5 * 86400 + 7300), ("d", "running", None))
    ctx.json = True
    assert EXIT_OK == cmd_clean(ctx, "1d", [], True)
    assert [("a", "clean: completed 3d ago"), ("c", "clean: lost 5d 2h ago")] == [
        (g["id"], g["why"]) for g in _out(ctx)]
    ctx.out = io.StringIO()
    assert EXIT_OK == cmd_clean(ctx, None, ["failed"], True)
    assert (["b"], False) == ([g["id"] for g in _out(ctx)], ctx.layout.inbox("reaper").exists())


def test_clean_needs_batchd_and_a_duration(ctx: Ctx) -> None:
    """Without --dry-run and batchd down: exit 1, nothing written; a bad --older-than:
    exit 2."""
    with pytest.raises(CtlError) as down:
        cmd_clean(ctx, None, [], False)
    with pytest.raises(CtlError) as bad:
        cmd_clean(ctx, "soon", [], True)
    assert (EXIT_FAILED, True, EXIT_USAGE, False) == (
        down.value.code, str(down.value).startswith("batchd is not running"),
        bad.value.code, ctx.layout.inbox("reaper").exists())


def test_history_reads_the_archive_newest_first_and_says_what_it_cannot_read(ctx: Ctx) -> None:
    """history: every month newest first, or one month; a torn append is named on stderr;
    a month not of the form YYYY-MM (year 0001..9999) is exit 2."""
    archive.append(ctx.layout, [
        {"id": "o", "state": "failed", "finished_at": "2026-10-05T00:00:00Z"},
        {"id": "n", "state": "completed", "finished_at": "2026-11-05T00:00:00Z"}])
    path = ctx.layout.history_file("2026-11")
    path.write_bytes(path.read_bytes() + b"\x1f\x8b\x08")
    ctx.json = True
    assert EXIT_OK == cmd_history(ctx, None)
    assert ["n", "o"] == [r["id"] for r in _out(ctx)]
    assert ctx.err.getvalue().startswith(  # type: ignore[attr-defined]
        "batchctl: history: 2026-11.jsonl.gz: an unfinished append at byte ")
    ctx.out = io.StringIO()
    assert EXIT_OK == cmd_history(ctx, "2026-10")
    assert ["o"] == [r["id"] for r in _out(ctx)]
    for bad in ("2026-13", "0000-01", "2026-1", "26-01"):
        with pytest.raises(CtlError) as info:
            cmd_history(ctx, bad)
        assert (EXIT_USAGE, f"--month: expected YYYY-MM, got {bad!r}") == (
            info.value.code, str(info.value))
