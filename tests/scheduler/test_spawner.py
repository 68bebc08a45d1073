"""scheduler.spawner, the fork server, and its crash cases: real processes, real SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.scheduler import launch as _launch
from supervisor.scheduler import spawner
from supervisor.scheduler.launch import launch, spawner_pid, start_spawner, stop_spawner
from supervisor.state.proc import alive

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _stat(pid: int) -> list[bytes]:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rfind(b")") + 2:].split()


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid, None):
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def server() -> Iterator[int]:
    """A fork server of this process; stopped afterwards."""
    stop_spawner()
    pid = start_spawner("direct")
    assert pid is not None
    yield pid
    stop_spawner()


@pytest.fixture
def raw_server() -> Iterator[tuple[socket.socket, subprocess.Popen[bytes]]]:
    """A fork server on a socket of the test's own (the protocol as scheduler.launch
    speaks it)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([sys.executable, "-I", "-S", spawner.__file__,
                             str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    ours.settimeout(30)
    yield ours, proc
    ours.close()
    proc.wait(30)


def _request(sock: socket.socket, body: bytes, fd: int) -> bytes:
    socket.send_fds(sock, [body], [fd])
    return sock.recv(4096)


def test_a_bad_request_is_answered_and_the_server_goes_on(
        tmp_path: Path, raw_server: tuple[socket.socket, subprocess.Popen[bytes]]) -> None:
    """Not JSON, then a program that does not exist: each answer is "RERR <why>"; then a
    good request starts its program, reported as "R<pid> <start>"; closing our end (the
    scheduler gone) ends the server with status 0."""
    sock, proc = raw_server
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        bad = _request(sock, b"{not json", log)
        missing = _request(sock, json.dumps({"argv": [str(tmp_path / "nope")],
                                             "env": {}}).encode(), log)
        good = _request(sock, json.dumps({"argv": ["/bin/sh", "-c", "echo started"],
                                          "env": {}}).encode(), log)
    finally:
        os.close(log)
    pid, start = (int(x) for x in good[1:].split())
    assert (b"RERR JSONDecodeError", b"RERR FileNotFoundError") == (bad[:20], missing[:22])
    assert _gone(pid)
    assert b"started\n" == (tmp_path / "log").read_bytes()
    assert start > 0
    sock.close()
    assert 0 == proc.wait(10)


def test_a_server_killed_while_idle_is_replaced_and_meanwhile_launches_fork_here(
        tmp_path: Path, server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL of an idle fork server: the next launch forks in the launcher (the job
    runs, pid reported, not our child) and starts a new server, which the launch after
    it goes through."""
    monkeypatch.setattr(_launch, "SPAWNER_RESTART_EVERY", 0.0)
    os.kill(server, signal.SIGKILL)
    assert _gone(server)
    jobs = [fakekit.make_job(tmp_path / "state", f"k{i}", adaptor="command",
                             prompt=f"echo {i}") for i in range(2)]
    first = launch(jobs[0], mode="direct")
    replacement = spawner_pid()
    second = launch(jobs[1], mode="direct")
    assert None not in (first.pid, second.pid, replacement)
    assert replacement != server
    assert [0, 0] == [fakekit.wait_result(job)["exit_code"] for job in jobs]
    assert [b"0\n", b"1\n"] == [fakekit.output(job) for job in jobs]


def test_a_server_killed_with_the_request_leaves_the_launch_to_the_sentinel(
        tmp_path: Path, server: int) -> None:
    """The server stopped, a launch sent to it, then the server SIGKILLed: the launch
    cannot know whether the adaptor started, so it reports no pid (the job's sentinel, or
    the launch grace, decides: scheduler.lifecycle); here the request was never read, so
    no adaptor runs."""
    job = fakekit.make_job(tmp_path / "state", "lost", adaptor="command", prompt="echo x")
    os.kill(server, signal.SIGSTOP)
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(launch(job, mode="direct")))
    thread.start()
    time.sleep(0.3)
    os.kill(server, signal.SIGKILL)
    thread.join(30)
    launched = got[0]
    assert isinstance(launched, _launch.Launched)
    time.sleep(0.5)
    assert (None, None, None, False) == (launched.pid, launched.unit, spawner_pid(),
                                         (job / "result.json").exists())
    assert None is fakekit.sentinel(job)


def test_a_server_that_does_not_answer_is_killed_and_the_launch_left_to_the_sentinel(
        tmp_path: Path, server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled server (SIGSTOP): after SPAWNER_TIMEOUT the launch reports no pid and the
    server is SIGKILLed, so it cannot start the adaptor later."""
    monkeypatch.setattr(_launch, "SPAWNER_TIMEOUT", 0.3)
    job = fakekit.make_job(tmp_path / "state", "stall", adaptor="command", prompt="echo x")
    os.kill(server, signal.SIGSTOP)
    launched = launch(job, mode="direct")
    assert (None, None) == (launched.pid, spawner_pid())
    assert _gone(server)
    assert None is fakekit.sentinel(job)


_SCHEDULER = """
import sys
from pathlib import Path
from supervisor.scheduler.launch import launch, start_spawner
print(start_spawner("direct"), flush=True)
sys.stdin.readline()
print("launching", flush=True)
launch(Path(sys.argv[1]), mode="direct")
print("launched", flush=True)
sys.stdin.readline()
"""


def _scheduler(job: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", _SCHEDULER, str(job)], cwd=fakekit.REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_the_server_ends_with_its_scheduler(tmp_path: Path) -> None:
    """A scheduler SIGKILLed while idle: its fork server sees its socket close and exits
    (no server outlives its scheduler, whatever the signal)."""
    job = fakekit.make_job(tmp_path / "state", "idle", adaptor="command", prompt="true")
    proc, server = _scheduler(job)
    assert alive(server, None)
    proc.kill()
    proc.wait()
    assert _gone(server)


def test_a_scheduler_killed_mid_launch_leaves_one_adaptor_running(tmp_path: Path) -> None:
    """A scheduler SIGKILLed after sending a launch its (stopped) server has not read yet:
    the server, let go on, still starts that one adaptor, which runs the job to its
    result, then finds its scheduler gone and exits. (The restarted scheduler re-attaches
    the job by its sentinel; a second launch would lose the adaptor.lock race.)"""
    job = fakekit.make_job(tmp_path / "state", "mid", adaptor="command", prompt="echo once")
    proc, server = _scheduler(job)
    assert proc.stdin is not None and proc.stdout is not None
    os.kill(server, signal.SIGSTOP)
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert "launching\n" == proc.stdout.readline()
    time.sleep(0.3)                          # the request is in the server's socket
    proc.kill()
    proc.wait()
    os.kill(server, signal.SIGCONT)
    result = fakekit.wait_result(job)
    assert (0, b"once\n") == (result["exit_code"], fakekit.output(job))
    assert _gone(server)


def test_the_adaptor_is_parented_by_no_worker(tmp_path: Path, server: int) -> None:
    """Through the server the adaptor leads its own session and is the child of neither
    the launcher nor the server; the server's short-lived child is reaped (just after
    the answer: its exit is not on the launch's path)."""
    job = fakekit.make_job(tmp_path / "state", "p", adaptor="command", prompt="sleep 30")
    launched = launch(job, mode="direct")
    assert launched.pid is not None
    try:
        fields = _stat(launched.pid)
        assert int(fields[1]) not in (os.getpid(), server)
        assert (launched.pid, launched.pid, launched.start) == (
            int(fields[2]), int(fields[3]), int(fields[19]))
        children = Path(f"/proc/{server}/task/{server}/children")
        assert fakekit.wait_for(lambda: children.read_text().split() == [] or None,
                                what="the server's child reaped (just after its answer)")
    finally:
        os.killpg(launched.pid, signal.SIGKILL)
