"""scheduler.launch: a detached adaptor (fork + posix_spawn, setsid) or a systemd unit.

Every direct launch is tried both ways: through the fork server (scheduler.spawner) and,
with none running, by a fork of the launcher itself (the fallback)."""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.scheduler.launch import (
    LaunchError,
    job_environ,
    launch,
    spawner_pid,
    start_spawner,
    stop_spawner,
    systemd_run_argv,
    unit_name,
    use_systemd,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit


def _stat(pid: int) -> list[bytes]:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rfind(b")") + 2:].split()


def _children() -> set[int]:
    """Our child processes, zombies included."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        found.update(int(p) for p in (task / "children").read_text().split())
    return found


@pytest.fixture(params=["fork server", "fork here"])
def via(request: pytest.FixtureRequest) -> Iterator[int | None]:
    """The way direct launches go in a test: the fork server's pid, or None (no server:
    the launcher forks itself)."""
    stop_spawner()
    pid = start_spawner("direct") if request.param == "fork server" else None
    assert (request.param == "fork server") == (pid is not None)
    yield pid
    stop_spawner()


def test_direct_launch_detaches_into_its_own_session(tmp_path: Path, via: int | None) -> None:
    """pid == pgid == sid, neither our child nor the fork server's, pid+start reported,
    env carries BATCHD_JOB_ID; the fork server (if any) stays."""
    job = fakekit.make_job(tmp_path / "state", "d1", adaptor="command", prompt="sleep 30")
    children_before = _children()
    launched = launch(job, mode="direct",
                      environ={**os.environ, "NOTIFY_SOCKET": "/run/x", "INVOCATION_ID": "1"})
    children_after = _children()
    try:
        assert (None, True) == (launched.unit, launched.pid is not None)
        assert launched.pid is not None
        fields = _stat(launched.pid)
        assert int(fields[19]) == launched.start
        assert (launched.pid, launched.pid) == (int(fields[2]), int(fields[3]))
        assert int(fields[1]) not in (os.getpid(), via)
        assert via == spawner_pid()
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{launched.pid}/environ").read_text().split("\0") if item)
        assert ("d1", str(job)) == (environ["BATCHD_JOB_ID"], environ["BATCHD_JOB_DIR"])
        assert "NOTIFY_SOCKET" not in environ and "INVOCATION_ID" not in environ
        assert children_before == children_after   # intermediate reaped, job not our child
    finally:
        if launched.pid:
            os.killpg(launched.pid, 9)


def test_direct_launch_inherits_no_fd_of_ours(tmp_path: Path, via: int | None) -> None:
    """An inheritable pipe of the launcher is not held by the job: closing ours gives EOF."""
    job = fakekit.make_job(tmp_path / "state", "fd", adaptor="command", prompt="sleep 30")
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    launched = launch(job, mode="direct")
    try:
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], 10)
        assert ([read_end], b"") == (ready, os.read(read_end, 1))
    finally:
        os.close(read_end)
        assert launched.pid is not None
        os.killpg(launched.pid, 9)


def test_direct_launch_runs_the_job_to_its_result(tmp_path: Path, via: int | None) -> None:
    """The launched adaptor runs the job; its diagnostics go to jobs/<id>/adaptor.log."""
    job = fakekit.make_job(tmp_path / "state", "d2", adaptor="command", prompt="echo hi")
    launch(job, mode="direct", environ={**os.environ, "INVOCATION_ID": ""})
    assert 0 == fakekit.wait_result(job)["exit_code"]
    assert b"hi\n" == fakekit.output(job)
    fakekit.wait_for(lambda: b"finished: exit_code=0" in (job / "adaptor.log").read_bytes(),
                     what="the adaptor's last log line")


def test_launch_refuses_without_spec(tmp_path: Path) -> None:
    """No spec.json: LaunchError, nothing started."""
    job = tmp_path / "state" / "jobs" / "nospec"
    job.mkdir(parents=True)
    with pytest.raises(LaunchError, match=r"spec\.json does not exist"):
        launch(job, mode="direct")


def test_launch_refuses_missing_python(tmp_path: Path) -> None:
    """An interpreter path that does not exist: LaunchError naming it."""
    job = fakekit.make_job(tmp_path / "state", "np", adaptor="command", prompt="true")
    with pytest.raises(LaunchError, match="'/no/python' is missing"):
        launch(job, mode="direct", python="/no/python")


def test_exec_failure_is_reported_through_the_pipe(tmp_path: Path, via: int | None) -> None:
    """An executable that cannot be exec'd (no format): posix_spawn's error comes back."""
    bogus = tmp_path / "python"
    bogus.write_bytes(b"\x00\x01not a program")
    bogus.chmod(0o755)
    job = fakekit.make_job(tmp_path / "state", "bx", adaptor="command", prompt="true")
    with pytest.raises(LaunchError, match=r"cannot exec .*Exec format error"):
        launch(job, mode="direct", python=str(bogus))


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    """mode must be auto, direct or systemd."""
    job = fakekit.make_job(tmp_path / "state", "m", adaptor="command", prompt="true")
    with pytest.raises(LaunchError, match="'docker' is not one of auto, direct, systemd"):
        launch(job, mode="docker")


def test_auto_uses_systemd_only_under_systemd_with_systemd_run(tmp_path: Path) -> None:
    """auto: systemd needs both $INVOCATION_ID and systemd-run on PATH."""
    fakekit.install_cli(tmp_path / "bin", "systemd-run")
    path = str(tmp_path / "bin")
    assert True is use_systemd("auto", {"INVOCATION_ID": "abc", "PATH": path})
    assert False is use_systemd("auto", {"PATH": path})
    assert False is use_systemd("auto", {"INVOCATION_ID": "abc", "PATH": str(tmp_path)})
    assert True is use_systemd("systemd", {})
    assert False is use_systemd("direct", {"INVOCATION_ID": "abc", "PATH": path})


def test_systemd_run_argv_shape(tmp_path: Path) -> None:
    """Unit name, --collect, KillMode=mixed, stop timeout from kill_grace, log, env, command."""
    job = tmp_path / "state" / "jobs" / "u1"
    argv = systemd_run_argv(job, job / "adaptor.log", {"A": "1", "BATCHD_JOB_ID": "u1"},
                            python="/venv/bin/python", kill_grace=5)
    assert [
        "systemd-run", "--unit", "batchd-job-u1.service", "--collect", "--quiet",
        "--property=KillMode=mixed", "--property=TimeoutStopSec=35",
        f"--property=StandardOutput=append:{job}/adaptor.log",
        f"--property=StandardError=append:{job}/adaptor.log",
        "--setenv=A=1", "--setenv=BATCHD_JOB_ID=u1",
        "--", "/venv/bin/python", "-m", "adaptors.run", str(job),
    ] == argv


def test_systemd_launch_with_fake_systemd_run(tmp_path: Path) -> None:
    """Under systemd (fake systemd-run first on PATH): unit returned, pid None, job runs."""
    fakekit.install_cli(tmp_path / "bin", "systemd-run")
    record = tmp_path / "systemd-run.json"
    job = fakekit.make_job(tmp_path / "state", "s1", adaptor="command", prompt="echo unit",
                           kill_grace=2)
    environ = {**os.environ, "INVOCATION_ID": "0123abcd", "NOTIFY_SOCKET": "/run/notify",
               "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
               "FAKE_SYSTEMD_RECORD": str(record)}
    launched = launch(job, environ=environ)
    assert (None, None, unit_name("s1")) == (launched.pid, launched.start, launched.unit)
    argv = fakekit.recorded_list(record)
    assert ["--unit", "batchd-job-s1.service", "--collect", "--quiet",
            "--property=KillMode=mixed", "--property=TimeoutStopSec=32"] == argv[:6]
    assert [sys.executable, "-m", "adaptors.run", str(job)] == argv[argv.index("--") + 1:]
    setenv = {a.split("=", 2)[1] for a in argv if a.startswith("--setenv=")}
    assert {"BATCHD_JOB_ID", "BATCHD_JOB_DIR", "PATH"} <= setenv
    assert not {"INVOCATION_ID", "NOTIFY_SOCKET"} & setenv
    assert 0 == fakekit.wait_result(job)["exit_code"]
    assert b"unit\n" == fakekit.output(job)


def test_systemd_run_failure_is_a_launch_error(tmp_path: Path) -> None:
    """systemd-run exiting non-zero: LaunchError carrying its message."""
    fakekit.install_cli(tmp_path / "bin", "systemd-run")
    job = fakekit.make_job(tmp_path / "state", "s2", adaptor="command", prompt="true")
    environ = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
               "FAKE_SYSTEMD_RECORD": str(tmp_path / "r.json"), "FAKE_SYSTEMD_FAIL": "1"}
    with pytest.raises(LaunchError, match="was already loaded"):
        launch(job, mode="systemd", environ=environ)


def test_job_environ_strips_service_variables(tmp_path: Path) -> None:
    """batchd's own systemd variables never reach a job; BATCHD_JOB_* are added."""
    env = job_environ(tmp_path / "jobs" / "e", {"WATCHDOG_USEC": "1", "LISTEN_FDS": "3",
                                                 "HOME": "/root"})
    assert {"HOME": "/root", "BATCHD_JOB_ID": "e",
            "BATCHD_JOB_DIR": str(tmp_path / "jobs" / "e")} == env


def test_direct_launch_resets_signals_and_mask(tmp_path: Path, via: int | None) -> None:
    """A launcher ignoring SIGUSR1 and blocking SIGUSR2 starts an adaptor with neither
    (posix_spawn's setsigdef and setsigmask), in / as its working folder."""
    import signal
    import time

    job = fakekit.make_job(tmp_path / "state", "sig", adaptor="command", prompt="true")
    out = tmp_path / "seen"
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{{ grep -E '^Sig(Blk|Ign):' /proc/self/status; pwd; }}"
                      f" > {out}.tmp && mv {out}.tmp {out}\n")
    script.chmod(0o755)
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        launch(job, mode="direct", python=str(script))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        signal.signal(signal.SIGUSR1, old)
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = out.read_text().split()
    masks = {lines[i]: int(lines[i + 1], 16) for i in (0, 2)}
    usr = (1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGUSR2 - 1))
    assert (0, 0, "/") == (masks["SigBlk:"], masks["SigIgn:"] & usr, lines[4])
