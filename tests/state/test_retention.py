"""state.retention: what the reaper may remove, and why — never anything of a live job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import iso_now
from supervisor.state.layout import Layout
from supervisor.state.queue import TERMINAL_STATES, JobQueue
from supervisor.state.retention import (
    Known,
    ago,
    corrupted_at,
    expired,
    folder_verdict,
    process_verdict,
    workspace_verdict,
)
from supervisor.state.submission import Checker, accept
from supervisor.state.submission import known as known_jobs
from supervisor.state.view import open_view

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


def test_staging_folders_with_a_token_belong_to_their_job() -> None:
    """`.prep.<id>+<token>` (a staging folder of one attempt) is its job's: kept while the
    job is live (a git a killed scheduler left may still write in it), taken once the job
    is over and the grace has passed; a `+` never being in an id, `.prep.live.x+t` is job
    `live.x`'s (unknown here), not `live`'s."""
    known = Known.of([_job("live", "running"), _job("done", "completed", 8)])

    def verdict(name: str, age: float = GRACE + 1) -> str | None:
        return workspace_verdict(name, f"/ws/{name}", age, known, NOW, grace=GRACE,
                                 keep=7 * DAY)
    assert {".prep.live+a1b2": None,
            ".prep.done+a1b2": "left over from a workspace that was never finished",
            ".prep.live.x+a1b2": "left over from a workspace that was never finished"} == {
        n: verdict(n) for n in (".prep.live+a1b2", ".prep.done+a1b2", ".prep.live.x+a1b2")}
    assert None is verdict(".prep.done+a1b2", age=GRACE - 1)


def test_pending_resumes_protect_their_workspace() -> None:
    """A submission still in the inbox that resumes a job (as the door writes it: `resume`
    resolved into resume_of, resume_session and that job's workspace) keeps that job and
    its workspace."""
    known = Known.of([_job("ses", "completed", 30)], pending=[
        {"id": "p", "resume_of": "ses", "resume_session": "s-1", "workspace": "/ws/ses"}])
    assert (None, []) == (
        workspace_verdict("ses", "/ws/ses", DAY, known, NOW, grace=GRACE, keep=DAY),
        expired(known, NOW, DAY))


def test_a_resume_through_the_real_door_keeps_its_job_and_workspace(tmp_path: Path) -> None:
    """`submit --resume j1` through state.submission.accept, read back as the reaper reads
    the state dir: the names the door stores are the names retention follows, so neither
    j1 nor the workspace the resume will run in may go."""
    cfg = Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws")
    layout = Layout(cfg.state_dir)
    workspace = tmp_path / "ws" / "j1"
    workspace.mkdir(parents=True)
    ensure_dir(layout.wal_dir)
    with JobQueue.open(layout.wal_dir) as q:
        q.enqueue("j1", {"agent": "claude", "prompt": "p", "repos": [],
                         "workspace": str(workspace)})
        q.update("j1", state="completed", session_id="s-1",
                 finished_at=iso_now(NOW - 30 * DAY))

    def verdicts() -> tuple[list[str], str | None]:
        with open_view(cfg, layout) as view:
            known = Known.read(view)
        return ([e.id for e in expired(known, NOW, DAY)],
                workspace_verdict("j1", str(workspace), 30 * DAY, known, NOW, grace=GRACE,
                                  keep=DAY))
    assert (["j1"], "job completed past retention.workspaces") == verdicts()
    accept(cfg, layout, [Checker(known_jobs(cfg, layout)).check(
        {"prompt": "go on", "resume": "j1"})])
    assert ([], None) == verdicts()


def test_a_queued_resume_keeps_its_job_and_workspace_until_it_ends() -> None:
    """Once the scheduler holds the resumed job, its predecessor and their shared workspace
    stay while it is live; when it has ended too, both may go."""
    ses = _job("ses", "completed", 30)
    for state, expected in [*((s, ([], None)) for s in ("queued", "waiting", "starting",
                                                        "running")),
                            *((s, (["ses", "r"], "job completed past retention.workspaces"))
                              for s in sorted(TERMINAL_STATES))]:
        known = Known.of([ses, _job("r", state, 20, resume_of="ses", resume_session="s-1",
                                    workspace="/ws/ses")])
        assert expected == ([e.id for e in expired(known, NOW, DAY)], workspace_verdict(
            "ses", "/ws/ses", DAY, known, NOW, grace=GRACE, keep=DAY)), state


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


def test_a_files_age_is_asked_only_when_the_verdict_depends_on_it() -> None:
    """A verdict given a way to learn the age (a stat) asks it only when the job's state
    would let the thing go: a pass over many finished jobs that are not due stats none
    of their folders; a file gone meanwhile (age None) stays."""
    known = Known.of([_job("live", "running"), _job("fresh", "completed", 1),
                      _job("done", "completed", 8)])
    asked: list[str] = []

    def age(name: str, seconds: float | None = GRACE + 1) -> Any:
        return lambda: asked.append(name) or seconds

    def ws(name: str, seconds: float | None = GRACE + 1) -> str | None:
        return workspace_verdict(name, f"/ws/{name}", age(name, seconds), known, NOW,
                                 grace=GRACE, keep=7 * DAY)
    assert [None, None, "job completed past retention.workspaces", "no such job", None] == [
        ws("live"), ws("fresh"), ws("done"), ws("ghost"), ws("gone", None)]
    assert [None, "no such job", None] == [
        folder_verdict("fresh", age("f-fresh"), known, grace=GRACE),
        folder_verdict("x", age("f-x"), known, grace=GRACE),
        folder_verdict("y", age("f-y", None), known, grace=GRACE)]
    assert ["done", "ghost", "gone", "f-x", "f-y"] == asked


def test_finished_times_come_in_bulk_from_the_queue_fields() -> None:
    """Known.finished: a finished job's finished_at from the bulk field reader when it
    has one, else (no such field, or a pending submission of the same id) the entry's
    finished_at or created_at; None for a job no one knows."""
    entries = {"a": _job("a", "completed", 3), "b": _job("b", "failed"),
               "p": _job("p", "completed", 5)}
    known = Known({"a": "completed", "b": "failed"}, {"p": {"id": "p", "created_at":
                                                            iso_now(NOW - DAY)}},
                  entries.get, lambda key, states: {"a": iso_now(NOW - 2 * DAY),
                                                    "p": iso_now(NOW - 9 * DAY)})
    assert [NOW - 2 * DAY, NOW - 60 * DAY, NOW - DAY, None] == [
        known.finished(j) for j in ("a", "b", "p", "x")]


def test_a_workspace_shared_along_a_resume_chain_is_kept_for_the_last_of_them() -> None:
    """ses finished 30 days ago; r resumed its session in the same workspace and finished
    yesterday: the workspace stays (retention.workspaces counts from r's end), and goes
    once r's end is past it too."""
    known = Known.of([_job("ses", "completed", 30),
                      _job("r", "completed", 1, resume_of="ses", workspace="/ws/ses")])
    assert None is workspace_verdict("ses", "/ws/ses", GRACE + 1, known, NOW, grace=GRACE,
                                     keep=7 * DAY)
    assert "job completed past retention.workspaces" == workspace_verdict(
        "ses", "/ws/ses", GRACE + 1, known, NOW + 7 * DAY, grace=GRACE, keep=7 * DAY)


def test_ago_reads_as_an_operator_writes_durations() -> None:
    """ago: the two largest units, the smaller left out when zero."""
    assert ["0s", "45s", "12m 5s", "1h", "3h 20m", "31d 4h"] == [
        ago(s) for s in (-3, 45, 725, 3600, 12000, 31 * 86400 + 4 * 3600 + 59)]
