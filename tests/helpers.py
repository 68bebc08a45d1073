"""Helpers the tests share: polling until a condition holds, and real git repositories."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["DEADLINE", "git", "make_remote", "push_commit", "until"]

T = TypeVar("T")

#: How long a test waits for a real process to do something before it fails.
DEADLINE = 30.0


def until(what: str, check: Callable[[], T], deadline: float = DEADLINE,
          interval: float = 0.01) -> T:
    """Poll `check()` until it returns something truthy and return that; fail naming
    `what` when `deadline` seconds pass first."""
    end = time.monotonic() + deadline
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}")
        time.sleep(interval)


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git with a test identity; its stdout, stripped (fails the test on an error)."""
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                          "-c", "init.defaultBranch=main", *args],
                         cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_remote(root: Path, name: str) -> tuple[Path, Path]:
    """(bare remote, its work tree): HEAD of the remote is `trunk`; `main` also exists."""
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    (work / "which").write_text(f"{name} main\n")
    git("add", "which", cwd=work)
    git("commit", "-q", "-m", "on main", cwd=work)
    git("checkout", "-q", "-b", "trunk", cwd=work)
    (work / "which").write_text(f"{name} trunk\n")
    git("commit", "-q", "-am", "on trunk", cwd=work)
    bare = root / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("remote", "add", "origin", str(bare), cwd=work)
    return bare, work


def push_commit(work: Path, text: str, branch: str = "trunk") -> str:
    """Commit `text` into `which` on `branch` and push it; the new commit's sha."""
    git("checkout", "-q", branch, cwd=work)
    (work / "which").write_text(text)
    git("commit", "-q", "-am", text.strip(), cwd=work)
    git("push", "-q", "origin", branch, cwd=work)
    return git("rev-parse", "HEAD", cwd=work)
