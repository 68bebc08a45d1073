"""state.retention: what may be removed; here, a resumed session keeps its job and workspace."""

from __future__ import annotations

from pathlib import Path

from supervisor.config import Config
from supervisor.state.atomic import ensure_dir
from supervisor.state.layout import Layout
from supervisor.state.queue import TERMINAL_STATES, JobQueue
from supervisor.state.retention import Known, expired, workspace_verdict
from supervisor.state.submission import Checker, accept, known
from supervisor.state.view import open_view

DAY = 86_400.0
FINISHED = "2026-01-01T00:00:00Z"
NOW = 1_767_225_600.0 + 30 * DAY        # 30 days after FINISHED


def _finished_job(cfg: Config, layout: Layout, workspace: Path) -> None:
    """Job j1, a claude job with a session, finished long ago in `workspace`."""
    ensure_dir(layout.wal_dir)
    with JobQueue.open(layout.wal_dir) as q:
        q.enqueue("j1", {"agent": "claude", "prompt": "p", "repos": [],
                         "workspace": str(workspace)})
        q.update("j1", state="completed", session_id="s-1", finished_at=FINISHED)


def _verdicts(known_jobs: Known, workspace: Path) -> tuple[list[str], str | None]:
    """(the jobs retention would forget, why j1's workspace would go) with every limit at
    a day."""
    gone = [e.id for e in expired(known_jobs, NOW, DAY)]
    why = workspace_verdict("j1", str(workspace), 30 * DAY, known_jobs, NOW, grace=60.0,
                            keep=DAY)
    return gone, why


def test_a_resume_waiting_in_the_inbox_keeps_its_job_and_workspace(tmp_path: Path) -> None:
    """`submit --resume j1` through the real door: the pending submission names j1 the way
    the door stores it (resume_of, j1's workspace), so retention forgets neither j1 nor
    the workspace the resume will run in."""
    cfg = Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws")
    layout = Layout(cfg.state_dir)
    workspace = tmp_path / "ws" / "j1"
    workspace.mkdir(parents=True)
    _finished_job(cfg, layout, workspace)
    with open_view(cfg, layout) as view:
        before = _verdicts(Known.read(view), workspace)
    assert (["j1"], "job completed past retention.workspaces") == before
    job = Checker(known(cfg, layout)).check({"prompt": "go on", "resume": "j1"})
    [new_id] = accept(cfg, layout, [job])
    with open_view(cfg, layout) as view:
        known_jobs = Known.read(view)
    assert ({"j1"}, {"j1"}, {str(workspace)}) == (
        set(known_jobs.named_by_live), set(known_jobs.resumed_by_live),
        set(known_jobs.live_workspaces))
    assert ([], None) == _verdicts(known_jobs, workspace)
    assert "queued" == known_jobs.state(new_id)


def test_a_queued_resume_keeps_its_job_and_workspace_until_it_ends(tmp_path: Path) -> None:
    """Once the scheduler holds the resumed job (its entry as submit() enqueues it), j1 and
    its workspace stay while it is live; when it has ended too, both may go."""
    workspace = tmp_path / "ws" / "j1"
    j1 = {"id": "j1", "state": "completed", "finished_at": FINISHED,
          "workspace": str(workspace)}
    j2 = {"id": "j2", "agent": "claude", "resume_of": "j1", "resume_session": "s-1",
          "workspace": str(workspace), "finished_at": FINISHED}
    for state in ("queued", "waiting", "starting", "running"):
        assert ([], None) == _verdicts(Known.of([j1, {**j2, "state": state}]), workspace), state
    for state in sorted(TERMINAL_STATES):
        assert (["j1", "j2"], "job completed past retention.workspaces") == _verdicts(
            Known.of([j1, {**j2, "state": state}]), workspace), state
