"""Starting a job's adaptor so that it outlives batchd: fork + posix_spawn, or a systemd unit.

A fork whose child posix_spawns the adaptor in a session of its own and exits (direct):
done by the scheduler's small fork server (scheduler.spawner) when it runs, else by the
scheduler itself; or a systemd transient unit of its own (systemd). No pipe, socket or fd
links a job to batchd afterwards. docs/JOBS.md has the details.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from supervisor.scheduler import spawner as _spawner
from supervisor.state.layout import JOB_SPEC, Layout, read_record

__all__ = [
    "SYSTEMD_ENV_VARS",
    "LaunchError",
    "Launched",
    "adaptor_argv",
    "job_environ",
    "launch",
    "spawner_pid",
    "start_spawner",
    "stop_spawner",
    "systemd_run_argv",
    "unit_name",
    "use_systemd",
]

#: Variables describing batchd's own systemd service, never passed to a job.
SYSTEMD_ENV_VARS: frozenset[str] = frozenset({
    "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS",
    "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM", "MAINPID", "MANAGERPID",
    "SYSTEMD_EXEC_PID", "TRIGGER_UNIT", "TRIGGER_PATH", "MONITOR_SERVICE_RESULT",
})

_MODES = ("auto", "direct", "systemd")
_SYSTEMD_RUN_TIMEOUT_S = 30.0
_STOP_MARGIN_S = 30.0
_DEFAULT_KILL_GRACE_S = 10.0


class LaunchError(Exception):
    """The job could not be started (the message says why); nothing of it runs."""


@dataclass(frozen=True)
class Launched:
    """A started job: the adaptor's pid and start time (direct), or its unit (systemd)."""

    pid: int | None
    start: int | None
    unit: str | None


def unit_name(job_id: str) -> str:
    """The transient unit of a job: batchd-job-<id>.service (job ids are unit-name safe)."""
    return f"batchd-job-{job_id}.service"


def adaptor_argv(job_dir: Path, python: str | None = None) -> list[str]:
    """`<python> -m adaptors.run <job_dir>`."""
    return [python or sys.executable, "-m", "adaptors.run", str(job_dir)]


def job_environ(job_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The adaptor's environment: ours, minus batchd's systemd variables, plus BATCHD_JOB_*."""
    base = os.environ if environ is None else environ
    env = {k: v for k, v in base.items() if k not in SYSTEMD_ENV_VARS}
    env["BATCHD_JOB_ID"] = job_dir.name
    env["BATCHD_JOB_DIR"] = str(job_dir)
    return env


def use_systemd(mode: str, environ: Mapping[str, str]) -> bool:
    """Whether `mode` means a transient systemd unit here."""
    if mode not in _MODES:
        raise LaunchError(f"launcher mode {mode!r} is not one of {', '.join(_MODES)}")
    if mode == "auto":
        return bool(environ.get("INVOCATION_ID")) and shutil.which(
            "systemd-run", path=environ.get("PATH")) is not None
    return mode == "systemd"


def systemd_run_argv(job_dir: Path, log_path: Path, env: Mapping[str, str], *,
                     python: str | None = None,
                     kill_grace: float = _DEFAULT_KILL_GRACE_S) -> list[str]:
    """The systemd-run command line that starts the job in a transient unit."""
    argv = [
        "systemd-run", "--unit", unit_name(job_dir.name), "--collect", "--quiet",
        "--property=KillMode=mixed",
        f"--property=TimeoutStopSec={int(kill_grace + _STOP_MARGIN_S)}",
        f"--property=StandardOutput=append:{log_path}",
        f"--property=StandardError=append:{log_path}",
    ]
    argv += [f"--setenv={k}={v}" for k, v in sorted(env.items())]
    return [*argv, "--", *adaptor_argv(job_dir, python)]


def _check(job_dir: Path, python: str) -> None:
    if not job_dir.is_absolute():
        raise LaunchError(f"job folder {job_dir} must be an absolute path")
    spec = Layout(job_dir.parent.parent).job_spec(job_dir.name)
    if not spec.is_file():
        raise LaunchError(f"{spec} does not exist: write the spec before launching")
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise LaunchError(f"python interpreter {python!r} is missing or not executable")


def _spec_kill_grace(job_dir: Path) -> float:
    record = read_record(JOB_SPEC, Layout(job_dir.parent.parent).job_spec(job_dir.name),
                         owner=False)
    grace = record.get("kill_grace") if isinstance(record, dict) else None
    if isinstance(grace, (int, float)) and not isinstance(grace, bool) and grace >= 0:
        return float(grace)
    return _DEFAULT_KILL_GRACE_S


def _launch_systemd(job_dir: Path, log_path: Path, env: Mapping[str, str],
                    python: str) -> Launched:
    argv = systemd_run_argv(job_dir, log_path, env, python=python,
                            kill_grace=_spec_kill_grace(job_dir))
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=_SYSTEMD_RUN_TIMEOUT_S, check=False, env=dict(env))
    except FileNotFoundError as exc:
        raise LaunchError(f"systemd-run not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LaunchError(f"systemd-run did not answer within {_SYSTEMD_RUN_TIMEOUT_S}s") from exc
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise LaunchError(f"systemd-run failed for {unit_name(job_dir.name)}: {why}")
    return Launched(pid=None, start=None, unit=unit_name(job_dir.name))


#: Every signal a spawned adaptor starts with at its default disposition (SIGKILL and
#: SIGSTOP cannot be changed), whatever the scheduler set; its signal mask is empty.
_DEFAULT_SIGNALS = tuple(sorted(set(signal.valid_signals())
                                - {signal.SIGKILL, signal.SIGSTOP}))


#: Seconds a launch waits for the fork server's answer (it takes about a millisecond);
#: past them the server is killed and the launch is left to the adaptor's sentinel.
SPAWNER_TIMEOUT = 10.0
#: A fork server that died is started again at most this often (seconds).
SPAWNER_RESTART_EVERY = 5.0


class _Spawner:
    """The scheduler's end of its fork server (scheduler.spawner): a child process, and a
    SOCK_SEQPACKET socket to it. One launch at a time (a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.started = -SPAWNER_RESTART_EVERY

    def start(self) -> None:
        """Start a fork server unless one runs (caller holds the lock). A failure to
        start leaves none: launches then fork here."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        self.started = time.monotonic()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _spawner.__file__, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, cwd="/")
        except OSError:
            ours.close()
            return
        finally:
            theirs.close()
        self.sock = ours

    def stop(self) -> None:
        """Kill and reap the fork server, if any (caller holds the lock)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def launch(self, argv: list[str], env: dict[str, str], log_fd: int) -> bytes | None:
        """The server's answer on starting `argv`: b"R" + the report (as _child's), b""
        when it died (or stalled) with the request, so the adaptor may or may not run;
        None when no request reached a server (there is none, or it is gone): the caller
        forks itself then."""
        payload = json.dumps({"argv": argv, "env": env}).encode()
        with self.lock:
            if self.sock is None or self.proc is None or self.proc.poll() is not None:
                if time.monotonic() - self.started >= SPAWNER_RESTART_EVERY \
                        and self.proc is not None:
                    self.start()                # for the next launch; this one forks here
                return None
            try:
                socket.send_fds(self.sock, [payload], [log_fd])
            except OSError:
                self.stop()                     # gone before it took the request
                return None
            try:
                self.sock.settimeout(SPAWNER_TIMEOUT)
                report = self.sock.recv(4096)
            except OSError:                     # a timeout included
                report = b""
            if not report:
                self.stop()
            return report


_SPAWNER = _Spawner()


def start_spawner(mode: str, environ: Mapping[str, str] | None = None) -> int | None:
    """Start the fork server when `mode` launches directly here (not systemd, not Slurm);
    its pid, or None. The scheduler calls it at its start; launch() uses it from then on."""
    base = os.environ if environ is None else environ
    if mode not in ("auto", "direct") or use_systemd(mode, base):
        return None
    with _SPAWNER.lock:
        _SPAWNER.start()
        return _SPAWNER.proc.pid if _SPAWNER.proc is not None else None


def stop_spawner() -> None:
    """Kill the fork server (launches fork here again until start_spawner)."""
    with _SPAWNER.lock:
        _SPAWNER.stop()


def spawner_pid() -> int | None:
    """The fork server's pid while it runs, else None."""
    proc = _SPAWNER.proc
    return proc.pid if proc is not None and proc.poll() is None else None


def _launch_direct(job_dir: Path, log_path: Path, env: dict[str, str], python: str) -> Launched:
    argv = adaptor_argv(job_dir, python)
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LaunchError(f"cannot open {log_path}: {exc}") from exc
    try:
        served = _SPAWNER.launch(argv, env, log_fd)
    except BaseException:
        os.close(log_fd)
        raise
    if served is not None:
        os.close(log_fd)
        if not served:          # the server died with the request: the sentinel will say
            return Launched(pid=None, start=None, unit=None)
        return _parse_report(served[1:], argv)
    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            child = os.fork()
        except OSError as exc:
            raise LaunchError(f"fork failed: {exc}") from exc
        if child == 0:
            try:
                os.close(report_r)
                # the same child as the fork server's (one copy of it): cleans fds and
                # cwd, posix_spawns the adaptor in its own session, reports, exits
                _spawner.spawn_child(argv, env, (log_fd, null_fd, report_w),
                                     _DEFAULT_SIGNALS)
            finally:
                os._exit(127)
        os.close(report_w)
        report_w = -1
        _spawner.reap(child)
        report = _read_all(report_r)
    finally:
        for fd in (log_fd, null_fd, report_r, report_w):
            if fd >= 0:
                os.close(fd)
    return _parse_report(report, argv)


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    return data


def _parse_report(report: bytes, argv: list[str]) -> Launched:
    lines = report.decode(errors="replace").splitlines()
    if not lines:
        raise LaunchError(f"the adaptor process died before it could start: {argv}")
    errors = [ln[4:] for ln in lines if ln.startswith("ERR ")]
    if errors:
        raise LaunchError(f"cannot exec {argv[0]}: {errors[-1]}")
    try:
        pid_text, start_text = lines[0].split()
        return Launched(pid=int(pid_text), start=int(start_text), unit=None)
    except ValueError as exc:
        raise LaunchError(f"unreadable launch report {report!r}") from exc


def launch(job_dir: Path, *, mode: str = "auto", log_path: Path | None = None,
           environ: Mapping[str, str] | None = None, python: str | None = None) -> Launched:
    """Start the adaptor for `job_dir` detached from us; raise LaunchError if it cannot start.

    `environ` (default os.environ) is the environment the job inherits and where
    $INVOCATION_ID / $PATH are looked up for mode "auto"; `python` defaults to sys.executable.
    """
    base = os.environ if environ is None else environ
    interpreter = python or sys.executable
    systemd = use_systemd(mode, base)
    _check(job_dir, interpreter)
    log = log_path or Layout(job_dir.parent.parent).job_adaptor_log(job_dir.name)
    env = job_environ(job_dir, base)
    if systemd:
        return _launch_systemd(job_dir, log, env, interpreter)
    return _launch_direct(job_dir, log, env, interpreter)
