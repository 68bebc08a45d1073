"""The scheduler's job-file glue (scheduler.jobfiles): real files, real git, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import AgentConfig, Config, RepoConfig, SchedulerConfig
from supervisor.scheduler.jobfiles import (
    PREP_PREFIX,
    Made,
    PrepareError,
    job_timeout,
    kill_group,
    make_ahead,
    observe,
    prepare_workspace,
    workspace_repos,
    write_spec,
)
from supervisor.scheduler.lifecycle import Event, Timing, classify
from supervisor.state.clock import iso_now
from supervisor.state.layout import (
    JOB_SPEC,
    RESULT,
    SENTINEL,
    Layout,
    read_record,
    write_record,
)
from supervisor.state.proc import alive, start_time

NOW = 1_800_000_000.0


def make_cfg(tmp_path: Path, **kw: Any) -> Config:
    return Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws", **kw)


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "j1", "state": "running", "agent": "shell",
                            "prompt": "echo hi", "repos": [], "timeout": None}
    base.update(fields)
    return base


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process leading its own session (like an adaptor), killed afterwards."""
    p = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def wait_for(cond: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def hold_lock(path: Path, how: str) -> subprocess.Popen[str]:
    """A child process that takes an exclusive lock on `path` (flock or lockf) and keeps it."""
    call = {"flock": "fcntl.flock(fd, fcntl.LOCK_EX)", "lockf": "fcntl.lockf(fd, fcntl.LOCK_EX)"}
    code = (f"import fcntl, os, sys, time\nfd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
            f"{call[how]}\nprint('locked', flush=True)\ntime.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert "locked\n" == p.stdout.readline()
    return p


def stop(p: subprocess.Popen[Any]) -> None:
    p.kill()
    p.wait()


# --------------------------------------------------------------------------- observe


def test_observe_a_job_with_no_files(tmp_path: Path) -> None:
    """No sentinel, no result, no lock, no pid: an empty observation with the job's timeout."""
    cfg = make_cfg(tmp_path)
    obs = observe(Layout(cfg.state_dir), entry(state="starting"), NOW, cfg)
    assert (None, None, None, None, False, False, 86400.0) == (
        obs.sentinel, obs.result, obs.result_error, obs.pid, obs.alive, obs.lock_held,
        obs.timeout)


def test_observe_a_live_adaptor_then_its_death(tmp_path: Path,
                                               sleeper: subprocess.Popen[bytes]) -> None:
    """A sentinel naming a live pid + start is alive; after SIGKILL it is not."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    start = start_time(sleeper.pid)
    layout.job_dir("j1").mkdir(parents=True)
    write_record(SENTINEL, layout.job_sentinel("j1"), {
        "id": "j1", "pid": sleeper.pid, "start": start, "heartbeat_at": iso_now(NOW - 3.0),
        "agent_pid": None, "agent_start": None, "output_bytes": 0})
    obs = observe(layout, entry(state="starting"), NOW, cfg)
    assert (sleeper.pid, start, True, NOW - 3.0) == (obs.pid, obs.start, obs.alive,
                                                     obs.heartbeat)
    sleeper.kill()
    sleeper.wait()
    obs = observe(layout, entry(state="starting"), NOW, cfg)
    assert (sleeper.pid, False) == (obs.pid, obs.alive)


def test_observe_never_trusts_a_reused_pid(tmp_path: Path,
                                           sleeper: subprocess.Popen[bytes]) -> None:
    """A live pid with another start time is not our adaptor."""
    cfg = make_cfg(tmp_path)
    start = start_time(sleeper.pid)
    assert start is not None
    obs = observe(Layout(cfg.state_dir), entry(pid=sleeper.pid, start=start + 1), NOW, cfg)
    assert (False, sleeper.pid) == (obs.alive, obs.pid)


def test_observe_learns_the_pid_from_the_lock_holder(tmp_path: Path) -> None:
    """No pid in the WAL nor a sentinel yet: the flock holder names the adaptor."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    layout.job_dir("j1").mkdir(parents=True)
    p = hold_lock(layout.job_lock("j1"), "flock")
    try:
        obs = observe(layout, entry(state="starting"), NOW, cfg)
        assert (True, p.pid, start_time(p.pid)) == (obs.lock_held, obs.pid, obs.start)
    finally:
        stop(p)


def test_observe_reads_the_result_without_moving_a_corrupt_one(tmp_path: Path) -> None:
    """A result is returned; a corrupt one is reported and left in place (adaptor-owned)."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    layout.job_dir("j1").mkdir(parents=True)
    body = {"id": "j1", "exit_code": 0, "signal": None, "finished_at": "2027-01-15T08:00:00Z"}
    write_record(RESULT, layout.job_result("j1"), body)
    obs = observe(layout, entry(), NOW, cfg)
    assert (0, None) == (obs.result["exit_code"] if obs.result else None, obs.result_error)
    layout.job_result("j1").write_bytes(b"{not json")
    obs = observe(layout, entry(), NOW, cfg)
    assert (None, True, True) == (obs.result, (obs.result_error or "").startswith("not valid"),
                                  layout.job_result("j1").exists())
    assert ["result.json"] == sorted(os.listdir(layout.job_dir("j1")))


def test_observe_ignores_records_of_another_job(tmp_path: Path) -> None:
    """A sentinel whose id is another job's is not this job's heartbeat."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    layout.job_dir("j1").mkdir(parents=True)
    write_record(SENTINEL, layout.job_sentinel("j1"), {
        "id": "j2", "pid": 1, "start": 1, "heartbeat_at": "2027-01-15T08:00:00Z"})
    assert None is observe(layout, entry(), NOW, cfg).sentinel


def test_observe_then_classify_a_dead_job_is_lost(tmp_path: Path,
                                                  sleeper: subprocess.Popen[bytes]) -> None:
    """End to end with real files: a killed adaptor with an old heartbeat classifies as dead."""
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    start = start_time(sleeper.pid)
    layout.job_dir("j1").mkdir(parents=True)
    write_record(SENTINEL, layout.job_sentinel("j1"), {
        "id": "j1", "pid": sleeper.pid, "start": start, "heartbeat_at": iso_now(NOW - 500.0)})
    e = entry(pid=sleeper.pid, start=start, started_at=iso_now(NOW - 600.0))
    timing = Timing.from_config(cfg.scheduler)
    assert Event.SENTINEL_STALE == classify(e, observe(layout, e, NOW, cfg), NOW, timing)
    sleeper.kill()
    sleeper.wait()
    assert Event.SENTINEL_DEAD == classify(e, observe(layout, e, NOW, cfg), NOW, timing)


# --------------------------------------------------------------------------- spec


def test_write_spec_builds_the_job_spec(tmp_path: Path) -> None:
    """spec.json holds JOBFILES.md's keys from the entry, the agent and scheduler:."""
    agents = {"claude": AgentConfig(adaptor="claude", command="/opt/claude", args=("-p",),
                                    env=(("A", "1"),), timeout=3600.0, user="bot",
                                    model="opus")}
    cfg = make_cfg(tmp_path, agents=agents,
                   scheduler=SchedulerConfig(heartbeat_interval=2.0, kill_grace=3.0))
    layout = Layout(cfg.state_dir)
    path = write_spec(layout, cfg, entry(agent="claude", prompt="fix it",
                                         resume_session="s-9"))
    spec = read_record(JOB_SPEC, path, owner=False)
    assert isinstance(spec, dict)
    del spec["schema"], spec["v"]
    assert {"id": "j1", "agent": "claude", "adaptor": "claude", "command": "/opt/claude",
            "args": ["-p"], "env": {"A": "1"}, "prompt": "fix it", "model": "opus",
            "workspace": str(tmp_path / "ws" / "j1"), "job_dir": str(layout.job_dir("j1")),
            "state_dir": str(layout.root),
            "timeout": 3600.0, "heartbeat_interval": 2.0, "kill_grace": 3.0, "user": "bot",
            "resume_session": "s-9", "resume_of": None, "idle_timeout": None,
            "output_max_bytes": 1 << 30, "created_at": None, "repos": [], "push": None,
            "retry_of": None,
            "git": {"author_name": "batchd", "author_email": "batchd@localhost"}} == spec


def test_timeout_chain(tmp_path: Path) -> None:
    """timeout = the job's, else the agent's, else scheduler.job_timeout."""
    agents = {"a": AgentConfig(adaptor="command", timeout=60.0),
              "b": AgentConfig(adaptor="command")}
    cfg = make_cfg(tmp_path, agents=agents, scheduler=SchedulerConfig(job_timeout=999.0))
    assert (5.0, 60.0, 999.0) == (job_timeout(cfg, entry(agent="a", timeout=5)),
                                  job_timeout(cfg, entry(agent="a")),
                                  job_timeout(cfg, entry(agent="b")))


def test_write_spec_refuses_an_unknown_agent(tmp_path: Path) -> None:
    """An agent gone from the config is a PrepareError naming it; nothing is written."""
    cfg = make_cfg(tmp_path)
    with pytest.raises(PrepareError, match="unknown agent 'ghost'"):
        write_spec(Layout(cfg.state_dir), cfg, entry(agent="ghost"))
    assert not (cfg.state_dir / "jobs").exists()


def test_workspace_from_the_entry_wins(tmp_path: Path) -> None:
    """The submit handler's entry["workspace"] is the spec's workspace and the folder made."""
    cfg = make_cfg(tmp_path)
    ws = prepare_workspace(cfg, entry(workspace=str(tmp_path / "elsewhere")))
    assert (tmp_path / "elsewhere", []) == (ws, os.listdir(ws))


def test_a_resumed_job_runs_in_its_predecessors_workspace_never_a_new_one(
        tmp_path: Path) -> None:
    """resume_of: the given workspace is used as it is (its files kept); gone, the job
    cannot be prepared and nothing is made in its place."""
    cfg = make_cfg(tmp_path)
    old = tmp_path / "ws-a"
    old.mkdir()
    (old / ".aider.chat.history.md").write_text("the session")
    resumed = entry(workspace=str(old), resume_of="a", resume_session="s", repos=["app"])
    assert old == prepare_workspace(cfg, resumed)
    assert ["the session"] == [p.read_text() for p in old.iterdir()]
    gone = entry(workspace=str(tmp_path / "ws-gone"), resume_of="a")
    with pytest.raises(PrepareError, match=r"the workspace .*ws-gone of job a, whose session "
                                           r"this job resumes, no longer exists"):
        prepare_workspace(cfg, gone)
    assert not (tmp_path / "ws-gone").exists()


# --------------------------------------------------------------------------- workspace


def git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                          "-c", "init.defaultBranch=main", *args],
                         cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_repo(path: Path, name: str) -> Path:
    """A repository whose default branch (HEAD) is `trunk`; `main` holds other content."""
    path.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=path)
    (path / "which").write_text(f"{name} main\n")
    git("add", "which", cwd=path)
    git("commit", "-q", "-m", "on main", cwd=path)
    git("checkout", "-q", "-b", "trunk", cwd=path)
    (path / "which").write_text(f"{name} trunk\n")
    git("commit", "-q", "-am", "on trunk", cwd=path)
    return path


@pytest.fixture
def repos(tmp_path: Path) -> dict[str, RepoConfig]:
    app = make_repo(tmp_path / "remotes" / "app", "app")
    lib = make_repo(tmp_path / "remotes" / "lib", "lib")
    return {"app": RepoConfig(url=str(app)), "lib": RepoConfig(url=str(lib)),
            "app-main": RepoConfig(url=str(app), branch="main"),
            "app-nope": RepoConfig(url=str(app), branch="nope"),
            "missing": RepoConfig(url=str(tmp_path / "remotes" / "missing"))}


def test_a_job_without_repos_gets_an_empty_folder(tmp_path: Path) -> None:
    """No repositories: <workspace_dir>/<id>, empty."""
    cfg = make_cfg(tmp_path)
    ws = prepare_workspace(cfg, entry())
    assert (tmp_path / "ws" / "j1", []) == (ws, os.listdir(ws))


def test_one_repo_the_workspace_is_the_clone_on_the_remote_default(
        tmp_path: Path, repos: dict[str, RepoConfig]) -> None:
    """One repo, no branch named: the clone IS the workspace, on the remote's HEAD (trunk)."""
    cfg = make_cfg(tmp_path, repositories=repos)
    ws = prepare_workspace(cfg, entry(repos=["app"]))
    assert ("app trunk\n", "trunk") == ((ws / "which").read_text(),
                                        git("rev-parse", "--abbrev-ref", "HEAD", cwd=ws))
    assert [] == [n for n in os.listdir(tmp_path / "ws") if n.startswith(PREP_PREFIX)]


def test_a_named_branch_is_cloned(tmp_path: Path, repos: dict[str, RepoConfig]) -> None:
    """branch: main in the repository config -> git clone --branch main."""
    cfg = make_cfg(tmp_path, repositories=repos)
    ws = prepare_workspace(cfg, entry(repos=["app-main"]))
    assert "app main\n" == (ws / "which").read_text()


def test_several_repos_one_subfolder_each(tmp_path: Path,
                                          repos: dict[str, RepoConfig]) -> None:
    """Several repos: one subfolder each, named after the repository."""
    cfg = make_cfg(tmp_path, repositories=repos)
    ws = prepare_workspace(cfg, entry(repos=["app", "lib"]))
    assert (["app", "lib"], "app trunk\n", "lib trunk\n") == (
        sorted(os.listdir(ws)), (ws / "app" / "which").read_text(),
        (ws / "lib" / "which").read_text())


def test_the_base_of_each_clone_is_recorded_in_the_spec(
        tmp_path: Path, repos: dict[str, RepoConfig]) -> None:
    """workspace_repos names each repository's clone, its URL and `base`, the commit the
    clone is at; the spec carries them (with push and the git author) before any agent
    runs. A relaunch keeps the first spec's bases even if the clone moved since."""
    cfg = make_cfg(tmp_path, repositories=repos)
    layout = Layout(cfg.state_dir)
    job = entry(repos=["app", "lib"], push=True, created_at="2027-01-01T00:00:00.000Z")
    ws = prepare_workspace(cfg, job)
    got = workspace_repos(layout, job, ws, repos)
    assert [{"name": name, "path": str(ws / name), "url": repos[name].url,
             "base": git("rev-parse", "HEAD", cwd=ws / name)} for name in ("app", "lib")] == got
    spec = read_record(JOB_SPEC, write_spec(layout, cfg, job, got), owner=False)
    assert isinstance(spec, dict)
    assert (got, "batchd/j1", "2027-01-01T00:00:00.000Z") == (
        spec["repos"], spec["push"], spec["created_at"])
    first = got[0]["base"]
    (ws / "app" / "which").write_text("moved\n")
    git("commit", "-qam", "the agent moved HEAD", cwd=ws / "app")
    assert first == workspace_repos(layout, job, ws, repos)[0]["base"]


def test_a_resumed_job_counts_from_its_sessions_first_base(
        tmp_path: Path, repos: dict[str, RepoConfig]) -> None:
    """A job resuming another's session takes that job's recorded base (its changes are
    the whole session's), not the workspace's HEAD now."""
    cfg = make_cfg(tmp_path, repositories=repos)
    layout = Layout(cfg.state_dir)
    first = entry(repos=["app"])
    ws = prepare_workspace(cfg, first)
    write_spec(layout, cfg, first, workspace_repos(layout, first, ws, repos))
    base = git("rev-parse", "HEAD", cwd=ws)
    git("commit", "-q", "--allow-empty", "-m", "the first session's commit", cwd=ws)
    later = entry(id="j2", repos=["app"], resume_of="j1", workspace=str(ws))
    assert base == workspace_repos(layout, later, ws, repos)[0]["base"]


def test_registered_repositories_can_be_passed_in(tmp_path: Path,
                                                  repos: dict[str, RepoConfig]) -> None:
    """`repositories=` (config + `repo add`) replaces cfg.repositories for the lookup."""
    cfg = make_cfg(tmp_path)
    ws = prepare_workspace(cfg, entry(repos=["lib"]), repositories=repos)
    assert "lib trunk\n" == (ws / "which").read_text()


def test_a_half_made_workspace_is_redone(tmp_path: Path, repos: dict[str, RepoConfig]) -> None:
    """A crash mid-clone leaves `.prep.<id>+<token>` (or, from an older batchd,
    `.prep.<id>`); the relaunch (attempts > 1) removes both and clones afresh in a
    staging folder of its own, leaving other jobs' (`j10`, `j1.x`) alone. A first attempt
    does not look: no listing of the workspaces' folder on every launch."""
    cfg = make_cfg(tmp_path, repositories=repos)
    ws_dir = tmp_path / "ws"
    for name in ("j1", "j1+0a0b", "j10+0a0b", "j1.x+0a0b", "j1.x"):
        (ws_dir / f"{PREP_PREFIX}{name}" / "app" / "half").mkdir(parents=True)
    first = prepare_workspace(cfg, entry(id="j2", repos=["app"]))
    ws = prepare_workspace(cfg, entry(repos=["app", "lib"], attempts=2))
    assert (["app", "lib"], False, "app trunk\n") == (
        sorted(os.listdir(ws)), (ws / "app" / "half").exists(), (first / "which").read_text())
    assert [f"{PREP_PREFIX}j1.x", f"{PREP_PREFIX}j1.x+0a0b", f"{PREP_PREFIX}j10+0a0b",
            "j1", "j2"] == sorted(os.listdir(ws_dir))


def test_a_workspace_another_attempt_put_in_place_first_is_kept(
        tmp_path: Path, repos: dict[str, RepoConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two attempts cloning one workspace at once (a scheduler that reopened its queue
    while its first clone ran): the one that renames second keeps the first's workspace
    and removes its own staging folder, and reports no head of its own."""
    from supervisor.scheduler import jobfiles
    cfg = make_cfg(tmp_path, repositories=repos)
    mirrors = tmp_path / "mirrors"
    real = jobfiles._clone

    def racing(name: str, repo: RepoConfig, dest: Path, timeout: float,
               **kw: Any) -> str | None:
        got = real(name, repo, dest, timeout, **kw)
        other = tmp_path / "ws" / "j1"
        if not other.exists():
            real(name, repo, other, timeout, **kw)
            (other / "first").write_text("the other attempt's")
        return got
    monkeypatch.setattr(jobfiles, "_clone", racing)
    heads: dict[str, str] = {}
    ws = prepare_workspace(cfg, entry(repos=["app"]), mirrors_dir=mirrors, heads=heads)
    assert ("the other attempt's", ["j1"], {}) == (
        (ws / "first").read_text(), os.listdir(tmp_path / "ws"), heads)


def test_a_complete_workspace_is_reused_untouched(tmp_path: Path,
                                                  repos: dict[str, RepoConfig]) -> None:
    """prepare_workspace twice (a relaunch) keeps the first workspace and its contents."""
    cfg = make_cfg(tmp_path, repositories=repos)
    ws = prepare_workspace(cfg, entry(repos=["app"]))
    (ws / "work-in-progress").write_text("keep me")
    assert ws == prepare_workspace(cfg, entry(repos=["app"]))
    assert "keep me" == (ws / "work-in-progress").read_text()


@pytest.mark.parametrize(("repo", "needle"), [
    ("app-nope", "Remote branch nope not found"),
    ("missing", "does not exist"),
])
def test_git_errors_carry_git_stderr_and_leave_nothing(
        tmp_path: Path, repos: dict[str, RepoConfig], repo: str, needle: str) -> None:
    """A failing clone raises PrepareError with git's stderr; no workspace, no staging left."""
    cfg = make_cfg(tmp_path, repositories=repos)
    with pytest.raises(PrepareError, match=needle) as info:
        prepare_workspace(cfg, entry(repos=["lib", repo]))
    assert f"git clone of repository {repo!r}" in str(info.value)
    assert [] == os.listdir(tmp_path / "ws")


def test_unknown_repository_is_refused(tmp_path: Path) -> None:
    """A repository neither configured nor registered is a PrepareError naming it."""
    cfg = make_cfg(tmp_path)
    with pytest.raises(PrepareError, match="unknown repository 'ghost'"):
        prepare_workspace(cfg, entry(repos=["ghost"]))


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    """A non-folder at the workspace path is an error, not silently replaced."""
    cfg = make_cfg(tmp_path)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "j1").write_text("x")
    with pytest.raises(PrepareError, match="exists and is not a folder"):
        prepare_workspace(cfg, entry())


# --------------------------------------------------------------------------- from mirrors


def bare_remote(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """(bare remote whose HEAD is trunk, a work tree that pushes to it)."""
    work = make_repo(tmp_path / "remotes" / f"{name}-work", name)
    bare = tmp_path / "remotes" / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("remote", "add", "origin", str(bare), cwd=work)
    return bare, work


@pytest.fixture
def remotes(tmp_path: Path) -> dict[str, RepoConfig]:
    app, _ = bare_remote(tmp_path, "app")
    lib, _ = bare_remote(tmp_path, "lib")
    return {"app": RepoConfig(url=str(app)), "lib": RepoConfig(url=str(lib)),
            "app-main": RepoConfig(url=str(app), branch="main"),
            "app-nope": RepoConfig(url=str(app), branch="nope")}


def test_from_a_mirror_the_workspace_is_an_ordinary_clone(
        tmp_path: Path, remotes: dict[str, RepoConfig]) -> None:
    """One repo via mirrors_dir: mirror made, workspace on the remote's default branch,
    its origin the real URL (not the mirror), no staging left."""
    cfg = make_cfg(tmp_path)
    mirrors = tmp_path / "state" / "mirrors"
    ws = prepare_workspace(cfg, entry(repos=["app"]), repositories=remotes,
                           mirrors_dir=mirrors)
    assert ("app trunk\n", "trunk", remotes["app"].url, ["app.git"]) == (
        (ws / "which").read_text(), git("rev-parse", "--abbrev-ref", "HEAD", cwd=ws),
        git("remote", "get-url", "origin", cwd=ws), os.listdir(mirrors))
    assert [] == [n for n in os.listdir(tmp_path / "ws") if n.startswith(PREP_PREFIX)]


def _git_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every git command run from now on (its arguments), as the test will see them."""
    import supervisor.state.git as state_git
    calls: list[list[str]] = []
    real = state_git.run_git_bytes

    def counted(args: list[str], **kw: Any) -> bytes:
        calls.append(args)
        return real(args, **kw)
    monkeypatch.setattr(state_git, "run_git_bytes", counted)
    return calls


def test_from_a_mirror_one_git_process_and_the_base_from_files(
        tmp_path: Path, remotes: dict[str, RepoConfig], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """Once the mirror exists and the remote has not moved: the workspace costs one git
    (read-tree: no fetch, no clone, no set-url) and workspace_repos none (its base read
    from the clone's files), the base being the commit checked out."""
    cfg = make_cfg(tmp_path)
    mirrors = tmp_path / "mirrors"
    prepare_workspace(cfg, entry(id="j1", repos=["app"]), repositories=remotes,
                      mirrors_dir=mirrors)
    calls = _git_calls(monkeypatch)
    e = entry(id="j2", repos=["app"])
    ws = prepare_workspace(cfg, e, repositories=remotes, mirrors_dir=mirrors)
    repos = workspace_repos(Layout(tmp_path / "state"), e, ws, remotes)
    assert ([["read-tree"]], git("rev-parse", "HEAD", cwd=ws)) == (
        [[a for a in args if a == "read-tree"] for args in calls], repos[0]["base"])


_KILLED_LINKING = """
import os, signal, sys
from pathlib import Path
from supervisor.config import Config, RepoConfig
from supervisor.scheduler import jobfiles, linkclone
where = sys.argv[3]
real_link, real_git = os.link, linkclone.run_git
def link(src, dst):
    real_link(src, dst)
    if where == "link":
        os.kill(os.getpid(), signal.SIGKILL)
def git(args, **kw):
    if where == "read-tree":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_git(args, **kw)
os.link, linkclone.run_git = link, git
root = Path(sys.argv[1])
cfg = Config(state_dir=root / "state", workspace_dir=root / "ws")
jobfiles.prepare_workspace(cfg, {"id": "j2", "repos": ["app"]},
                           repositories={"app": RepoConfig(url=sys.argv[2])},
                           mirrors_dir=root / "mirrors")
"""


@pytest.mark.parametrize("where", ["link", "read-tree"])
def test_a_scheduler_killed_while_linking_a_workspace_leaves_only_prep(
        tmp_path: Path, where: str) -> None:
    """A real SIGKILL while the workspace is being linked from the mirror (after its first
    hard link, or just before read-tree): only `.prep.<id>` is left, never the real name;
    the relaunch's prepare_workspace removes it and makes the whole workspace."""
    bare, _ = bare_remote(tmp_path, "app")
    cfg = make_cfg(tmp_path)
    known = {"app": RepoConfig(url=str(bare))}
    prepare_workspace(cfg, entry(id="j1", repos=["app"]), repositories=known,
                      mirrors_dir=tmp_path / "mirrors")
    done = subprocess.run([sys.executable, "-c", _KILLED_LINKING, str(tmp_path), str(bare),
                           where], check=False, capture_output=True)
    left = sorted(os.listdir(tmp_path / "ws"))
    ws = prepare_workspace(cfg, entry(id="j2", repos=["app"], attempts=2),
                           repositories=known, mirrors_dir=tmp_path / "mirrors")
    assert (-9, 2, True, "app trunk\n", "") == (
        done.returncode, len(left), left[0].startswith(f"{PREP_PREFIX}j2+"),
        (ws / "which").read_text(), git("status", "--porcelain", cwd=ws))
    assert ["j1", "j2"] == sorted(os.listdir(tmp_path / "ws"))


_ORPHANED_READ_TREE = """
import os, sys
from pathlib import Path
from supervisor.config import Config, RepoConfig
from supervisor.scheduler import jobfiles
root = Path(sys.argv[1])
cfg = Config(state_dir=root / "state", workspace_dir=root / "ws")
jobfiles.prepare_workspace(cfg, {"id": "j2", "repos": ["app"]},
                           repositories={"app": RepoConfig(url=sys.argv[2])},
                           mirrors_dir=root / "mirrors")
"""


def test_a_read_tree_outliving_a_killed_scheduler_writes_only_into_its_own_folder(
        tmp_path: Path) -> None:
    """The read-tree runs without setpriv --pdeathsig, so a SIGKILLed scheduler's git
    goes on: the relaunch, meanwhile, clones into a staging folder of its own (removing
    the abandoned one), and the orphan, running afterwards, cannot touch the workspace:
    it is whole and clean, and nothing else is left beside it."""
    bare, _ = bare_remote(tmp_path, "app")
    cfg = make_cfg(tmp_path)
    known = {"app": RepoConfig(url=str(bare))}
    prepare_workspace(cfg, entry(id="j1", repos=["app"]), repositories=known,
                      mirrors_dir=tmp_path / "mirrors")        # the mirror, made once
    real_git = subprocess.run(["sh", "-c", "command -v git"], capture_output=True,
                              text=True, check=True).stdout.strip()
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "git").write_text(
        "#!/bin/sh\n"
        f"case \"$*\" in *read-tree*) echo $$ > {tmp_path}/orphan.pid; sleep 1;; esac\n"
        f"exec {real_git} \"$@\"\n")
    (shim / "git").chmod(0o755)
    scheduler = subprocess.Popen([sys.executable, "-c", _ORPHANED_READ_TREE, str(tmp_path),
                                  str(bare)],
                                 env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
    try:
        assert wait_for(lambda: (tmp_path / "orphan.pid").exists()
                        and (tmp_path / "orphan.pid").read_text().strip() != "")
    finally:
        scheduler.kill()
        scheduler.wait()
    orphan = int((tmp_path / "orphan.pid").read_text())
    assert alive(orphan, None)                                 # not killed with it
    ws = prepare_workspace(cfg, entry(id="j2", repos=["app"], attempts=2),
                           repositories=known, mirrors_dir=tmp_path / "mirrors")
    assert wait_for(lambda: not alive(orphan, None))
    assert ("app trunk\n", "", ["j1", "j2"]) == (
        (ws / "which").read_text(), git("status", "--porcelain", cwd=ws),
        sorted(os.listdir(tmp_path / "ws")))


def test_the_heads_checked_out_are_reported_and_the_mirrors_refs_read_once(
        tmp_path: Path, remotes: dict[str, RepoConfig], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """With the mirror up to date its refs, read to compare with the remote's, serve the
    clone too (not read again), and `heads` gets the commit checked out: the base
    workspace_repos records without reading the clone."""
    from supervisor.scheduler import jobfiles, linkclone
    cfg = make_cfg(tmp_path)
    mirrors = tmp_path / "mirrors"
    prepare_workspace(cfg, entry(id="j1", repos=["app"]), repositories=remotes,
                      mirrors_dir=mirrors)

    def unread(*_a: Any) -> None:
        raise AssertionError("read again")
    monkeypatch.setattr(linkclone, "read_refs", unread)
    heads: dict[str, str] = {}
    e = entry(id="j2", repos=["app"])
    ws = prepare_workspace(cfg, e, repositories=remotes, mirrors_dir=mirrors, heads=heads)
    monkeypatch.setattr(jobfiles, "_head", unread)
    repos = workspace_repos(Layout(tmp_path / "state"), e, ws, remotes, heads)
    head = git("rev-parse", "HEAD", cwd=ws)
    assert ({"app": head}, head) == (heads, repos[0]["base"])


def test_write_spec_after_make_job_dir_syncs_the_job_folder_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make_job_dir (while the workspace is cloned) makes jobs/<id>/ durable, so the
    write_spec that follows fsyncs the spec and its folder, not jobs/ again; without it
    (or when the folder vanished since) write_spec makes the folder itself."""
    from supervisor.scheduler.jobfiles import make_job_dir
    from supervisor.state.fs import REAL
    cfg = make_cfg(tmp_path)
    layout = Layout(cfg.state_dir)
    write_spec(layout, cfg, entry(id="j0"))          # jobs/ itself made sure of, once
    synced: list[str] = []
    real = REAL.fsync_dir

    def noting(path: str) -> None:
        synced.append(os.path.basename(path))
        real(path)
    monkeypatch.setattr(REAL, "fsync_dir", noting)
    make_job_dir(layout, "j1")
    made = list(synced)
    synced.clear()
    write_spec(layout, cfg, entry(id="j1"))
    ahead = list(synced)
    synced.clear()
    make_job_dir(layout, "j2")
    (layout.job_dir("j2")).rmdir()
    write_spec(layout, cfg, entry(id="j2"))
    assert (["jobs"], ["j1"], ["jobs", "jobs", "j2"]) == (made, ahead, synced)
    assert "j2" == read_record(JOB_SPEC, layout.job_spec("j2"), owner=False)["id"]


def test_from_mirrors_several_repos_and_a_named_branch(
        tmp_path: Path, remotes: dict[str, RepoConfig]) -> None:
    """Several repos via mirrors: one subfolder each; a named branch is checked out."""
    cfg = make_cfg(tmp_path)
    mirrors = tmp_path / "mirrors"
    ws = prepare_workspace(cfg, entry(repos=["app-main", "lib"]), repositories=remotes,
                           mirrors_dir=mirrors)
    assert (["app-main", "lib"], "app main\n", "lib trunk\n", remotes["lib"].url) == (
        sorted(os.listdir(ws)), (ws / "app-main" / "which").read_text(),
        (ws / "lib" / "which").read_text(), git("remote", "get-url", "origin", cwd=ws / "lib"))


def test_the_mirror_is_fetched_for_the_next_job(tmp_path: Path) -> None:
    """The mirror is created once, then fetched: a commit pushed after job 1 is in job 2's
    workspace, and the mirror folder is the same one."""
    bare, work = bare_remote(tmp_path, "app")
    cfg = make_cfg(tmp_path)
    known = {"app": RepoConfig(url=str(bare))}
    mirrors = tmp_path / "mirrors"
    prepare_workspace(cfg, entry(id="j1", repos=["app"]), repositories=known,
                      mirrors_dir=mirrors)
    inode = (mirrors / "app.git").stat().st_ino
    (work / "which").write_text("app trunk 2\n")
    git("commit", "-q", "-am", "second", cwd=work)
    git("push", "-q", "origin", "trunk", cwd=work)
    ws2 = prepare_workspace(cfg, entry(id="j2", repos=["app"]), repositories=known,
                            mirrors_dir=mirrors)
    assert ("app trunk 2\n", inode, "app trunk\n") == (
        (ws2 / "which").read_text(), (mirrors / "app.git").stat().st_ino,
        (tmp_path / "ws" / "j1" / "which").read_text())


def test_a_fetch_failure_fails_the_job_with_git_stderr(tmp_path: Path) -> None:
    """The remote is gone when its mirror is fetched: PrepareError carrying git's stderr,
    no workspace and no staging left."""
    bare, _ = bare_remote(tmp_path, "app")
    cfg = make_cfg(tmp_path)
    known = {"app": RepoConfig(url=str(bare))}
    mirrors = tmp_path / "mirrors"
    prepare_workspace(cfg, entry(id="j1", repos=["app"]), repositories=known,
                      mirrors_dir=mirrors)
    bare.rename(tmp_path / "moved.git")
    with pytest.raises(PrepareError, match="does not appear to be a git repository") as info:
        prepare_workspace(cfg, entry(id="j2", repos=["app"]), repositories=known,
                          mirrors_dir=mirrors)
    assert str(info.value).startswith("git fetch of repository 'app'")
    assert ["j1"] == os.listdir(tmp_path / "ws")


def test_a_missing_branch_in_the_mirror_fails_with_git_stderr(
        tmp_path: Path, remotes: dict[str, RepoConfig]) -> None:
    """A branch the remote lacks: the clone from the mirror fails naming the real URL."""
    cfg = make_cfg(tmp_path)
    with pytest.raises(PrepareError, match="Remote branch nope not found") as info:
        prepare_workspace(cfg, entry(repos=["app-nope"]), repositories=remotes,
                          mirrors_dir=tmp_path / "mirrors")
    assert str(info.value).startswith(
        f"git clone of repository 'app-nope' ({remotes['app'].url} branch 'nope') failed: ")
    assert [] == os.listdir(tmp_path / "ws")


def test_a_complete_workspace_is_reused_without_a_fetch(
        tmp_path: Path, remotes: dict[str, RepoConfig]) -> None:
    """A relaunch with the workspace already made touches neither remote nor mirror."""
    cfg = make_cfg(tmp_path)
    mirrors = tmp_path / "mirrors"
    ws = prepare_workspace(cfg, entry(repos=["app"]), repositories=remotes,
                           mirrors_dir=mirrors)
    Path(remotes["app"].url).rename(tmp_path / "moved.git")
    assert ws == prepare_workspace(cfg, entry(repos=["app"]), repositories=remotes,
                                   mirrors_dir=mirrors)


# --------------------------------------------------------------------------- kill_group


def test_kill_group_signals_the_whole_group() -> None:
    """The adaptor (session leader) and its child both get the signal."""
    leader = subprocess.Popen(["sh", "-c", "sleep 120 & echo $!; wait"], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert leader.stdout is not None
        child = int(leader.stdout.readline())
        child_start = start_time(child)
        assert kill_group(leader.pid, start_time(leader.pid), signal.SIGTERM)
        leader.wait(timeout=20)
        assert wait_for(lambda: not alive(child, child_start))
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()


def test_kill_group_refuses_a_wrong_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    """pid alive but another start time (a reused pid): no signal, False."""
    start = start_time(sleeper.pid)
    assert start is not None
    assert not kill_group(sleeper.pid, start + 1, signal.SIGKILL)
    assert not kill_group(sleeper.pid, None, signal.SIGKILL)
    time.sleep(0.05)
    assert None is sleeper.poll()


def test_kill_group_of_a_dead_process_is_false(sleeper: subprocess.Popen[bytes]) -> None:
    """A process already gone is not signalled."""
    start = start_time(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    assert not kill_group(sleeper.pid, start, signal.SIGTERM)
    assert not kill_group(None, None, signal.SIGTERM)


def test_kill_group_of_a_non_leader_signals_only_it() -> None:
    """A pid that does not lead its group gets the signal alone (our own group is spared)."""
    p = subprocess.Popen(["sleep", "120"])     # in the test runner's group
    try:
        assert kill_group(p.pid, start_time(p.pid), signal.SIGKILL)
        assert -signal.SIGKILL == p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# -- workspaces made ahead (make_ahead, prepare_workspace(made=)) ---------------------------

def _make(cfg: Config, e: dict[str, Any], known: dict[str, RepoConfig], mirrors: Path
          ) -> Made | None:
    return make_ahead(cfg, e, repositories=known, mirrors_dir=mirrors)


def _ahead_setup(tmp_path: Path, remotes: dict[str, RepoConfig], *names: str
                 ) -> tuple[Config, Path]:
    """A config and mirrors of `names`, made by an earlier job's workspace (j0)."""
    cfg = make_cfg(tmp_path)
    mirrors = tmp_path / "state" / "mirrors"
    prepare_workspace(cfg, entry(id="j0", repos=list(names)), repositories=remotes,
                      mirrors_dir=mirrors)
    return cfg, mirrors


def test_a_workspace_made_ahead_is_renamed_into_place_at_the_grant(
        tmp_path: Path, remotes: dict[str, RepoConfig], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """make_ahead builds the waiting job's workspace in a staging folder of its own beside
    it (`.prep.<id>+<token>`) from the mirror as it is; at the grant, the remote not
    having moved, prepare_workspace runs no git at all, renames it into place and
    reports the commit it checked out."""
    cfg, mirrors = _ahead_setup(tmp_path, remotes, "app")
    e = entry(id="j1", state="waiting", repos=["app"])
    made = _make(cfg, e, remotes, mirrors)
    assert made is not None
    assert (tmp_path / "ws", True, False) == (
        made.staging.parent, made.staging.name.startswith(f"{PREP_PREFIX}j1+"),
        (tmp_path / "ws" / "j1").exists())
    calls = _git_calls(monkeypatch)
    heads: dict[str, str] = {}
    ws = prepare_workspace(cfg, e, repositories=remotes, mirrors_dir=mirrors, heads=heads,
                           made=made)
    assert ([], "app trunk\n", False) == (calls, (ws / "which").read_text(),
                                          made.staging.exists())
    assert ({"app": git("rev-parse", "HEAD", cwd=ws)}, remotes["app"].url, "") == (
        heads, git("remote", "get-url", "origin", cwd=ws),
        git("status", "--porcelain", cwd=ws))


def test_a_remote_that_moved_makes_the_grant_clone_afresh(
        tmp_path: Path, remotes: dict[str, RepoConfig]) -> None:
    """A commit pushed while the job waited: the grant fetches it and clones anew (the
    workspace is at the new commit); the one made ahead is left for the caller to remove."""
    cfg, mirrors = _ahead_setup(tmp_path, remotes, "app")
    e = entry(id="j1", state="waiting", repos=["app"])
    made = _make(cfg, e, remotes, mirrors)
    assert made is not None
    work = tmp_path / "remotes" / "app-work"
    (work / "which").write_text("app moved\n")
    git("commit", "-q", "-am", "moved", cwd=work)
    git("push", "-q", "origin", "trunk", cwd=work)
    heads: dict[str, str] = {}
    ws = prepare_workspace(cfg, e, repositories=remotes, mirrors_dir=mirrors, heads=heads,
                           made=made)
    assert ("app moved\n", git("rev-parse", "HEAD", cwd=work), True) == (
        (ws / "which").read_text(), git("rev-parse", "HEAD", cwd=ws), made.staging.is_dir())


def test_a_branch_changed_while_the_job_waited_is_not_taken_ahead(
        tmp_path: Path, remotes: dict[str, RepoConfig]) -> None:
    """The repository now names another branch (or URL): what was made ahead is not what
    the grant must make, so it is passed over."""
    cfg, mirrors = _ahead_setup(tmp_path, remotes, "app")
    e = entry(id="j1", state="waiting", repos=["app"])
    made = _make(cfg, e, remotes, mirrors)
    assert made is not None
    now = {**remotes, "app": RepoConfig(url=remotes["app"].url, branch="main")}
    ws = prepare_workspace(cfg, e, repositories=now, mirrors_dir=mirrors, made=made)
    assert ("app main\n", True) == ((ws / "which").read_text(), made.staging.is_dir())


def test_several_repositories_are_made_ahead_one_folder_each(
        tmp_path: Path, remotes: dict[str, RepoConfig], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """A job on two repositories: one subfolder each, both renamed in with no git run."""
    cfg, mirrors = _ahead_setup(tmp_path, remotes, "app", "lib")
    e = entry(id="j1", state="waiting", repos=["app", "lib"])
    made = _make(cfg, e, remotes, mirrors)
    assert made is not None and ["app", "lib"] == sorted(os.listdir(made.staging))
    calls = _git_calls(monkeypatch)
    ws = prepare_workspace(cfg, e, repositories=remotes, mirrors_dir=mirrors, made=made)
    assert ([], "app trunk\n", "lib trunk\n") == (
        calls, (ws / "app" / "which").read_text(), (ws / "lib" / "which").read_text())


@pytest.mark.parametrize("case", ["resume", "no mirror", "other url", "workspace exists",
                                  "unknown repository", "no repository"])
def test_make_ahead_declines_what_it_cannot_make_and_leaves_nothing(
        tmp_path: Path, remotes: dict[str, RepoConfig], case: str) -> None:
    """None, and no staging left, for: a job resuming another's workspace, a repository
    never mirrored yet (only a grant may make the mirror), a mirror of another URL (the
    grant replaces it), a workspace already there, an unknown repository, none at all."""
    cfg, mirrors = _ahead_setup(tmp_path, remotes, "app")
    known = dict(remotes)
    e = entry(id="j1", state="waiting", repos=["app"])
    if case == "resume":
        e["resume_of"] = "j0"
    elif case == "no mirror":
        e["repos"] = ["lib"]
    elif case == "other url":
        known["app"] = RepoConfig(url=remotes["lib"].url)
    elif case == "workspace exists":
        (tmp_path / "ws" / "j1").mkdir(parents=True)
    elif case == "unknown repository":
        e["repos"] = ["nowhere"]
    else:
        e["repos"] = []
    assert None is _make(cfg, e, known, mirrors)
    assert [] == [n for n in os.listdir(tmp_path / "ws") if n.startswith(PREP_PREFIX)]


def test_make_ahead_holds_the_mirrors_only_while_it_reads_them(
        tmp_path: Path, remotes: dict[str, RepoConfig], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """`locked()` is held while the refs are read and the objects linked, and no longer
    during the read-tree (which reads only the staging folder): a grant that wants the
    mirror waits for the links, not for the checkout."""
    from supervisor.scheduler import linkclone
    cfg, mirrors = _ahead_setup(tmp_path, remotes, "app", "lib")
    held: list[bool] = [False]
    seen: list[tuple[str, bool]] = []

    class Locked:
        def __enter__(self) -> None:
            held[0] = True

        def __exit__(self, *exc: object) -> None:
            held[0] = False
    real_link, real_checkout = linkclone.link, linkclone.checkout

    def link(*a: Any, **k: Any) -> str | None:
        seen.append(("link", held[0]))
        return real_link(*a, **k)

    def checkout(*a: Any, **k: Any) -> None:
        seen.append(("checkout", held[0]))
        real_checkout(*a, **k)
    monkeypatch.setattr(linkclone, "link", link)
    monkeypatch.setattr(linkclone, "checkout", checkout)
    made = make_ahead(cfg, entry(id="j1", state="waiting", repos=["app", "lib"]),
                      repositories=remotes, mirrors_dir=mirrors, locked=Locked)
    assert made is not None
    assert [("link", True), ("link", True), ("checkout", False), ("checkout", False)] == seen
