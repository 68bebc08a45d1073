"""scheduler.linkclone: a workspace hard-linked from its mirror is an ordinary, independent
clone (real git, real mirrors in a temp folder), or nothing when git clone must do it."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from supervisor.scheduler import linkclone
from supervisor.state.git import GitError
from tests.helpers import git, make_remote, push_commit


def _mirror(tmp_path: Path) -> tuple[Path, Path, Path]:
    bare, work = make_remote(tmp_path, "app")
    git("tag", "-a", "-m", "v1", "v1", cwd=work)
    git("push", "-q", "origin", "v1", cwd=work)
    mirror = tmp_path / "mirrors" / "app.git"
    git("clone", "-q", "--mirror", str(bare), str(mirror))
    return bare, work, mirror


def _clone(mirror: Path, dest: Path, url: str, branch: str | None = "main") -> str | None:
    return linkclone.clone(mirror, branch, url, dest, checkout_workers=2, timeout=60.0,
                           what="test clone")


def _looks(repo: Path) -> tuple[str, ...]:
    """What a job sees of a clone: refs, HEAD, tracking, origin, status, files."""
    g = ["-C", str(repo)]
    return (git(*g, "for-each-ref", "--format=%(objectname) %(refname) %(symref)"),
            git(*g, "symbolic-ref", "HEAD"), git(*g, "rev-parse", "HEAD"),
            git(*g, "config", "--get", "remote.origin.url"),
            git(*g, "config", "--get", "remote.origin.fetch"),
            git(*g, "config", "--get", "branch.main.remote"),
            git(*g, "config", "--get", "branch.main.merge"),
            git(*g, "status", "--porcelain", "--branch"),
            git(*g, "ls-files", "--stage"), (repo / "which").read_text())


def test_a_linked_clone_is_what_git_clone_makes(tmp_path: Path) -> None:
    """Refs (origin's branches, tags, origin/HEAD), HEAD, the tracking config, origin = the
    real URL, a clean status and the checked-out files: the same as `git clone --branch`
    from the mirror then `remote set-url`; the commit returned is the clone's HEAD."""
    bare, _, mirror = _mirror(tmp_path)
    url = "file:///srv/git/app.git"
    made = _clone(mirror, tmp_path / "ws", url)
    git("clone", "-q", "--branch", "main", str(mirror), str(tmp_path / "ref"))
    git("-C", str(tmp_path / "ref"), "remote", "set-url", "origin", url)
    assert _looks(tmp_path / "ref") == _looks(tmp_path / "ws")
    assert git("--git-dir", str(bare), "rev-parse", "refs/heads/main") == made
    git("-C", str(tmp_path / "ws"), "fsck", "--full", "--strict")


def test_the_workspace_survives_the_mirror_repacked_pruned_and_removed(tmp_path: Path) -> None:
    """Objects are hard links: the mirror fetching a force-push that drops the workspace's
    commit, then gc --prune=now --aggressive, then the mirror removed: the workspace still
    has every object (fsck --full), its log, and takes a commit."""
    bare, work, mirror = _mirror(tmp_path)
    ws = tmp_path / "ws"
    head = _clone(mirror, ws, str(bare), "trunk")
    git("checkout", "-q", "trunk", cwd=work)
    git("reset", "-q", "--hard", "HEAD~1", cwd=work)
    git("push", "-q", "-f", "origin", "trunk", cwd=work)
    git("--git-dir", str(mirror), "fetch", "-q", "--prune", "origin")
    git("--git-dir", str(mirror), "reflog", "expire", "--expire=now", "--all")
    git("--git-dir", str(mirror), "gc", "-q", "--prune=now", "--aggressive")
    shutil.rmtree(mirror)
    git("-C", str(ws), "fsck", "--full", "--strict")
    (ws / "new").write_text("x\n")
    git("-C", str(ws), "add", "new")
    git("-C", str(ws), "commit", "-q", "-m", "agent's work")
    assert (head, "agent's work") == (git("-C", str(ws), "rev-parse", "HEAD~1"),
                                      git("-C", str(ws), "log", "-1", "--format=%s"))


def test_no_branch_follows_the_mirror_head(tmp_path: Path) -> None:
    """branch None: the mirror's HEAD (trunk here) is checked out and tracked."""
    _, _, mirror = _mirror(tmp_path)
    made = _clone(mirror, tmp_path / "ws", "/x", None)
    assert (git("--git-dir", str(mirror), "rev-parse", "trunk"), "refs/heads/trunk",
            "refs/heads/trunk") == (
        made, git("-C", str(tmp_path / "ws"), "symbolic-ref", "HEAD"),
        git("-C", str(tmp_path / "ws"), "config", "--get", "branch.trunk.merge"))


def test_a_url_git_must_quote_reads_back_exactly(tmp_path: Path) -> None:
    """A URL with a space, a `;`, a `#` and a quote is written so that git reads it back."""
    _, _, mirror = _mirror(tmp_path)
    url = '/srv/my repos;#1/"app".git'
    _clone(mirror, tmp_path / "ws", url)
    assert url == git("-C", str(tmp_path / "ws"), "config", "--get", "remote.origin.url")


def test_what_git_clone_must_do_makes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """A branch the mirror lacks, a mirror with alternates, a mirror of another object
    format, a hard link refused (another filesystem): None, the destination absent."""
    _, _, mirror = _mirror(tmp_path)
    got = [_clone(mirror, tmp_path / "a", "/x", "nope")]
    alternates = mirror / "objects" / "info" / "alternates"
    alternates.write_text("/elsewhere/objects\n")
    got.append(_clone(mirror, tmp_path / "b", "/x"))
    alternates.unlink()
    config = (mirror / "config").read_text()
    (mirror / "config").write_text(config + "[extensions]\n\tobjectformat = sha256\n")
    got.append(_clone(mirror, tmp_path / "c", "/x"))
    (mirror / "config").write_text(config)

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    got.append(_clone(mirror, tmp_path / "d", "/x"))
    assert ([None] * 4, []) == (got, sorted(p.name for p in tmp_path.iterdir()
                                            if p.name in "abcd"))


def test_a_read_tree_failure_leaves_nothing(tmp_path: Path) -> None:
    """A mirror whose objects the checkout needs are gone: GitError naming what was done,
    and the destination is removed."""
    _, _, mirror = _mirror(tmp_path)
    tree = git("--git-dir", str(mirror), "rev-parse", "main^{tree}")
    git("--git-dir", str(mirror), "repack", "-q", "-a", "-d")
    blob = git("--git-dir", str(mirror), "rev-parse", f"{tree}:which")
    for pack in (mirror / "objects" / "pack").iterdir():
        pack.unlink()                 # every object is gone: loose ones were packed first
    assert blob
    with pytest.raises(GitError, match="test clone failed"):
        _clone(mirror, tmp_path / "ws", "/x")
    assert not (tmp_path / "ws").exists()


def test_a_new_remote_commit_reaches_the_next_clone(tmp_path: Path) -> None:
    """After the mirror fetched a new commit, a new clone is at it (no stale state)."""
    bare, work, mirror = _mirror(tmp_path)
    first = _clone(mirror, tmp_path / "ws1", str(bare), "trunk")
    sha = push_commit(work, "two\n")
    git("--git-dir", str(mirror), "fetch", "-q", "--prune", "origin")
    assert (True, sha) == (first != sha, _clone(mirror, tmp_path / "ws2", str(bare), "trunk"))
