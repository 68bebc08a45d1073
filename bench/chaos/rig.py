"""The chaos run's rig: a work folder, a real batchd, batchctl, and what is seen from outside.

Everything here acts on batchd from the outside: its configuration file, its process (start,
signals), `batchctl`, its log file (the operator's, outside the state dir), /proc (which
processes carry a job's environment), git remotes and a tmpfs that holds the state dir (so
the disk can be filled for an ENOSPC window). Nothing reads or writes the state dir's files,
except the jobs' output files, whose paths the job records give (`output_path`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["REPOS", "JobProc", "Rig", "WorkerSeen"]

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

#: The repositories the workload uses: name -> exclusive.
REPOS: dict[str, bool] = {"ex1": True, "ex2": True, "sh1": False, "sh2": False}

CONFIG = """\
state_dir: {state}
log: {{level: info, format: json, file: {log}}}
launcher: direct
scheduler: {{max_concurrent_jobs: {slots}, heartbeat_interval: 0.5, stale_after: 2,
            dead_after: 5, kill_grace: 1}}
workers:
{workers}
callbacks:
  retry_schedule: [0.2s, 0.5s, 1s, 1s, 2s, 2s, 2s, 2s, 2s, 2s, 2s, 2s]
  timeout: {cb_timeout}
{callbacks_extra}reaper: {{interval: 2s, grace: {grace}}}
retention: {{workspaces: {ws_retention}, jobs: 30d, callbacks: 30d, corrupted: 30d}}
disk: {{min_free: 1MiB}}
repositories:
{repos}
{agents}"""

#: Per worker: restarts are fast, and the restart intensity is far above the chaos rate
#: (it is a guard against a crash loop, tested on its own in tests/batchd).
WORKER = "  {name}: {{startsecs: 0.2, startretries: 3, stopwaitsecs: 10, max_restarts: 1000, " \
    "restart_window: 60}}"

GRACE_S = 10.0              # reaper.grace
WS_RETENTION_S = 4.0        # retention.workspaces
CB_TIMEOUT_S = 1.0          # callbacks.timeout


def _git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", "-c", "user.name=chaos", "-c", "user.email=chaos@localhost",
                          "-c", "init.defaultBranch=main", *args],
                         cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_remote(root: Path, name: str) -> Path:
    """A bare repository with one commit on `main`."""
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "README").write_text(f"{name}\n")
    _git("add", "README", cwd=work)
    _git("commit", "-q", "-m", f"{name}: first", cwd=work)
    bare = root / f"{name}.git"
    _git("clone", "-q", "--bare", str(work), str(bare))
    return bare


@dataclass(frozen=True)
class JobProc:
    """A live process carrying one of this state dir's jobs in its environment."""

    pid: int
    job: str
    adaptor: bool            # the adaptor (python -m adaptors.run), else the agent or below
    ppid: int


@dataclass
class WorkerSeen:
    """A worker as batchd's log last said: its pid and state."""

    pid: int | None = None
    state: str = "STOPPED"
    since: float = 0.0


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    if fields[0] == b"Z":
        return None
    return int(fields[1])


class Rig:
    """The work folder (config, markers, remotes, log) and the batchd being tortured."""

    def __init__(self, work: Path, *, slots: int, tmpfs_mb: int | None,
                 agents: str = "", callbacks_extra: str = "") -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.slots = slots
        self.notes: list[str] = []
        self.tmpfs: Path | None = None
        state_parent = work
        if tmpfs_mb is not None:
            where = work / "fs"
            where.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb}m", "tmpfs",
                                   str(where)], capture_output=True, text=True, check=False)
            if done.returncode == 0:
                self.tmpfs = where
                state_parent = where
            else:
                self.notes.append("ENOSPC windows skipped: cannot mount a tmpfs here "
                                  f"({done.stderr.strip() or done.returncode})")
        self.state = state_parent / "state"
        self.log = work / "batchd.log"
        self.markers = work / "markers.log"
        self.markers.touch()
        self.config = work / "batchd.yaml"
        self.remotes = {name: make_remote(work / "remotes", name) for name in REPOS}
        self.write_config(agents=agents, callbacks_extra=callbacks_extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.workers: dict[str, WorkerSeen] = {}
        self._log_pos = 0
        self._log_rest = b""
        self._batchd_pid = 0

    # -- configuration -----------------------------------------------------------------------
    def config_text(self, *, agents: str = "", callbacks_extra: str = "") -> str:
        workers = "\n".join(WORKER.format(name=n)
                            for n in ("scheduler", "locks", "reaper", "callbacks"))
        repos = "\n".join(f"  {n}: {{url: {self.remotes[n]}, branch: main, exclusive: "
                          f"{'true' if ex else 'false'}}}" for n, ex in REPOS.items())
        return CONFIG.format(state=self.state, log=self.log, slots=self.slots, workers=workers,
                             cb_timeout=f"{CB_TIMEOUT_S:g}s", grace=f"{GRACE_S:g}s",
                             ws_retention=f"{WS_RETENTION_S:g}s", repos=repos,
                             agents=agents, callbacks_extra=callbacks_extra)

    def write_config(self, *, agents: str = "", callbacks_extra: str = "") -> None:
        self.config.write_text(self.config_text(agents=agents, callbacks_extra=callbacks_extra))

    def config_accepted(self, text: str) -> bool:
        """Whether `batchd --check` accepts this configuration text (exit 0)."""
        probe = self.work / "probe.yaml"
        probe.write_text(text)
        done = subprocess.run([PY, "-m", "supervisor.batchd", "-c", str(probe), "--check"],
                              cwd=ROOT, capture_output=True, check=False, timeout=60)
        probe.unlink()
        return done.returncode == 0

    # -- batchd ------------------------------------------------------------------------------
    def start(self) -> subprocess.Popen[bytes]:
        """Start a batchd (the previous one must have exited)."""
        with self.lock:
            assert self.proc is None or self.proc.poll() is not None
            self.proc = subprocess.Popen(
                [PY, "-m", "supervisor.batchd", "-c", str(self.config)], cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(self.work / "batchd.stderr", "ab"))  # noqa: SIM115
            self._batchd_pid = self.proc.pid
            return self.proc

    @property
    def batchd_pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def signal_batchd(self, sig: int) -> bool:
        with self.lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return False
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return False
            return True

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM batchd and wait; SIGKILL after `grace`. Its exit code (None: not running)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    # -- batchctl ----------------------------------------------------------------------------
    def ctl(self, *args: str, stdin: bytes | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run([PY, "-m", "supervisor.ctl", "-c", str(self.config), *args],
                                  cwd=ROOT, input=stdin, capture_output=True, check=False,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, 124, exc.output or b"",
                                               (exc.stderr or b"") + b"\n(timed out)")

    def ctl_json(self, *args: str, timeout: float = 120.0) -> Any:
        """A batchctl command's `--json` document; None if it failed."""
        done = self.ctl(*args, "--json", timeout=timeout)
        if done.returncode != 0:
            return None
        try:
            return json.loads(done.stdout)
        except ValueError:
            return None

    # -- batchd's log: the workers' pids and states ---------------------------------------------
    def follow_log(self) -> None:
        """Read what batchd and the workers logged since the last call."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except FileNotFoundError:
            return
        self._log_pos += len(data)
        data = self._log_rest + data
        lines = data.split(b"\n")
        self._log_rest = lines.pop()
        now = time.monotonic()
        for line in lines:
            if b'"worker' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            event = rec.get("event")
            if event == "worker starting" and isinstance(rec.get("pid"), int):
                seen = self.workers.setdefault(str(rec.get("name")), WorkerSeen())
                if rec.get("ppid") == self._batchd_pid:
                    seen.pid, seen.state, seen.since = rec["pid"], "STARTING", now
            elif event == "worker state" and rec.get("pid") == self._batchd_pid:
                seen = self.workers.setdefault(str(rec.get("worker")), WorkerSeen())
                seen.state, seen.since = str(rec.get("new")), now

    def running_worker(self, name: str) -> int | None:
        """The pid of worker `name` if the log says it is RUNNING and it is batchd's child."""
        self.follow_log()
        seen = self.workers.get(name)
        batchd = self.batchd_pid
        if seen is None or seen.pid is None or seen.state != "RUNNING" or batchd is None:
            return None
        return seen.pid if ppid_of(seen.pid) == batchd else None

    # -- the jobs' processes -------------------------------------------------------------------
    def job_procs(self) -> list[JobProc]:
        """Every live process that carries one of this state dir's jobs (its environment)."""
        prefix = b"BATCHD_JOB_DIR=" + str(self.state / "jobs").encode() + b"/"
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            for var in _environ(pid):
                if var.startswith(prefix):
                    ppid = ppid_of(pid)
                    if ppid is None:
                        break
                    cmd = _cmdline(pid)
                    found.append(JobProc(pid, var[len(prefix):].decode(errors="replace"),
                                         b"adaptors.run" in cmd, ppid))
                    break
        # An adaptor's child between fork and exec still shows the adaptor's command line:
        # it is the agent starting (killing it fails the job "killed by signal 9", as an
        # agent's kill does; chaos seed 494710626 counted two such kills as the adaptor's).
        adaptors = {(p.pid, p.job) for p in found if p.adaptor}
        return [JobProc(p.pid, p.job, False, p.ppid)
                if p.adaptor and (p.ppid, p.job) in adaptors else p for p in found]

    # -- the disk --------------------------------------------------------------------------------
    def fill(self) -> int:
        """Fill the tmpfs holding the state dir (a file outside the state dir); bytes added."""
        assert self.tmpfs is not None
        added = 0
        with open(self.tmpfs / "filler", "ab", buffering=0) as f:
            st = os.statvfs(self.tmpfs)
            free = st.f_bavail * st.f_frsize
            if free > 1 << 20:
                with contextlib.suppress(OSError):
                    os.posix_fallocate(f.fileno(), f.tell(), free - (1 << 19))
                    added += free - (1 << 19)
                f.seek(0, os.SEEK_END)
            chunk = b"\0" * (1 << 16)
            while True:
                try:
                    added += f.write(chunk) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]
        return added

    def free(self) -> None:
        if self.tmpfs is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.tmpfs / "filler").unlink()

    def close(self, *, keep: bool = False) -> None:
        """Stop batchd, kill what is left of the jobs, unmount the tmpfs (`keep`: its state
        dir copied first to `<work>/state`, for a post-mortem)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in self.job_procs():
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGKILL)
        if self.tmpfs is not None:
            if keep:
                subprocess.run(["cp", "-a", str(self.state), str(self.work / "state")],
                               check=False, capture_output=True)
            subprocess.run(["umount", "-l", str(self.tmpfs)], check=False,
                           capture_output=True)
