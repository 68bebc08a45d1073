"""Process-level proof: a launched job outlives its launcher and ends cleanly in every way.

Each job runs through the real supervisor.scheduler.launch (direct mode) and the real adaptor; the
launcher is a separate Python process that is SIGKILLed right after the launch, the way a
crashing scheduler would die.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit

LAUNCHER = """
import json, sys, time
from pathlib import Path
from supervisor.scheduler.launch import launch
launched = launch(Path(sys.argv[1]), mode="direct")
print(json.dumps({"pid": launched.pid, "start": launched.start}), flush=True)
time.sleep(300)
"""

_LAUNCHED: list[int] = []


@pytest.fixture(autouse=True)
def _no_job_left_behind() -> Iterator[None]:
    """Whatever a failing test leaves of a launched job's group is killed afterwards."""
    yield
    while _LAUNCHED:
        fakekit.kill_group(_LAUNCHED.pop())


COUNT_LOOP = "i=0; while [ $i -lt 40 ]; do echo line $i; i=$((i+1)); sleep 0.05; done"


def _launch_then_kill_launcher(job: Path) -> tuple[dict[str, Any], int]:
    """Launch `job` from a throwaway process, SIGKILL that process, return (launch, its pid)."""
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(job)],
                                stdout=subprocess.PIPE, cwd=fakekit.REPO)
    assert launcher.stdout is not None
    launched = json.loads(launcher.stdout.readline())
    _LAUNCHED.append(launched["pid"])
    launcher.kill()
    launcher.wait()
    return launched, launcher.pid


def _stat(pid: int) -> list[bytes]:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rfind(b")") + 2:].split()


def _agent_pid(job: Path) -> int:
    sentinel = fakekit.wait_for(lambda: (s := fakekit.sentinel(job)) and s["agent_pid"] and s,
                                what="the agent's pid in the sentinel")
    return int(sentinel["agent_pid"])


def test_job_survives_its_launcher_being_killed(tmp_path: Path) -> None:
    """Launcher SIGKILLed: the job runs on in its own session, all 40 lines once, exit 0."""
    job = fakekit.make_job(tmp_path / "state", "survive", adaptor="command", prompt=COUNT_LOOP)
    launched, launcher_pid = _launch_then_kill_launcher(job)
    pid = launched["pid"]
    assert fakekit.pid_alive(pid)
    fields = _stat(pid)
    assert launcher_pid != int(fields[1])                       # ppid: not the dead launcher
    assert (pid, pid) == (int(fields[2]), int(fields[3]))       # pgid == sid == pid
    assert launched["start"] == int(fields[19])
    result = fakekit.wait_result(job, timeout=60)
    assert (0, None, None) == (result["exit_code"], result["signal"], result["reason"])
    assert [f"line {i}" for i in range(40)] == fakekit.output(job).decode().splitlines()
    fakekit.wait_for(lambda: not fakekit.pid_alive(pid), what="the adaptor to exit")
    assert [] == fakekit.process_group(pid)


def test_agent_killed_by_sigkill_is_reported_as_signal_9(tmp_path: Path) -> None:
    """SIGKILL of the agent child: result signal 9, exit_code null, no reason."""
    job = fakekit.make_job(tmp_path / "state", "agentkill", adaptor="command",
                           prompt=COUNT_LOOP)
    launched, _ = _launch_then_kill_launcher(job)
    os.kill(_agent_pid(job), signal.SIGKILL)
    result = fakekit.wait_result(job, timeout=60)
    assert (None, 9, None) == (result["exit_code"], result["signal"], result["reason"])
    fakekit.wait_for(lambda: not fakekit.pid_alive(launched["pid"]), what="the adaptor to exit")
    assert [] == fakekit.process_group(launched["pid"])


def test_sigterm_to_the_process_group_is_a_clean_cancel(tmp_path: Path) -> None:
    """SIGTERM to the job's process group (cancel): reason terminated, nothing left."""
    job = fakekit.make_job(tmp_path / "state", "cancel", adaptor="command", prompt=COUNT_LOOP,
                           kill_grace=2)
    launched, _ = _launch_then_kill_launcher(job)
    _agent_pid(job)
    os.killpg(launched["pid"], signal.SIGTERM)
    result = fakekit.wait_result(job, timeout=60)
    assert ("terminated", False) == (result["reason"], result["timed_out"])
    assert None is result["exit_code"]
    fakekit.wait_for(lambda: not fakekit.pid_alive(launched["pid"]), what="the adaptor to exit")
    assert [] == fakekit.process_group(launched["pid"])


def test_timeout_is_enforced_by_the_adaptor(tmp_path: Path) -> None:
    """timeout 0.5s on a 2s loop: reason timed_out, timed_out true, nothing left."""
    job = fakekit.make_job(tmp_path / "state", "late", adaptor="command", prompt=COUNT_LOOP,
                           timeout=0.5, kill_grace=1)
    launched, _ = _launch_then_kill_launcher(job)
    result = fakekit.wait_result(job, timeout=60)
    assert ("timed_out", True, signal.SIGTERM) \
        == (result["reason"], result["timed_out"], result["signal"])
    lines = fakekit.output(job).decode().splitlines()
    assert 0 < len(lines) < 40 and [f"line {i}" for i in range(len(lines))] == lines
    fakekit.wait_for(lambda: not fakekit.pid_alive(launched["pid"]), what="the adaptor to exit")
    assert [] == fakekit.process_group(launched["pid"])


def test_missing_binary_is_agent_not_found(tmp_path: Path) -> None:
    """A launched job whose binary is missing ends at once with agent_not_found."""
    job = fakekit.make_job(tmp_path / "state", "nobin", adaptor="codex", prompt="x",
                           command=str(tmp_path / "no-codex"))
    _launch_then_kill_launcher(job)
    result = fakekit.wait_result(job, timeout=60)
    assert (f"agent_not_found: {tmp_path / 'no-codex'}", 127) \
        == (result["reason"], result["exit_code"])
