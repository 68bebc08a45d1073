"""Tests of supervisor/_proc.py against real processes: pid + start time names one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.state.proc import (
    alive,
    group_members,
    has_env,
    job_processes,
    kill_job,
    start_time,
)
from tests.helpers import until


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return raw[raw.rfind(b")") + 2:].split()[0].decode()


def _as_seconds_since_epoch(ticks: int) -> float:
    return psutil.boot_time() + ticks / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def test_own_start_time_is_stable_and_matches_the_kernel() -> None:
    """start_time(own pid) is the kernel's start time (psutil agrees), the same each call."""
    me = start_time(os.getpid())
    assert me is not None
    assert me == start_time(os.getpid())
    assert abs(_as_seconds_since_epoch(me) - psutil.Process().create_time()) < 0.05


def test_own_process_is_alive() -> None:
    """alive(pid, its start time) is True; with no start time recorded, True as well."""
    assert alive(os.getpid(), start_time(os.getpid())) is True
    assert alive(os.getpid(), None) is True


def test_a_different_start_time_means_a_different_process() -> None:
    """The same pid with another start time (pid reuse) is not the recorded process."""
    me = start_time(os.getpid())
    assert me is not None
    assert alive(os.getpid(), me + 1) is False
    assert alive(os.getpid(), me - 1) is False


@pytest.mark.parametrize("pid", [None, 0, -1])
def test_no_pid_is_never_alive(pid: int | None) -> None:
    """A missing, zero or negative pid is not a process (kill(0)/kill(-1) would be wrong)."""
    assert alive(pid, None) is False


def test_child_start_time_is_later_than_ours(sleeper: subprocess.Popen[bytes]) -> None:
    """A child started after us has a start time >= ours, and matches psutil's."""
    child = start_time(sleeper.pid)
    me = start_time(os.getpid())
    assert child is not None
    assert me is not None
    assert child >= me
    assert alive(sleeper.pid, child) is True
    created = psutil.Process(sleeper.pid).create_time()
    assert abs(_as_seconds_since_epoch(child) - created) < 0.05


def test_exited_child_is_a_zombie_and_not_alive() -> None:
    """A child that exited but was not reaped is a zombie: not alive, start time still known."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = start_time(p.pid)
    assert start is not None
    try:
        until("the child to become a zombie", lambda: _state(p.pid) == "Z")
        assert alive(p.pid, start) is False
        assert alive(p.pid, None) is False
        assert start_time(p.pid) == start
    finally:
        p.wait()


def test_reaped_child_has_no_start_time_and_is_not_alive() -> None:
    """Once reaped, the pid is gone: no start time, not alive."""
    p = subprocess.Popen(["true"])
    start = start_time(p.pid)
    p.wait()
    assert start_time(p.pid) is None
    assert alive(p.pid, start) is False


def test_command_names_with_parentheses_and_spaces_parse(tmp_path: Path) -> None:
    """A command named 'a) b (c' (the comm field may hold ')' and spaces) parses right."""
    odd = tmp_path / "a) b (c"
    odd.symlink_to("/bin/sleep")
    p = subprocess.Popen([str(odd), "60"])
    try:
        until("the exec", lambda: psutil.Process(p.pid).name() == "a) b (c")
        got = start_time(p.pid)
        assert got is not None
        assert abs(_as_seconds_since_epoch(got) - psutil.Process(p.pid).create_time()) < 0.05
        assert alive(p.pid, got) is True
    finally:
        p.kill()
        p.wait()


def test_a_process_of_another_user_is_seen() -> None:
    """pid 1 (usually another user's) is readable in /proc: alive with its start time."""
    assert alive(1, start_time(1)) is True


def _until_execed(pid: int, comm: str) -> None:
    """Wait until `pid` runs `comm`: before its exec, /proc shows the parent's environment."""
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/comm").read_text().strip() != comm:
        assert time.monotonic() < deadline, f"{pid} never became {comm}"
        time.sleep(0.005)


def test_job_processes_finds_a_job_by_its_folder_even_outside_its_group(tmp_path: Path) -> None:
    """A process carrying BATCHD_JOB_DIR=<dir> is found whatever its session; a job of
    another state dir (same id, another folder) is not."""
    mine, theirs = str(tmp_path / "a" / "jobs" / "j1"), str(tmp_path / "b" / "jobs" / "j1")
    tied = subprocess.Popen(["sleep", "30"], env={**os.environ, "BATCHD_JOB_DIR": mine},
                            start_new_session=True)
    other = subprocess.Popen(["sleep", "30"], env={**os.environ, "BATCHD_JOB_DIR": theirs})
    try:
        _until_execed(tied.pid, "sleep")
        _until_execed(other.pid, "sleep")
        assert [tied.pid] == job_processes(mine)
        assert [] == job_processes(mine, exclude=frozenset({tied.pid}))
    finally:
        for p in (tied, other):
            p.kill()
            p.wait()
    assert [] == job_processes(mine)


def test_group_members_lists_a_whole_process_group() -> None:
    """A shell in a new session and its child are both found under the shell's pgid."""
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(members := group_members(proc.pid)) != 2:
            assert time.monotonic() < deadline, f"group of {proc.pid}: {members}"
            time.sleep(0.01)
        assert proc.pid in members
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_has_env_reads_the_environment_a_process_started_with() -> None:
    """NAME=value is matched whole; a process that is gone reads as False."""
    proc = subprocess.Popen(["sleep", "30"], env={**os.environ, "BATCHD_PROBE": "x1"})
    try:
        _until_execed(proc.pid, "sleep")
        assert (True, False) == (has_env(proc.pid, b"BATCHD_PROBE=x1"),
                                 has_env(proc.pid, b"BATCHD_PROBE=x"))
    finally:
        proc.kill()
        proc.wait()
    assert False is has_env(proc.pid, b"BATCHD_PROBE=x1")



def _group(tmp_path: Path, tags: list[str | None]) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A shell leading its own group with one `sleep` per tag (BATCHD_JOB_ID=<tag>, or
    none); (the leader, the sleepers' pids once they run sleep)."""
    script = []
    for i, tag in enumerate(tags):
        env = "env -u BATCHD_JOB_ID" if tag is None else f"env BATCHD_JOB_ID={tag}"
        script.append(f"{env} sleep 60 & echo $! > {tmp_path}/m{i}")
    leader = subprocess.Popen(["sh", "-c", "; ".join(script) + "; wait"],
                              start_new_session=True)
    pids = []
    for i in range(len(tags)):
        path = tmp_path / f"m{i}"
        deadline = time.monotonic() + 30
        while not (path.exists() and path.read_text().endswith("\n")):
            assert time.monotonic() < deadline, "group member never started"
            time.sleep(0.01)
        pids.append(int(path.read_text()))
        _until_execed(pids[-1], "sleep")
    return leader, pids


def test_kill_job_by_a_stranger_needs_the_job_tag_on_group_members(tmp_path: Path) -> None:
    """Not the group's leader (the scheduler): only members carrying BATCHD_JOB_ID=<job>
    are the job's, since a pgid may be reused; a process of another job is left alone."""
    leader, (other_job, mine) = _group(tmp_path, ["y", "x"])
    try:
        killed, left = kill_job(leader.pid, str(tmp_path / "jobs" / "x"), job_id="x")
        assert ([mine], []) == (killed, left)
        assert (True, True) == (alive(other_job, None), alive(leader.pid, None))
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_kill_job_by_its_leader_takes_the_whole_group_and_the_escaped(tmp_path: Path) -> None:
    """The group's own leader (the adaptor) kills every member, tagged or not, and a
    process that left the group but carries the job's folder; never itself."""
    job_dir = str(tmp_path / "jobs" / "x")
    leader, members = _group(tmp_path, [None, "x"])
    escaped = subprocess.Popen(["sleep", "60"], env={**os.environ, "BATCHD_JOB_DIR": job_dir},
                               start_new_session=True)
    try:
        _until_execed(escaped.pid, "sleep")
        killed, left = kill_job(leader.pid, job_dir, exclude=frozenset({leader.pid}),
                                between=lambda: None)
        assert (sorted([*members, escaped.pid]), []) == (sorted(killed), left)
        assert 0 == leader.wait(timeout=30)     # its children gone, the shell exits by itself
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)
            leader.wait()
        escaped.kill()
        escaped.wait()
