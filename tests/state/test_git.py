"""The one git runner (state.git): never prompts, gives up on stalls, dies with its starter."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.state.git import (
    GitError,
    GitKilled,
    branch_refusal,
    git_command,
    git_env,
    run_git,
    run_git_bytes,
    run_git_capped,
)
from supervisor.state.proc import alive


def test_git_gives_up_on_a_stalled_remote_rather_than_waiting_for_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every git batchd runs never prompts, and aborts a transfer that stalls (http, ssh);
    an operator's own settings of those variables are kept."""
    for var in ("GIT_SSH_COMMAND", "GIT_HTTP_LOW_SPEED_LIMIT", "GIT_HTTP_LOW_SPEED_TIME"):
        monkeypatch.delenv(var, raising=False)
    env = git_env()
    assert ("0", "1024", "60") == (env["GIT_TERMINAL_PROMPT"], env["GIT_HTTP_LOW_SPEED_LIMIT"],
                                   env["GIT_HTTP_LOW_SPEED_TIME"])
    assert "ServerAliveInterval=15" in env["GIT_SSH_COMMAND"]
    monkeypatch.setenv("GIT_HTTP_LOW_SPEED_TIME", "600")
    assert "600" == git_env()["GIT_HTTP_LOW_SPEED_TIME"]


def test_git_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A git started through git_command is SIGKILLed when its starter dies (a scheduler
    killed mid-clone leaves no git writing into the mirror its successor redoes)."""
    pid_file = tmp_path / "git.pid"
    starter = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from supervisor.state.git import git_command\n"
        "p = subprocess.Popen(git_command(['-c', 'alias.wait=!sleep 30', 'wait']))\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n")])
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the starter never started git"
            time.sleep(0.01)
        git_pid = int(pid_file.read_text())
        comm = Path(f"/proc/{git_pid}/comm")
        while comm.read_text().strip() != "git":    # past setpriv's prctl and exec
            assert time.monotonic() < deadline, "git never started"
            time.sleep(0.01)
    finally:
        starter.kill()
        starter.wait()
    deadline = time.monotonic() + 10
    while alive(git_pid, None):
        assert time.monotonic() < deadline, "git outlived the process that started it"
        time.sleep(0.01)


def test_git_command_without_pdeathsig_is_plain_git() -> None:
    """pdeathsig=False (a git that writes only into a folder nobody reuses): no setpriv,
    one exec less; by default setpriv leads when util-linux has it."""
    assert ["git", "status"] == git_command(["status"], pdeathsig=False)
    assert ["git", "status"] == git_command(["status"])[-2:]


def test_run_git_names_what_failed_with_gits_own_words(tmp_path: Path) -> None:
    """A failing git: GitError "<what> failed: <git's stderr>"; success: its stdout."""
    with pytest.raises(GitError) as info:
        run_git(["-C", str(tmp_path), "rev-parse", "HEAD"], timeout=30, what="reading HEAD")
    assert str(info.value).startswith("reading HEAD failed: fatal: not a git repository")
    assert run_git(["--version"], timeout=30, what="version").startswith("git version")


def test_a_git_killed_by_a_signal_is_told_from_a_git_that_failed(tmp_path: Path) -> None:
    """A git that a signal kills raises GitKilled naming the signal (its caller may run it
    again); a git that fails on its own raises a plain GitError; both runners agree."""
    kill = ["-c", "alias.die=!exec >/dev/null 2>&1; kill -KILL $PPID", "die"]
    with pytest.raises(GitKilled) as info:
        run_git(kill, timeout=30, what="dying", cwd=str(tmp_path))
    assert "dying failed: killed by signal 9" == str(info.value)
    with pytest.raises(GitKilled):
        run_git_capped(kill, limit=10, timeout=30, what="dying", cwd=str(tmp_path))
    with pytest.raises(GitError) as failed:
        run_git(["-C", str(tmp_path), "rev-parse", "HEAD"], timeout=30, what="reading HEAD")
    assert not isinstance(failed.value, GitKilled)


def test_capped_keeps_the_head_whole_and_counts_the_body(tmp_path: Path) -> None:
    """run_git_capped: the head (up to the separator) whole, at most `limit` bytes of the
    body, and the body's whole size; a separator split across reads is found."""
    repo = tmp_path / "r"
    repo.mkdir()
    run_git(["init", "-q"], timeout=30, what="init", cwd=str(repo))
    (repo / "f").write_text("x" * 300_000)      # the output spans several reads
    out = run_git_bytes(["hash-object", "-w", "f"], timeout=30, what="hash", cwd=str(repo))
    sha = out.decode().strip()
    head, kept, total = run_git_capped(["cat-file", "-p", sha], limit=10, timeout=30,
                                       what="cat", cwd=str(repo), head_until=b"x" * 5)
    assert (b"xxxxx", b"x" * 10, 300_000 - 5) == (head, kept, total)
    head, kept, total = run_git_capped(["cat-file", "-p", sha], limit=10**6, timeout=30,
                                       what="cat", cwd=str(repo))
    assert (b"", 300_000, 300_000) == (head, len(kept), total)


def test_capped_names_the_failure(tmp_path: Path) -> None:
    """A failing git under run_git_capped raises GitError with `what` and git's words."""
    with pytest.raises(GitError) as info:
        run_git_capped(["cat-file", "-p", "nope"], limit=10, timeout=30, what="reading",
                       cwd=str(tmp_path))
    assert str(info.value).startswith("reading failed: ")


def test_stdin_is_given_to_git(tmp_path: Path) -> None:
    """run_git_bytes(stdin=) feeds git; the blob's id is the one git computes."""
    got = run_git_bytes(["hash-object", "--stdin"], timeout=30, what="hash",
                        cwd=str(tmp_path), stdin=b"hello\n")
    assert b"ce013625030ba8dba906f756967f9e9ca394464a\n" == got


@pytest.mark.parametrize(("name", "refused"), [
    ("feature/x", False), ("batchd/j-1", False), ("a..b", True), ("-x", True),
    ("x.lock", True), ("a b", True), ("HEAD", True)])
def test_branch_refusal_is_gits_check_ref_format(name: str, refused: bool) -> None:
    """branch_refusal says why exactly when `git check-ref-format --branch` refuses."""
    why = branch_refusal(name)
    assert refused == (why is not None)
    if why is not None:
        assert "check-ref-format" in why
