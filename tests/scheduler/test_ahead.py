"""Tests for scheduler.ahead: which waiting jobs get a workspace made ahead, by whom, and
how a grant, a job that ends while it waits and a restart meet it (real git mirrors)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from supervisor import log as _log
from supervisor.config import Config, RepoConfig
from supervisor.scheduler.ahead import MAX_AHEAD, Ahead, mirrors_held
from supervisor.scheduler.jobfiles import Made, prepare_workspace
from tests.helpers import git, until


@pytest.fixture
def remotes(tmp_path: Path) -> dict[str, RepoConfig]:
    out = {}
    for name in ("app", "lib"):
        work = tmp_path / "remotes" / f"{name}-work"
        work.mkdir(parents=True)
        git("init", "-q", "-b", "main", cwd=work)
        (work / "which").write_text(f"{name}\n")
        git("add", "which", cwd=work)
        git("commit", "-q", "-m", "first", cwd=work)
        bare = tmp_path / "remotes" / f"{name}.git"
        git("clone", "-q", "--bare", str(work), str(bare))
        out[name] = RepoConfig(url=str(bare))
    return out


@pytest.fixture
def cfg(tmp_path: Path, remotes: dict[str, RepoConfig]) -> Config:
    """A config whose mirrors of app and lib exist (made by a first job's workspace)."""
    c = Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws",
               repositories=remotes)
    prepare_workspace(c, {"id": "first", "repos": ["app", "lib"]},
                      mirrors_dir=tmp_path / "state" / "mirrors")
    return c


@pytest.fixture
def ahead(cfg: Config) -> Any:
    a = Ahead(cfg, cfg.state_dir / "mirrors", _log.get("test"))
    yield a
    a.close()


def waiting(job: str, *repos: str, **extra: Any) -> dict[str, Any]:
    return {"id": job, "state": "waiting", "agent": "shell", "repos": list(repos), **extra}


def staging(ahead: Ahead, job: str) -> Path:
    """The job's staging folder in the workspaces' folder (a made path if none exists)."""
    ws = ahead.cfg.workspace_dir
    names = [n for n in os.listdir(ws) if n.startswith(f".prep.{job}+")] if ws.is_dir() else []
    return ws / (names[0] if names else f".prep.{job}+none")


def made_soon(ahead: Ahead, job: str) -> None:
    until(f"{job}'s workspace made ahead",
          lambda: staging(ahead, job).is_dir() and job not in ahead._making, deadline=30)


class Gate:
    """Holds every making's read-tree (linkclone.checkout) until `go` is set; `inside`
    says one has reached it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from supervisor.scheduler import linkclone
        self.inside, self.go = threading.Event(), threading.Event()
        real = linkclone.checkout

        def held(*a: Any, **k: Any) -> None:
            self.inside.set()
            self.go.wait(30)
            real(*a, **k)
        monkeypatch.setattr(linkclone, "checkout", held)


def test_a_wanted_job_gets_its_workspace_and_the_grant_claims_it_once(
        cfg: Config, ahead: Ahead) -> None:
    """want + start: the one making thread makes it; claim gives it once (then None), and
    the job is no longer wanted."""
    assert ahead.want(waiting("w1", "app"))
    assert 1 == ahead.start(set, lambda: cfg.repositories)
    made_soon(ahead, "w1")
    got = ahead.claim("w1")
    assert isinstance(got, Made)
    assert (staging(ahead, "w1"), None, []) == (got.staging, ahead.claim("w1"), ahead.jobs())


def test_a_resume_or_a_job_without_repositories_is_not_wanted(ahead: Ahead) -> None:
    """A job resuming another's workspace never has one made; nor one without repos; a
    job told twice is wanted once."""
    assert (False, False, True, False) == (
        ahead.want(waiting("r", "app", resume_of="x")), ahead.want(waiting("n")),
        ahead.want(waiting("w", "app")), ahead.want(waiting("w", "app")))


def test_nothing_starts_on_a_repository_a_clone_uses(cfg: Config, ahead: Ahead) -> None:
    """A job whose repository a granted job's clone uses now waits for the next pass."""
    ahead.want(waiting("w1", "app"))
    ahead.want(waiting("w2", "lib"))
    assert 1 == ahead.start(lambda: {"app"}, lambda: cfg.repositories)
    made_soon(ahead, "w2")
    assert (False, 1) == (staging(ahead, "w1").exists(),
                          ahead.start(set, lambda: cfg.repositories))
    made_soon(ahead, "w1")


def test_at_most_max_ahead_are_made_or_being_made(cfg: Config, ahead: Ahead,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """However many are told, no more than MAX_AHEAD are made or being made at once: the
    made ones count until claimed, those being made too."""
    for i in range(MAX_AHEAD + 2):
        ahead.want(waiting(f"w{i}", "app"))
    assert MAX_AHEAD == ahead.start(set, lambda: cfg.repositories)
    for i in range(MAX_AHEAD):
        made_soon(ahead, f"w{i}")
    assert 0 == ahead.start(set, lambda: cfg.repositories)
    assert ahead.claim("w0") is not None
    gate = Gate(monkeypatch)
    try:
        assert 1 == ahead.start(set, lambda: cfg.repositories)
        assert gate.inside.wait(30)
        assert 0 == ahead.start(set, lambda: cfg.repositories)
    finally:
        gate.go.set()


def test_a_job_that_ended_while_waiting_loses_its_workspace(cfg: Config,
                                                           ahead: Ahead) -> None:
    """forget: the job is not wanted any more and what was made for it is removed."""
    ahead.want(waiting("w1", "app"))
    ahead.start(set, lambda: cfg.repositories)
    made_soon(ahead, "w1")
    ahead.forget("w1")
    until("its staging removed", lambda: not staging(ahead, "w1").exists())
    assert None is ahead.claim("w1")


def test_a_grant_during_its_making_waits_for_it_and_takes_it(
        cfg: Config, ahead: Ahead, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job is granted while its own workspace is being checked out: the claim waits
    for it and takes the finished workspace (never a half-made one)."""
    gate = Gate(monkeypatch)
    ahead.want(waiting("w1", "app"))
    ahead.start(set, lambda: cfg.repositories)
    assert gate.inside.wait(30)
    got: list[Made | None] = []
    t = threading.Thread(target=lambda: got.append(ahead.claim("w1")))
    t.start()
    time.sleep(0.2)
    assert [] == got                        # waiting for the checkout
    gate.go.set()
    t.join(30)
    assert 1 == len(got) and got[0] is not None and (got[0].staging / "which").is_file()


def test_a_grant_cancels_its_making_not_begun(cfg: Config, ahead: Ahead,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The making thread is busy with another job's workspace: a granted job whose making
    has not begun cancels it and clones its own at once (it never waits for another's)."""
    gate = Gate(monkeypatch)
    ahead.want(waiting("w1", "app"))
    ahead.want(waiting("w2", "lib"))
    ahead.start(set, lambda: cfg.repositories)
    try:
        assert gate.inside.wait(30)
        assert (None, ["w1"]) == (ahead.claim("w2"), ahead.jobs())
    finally:
        gate.go.set()
    made_soon(ahead, "w1")
    assert not staging(ahead, "w2").exists()


def test_a_job_forgotten_while_its_making_runs_keeps_nothing(
        cfg: Config, ahead: Ahead, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job ended (forgotten) while its workspace was being made: what is made is not
    kept, and removed."""
    gate = Gate(monkeypatch)
    ahead.want(waiting("w1", "app"))
    ahead.start(set, lambda: cfg.repositories)
    assert gate.inside.wait(30)
    ahead.forget("w1")
    gate.go.set()
    until("the making done", lambda: not ahead._making)
    assert (None, False) == (ahead.claim("w1"), staging(ahead, "w1").exists())

def test_a_failed_making_is_logged_and_leaves_nothing(
        cfg: Config, ahead: Ahead) -> None:
    """A read-tree that fails (a mirror object gone): nothing made, logged once, and not
    tried again at the next pass (the grant clones the workspace as always)."""
    objects = cfg.state_dir / "mirrors" / "app.git" / "objects"
    for folder, _, files in os.walk(objects):
        for name in files:
            if len(name) == 38:
                os.chmod(os.path.join(folder, name), 0o644)
                os.unlink(os.path.join(folder, name))
    for pack in (objects / "pack").glob("*"):
        pack.unlink()
    ahead.want(waiting("w1", "app"))
    with structlog.testing.capture_logs() as logs:
        ahead.start(set, lambda: cfg.repositories)
        until("the making done", lambda: not ahead._making)
    assert None is ahead.claim("w1")
    assert not staging(ahead, "w1").exists()
    assert ["workspace not made ahead"] == [e["event"] for e in logs
                                            if e["log_level"] == "warning"]
    assert (0, []) == (ahead.start(set, lambda: cfg.repositories), ahead.jobs())


def test_a_grant_waits_for_the_links_not_for_the_checkout(
        cfg: Config, ahead: Ahead, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a making runs its read-tree, the mirror's lock is free: a granted job's
    clone (which may fetch) does not wait for a checkout it does not use."""
    gate = Gate(monkeypatch)
    ahead.want(waiting("w1", "app"))
    ahead.start(set, lambda: cfg.repositories)
    try:
        assert gate.inside.wait(30)
        got: list[bool] = []

        def grant() -> None:
            with mirrors_held(["app"]):
                got.append(True)
        t = threading.Thread(target=grant)
        t.start()
        t.join(10)
        assert [True] == got
    finally:
        gate.go.set()
    made_soon(ahead, "w1")


def test_a_declined_making_is_not_tried_again(cfg: Config, ahead: Ahead) -> None:
    """A job whose workspace cannot be made ahead (here: its branch is not in the mirror)
    is dropped after one try, not made again at every pass."""
    ahead.want(waiting("w1", "app"))
    known = {**cfg.repositories, "app": RepoConfig(url=cfg.repositories["app"].url,
                                                   branch="nope")}
    assert 1 == ahead.start(set, lambda: known)
    until("the making done", lambda: not ahead._making)
    assert (0, [], False) == (ahead.start(set, lambda: known), ahead.jobs(),
                              staging(ahead, "w1").exists())


def test_close_on_a_reopen_removes_what_was_made_and_later_discards_still_work(
        cfg: Config) -> None:
    """close(remove=True) (the scheduler reopens its queue): what was made and not
    claimed is removed; a clone thread that claimed one before and discards it after
    the close removes it itself (no thread left to hand it to)."""
    a = Ahead(cfg, cfg.state_dir / "mirrors", _log.get("test"))
    for job in ("w1", "w2"):
        a.want(waiting(job, "app"))
    a.start(set, lambda: cfg.repositories)
    made_soon(a, "w1")
    made_soon(a, "w2")
    claimed = a.claim("w1")
    assert claimed is not None
    a.close(remove=True)
    until("the unclaimed one removed", lambda: not staging(a, "w2").exists())
    a.discard(claimed)
    assert (False, []) == (claimed.staging.exists(), a.jobs())
