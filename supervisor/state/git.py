"""Running git: the one runner every part of batchd uses (dies with its caller, never prompts).

`run_git(args, timeout=, what=)` returns git's stdout or raises `GitError` whose text
is "<what> failed: <the tail of git's stderr>" (or timed out, or git missing), so the
message a job fails with names git's own words. Every git batchd starts runs under
`setpriv --pdeathsig KILL` when util-linux has it: a worker (thread) killed mid-clone
leaves no git writing into a folder its successor is about to redo.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping

__all__ = ["STDERR_TAIL", "GitError", "git_command", "git_env", "run_git", "run_git_bytes"]

#: How much of git's stderr a failure keeps (its last characters: the error is at the end).
STDERR_TAIL = 2000


class GitError(Exception):
    """git failed; str() says what was being done and what git said."""


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git batchd runs: never prompt for a password, and give up
    on a remote that stalls (under 1 KiB/s for 60 s over http(s); no answer to 4 keepalives
    15 s apart over ssh) instead of holding the caller until the command's timeout."""
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"           # never wait for a password on a tty
    env.setdefault("GIT_SSH_COMMAND",
                   "ssh -o BatchMode=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=4")
    env.setdefault("GIT_HTTP_LOW_SPEED_LIMIT", "1024")
    env.setdefault("GIT_HTTP_LOW_SPEED_TIME", "60")
    env.update(extra or {})
    return env


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def git_command(args: list[str]) -> list[str]:
    """The argv that runs `git ARGS` so that it dies with the process (thread) that started
    it: util-linux's `setpriv --pdeathsig KILL` (preexec_fn is not safe beside threads).
    Without setpriv, plain git."""
    setpriv = _setpriv()
    if setpriv is None:
        return ["git", *args]
    return [setpriv, "--pdeathsig", "KILL", "--", "git", *args]


def run_git(args: list[str], *, timeout: float, what: str, cwd: str | None = None,
            env: Mapping[str, str] | None = None) -> str:
    """Run `git ARGS` (stdin closed); its stdout as text. GitError naming `what` if it fails."""
    return run_git_bytes(args, timeout=timeout, what=what, cwd=cwd, env=env).decode(
        errors="replace")


def run_git_bytes(args: list[str], *, timeout: float, what: str, cwd: str | None = None,
                  env: Mapping[str, str] | None = None) -> bytes:
    """run_git, stdout as the bytes git wrote (patches are binary-safe only as bytes)."""
    try:
        proc = subprocess.run(git_command(args), stdin=subprocess.DEVNULL, capture_output=True,
                              cwd=cwd, env=git_env(env), timeout=timeout, check=False)
    except FileNotFoundError:
        raise GitError(f"{what}: git is not installed (not found on PATH)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"{what} timed out after {timeout:g}s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
        raise GitError(f"{what} failed: {err or f'exit status {proc.returncode}'}")
    return proc.stdout
