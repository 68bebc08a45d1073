"""Process tests of batchctl: the real program against a real, running batchd.

batchctl runs as `python -m supervisor.ctl` (the console script's code) in a
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import until

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


class Env:
    """A state dir, its config, a batchd to start and stop, and batchctl to run."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        self.config = tmp_path / "batchd.yaml"
        self.config.write_text(CONFIG.format(state=self.state))
        self.batchd: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "batchd.log"

    def ctl(self, *argv: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c",
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
        until("batchd to run all workers", self.all_running)

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
    after = until("locks to run again", env.all_running)
    assert after["locks"]["pid"] != before["locks"]["pid"]
    assert after["scheduler"]["pid"] == before["scheduler"]["pid"]

    done = env.ctl("stop", "reaper")
    assert 0 == done.returncode, done.stderr
    assert "STOPPED" == env.workers()["reaper"]["state"]
    assert "STOPPED" == env.json("workers")[2]["state"]

    done = env.ctl("start", "reaper")
    assert 0 == done.returncode, done.stderr
    until("reaper to run again", env.all_running)

    done = env.ctl("shutdown")
    assert 0 == done.returncode, done.stderr
    assert 0 == env.batchd.wait(timeout=DEADLINE)
    assert {"running": False, "pid": None} == env.json("status")["batchd"]
    done = env.ctl("workers")
    assert (1, "batchctl: batchd is not running") == (done.returncode,
                                                      done.stderr.split(" (")[0])


def test_unknown_worker_is_refused_before_anything_is_written(env: Env) -> None:
    """restart of a name that is no worker: exit 2, no request in control/inbox."""
    env.start()
    done = env.ctl("restart", "nosuch")
    assert 2 == done.returncode
    assert [] == os.listdir(env.state / "control" / "inbox")


def test_submit_while_down_is_queued_when_batchd_starts(env: Env) -> None:
    """A job submitted with batchd down survives, and runs once batchd starts."""
    done = env.ctl("submit", "--agent", "shell", "--prompt", "echo early-ran", "--id", "early")
    assert (0, "early\n") == (done.returncode, done.stdout), done.stderr
    assert "queued" == env.json("status", "early")["state"]
    env.start()
    assert 0 == env.ctl("wait", "early", "--timeout", "60s").returncode
    record = env.json("status", "early")
    assert ("early", "completed", str(env.state / "jobs" / "early" / "output")) == (
        record["id"], record["state"], record["output_path"])
    assert "early-ran\n" == env.ctl("output", "early").stdout
    assert ["early"] == [r["id"] for r in env.json("jobs")]


#: batchctl with its imports done, held at a start line (a file appearing) so that all
#: submitters run their check-then-write at the same instant.
_AT_START_LINE = ("import os, sys, time\n"
                  "from supervisor.ctl import main\n"
                  "go = sys.argv[1]\n"
                  "while not os.path.exists(go):\n"
                  "    time.sleep(0.001)\n"
                  "sys.exit(main(sys.argv[2:]))\n")


def test_concurrent_submits_of_one_id_admit_exactly_one(env: Env, tmp_path: Path) -> None:
    """8 concurrent submits of one id: exactly one exits 0, seven exit 2 naming the duplicate."""
    # Each submitter is released at once with a --from file whose last job has --id same;
    # its 2,000 lines keep it busy between reading the ids in use and writing its request,
    # so without the submit lock they would all see 'same' free (and all exit 0).
    go = tmp_path / "go"
    lines = 2000
    body = "".join(json.dumps({"agent": "shell", "prompt": f"echo {n}"}) + "\n"
                   for n in range(lines - 1))
    files = []
    for i in range(8):
        path = tmp_path / f"jobs{i}.jsonl"
        path.write_text(body + json.dumps({"agent": "shell", "prompt": "x", "id": "same"}) + "\n")
        files.append(path)
    procs = [subprocess.Popen([sys.executable, "-c", _AT_START_LINE, str(go), "-c",
                               str(env.config), "submit", "--from", str(path)], env=_env(),
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for path in files]
    time.sleep(1.0)         # let the interpreters reach the start line (not the proof)
    go.write_bytes(b"")
    results = [(p.wait(timeout=DEADLINE), *p.communicate(timeout=DEADLINE)) for p in procs]
    codes = sorted(code for code, _, _ in results)
    refusals = sorted(err for code, _, err in results if code == 2)
    refused_files = [f for f, (code, _, _) in zip(files, results, strict=True) if code == 2]
    inbox = env.state / "scheduler" / "inbox"
    ids = [j["id"] for n in os.listdir(inbox)
           for j in json.loads((inbox / n).read_text())["jobs"]]
    assert ([0] + [2] * 7,
            sorted(f"batchctl: {f}:{lines}: job id 'same' is already in use\n"
                   for f in refused_files),
            1, lines) == (codes, refusals, ids.count("same"), len(ids))


def test_non_utf8_argument_bytes_exit_2_naming_the_field(env: Env) -> None:
    """Real argv bytes that are not UTF-8 (`--prompt $'\\xff'`) were a UnicodeEncodeError
    traceback, exit 1: now exit 2 naming the field, and nothing is written."""
    cases = [([b"submit", b"--agent", b"shell", b"--prompt", b"\xff"],
              "prompt is not valid UTF-8 text"),
             ([b"jobs", b"--batch", b"\xff"], "--batch: '\\udcff' is not valid UTF-8 text"),
             ([b"submit", b"--agent", b"shell", b"--prompt", b"x", b"--label", b"k=\xff"],
              "label 'k' is not valid UTF-8 text")]
    for argv, needle in cases:
        done = subprocess.run([sys.executable.encode(), b"-m", b"supervisor.ctl", b"-c",
                               bytes(env.config), *argv], env=_env(), capture_output=True,
                              timeout=DEADLINE, check=False)
        err = done.stderr.decode(errors="replace")
        assert (2, True, False) == (done.returncode, needle in err, "Traceback" in err), err
    assert not env.state.exists()
