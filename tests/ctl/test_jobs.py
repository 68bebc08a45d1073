"""Tests for supervisor.ctl.jobs: status JOB, jobs, cancel, wait, batches, stats.

The state is real: a JobQueue written in tmp_path (as the scheduler writes it) and read
back read-only by batchctl, plus submissions still waiting in the scheduler's inbox.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config, DiskConfig, FreeSpace
from supervisor.ctl.jobs import (
    check_id,
    cmd_batch,
    cmd_cancel,
    cmd_jobs,
    cmd_pause,
    cmd_retry,
    cmd_stats,
    cmd_status_job,
    cmd_wait,
    duration_arg,
    files_changed,
    wait_for,
)
from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, CtlError, Ctx
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import MockClock, parse_iso
from supervisor.state.documents import batch_records, stats_doc
from supervisor.state.jobs import RECORD_FIELDS
from supervisor.state.layout import REQUEST, WORKERS, Layout, read_record, write_record
from supervisor.state.queue import JobQueue
from supervisor.state.submission import write_submission
from supervisor.state.view import JobFilter, Unreadable, open_view


def _job(job_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "agent": "shell", "prompt": "x", "repos": [], "callback": None,
            "timeout": None, "batch": None, "exclusive": False,
            "created_at": "2026-11-28T11:00:00.000Z", **extra}


def _queue(layout: Layout, *jobs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Enqueue each (body, fields) and apply its fields, as the scheduler would."""
    ensure_dir(layout.wal_dir)
    q = JobQueue.open(layout.wal_dir)
    try:
        for body, fields in jobs:
            assert q.enqueue(body["id"], body)
            if fields:
                q.update(body["id"], **fields)
        q.incr("submitted", len(jobs))
    finally:
        q.close()


@pytest.fixture
def ctx(tmp_path: Path) -> Ctx:
    state = tmp_path / "state"
    ensure_dir(state)
    cfg = Config(state_dir=state, workspace_dir=state / "ws")
    return Ctx(cfg=cfg, layout=Layout(state), out=io.StringIO(), err=io.StringIO())


def _json(ctx: Ctx) -> Any:
    assert isinstance(ctx.out, io.StringIO)
    return json.loads(ctx.out.getvalue())


def _inbox(ctx: Ctx) -> list[str]:
    folder = ctx.layout.inbox("scheduler")
    return sorted(os.listdir(folder)) if folder.is_dir() else []


DONE = {"state": "completed", "exit_code": 0, "finished_at": "2026-11-28T11:05:00.000Z"}
FAILED = {"state": "failed", "exit_code": 3, "reason": "exit status 3"}
RUNNING = {"state": "running", "pid": 4321, "start": 99, "started_at": "2026-11-28T11:01:00Z"}


def test_check_id_and_duration_arg_are_usage_errors() -> None:
    """Malformed ids and durations exit 2."""
    assert "ok-1.x_2" == check_id("ok-1.x_2")
    with pytest.raises(CtlError) as info:
        check_id("../x")
    assert EXIT_USAGE == info.value.code
    assert 90.0 == duration_arg("1m30s", "--timeout")
    with pytest.raises(CtlError) as info:
        duration_arg("later", "--timeout")
    assert (EXIT_USAGE, True) == (info.value.code, str(info.value).startswith("--timeout: "))


def test_status_job_shows_the_queue_record(ctx: Ctx) -> None:
    """status JOB --json: every record field; pid only while running."""
    _queue(ctx.layout, (_job("r"), RUNNING), (_job("d"), {**DONE, "pid": 1}))
    ctx.json = True
    assert EXIT_OK == cmd_status_job(ctx, "r")
    rec = _json(ctx)
    assert (list(RECORD_FIELDS), "running", 4321) == (list(rec), rec["state"], rec["pid"])
    ctx.out = io.StringIO()
    cmd_status_job(ctx, "d")
    assert ("completed", 0, None) == (_json(ctx)["state"], _json(ctx)["exit_code"],
                                      _json(ctx)["pid"])


def test_status_job_unknown_exits_1(ctx: Ctx) -> None:
    """A job in neither the queue nor the inbox is not found."""
    _queue(ctx.layout, (_job("a"), {}))
    with pytest.raises(CtlError) as info:
        cmd_status_job(ctx, "b")
    assert (EXIT_FAILED, "no such job: b") == (info.value.code, str(info.value))


def test_jobs_lists_queue_then_inbox_and_filters(ctx: Ctx) -> None:
    """Submission order, pending submissions last; --state and --batch filter."""
    _queue(ctx.layout, (_job("q1", batch="n"), DONE), (_job("q2"), RUNNING))
    write_submission(ctx.layout, [_job("p1", batch="n")])
    ctx.json = True
    cmd_jobs(ctx, None, None)
    assert ["q1", "q2", "p1"] == [r["id"] for r in _json(ctx)]
    ctx.out = io.StringIO()
    cmd_jobs(ctx, "queued", "n")
    assert ["p1"] == [r["id"] for r in _json(ctx)]


def test_jobs_human_table_has_a_header_and_one_line_per_job(ctx: Ctx) -> None:
    """Aligned columns, one job per line."""
    _queue(ctx.layout, (_job("q1"), FAILED), (_job("a-much-longer-id"), {}))
    cmd_jobs(ctx, None, None)
    assert isinstance(ctx.out, io.StringIO)
    lines = ctx.out.getvalue().splitlines()
    assert (3, "ID", "exit status 3") == (len(lines), lines[0].split()[0],
                                          lines[1].split("  ")[-1].strip())
    assert lines[1].index("failed") == lines[2].index("queued") == lines[0].index("STATE")


def test_cancel_running_job_writes_one_cancel_request(ctx: Ctx) -> None:
    """cancel of a live job: one REQUEST of kind cancel naming it."""
    _queue(ctx.layout, (_job("r"), RUNNING))
    ctx.json = True
    assert EXIT_OK == cmd_cancel(ctx, "r")
    doc = _json(ctx)
    [name] = _inbox(ctx)
    req = read_record(REQUEST, ctx.layout.inbox("scheduler") / name, owner=False)
    assert isinstance(req, dict)
    assert (("cancel", "r"), {"job": "r", "state": "running", "requested": True,
                              "request": req["id"]}) == ((req["kind"], req["job"]), doc)


def test_cancel_terminal_job_says_so_and_writes_nothing(ctx: Ctx) -> None:
    """An already-terminal job: exit 0, a message, no request."""
    _queue(ctx.layout, (_job("d"), DONE))
    assert EXIT_OK == cmd_cancel(ctx, "d")
    assert isinstance(ctx.out, io.StringIO)
    assert ("job d is already completed: nothing to cancel\n", []) == (
        ctx.out.getvalue(), _inbox(ctx))


def test_wait_returns_when_all_terminal(ctx: Ctx) -> None:
    """Completed and failed jobs: wait returns their records at once."""
    _queue(ctx.layout, (_job("a"), DONE), (_job("b"), FAILED))
    clock = MockClock()
    records = wait_for(ctx, ["a", "b"], None, clock=clock)
    assert [] == clock.slept
    assert records is not None
    assert ["completed", "failed"] == [r["state"] for r in records]


def test_wait_exit_codes(ctx: Ctx) -> None:
    """0 all completed, 1 any other end, 124 timed out."""
    _queue(ctx.layout, (_job("a"), DONE), (_job("b"), FAILED), (_job("c"), RUNNING))
    assert EXIT_OK == cmd_wait(ctx, ["a"], None)
    assert EXIT_FAILED == cmd_wait(ctx, ["a", "b"], None)
    assert EXIT_TIMEOUT == cmd_wait(ctx, ["a", "c"], "100ms")
    assert isinstance(ctx.err, io.StringIO)
    assert "batchctl: timed out after 0.1s waiting for: c (running)\n" == ctx.err.getvalue()


def test_wait_sees_a_job_finish_while_it_waits(ctx: Ctx) -> None:
    """The queue changes under the waiting reader; it notices on its next poll."""
    _queue(ctx.layout, (_job("a"), RUNNING))
    class Finishing(MockClock):
        """Its second sleep is when the job finishes (the scheduler records it)."""

        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            if len(self.slept) == 2:
                q = JobQueue.open(ctx.layout.wal_dir)
                q.update("a", **DONE)
                q.close()

    clock = Finishing()
    records = wait_for(ctx, ["a"], None, clock=clock)
    assert (2, "completed") == (len(clock.slept), records[0]["state"] if records else None)


def test_wait_unknown_job_exits_1(ctx: Ctx) -> None:
    """An unknown job among those waited for: exit 1 at once."""
    _queue(ctx.layout, (_job("a"), DONE))
    with pytest.raises(CtlError) as info:
        wait_for(ctx, ["a", "zz"], 10.0)
    assert "no such job: zz" == str(info.value)


def test_batch_records_count_and_done(ctx: Ctx) -> None:
    """Per batch: counts by state, done when all terminal, ids in submission order."""
    _queue(ctx.layout, (_job("a", batch="x"), DONE), (_job("b", batch="x"), FAILED),
           (_job("c", batch="y"), RUNNING), (_job("d"), {}))
    with open_view(ctx.cfg, ctx.layout) as view:
        records = batch_records(view)
    assert [{"batch": "x", "counts": {"completed": 1, "failed": 1}, "done": True,
             "jobs": ["a", "b"]},
            {"batch": "y", "counts": {"running": 1}, "done": False, "jobs": ["c"]}] == records
    ctx.json = True
    cmd_batch(ctx, "y")
    assert "y" == _json(ctx)["batch"]
    with pytest.raises(CtlError):
        cmd_batch(ctx, "z")


def test_stats_reads_queue_counters_and_restarts(ctx: Ctx) -> None:
    """Counters from the queue; restarts from workers.json, zero for unknown workers."""
    _queue(ctx.layout, (_job("a"), DONE))
    write_record(WORKERS, ctx.layout.workers_file, {"workers": [
        {"name": "locks", "restarts": 2}, {"name": "scheduler", "restarts": 0}]})
    doc = stats_doc(ctx.cfg, ctx.layout)
    assert ({"scheduler": 0, "locks": 2, "reaper": 0, "callbacks": 0}, 1, 0) == (
        doc["restarts"], doc["submitted"], doc["lost"])
    ctx.json = True
    assert EXIT_OK == cmd_stats(ctx)
    assert {"submitted", "completed", "failed", "cancelled", "timed_out", "lost", "recovered",
            "restarts"} <= set(_json(ctx))


def test_wait_json_prints_records_in_every_outcome(ctx: Ctx) -> None:
    """--json: the records (current state) on success, failure and timeout alike."""
    _queue(ctx.layout, (_job("a"), DONE), (_job("b"), FAILED), (_job("c"), RUNNING))
    ctx.json = True
    got = []
    for ids, timeout in ((["a"], None), (["a", "b"], None), (["a", "c"], "50ms")):
        ctx.out = io.StringIO()
        code = cmd_wait(ctx, ids, timeout)
        got.append((code, [(r["id"], r["state"]) for r in _json(ctx)]))
    assert [(EXIT_OK, [("a", "completed")]),
            (EXIT_FAILED, [("a", "completed"), ("b", "failed")]),
            (EXIT_TIMEOUT, [("a", "completed"), ("c", "running")])] == got


def test_wait_for_returns_current_records_at_the_deadline(ctx: Ctx) -> None:
    """At the deadline wait_for returns the records as they are (some not terminal)."""
    _queue(ctx.layout, (_job("c"), RUNNING))
    records = wait_for(ctx, ["c"], 1.0, clock=MockClock())
    assert ["running"] == [r["state"] for r in records]


def test_unreadable_queue_fails_job_commands(ctx: Ctx) -> None:
    """jobs, stats, batches: a queue that cannot be read is exit 1, never an empty answer."""
    ensure_dir(ctx.layout.wal_dir.parent)
    ctx.layout.wal_dir.write_text("x")
    codes = []
    for run in (lambda: cmd_jobs(ctx, None, None), lambda: cmd_stats(ctx),
                lambda: cmd_batch(ctx, "b")):
        with pytest.raises(Unreadable) as info:
            run()
        codes.append(str(info.value))
    why = f"cannot read the job queue at {ctx.layout.wal_dir}: it is not a directory"
    assert [why] * 3 == codes


def test_jobs_filters_agent_label_since_and_limit(ctx: Ctx) -> None:
    """--agent, --label (all of them), --since (created at or after) and --limit (the N
    most recent, still in submission order) combine."""
    _queue(ctx.layout,
           (_job("a", labels={"team": "infra"}), DONE),
           (_job("b", agent="claude", labels={"team": "infra"}), DONE),
           (_job("c", labels={"team": "web"}, created_at="2026-11-29T00:00:00.000Z"), DONE),
           (_job("d", labels={"team": "infra", "ticket": "T-1"},
                 created_at="2026-11-29T01:00:00.000Z"), DONE))

    def ids(**flt: Any) -> list[str]:
        ctx.out = io.StringIO()
        assert EXIT_OK == cmd_jobs(ctx, None, None, JobFilter(**flt))
        return [r["id"] for r in _json(ctx)]

    ctx.json = True
    assert ["b"] == ids(agent="claude")
    assert ["a", "b", "d"] == ids(labels={"team": "infra"})
    assert ["d"] == ids(labels={"team": "infra", "ticket": "T-1"})
    assert ["c", "d"] == ids(since=parse_iso("2026-11-28T12:00:00Z"))
    assert ["b", "d"] == ids(labels={"team": "infra"}, limit=2)
    assert [] == ids(labels={"team": "infra\"x"})


def test_pause_and_resume_are_requests_to_the_scheduler(ctx: Ctx) -> None:
    """pause/resume write one request each into the scheduler's inbox (they work with
    batchd down); the view reads the last one as the pause state."""
    ctx.json = True
    assert EXIT_OK == cmd_pause(ctx, True)
    with open_view(ctx.cfg, ctx.layout) as view:
        assert view.paused() is True
    ctx.out = io.StringIO()
    assert EXIT_OK == cmd_pause(ctx, False)
    kinds = sorted(n.split("-")[0] for n in _inbox(ctx))
    assert (["pause", "resume"], {"paused": False}) == (kinds, _json(ctx))


def test_retry_submits_a_new_job_with_the_spec_and_retry_of(ctx: Ctx) -> None:
    """retry of a finished job: a new id, the same spec, retry_of set; a job not finished
    or unknown: exit 1."""
    _queue(ctx.layout, (_job("f", labels={"k": "v"}, priority=4), FAILED),
           (_job("r"), RUNNING))
    ctx.json = True
    assert EXIT_OK == cmd_retry(ctx, "f")
    new = _json(ctx)
    with open_view(ctx.cfg, ctx.layout) as view:
        job = view.get(new["id"])
    assert job is not None
    assert ("f", "x", {"k": "v"}, 4, "queued") == (
        job["retry_of"], job["prompt"], job["labels"], job["priority"], job["state"])
    for job_id, why in (("r", "job r is running"), ("nope", "no such job: nope")):
        with pytest.raises(CtlError) as info:
            cmd_retry(ctx, job_id)
        assert (EXIT_FAILED, True) == (info.value.code, str(info.value).startswith(why))


def test_a_queued_jobs_reason_says_why_it_waits(ctx: Ctx) -> None:
    """status of a queued job: its pending dependencies, then its not_before, the pause,
    the global limit; none once nothing holds it back."""
    _queue(ctx.layout, (_job("dep"), RUNNING), (_job("w", after=["dep"]), {}),
           (_job("late", not_before="2099-01-01T00:00:00.000Z"), {}), (_job("free"), {}))
    with open_view(ctx.cfg, ctx.layout) as view:
        reasons = [view.record(view.get(j) or {})["reason"] for j in ("w", "late", "free")]
    assert ["after dep", "not_before 2099-01-01T00:00:00.000Z", None] == reasons
    cmd_pause(ctx, True)
    with open_view(ctx.cfg, ctx.layout) as view:
        assert "paused" == view.record(view.get("free") or {})["reason"]
    cmd_pause(ctx, False)
    ctx.cfg = replace(ctx.cfg, disk=DiskConfig(min_free=FreeSpace(100.0, percent=True)))
    with open_view(ctx.cfg, ctx.layout) as view:
        reason = view.record(view.get("free") or {})["reason"]
    assert (True, True) == (reason.startswith("disk: "), reason.endswith("min_free 100%"))


def test_a_queued_jobs_reason_follows_a_retried_dependency(ctx: Ctx) -> None:
    """A dependency that failed and was retried hands its waiter to the retry: the reason
    names the retry still running, not the failed job."""
    _queue(ctx.layout, (_job("dep"), {**FAILED, "retried_as": "dep.r1"}),
           (_job("dep.r1", retry_of="dep"), {**FAILED, "retried_as": "dep.r2"}),
           (_job("dep.r2", retry_of="dep.r1"), RUNNING), (_job("w", after=["dep"]), {}))
    with open_view(ctx.cfg, ctx.layout) as view:
        assert "after dep.r2" == view.record(view.get("w") or {})["reason"]


def test_files_changed_column_sums_the_repositories() -> None:
    """FILES: the files changed in all repositories; '+' when one could not be counted;
    '-' before results and for a job without repositories."""
    assert ["3", "3+", "-", "-"] == [files_changed({"changes": c}) for c in (
        {"app": {"files": 1}, "lib": {"files": 2}},
        {"app": {"files": 3}, "lib": {"files": None}}, None, {})]


def test_jobs_table_shows_the_files_column(ctx: Ctx) -> None:
    """`jobs` has a FILES column with each job's count."""
    _queue(ctx.layout, (_job("c1"), {"state": "completed", "exit_code": 0,
                                     "changes": {"app": {"files": 7}}}))
    cmd_jobs(ctx, None, None)
    assert isinstance(ctx.out, io.StringIO)
    header, row = ctx.out.getvalue().splitlines()
    assert "7" == row[header.index("FILES"):].split()[0]
