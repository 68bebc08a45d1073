"""The process-test harness: a real batchd on a temp state dir, real batchctl, the job files.

`Env` starts and SIGKILLs batchd, runs batchctl, reads the job queue read-only and the
jobs' files; every wait is a condition polled with a generous deadline (tests.helpers.until).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from supervisor.state.layout import READY, SENTINEL, Layout, read_record
from supervisor.state.proc import alive
from supervisor.state.queue import JobQueue
from tests.helpers import until

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0
DEAD_AFTER = 3.0

CONFIG = """\
state_dir: {state}
log: {{level: info, format: json, file: {log}}}
launcher: direct
scheduler: {{max_concurrent_jobs: {max_jobs}, heartbeat_interval: 0.2, stale_after: 1,
            dead_after: {dead_after}, kill_grace: 1}}
workers:
  scheduler: {{startsecs: 0.1, stopwaitsecs: 5}}
  locks: {{startsecs: 0.1, stopwaitsecs: 5}}
  reaper: {{startsecs: 0.1, stopwaitsecs: 5}}
  callbacks: {{startsecs: 0.1, stopwaitsecs: 5}}
"""

#: 100 numbered lines over about 5 s.
LINES_5S = 'for i in $(seq 1 100); do echo "line $i"; sleep 0.05; done'
EXPECTED = "".join(f"line {i}\n" for i in range(1, 101))


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


class Env:
    """A state dir and config, a batchd to start and SIGKILL, batchctl, the job files."""

    def __init__(self, tmp_path: Path, extra: str = "", max_jobs: int = 8) -> None:
        self.state = tmp_path / "state"
        self.log = tmp_path / "batchd.log"
        self.config = tmp_path / "batchd.yaml"
        self.config.write_text(CONFIG.format(state=self.state, log=self.log,
                                             dead_after=DEAD_AFTER, max_jobs=max_jobs) + extra)
        self.layout = Layout(self.state)
        self.batchd: subprocess.Popen[bytes] | None = None
        self.scheduler_pid = 0

    # -- batchd ---------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start batchd; return the scheduler's ready record once this batchd's is there."""
        assert self.batchd is None or self.batchd.poll() is not None
        self.batchd = subprocess.Popen(
            [sys.executable, "-m", "supervisor.batchd", "-c", str(self.config)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self.wait_scheduler()

    def wait_scheduler(self) -> dict[str, Any]:
        """The ready record of a scheduler newer than the last one seen, child of our batchd."""
        assert self.batchd is not None
        batchd = self.batchd

        def ready() -> dict[str, Any] | None:
            assert batchd.poll() is None, f"batchd exited {batchd.returncode}"
            rec = read_record(READY, self.layout.ready_file("scheduler"), owner=False)
            if (isinstance(rec, dict) and rec["pid"] != self.scheduler_pid
                    and alive(rec["pid"], rec["start"]) and _ppid(rec["pid"]) == batchd.pid):
                return rec
            return None

        rec: dict[str, Any] = until("the scheduler's ready record", ready)
        self.scheduler_pid = rec["pid"]
        return rec

    def kill9(self) -> None:
        """SIGKILL batchd (its workers die with it); jobs must live on."""
        assert self.batchd is not None
        self.batchd.kill()
        self.batchd.wait(DEADLINE)
        until("the scheduler to die with batchd", lambda: not alive(self.scheduler_pid, None))

    def close(self) -> None:
        if self.batchd is not None and self.batchd.poll() is None:
            self.batchd.kill()
            self.batchd.wait(DEADLINE)
        for pid in self.job_pids():
            os.kill(pid, signal.SIGKILL)

    # -- batchctl and the state ---------------------------------------------------------------
    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [sys.executable, "-m", "supervisor.ctl", "-c", str(self.config), *args],
            cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, check=False)
        if check:
            assert 0 == run.returncode, f"batchctl {' '.join(args)}: {run.stderr}"
        return run

    def submit(self, job_id: str, prompt: str, *extra: str) -> None:
        self.ctl("submit", "--agent", "shell", "--id", job_id, "--prompt", prompt, *extra)

    def record(self, job_id: str) -> dict[str, Any]:
        rec: dict[str, Any] = json.loads(self.ctl("status", job_id, "--json").stdout)
        return rec

    def entry(self, job_id: str) -> dict[str, Any] | None:
        """The job's WAL entry (every field the scheduler wrote), read-only."""
        if not self.layout.wal_dir.is_dir():
            return None
        queue = JobQueue.open(self.layout.wal_dir, readonly=True)
        try:
            return queue.get(job_id)
        finally:
            queue.close()

    def state_of(self, job_id: str) -> str | None:
        entry = self.entry(job_id)
        return None if entry is None else str(entry["state"])

    def wait_state(self, job_id: str, *states: str, deadline: float = DEADLINE) -> None:
        until(f"job {job_id} to be {'/'.join(states)}",
              lambda: self.state_of(job_id) in states, deadline)

    def stats(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.ctl("stats", "--json").stdout)
        return doc

    def output(self, job_id: str) -> str:
        try:
            return self.layout.job_output(job_id).read_text()
        except FileNotFoundError:
            return ""

    def lines(self, job_id: str) -> int:
        return self.output(job_id).count("\n")

    def sentinel(self, job_id: str) -> dict[str, Any] | None:
        rec = read_record(SENTINEL, self.layout.job_sentinel(job_id), owner=False)
        return rec if isinstance(rec, dict) else None

    def job_pids(self, job_id: str | None = None) -> list[int]:
        """Live processes of this state dir's jobs (of one job): their env says so."""
        jobs = str(self.layout.jobs_dir).encode()
        want = (b"BATCHD_JOB_DIR=" + jobs + b"/" + job_id.encode()) if job_id else None
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or not alive(int(name), None):
                continue
            for var in _environ(int(name)):
                if (var == want) if want else var.startswith(b"BATCHD_JOB_DIR=" + jobs + b"/"):
                    found.append(int(name))
                    break
        return found


def _ppid(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2:].split()[1])



