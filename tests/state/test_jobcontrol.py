"""Job control every door shares: cancel, retry and pause hand the scheduler one durable
request each, after checking against the view."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.config import Config
from supervisor.state import jobcontrol
from supervisor.state.layout import REQUEST, Layout, read_record
from supervisor.state.queue import JobQueue
from supervisor.state.submission import JobError


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws")


def _requests(layout: Layout) -> list[dict]:
    inbox = layout.inbox("scheduler")
    out = []
    for name in sorted(os.listdir(inbox)) if inbox.exists() else []:
        rec = read_record(REQUEST, inbox / name, owner=False)
        assert isinstance(rec, dict)
        out.append(rec)
    return out


def _enqueue(layout: Layout, job_id: str, state: str, **body: object) -> None:
    with JobQueue.open(layout.wal_dir) as q:
        q.enqueue(job_id, {"agent": "shell", "prompt": "echo x", "repos": [], "state": state,
                           **body})


def test_cancel_writes_a_request_unless_the_job_ended(cfg: Config) -> None:
    """Active job: one cancel request; ended job: nothing written; unknown: NoSuchJob."""
    layout = Layout(cfg.state_dir)
    _enqueue(layout, "r", "running")
    _enqueue(layout, "d", "completed")
    doc = jobcontrol.cancel(cfg, layout, "r")
    assert ("r", "running", True) == (doc["job"], doc["state"], doc["requested"])
    [req] = _requests(layout)
    assert ("cancel", "r", doc["request"]) == (req["kind"], req["job"], req["id"])
    assert {"job": "d", "state": "completed", "requested": False, "request": None} == (
        jobcontrol.cancel(cfg, layout, "d"))
    assert 1 == len(_requests(layout))
    with pytest.raises(jobcontrol.NoSuchJob):
        jobcontrol.cancel(cfg, layout, "ghost")


def test_retry_submits_the_spec_again_with_retry_of(cfg: Config) -> None:
    """An ended job: a new job with its agent, prompt, timeout, batch, callback; retry_of
    set; handed over as a submit request the scheduler's check accepts."""
    from supervisor.state.submission import check_request

    layout = Layout(cfg.state_dir)
    _enqueue(layout, "f", "failed", timeout=30.0, batch="b", callback="http://h/x")
    new_id = jobcontrol.retry(cfg, layout, "f")
    [req] = _requests(layout)
    [job] = check_request(req)
    assert (new_id, "echo x", "http://h/x", "f", 30.0, "b") == (
        job["id"], job["prompt"], job["callback"], job["retry_of"], job["timeout"],
        job["batch"])


def test_retry_refuses_a_running_job_and_a_gone_agent(cfg: Config) -> None:
    """Not ended: NotTerminal; an agent no longer configured: JobError; nothing written."""
    layout = Layout(cfg.state_dir)
    _enqueue(layout, "r", "running")
    _enqueue(layout, "x", "failed", agent="removed-agent")
    with pytest.raises(jobcontrol.NotTerminal):
        jobcontrol.retry(cfg, layout, "r")
    with pytest.raises(JobError, match="unknown agent"):
        jobcontrol.retry(cfg, layout, "x")
    with pytest.raises(jobcontrol.NoSuchJob):
        jobcontrol.retry(cfg, layout, "ghost")
    assert [] == _requests(layout)


def test_pause_and_resume_are_requests_the_view_counts(cfg: Config) -> None:
    """set_paused writes a pause (resume) request; the view shows it paused before the
    scheduler takes it, and a later resume wins."""
    from supervisor.state.view import open_view

    layout = Layout(cfg.state_dir)
    assert {"paused": True} == jobcontrol.set_paused(layout, True)
    with open_view(cfg, layout) as view:
        assert view.paused() is True
    jobcontrol.set_paused(layout, False)
    assert ["pause", "resume"] == sorted(r["kind"] for r in _requests(layout))
    with open_view(cfg, layout) as view:
        assert view.paused() is False
