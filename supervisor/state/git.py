"""Running git: the one runner every part of batchd uses (dies with its caller, never prompts).

`run_git(args, timeout=, what=)` returns git's stdout or raises `GitError` whose text
is "<what> failed: <the tail of git's stderr>" (or timed out, or git missing), so the
message a job fails with names git's own words. `run_git_capped` keeps only the first
bytes of a long stdout (a patch) and counts the rest, never holding it all in memory.
`account` runs git as another user (an agent's `user`: what git runs in a workspace,
its filters and hooks, runs with the agent's rights, never batchd's). Every git batchd
starts runs under `setpriv --pdeathsig KILL` when util-linux has it: a worker (thread)
killed mid-clone leaves no git writing into a folder its successor is about to redo;
except where the caller says `pdeathsig=False` because git writes only into a folder no
successor reuses (the workspace's read-tree: one exec less on every job's launch).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "STDERR_TAIL",
    "Account",
    "GitError",
    "GitKilled",
    "branch_refusal",
    "git_command",
    "git_env",
    "run_git",
    "run_git_bytes",
    "run_git_capped",
]

#: How much of git's stderr a failure keeps (its last characters: the error is at the end).
STDERR_TAIL = 2000


class GitError(Exception):
    """git failed; str() says what was being done and what git said."""


class GitKilled(GitError):
    """git was killed by a signal it did not ask for (the OOM killer, an operator's kill):
    not git's verdict on the work, so a read-only or idempotent command may be run again."""


@dataclass(frozen=True)
class Account:
    """The account a git runs as when it is not ours: uid, gid, supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def popen_kw(self) -> dict[str, Any]:
        """subprocess's user/group/extra_groups for this account."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


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


def git_command(args: list[str], *, pdeathsig: bool = True) -> list[str]:
    """The argv that runs `git ARGS` so that it dies with the process (thread) that started
    it: util-linux's `setpriv --pdeathsig KILL` (preexec_fn is not safe beside threads).
    Without setpriv, or with pdeathsig False, plain git."""
    setpriv = _setpriv() if pdeathsig else None
    if setpriv is None:
        return ["git", *args]
    return [setpriv, "--pdeathsig", "KILL", "--", "git", *args]


def run_git(args: list[str], *, timeout: float, what: str, cwd: str | None = None,
            env: Mapping[str, str] | None = None, account: Account | None = None,
            pdeathsig: bool = True) -> str:
    """Run `git ARGS` (stdin closed); its stdout as text. GitError naming `what` if it fails.
    `pdeathsig` False: git may outlive us (see the module's docstring)."""
    return run_git_bytes(args, timeout=timeout, what=what, cwd=cwd, env=env,
                         account=account, pdeathsig=pdeathsig).decode(errors="replace")


def _failed(what: str, returncode: int, stderr: bytes) -> GitError:
    err = stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
    if returncode < 0:
        return GitKilled(f"{what} failed: killed by signal {-returncode}"
                         + (f" ({err})" if err else ""))
    return GitError(f"{what} failed: {err or f'exit status {returncode}'}")


def run_git_bytes(args: list[str], *, timeout: float, what: str, cwd: str | None = None,
                  env: Mapping[str, str] | None = None, account: Account | None = None,
                  stdin: bytes | None = None, pdeathsig: bool = True) -> bytes:
    """run_git, stdout as the bytes git wrote (patches are binary-safe only as bytes);
    `stdin`: what git reads (else its stdin is closed)."""
    kw: dict[str, Any] = account.popen_kw() if account is not None else {}
    if stdin is None:
        kw["stdin"] = subprocess.DEVNULL
    else:
        kw["input"] = stdin
    try:
        proc = subprocess.run(git_command(args, pdeathsig=pdeathsig), capture_output=True,
                              cwd=cwd, env=git_env(env), timeout=timeout, check=False, **kw)
    except FileNotFoundError:
        raise GitError(f"{what}: git is not installed (not found on PATH)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"{what} timed out after {timeout:g}s") from None
    except (PermissionError, subprocess.SubprocessError) as exc:
        raise GitError(f"{what}: cannot start git: {exc}") from None
    if proc.returncode != 0:
        raise _failed(what, proc.returncode, proc.stderr)
    out: bytes = proc.stdout
    return out


_CHUNK = 1 << 20


def run_git_capped(args: list[str], *, limit: int, timeout: float, what: str,
                   cwd: str | None = None, env: Mapping[str, str] | None = None,
                   account: Account | None = None,
                   head_until: bytes | None = None) -> tuple[bytes, bytes, int]:
    """run_git_bytes keeping at most `limit` bytes of stdout's body: (head, the body's first
    bytes, the body's whole size). With `head_until`, stdout up to and including its first
    occurrence is the head, kept whole (a diff's file list before its patch); without, the
    head is empty. What is past the limit is read and counted, never kept; stderr goes to
    an unnamed temp file (a pipe could fill and stall git). GitError as run_git."""
    kw = account.popen_kw() if account is not None else {}
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(git_command(args), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, cwd=cwd,
                                    env=git_env(env), **kw)
        except FileNotFoundError:
            raise GitError(f"{what}: git is not installed (not found on PATH)") from None
        except (PermissionError, subprocess.SubprocessError) as exc:
            raise GitError(f"{what}: cannot start git: {exc}") from None
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        head, kept = bytearray(), bytearray()
        total = 0
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while chunk := os.read(fd, _CHUNK):
                if head_until is not None:
                    start = max(0, len(head) - len(head_until) + 1)
                    head += chunk
                    at = head.find(head_until, start)
                    if at < 0:
                        continue
                    chunk = bytes(head[at + len(head_until):])
                    del head[at + len(head_until):]
                    head_until = None
                total += len(chunk)
                if len(kept) < limit:
                    kept += chunk[:limit - len(kept)]
            proc.stdout.close()
            returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if expired.is_set():
            raise GitError(f"{what} timed out after {timeout:g}s")
        if returncode != 0:
            size = err.seek(0, os.SEEK_END)
            err.seek(max(0, size - 4 * STDERR_TAIL))
            raise _failed(what, returncode, err.read())
        return bytes(head), bytes(kept), total


def branch_refusal(name: str, *, timeout: float = 30.0) -> str | None:
    """Why git refuses `name` as a branch (`git check-ref-format --branch`), None when it
    takes it or git cannot be run (the caller's own rules then stand alone)."""
    try:
        run_git(["check-ref-format", "--branch", name], timeout=timeout,
                what=f"git check-ref-format --branch {name!r}", cwd="/")
    except GitError as exc:
        text = str(exc)
        if "not installed" in text or "cannot start" in text or "timed out" in text:
            return None
        return f"not a valid git branch name: {name!r} (git check-ref-format refuses it)"
    return None
