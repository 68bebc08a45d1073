"""Results across crashes, with real SIGKILLs: the adaptor killed while it collects or
pushes, batchd killed while a job runs (CONTRACT.md "Results"; docs/STATE.md).

A `git` wrapper first on PATH stops the adaptor at the moment under test (it touches a
mark file and sleeps, once), so the kill lands exactly there.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import git, make_remote, until
from tests.proc.harness import DEAD_AFTER, DEADLINE, Env

REPOS = """\
repositories:
  app: {{url: {bare}, branch: trunk}}
"""

#: Stops at the first git whose arguments hold WORD: runs it first when AFTER is 1.
WRAPPER = """#!/bin/sh
case " $* " in
  *" {word} "*)
    if [ ! -e {mark} ]; then
      {run}
      touch {mark}
      exec sleep 60
    fi;;
esac
exec {git} "$@"
"""


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Env, Path, Path]]:
    """(a batchd env with repository `app`, its bare remote, the wrapper's bin folder)."""
    bare, _work = make_remote(tmp_path, "app")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    env = Env(tmp_path, REPOS.format(bare=bare))
    yield env, bare, bin_dir
    env.close()


def _stop_at(bin_dir: Path, word: str, mark: Path, *, after: bool) -> None:
    real = shutil.which("git", path=os.defpath + ":/usr/bin:/usr/local/bin")
    assert real is not None
    run = f'{real} "$@" || exit $?' if after else ":"
    path = bin_dir / "git"
    path.write_text(WRAPPER.format(word=word, mark=mark, run=run, git=real))
    path.chmod(0o755)


def _kill_adaptor_at(env: Env, job: str, mark: Path) -> None:
    until("the adaptor to reach the point under test", mark.exists, DEADLINE)
    pid = env.entry(job)["pid"]                 # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    env.wait_state(job, "lost", deadline=DEAD_AFTER + 30)


def test_adaptor_killed_while_collecting_is_lost_without_changes(
        rig: tuple[Env, Path, Path]) -> None:
    """SIGKILL while git examines the clone: the job ends `lost`, has no changes.json
    and no `changes`, `diff` prints nothing, and no process of it remains."""
    env, _bare, bin_dir = rig
    mark = env.state.parent / "collecting"
    _stop_at(bin_dir, "--binary", mark, after=False)
    env.start()
    env.submit("c1", "echo edited >> which", "--repo", "app")
    _kill_adaptor_at(env, "c1", mark)
    files = env.layout.job("c1")
    assert not files.changes.exists()
    assert not files.result.exists()
    assert None is env.record("c1")["changes"]
    assert "" == env.ctl("diff", "c1").stdout
    until("no process of the job", lambda: not env.job_pids("c1"))


def test_adaptor_killed_after_its_push_then_retried_pushes_again_cleanly(
        rig: tuple[Env, Path, Path]) -> None:
    """SIGKILL right after git pushed: the job is `lost`, yet the branch has its commit.
    `retry` runs the same work as a new job, whose push replaces that commit (same tree,
    one commit over the base, no error): the retried push is idempotent."""
    env, bare, bin_dir = rig
    mark = env.state.parent / "pushed"
    _stop_at(bin_dir, "push", mark, after=True)
    env.start()
    base = git("--git-dir", str(bare), "rev-parse", "trunk")
    env.submit("p1", "echo edited >> which", "--repo", "app", "--push", "feature/x")
    _kill_adaptor_at(env, "p1", mark)
    first = git("--git-dir", str(bare), "rev-parse", "feature/x")
    assert "Batchd-Job: p1" in git("--git-dir", str(bare), "log", "-1", "--format=%B", first)
    retry = env.ctl("retry", "p1").stdout.strip()
    env.wait_state(retry, "completed", "failed", "lost")
    rec = env.record(retry)
    assert ("completed", "feature/x") == (rec["state"], rec["changes"]["app"]["branch"]), rec
    tip = git("--git-dir", str(bare), "rev-parse", "feature/x")
    assert (rec["changes"]["app"]["head"], base) == (tip, git("--git-dir", str(bare),
                                                              "rev-parse", f"{tip}^"))
    assert git("--git-dir", str(bare), "rev-parse", f"{first}^{{tree}}") == git(
        "--git-dir", str(bare), "rev-parse", f"{tip}^{{tree}}")


def test_batchd_killed_while_a_job_runs_the_job_collects_its_own_changes(
        rig: tuple[Env, Path, Path]) -> None:
    """SIGKILL of batchd while the agent works: the adaptor still collects (changes.json
    and the patch are there before batchd is back), and the restarted batchd records
    them."""
    env, _bare, _bin = rig
    go = env.state.parent / "go"
    env.start()
    env.submit("k1", f"while [ ! -e {go} ]; do sleep 0.05; done; echo edited >> which; "
               "echo new > new.txt", "--repo", "app")
    env.wait_state("k1", "running")
    env.kill9()
    go.touch()
    files = env.layout.job("k1")
    until("the job's result, written with batchd down", files.result.exists, DEADLINE)
    assert files.changes.exists() and b"+new" in files.patch.read_bytes()
    env.start()
    env.wait_state("k1", "completed")
    rec = env.record("k1")
    assert (2, 0) == (rec["changes"]["app"]["files"], rec["changes"]["app"]["commits"])
    assert "+edited" in env.ctl("diff", "k1").stdout
