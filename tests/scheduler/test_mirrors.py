"""Mirrors of the repositories (scheduler.mirrors): real git, real remotes in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.config import RepoConfig
from supervisor.scheduler.mirrors import MIRROR_PREP_PREFIX, MirrorError, ensure_mirror
from tests.helpers import git, make_remote, push_commit


def test_a_mirror_is_created_bare_with_the_remote_head(tmp_path: Path) -> None:
    """First use: `git clone --mirror` into mirrors/<name>.git, HEAD = the remote's."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "state" / "mirrors"
    path = ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    assert (mirrors / "app.git", "true", "refs/heads/trunk", ["app.git"]) == (
        path, git("--git-dir", str(path), "rev-parse", "--is-bare-repository"),
        git("--git-dir", str(path), "symbolic-ref", "HEAD"), os.listdir(mirrors))


def test_a_mirror_is_made_once_then_fetched(tmp_path: Path) -> None:
    """Second use fetches into the same mirror (same inode): a new remote commit appears,
    a deleted remote branch is pruned."""
    bare, work = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    repo = RepoConfig(str(bare))
    first = ensure_mirror("app", repo, mirrors).stat().st_ino
    sha = push_commit(work, "app trunk 2\n")
    git("push", "-q", "origin", "--delete", "main", cwd=work)
    path = ensure_mirror("app", repo, mirrors)
    assert (first, sha, "") == (
        path.stat().st_ino, git("--git-dir", str(path), "rev-parse", "refs/heads/trunk"),
        git("--git-dir", str(path), "branch", "--list", "main"))


def test_a_half_made_mirror_is_cleaned_and_redone(tmp_path: Path) -> None:
    """A crash mid-clone leaves .prep.<name>.git: the next ensure removes it and clones;
    another repository's temp folder (maybe in use under its own lock) is left alone."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    (mirrors / f"{MIRROR_PREP_PREFIX}app.git" / "objects").mkdir(parents=True)
    (mirrors / f"{MIRROR_PREP_PREFIX}lib.git").mkdir()
    ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    assert [f"{MIRROR_PREP_PREFIX}lib.git", "app.git"] == sorted(os.listdir(mirrors))


def test_a_fetch_failure_carries_git_stderr_and_keeps_the_mirror(tmp_path: Path) -> None:
    """The remote vanished: MirrorError with git's stderr; the mirror is still there."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    repo = RepoConfig(str(bare))
    path = ensure_mirror("app", repo, mirrors)
    bare.rename(tmp_path / "moved.git")
    with pytest.raises(MirrorError, match="does not appear to be a git repository") as info:
        ensure_mirror("app", repo, mirrors)
    assert str(info.value).startswith(f"git fetch of repository 'app' ({bare}) into its mirror "
                                      "failed: ")
    assert "refs/heads/trunk" == git("--git-dir", str(path), "symbolic-ref", "HEAD")


def test_a_failed_first_clone_leaves_nothing(tmp_path: Path) -> None:
    """No mirror yet and the remote is unreachable: MirrorError, no mirror, no temp."""
    mirrors = tmp_path / "mirrors"
    with pytest.raises(MirrorError, match="git clone --mirror of repository 'x'"):
        ensure_mirror("x", RepoConfig(str(tmp_path / "none.git")), mirrors)
    assert [] == os.listdir(mirrors)


def test_a_mirror_of_another_url_is_replaced(tmp_path: Path) -> None:
    """A name removed and registered again elsewhere: the old mirror is not reused."""
    app, _ = make_remote(tmp_path, "app")
    lib, _ = make_remote(tmp_path, "lib")
    mirrors = tmp_path / "mirrors"
    ensure_mirror("x", RepoConfig(str(app)), mirrors)
    path = ensure_mirror("x", RepoConfig(str(lib)), mirrors)
    assert (str(lib), "lib trunk") == (
        git("--git-dir", str(path), "config", "remote.origin.url"),
        git("--git-dir", str(path), "show", "trunk:which"))


def test_junk_at_the_mirror_path_is_replaced(tmp_path: Path) -> None:
    """A folder that is not a git mirror (or a file) at mirrors/<name>.git is cloned over."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    (mirrors / "app.git").mkdir(parents=True)
    (mirrors / "app.git" / "junk").write_text("x")
    path = ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    assert (False, "app trunk") == ((path / "junk").exists(),
                                    git("--git-dir", str(path), "show", "HEAD:which"))


def test_the_mirror_head_follows_the_remote_default(tmp_path: Path) -> None:
    """A repository without a branch follows the remote's default branch when it changes;
    one with a branch leaves the mirror's HEAD alone."""
    bare, _ = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    git("--git-dir", str(bare), "symbolic-ref", "HEAD", "refs/heads/main")
    path = ensure_mirror("app", RepoConfig(str(bare)), mirrors)
    assert "refs/heads/main" == git("--git-dir", str(path), "symbolic-ref", "HEAD")
    git("--git-dir", str(bare), "symbolic-ref", "HEAD", "refs/heads/trunk")
    ensure_mirror("app", RepoConfig(str(bare), branch="trunk"), mirrors)
    assert "refs/heads/main" == git("--git-dir", str(path), "symbolic-ref", "HEAD")


def _count_git(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    from supervisor.scheduler import mirrors
    calls: list[list[str]] = []
    real = mirrors.run_git

    def counted(args: list[str], **kw: object) -> str:
        calls.append(args)
        return real(args, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(mirrors, "run_git", counted)
    return calls


def test_an_unchanged_local_remote_is_not_fetched(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote on this machine whose refs and HEAD are the mirror's: no git runs at all
    (file:// URL and path alike); a push, a new branch or a moved HEAD: fetched again."""
    bare, work = make_remote(tmp_path, "app")
    mirrors = tmp_path / "mirrors"
    for repo in (RepoConfig(bare.as_uri()), RepoConfig(str(bare), "main")):
        ensure_mirror("app", repo, mirrors / repo.url.replace("/", "_"))
    calls = _count_git(monkeypatch)
    for repo in (RepoConfig(bare.as_uri()), RepoConfig(str(bare), "main")):
        ensure_mirror("app", repo, mirrors / repo.url.replace("/", "_"))
    quiet = len(calls)
    repo = RepoConfig(bare.as_uri())
    path = mirrors / repo.url.replace("/", "_")
    sha = push_commit(work, "app trunk 2\n")
    ensure_mirror("app", repo, path)
    pushed = git("--git-dir", str(path / "app.git"), "rev-parse", "refs/heads/trunk")
    git("--git-dir", str(bare), "symbolic-ref", "HEAD", "refs/heads/main")
    ensure_mirror("app", repo, path)
    assert (0, sha, "refs/heads/main") == (
        quiet, pushed, git("--git-dir", str(path / "app.git"), "symbolic-ref", "HEAD"))
    assert any("fetch" in args for args in calls)
