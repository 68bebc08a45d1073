"""Process tests of batchctl: the real program against a real, running batchd.

batchctl runs as `python -m supervisor.batchctl` (the console script's code) in a
subprocess; batchd as `python -m supervisor.batchd`. Every wait is a condition polled
with a generous deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0
WORKERS = ["scheduler", "locks", "reaper", "callbacks"]

CONFIG = """\
state_dir: {state}
log: {{level: warning}}
workers:
  scheduler: {{startsecs: 0.2, stopwaitsecs: 5}}
  locks: {{startsecs: 0.2, stopwaitsecs: 5}}
  reaper: {{startsecs: 0.2, stopwaitsecs: 5}}
  callbacks: {{startsecs: 0.2, stopwaitsecs: 5}}
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _until(what: str, check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `deadline`."""
    end = time.monotonic() + deadline
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class Env:
    """A state dir, its config, a batchd to start and stop, and batchctl to run."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        self.config = tmp_path / "batchd.yaml"
        self.config.write_text(CONFIG.format(state=self.state))
        self.batchd: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "batchd.log"

    def ctl(self, *argv: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisor.batchctl", "-c",
                               str(self.config), *argv], env=_env(), capture_output=True,
                              text=True, timeout=timeout, check=False)

    def json(self, *argv: str) -> Any:
        done = self.ctl(*argv, "--json")
        assert 0 == done.returncode, done.stderr
        return json.loads(done.stdout)

    def workers(self) -> dict[str, dict[str, Any]]:
        done = self.ctl("workers", "--json")
        if done.returncode != 0:
            return {}
        return {w["name"]: w for w in json.loads(done.stdout)}

    def all_running(self) -> dict[str, dict[str, Any]] | None:
        ws = self.workers()
        ok = WORKERS == list(ws) and all(w["state"] == "RUNNING" for w in ws.values())
        return ws if ok else None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.batchd = subprocess.Popen(
                [sys.executable, "-m", "supervisor.batchd", "-c", str(self.config)],
                env=_env(), stdout=log, stderr=log, start_new_session=True)
        _until("batchd to run all workers", self.all_running)

    def stop(self) -> None:
        if self.batchd is not None and self.batchd.poll() is None:
            self.batchd.send_signal(signal.SIGTERM)
            try:
                self.batchd.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(self.batchd.pid, signal.SIGKILL)
                self.batchd.wait()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.stop()


def test_worker_control_round_trips(env: Env) -> None:
    """workers, restart, stop, start and shutdown each do what they say, exit 0."""
    env.start()
    assert env.batchd is not None
    status = env.json("status")
    assert ({"running": True, "pid": env.batchd.pid}, WORKERS) == (
        status["batchd"], [w["name"] for w in status["workers"]])
    before = env.workers()

    done = env.ctl("restart", "locks")
    assert 0 == done.returncode, done.stderr
    after = _until("locks to run again", env.all_running)
    assert after["locks"]["pid"] != before["locks"]["pid"]
    assert after["scheduler"]["pid"] == before["scheduler"]["pid"]

    done = env.ctl("stop", "reaper")
    assert 0 == done.returncode, done.stderr
    assert "STOPPED" == env.workers()["reaper"]["state"]
    assert "STOPPED" == env.json("workers")[2]["state"]

    done = env.ctl("start", "reaper")
    assert 0 == done.returncode, done.stderr
    _until("reaper to run again", env.all_running)

    done = env.ctl("shutdown")
    assert 0 == done.returncode, done.stderr
    assert 0 == env.batchd.wait(timeout=DEADLINE)
    assert {"running": False, "pid": None} == env.json("status")["batchd"]
    done = env.ctl("workers")
    assert (1, "batchd is not running") == (done.returncode, done.stderr.split(" (")[0])


def test_unknown_worker_is_refused_before_anything_is_written(env: Env) -> None:
    """restart of a name that is no worker: exit 2, no request in control/inbox."""
    env.start()
    done = env.ctl("restart", "nosuch")
    assert 2 == done.returncode
    assert [] == os.listdir(env.state / "control" / "inbox")


def test_submit_while_down_is_queued_when_batchd_starts(env: Env) -> None:
    """A job submitted with batchd down survives, then the scheduler takes it into its queue."""
    done = env.ctl("submit", "--agent", "shell", "--prompt", "sleep 600", "--id", "early")
    assert (0, "early\n") == (done.returncode, done.stdout), done.stderr
    assert "queued" == env.json("status", "early")["state"]
    env.start()
    inbox = env.state / "scheduler" / "inbox"
    _until("the scheduler to take the submission", lambda: not os.listdir(inbox))
    record = env.json("status", "early")
    assert ("early", str(env.state / "jobs" / "early" / "output")) == (
        record["id"], record["output_path"])
    assert record["state"] in ("queued", "waiting", "starting", "running")
    assert ["early"] == [r["id"] for r in env.json("jobs")]
