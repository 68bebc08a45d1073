"""state.retention: what the reaper may remove, and why — never anything of a live job."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.state.clock import iso_now
from supervisor.state.retention import (
    Known,
    corrupted_at,
    expired,
    folder_verdict,
    process_verdict,
    workspace_verdict,
)

NOW = 1_800_000_000.0
DAY = 86400.0
GRACE = 600.0


def _job(job_id: str, state: str, ended_days_ago: float | None = None, **extra: Any
         ) -> dict[str, Any]:
    finished = None if ended_days_ago is None else iso_now(NOW - ended_days_ago * DAY)
    return {"id": job_id, "state": state, "finished_at": finished,
            "created_at": iso_now(NOW - 60 * DAY), "workspace": f"/ws/{job_id}", **extra}


def test_expired_takes_finished_jobs_past_the_age_except_those_live_jobs_name() -> None:
    """Finished past 30 days: forgotten, unless a live job waits for it or resumes it;
    younger ones, live ones and a retention of null: kept; `states` narrows."""
    known = Known.of([
        _job("old", "completed", 31), _job("young", "failed", 29), _job("run", "running"),
        _job("dep", "completed", 40), _job("w", "queued", after=["dep"]),
        _job("ses", "failed", 50), _job("r", "waiting", resume_of="ses"),
        _job("lost", "lost", 90)],
        pending=[{"id": "p", "after_any": ["lost2"]}])
    assert ["old", "lost"] == [e.id for e in expired(known, NOW, 30 * DAY)]
    assert ["lost"] == [e.id for e in expired(known, NOW, 30 * DAY, states=["lost"])]
    assert [] == expired(known, NOW, None)
    assert ["old", "young", "lost"] == [e.id for e in expired(known, NOW, 0.0)]
    got = expired(Known.of([_job("lost2", "lost", 90)], pending=[{"id": "p",
                                                                   "after_any": ["lost2"]}]),
                  NOW, 0.0)
    assert [] == got


def test_workspace_verdicts() -> None:
    """A workspace goes when its job is unknown, or finished past retention.workspaces,
    or it is a half-made `.prep.` of a job no longer live, or trash; never while a live
    job works in it (its own, or one it resumes), never younger than the grace."""
    known = Known.of([_job("live", "running"), _job("done", "completed", 8),
                      _job("fresh", "completed", 1), _job("ses", "completed", 9),
                      _job("r", "queued", resume_of="ses", workspace="/ws/ses")])

    def verdict(name: str, age: float = GRACE + 1) -> str | None:
        return workspace_verdict(name, f"/ws/{name}", age, known, NOW, grace=GRACE,
                                 keep=7 * DAY)
    assert {"live": None, "done": "job completed past retention.workspaces", "fresh": None,
            "ses": None, "ghost": "no such job",
            ".prep.done": "left over from a workspace that was never finished",
            ".prep.live": None, ".reap.x": "a removal a crash cut short"} == {
        n: verdict(n) for n in ("live", "done", "fresh", "ses", "ghost", ".prep.done",
                                ".prep.live", ".reap.x")}
    assert None is verdict("ghost", age=GRACE - 1)
    assert None is workspace_verdict("done", "/ws/done", GRACE + 1, known, NOW, grace=GRACE,
                                     keep=None)


def test_pending_resumes_protect_their_workspace() -> None:
    """A submission still in the inbox that resumes a job keeps that job's workspace."""
    known = Known.of([_job("ses", "completed", 30)], pending=[{"id": "p", "resume": "ses"}])
    assert None is workspace_verdict("ses", "/ws/ses", DAY, known, NOW, grace=GRACE, keep=DAY)


@pytest.mark.parametrize(("state", "age", "expected"), [
    ("running", GRACE * 10, None), ("queued", GRACE * 10, None), (None, GRACE - 1, None),
    ("completed", GRACE + 1, "job completed"), (None, GRACE + 1, "job unknown"),
    ("cancelled", GRACE + 1, "job cancelled")])
def test_process_verdict(state: str | None, age: float, expected: str | None) -> None:
    """A job's process is an orphan only when the job is finished or unknown and the
    process is older than the grace."""
    known = Known.of([] if state is None else [_job("j", state)])
    assert expected == process_verdict("j", age, known, grace=GRACE)


def test_folder_verdict_and_corrupted_at() -> None:
    """A job folder goes outside retention only when no job has its name (or it is trash);
    a quarantined file's stamp gives when it was moved aside."""
    known = Known.of([_job("a", "completed", 99)], pending=[{"id": "p"}])
    assert [None, None, "no such job", None, "a removal a crash cut short"] == [
        folder_verdict("a", 1e9, known, grace=GRACE), folder_verdict("p", 1e9, known, grace=GRACE),
        folder_verdict("x", GRACE + 1, known, grace=GRACE),
        folder_verdict("x", GRACE - 1, known, grace=GRACE),
        folder_verdict(".reap.a", 0, known, grace=GRACE)]
    assert (1767225600.5, 1767225600.5, None) == (
        corrupted_at("state.json.corrupted.20260101T000000.500000Z"),
        corrupted_at("state.json.corrupted.20260101T000000.500000Z.3"),
        corrupted_at("state.json"))
