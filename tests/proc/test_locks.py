"""Process-level proof of the repository locks: a real batchd, real git repositories.

A bare repository with one commit, registered in the YAML config twice: `app` (exclusive)
and `lib` (not). Shell jobs append `start-<id>` (only if their workspace is the clone) and
`end-<id>` to one log file, so the log shows which jobs ran at the same time and in what
order. A "gated" job runs until the test creates its gate file, so what the test looks at
meanwhile does not depend on timing. Real SIGKILLs of the locks worker and of batchd.
Every wait is a condition polled with a generous deadline.
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

from supervisor.state.layout import READY, Layout, read_record
from supervisor.state.proc import alive
from supervisor.state.queue import JobQueue
from tests.helpers import until

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0

CONFIG = """\
state_dir: {state}
log: {{level: info, format: json, file: {log}}}
launcher: direct
scheduler: {{max_concurrent_jobs: 8, heartbeat_interval: 0.2, stale_after: 1, dead_after: 3,
            kill_grace: 1}}
workers:
  scheduler: {{startsecs: 0.1, stopwaitsecs: 5}}
  locks: {{startsecs: 0.1, stopwaitsecs: 5}}
  reaper: {{startsecs: 0.1, stopwaitsecs: 5}}
  callbacks: {{startsecs: 0.1, stopwaitsecs: 5}}
repositories:
  app: {{url: {repo}, exclusive: true}}
  lib: {{url: {repo}}}
"""

def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


def _ppid(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2:].split()[1])


class Env:
    """A real git repo, a config naming it, a batchd to start and SIGKILL, batchctl."""

    def __init__(self, tmp_path: Path) -> None:
        src, self.repo = tmp_path / "src", tmp_path / "app.git"
        _git("init", "-q", "-b", "main", str(src))
        (src / "README").write_text("hello from the repo\n")
        _git("add", "README", cwd=src)
        _git("commit", "-q", "-m", "first", cwd=src)
        _git("clone", "-q", "--bare", str(src), str(self.repo))
        self.state = tmp_path / "state"
        self.order = tmp_path / "order.log"
        self.gates = tmp_path / "gates"
        self.submitted: list[str] = []
        self.config = tmp_path / "batchd.yaml"
        self.config.write_text(CONFIG.format(state=self.state, log=tmp_path / "batchd.log",
                                             repo=self.repo))
        self.layout = Layout(self.state)
        self.batchd: subprocess.Popen[bytes] | None = None
        self.seen: dict[str, int] = {}

    def start(self) -> None:
        """Start batchd; return once this batchd's scheduler and locks worker are ready."""
        self.batchd = subprocess.Popen(
            [sys.executable, "-m", "supervisor.batchd", "-c", str(self.config)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready("scheduler")
        self.wait_ready("locks")

    def wait_ready(self, worker: str) -> int:
        """The pid of a `worker` newer than the last one seen, child of our batchd, ready."""
        batchd = self.batchd
        assert batchd is not None

        def ready() -> int | None:
            assert batchd.poll() is None, f"batchd exited {batchd.returncode}"
            rec = read_record(READY, self.layout.ready_file(worker), owner=False)
            if (isinstance(rec, dict) and rec["pid"] != self.seen.get(worker)
                    and alive(rec["pid"], rec["start"]) and _ppid(rec["pid"]) == batchd.pid):
                return int(rec["pid"])
            return None

        self.seen[worker] = until(f"the {worker}'s ready record", ready)
        return self.seen[worker]

    def kill9(self) -> None:
        """SIGKILL batchd (its workers die with it); jobs must live on."""
        assert self.batchd is not None
        self.batchd.kill()
        self.batchd.wait(DEADLINE)
        until("the workers to die with batchd",
              lambda: not any(alive(pid, None) for pid in self.seen.values()))

    def close(self) -> None:
        """Open every gate (no job is left looping), then stop batchd."""
        if self.gates.is_dir():
            for job_id in self.submitted:
                self.open(job_id)
        if self.batchd is not None and self.batchd.poll() is None:
            self.batchd.terminate()
            try:
                self.batchd.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.batchd.kill()
                self.batchd.wait(DEADLINE)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [sys.executable, "-m", "supervisor.ctl", "-c", str(self.config), *args],
            cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, check=False)
        assert 0 == run.returncode, f"batchctl {' '.join(args)}: {run.stderr}"
        return run

    def submit(self, job_id: str, repo: str, *extra: str, gated: bool = False) -> None:
        """A job that logs its start and end, waiting for its gate in between (open at
        once unless `gated`), in its workspace (the clone)."""
        self.gates.mkdir(exist_ok=True)
        self.submitted.append(job_id)
        if not gated:
            self.open(job_id)
        prompt = (f"test -f README && echo start-$BATCHD_JOB_ID >> {self.order}; "
                  f"while [ ! -e {self.gates}/$BATCHD_JOB_ID ]; do sleep 0.05; done; "
                  f"echo end-$BATCHD_JOB_ID >> {self.order}")
        self.ctl("submit", "--agent", "shell", "--id", job_id, "--repo", repo, "--prompt",
                 prompt, *extra)

    def open(self, *job_ids: str) -> None:
        for job_id in job_ids:
            (self.gates / job_id).touch()

    def locks(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.ctl("locks", "--json").stdout)
        return doc

    def states(self, *job_ids: str) -> list[str | None]:
        if not self.layout.wal_dir.is_dir():
            return [None] * len(job_ids)
        queue = JobQueue.open(self.layout.wal_dir, readonly=True)
        try:
            return [queue.state(job_id) for job_id in job_ids]
        finally:
            queue.close()

    def wait_done(self, *job_ids: str) -> None:
        until(f"{', '.join(job_ids)} completed",
              lambda: self.states(*job_ids) == ["completed"] * len(job_ids))

    def log(self) -> list[str]:
        return self.order.read_text().split() if self.order.exists() else []


def serial(*job_ids: str) -> list[str]:
    """The log of jobs that ran one after the other, in this order."""
    return [f"{edge}-{job_id}" for job_id in job_ids for edge in ("start", "end")]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def holders(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(h["repo"], h["job"]) for h in doc["held"]]


def test_an_exclusive_repository_runs_one_job_at_a_time_in_fifo_order(env: Env) -> None:
    """Three jobs on `app` (exclusive): while the first runs, the others are `waiting` and
    `locks --json` shows the holder and the queue in order; then they run one by one."""
    env.start()
    env.submit("e1", "app", gated=True)
    env.submit("e2", "app")
    env.submit("e3", "app")
    until("e1 running, e2 and e3 waiting",
          lambda: env.states("e1", "e2", "e3") == ["running", "waiting", "waiting"])
    doc = env.locks()
    assert ([("app", "e1")], {"app": ["e2", "e3"]}, []) == (
        holders(doc), doc["waiting"], doc["unavailable"])
    until("e1 started", lambda: ["start-e1"] == env.log())
    env.open("e1")
    env.wait_done("e1", "e2", "e3")
    assert serial("e1", "e2", "e3") == env.log()
    assert {"held": [], "waiting": {}, "unavailable": []} == env.locks()


def test_a_shared_repository_is_released_after_the_clone(env: Env) -> None:
    """Two jobs on `lib` (not exclusive) run at the same time: each holds the lock only
    while its workspace is cloned. One submitted --exclusive holds it for its whole run,
    and a job after it waits."""
    env.start()
    env.submit("n1", "lib", gated=True)
    env.submit("n2", "lib", gated=True)
    until("n1 and n2 running together, no lock held",
          lambda: env.states("n1", "n2") == ["running", "running"] and not env.locks()["held"])
    env.submit("x", "lib", "--exclusive", gated=True)
    until("x running and holding lib",
          lambda: env.states("x") == ["running"] and holders(env.locks()) == [("lib", "x")])
    env.submit("y", "lib")
    until("y waiting", lambda: env.locks()["waiting"] == {"lib": ["y"]})
    env.open("n1", "n2", "x")
    env.wait_done("n1", "n2", "x", "y")
    log = env.log()
    assert {"start-n1", "start-n2", "start-x"} == set(log[:3])
    assert serial("y") == log[-2:]
    assert {"held": [], "waiting": {}, "unavailable": []} == env.locks()


def test_fifo_survives_the_locks_worker_sigkilled(env: Env) -> None:
    """SIGKILL the locks worker while jobs wait (and submit one more meanwhile): batchd
    restarts it, it recovers its table, and all run in submission order."""
    env.start()
    env.submit("k1", "app", gated=True)
    env.submit("k2", "app")
    env.submit("k3", "app")
    until("k2 and k3 waiting", lambda: env.locks()["waiting"] == {"app": ["k2", "k3"]})
    os.kill(env.seen["locks"], signal.SIGKILL)
    env.submit("k4", "app")
    env.wait_ready("locks")
    env.submit("k5", "app")
    until("k4 and k5 waiting", lambda: env.locks()["waiting"] == {"app": ["k2", "k3", "k4",
                                                                          "k5"]})
    env.open("k1")
    env.wait_done("k1", "k2", "k3", "k4", "k5")
    assert serial("k1", "k2", "k3", "k4", "k5") == env.log()


def test_an_exclusive_lock_outlives_batchd_sigkilled(env: Env) -> None:
    """SIGKILL batchd while an exclusive job runs: after the restart the lock is still held
    by that job (re-attached) until it completes; the waiting job runs only then."""
    env.start()
    env.submit("b1", "app", gated=True)
    env.submit("b2", "app")
    until("b1 running, b2 waiting", lambda: env.states("b1", "b2") == ["running", "waiting"])
    env.kill9()
    env.start()
    doc = env.locks()
    assert ["running", "waiting"] == env.states("b1", "b2")
    assert ([("app", "b1")], {"app": ["b2"]}) == (holders(doc), doc["waiting"])
    env.open("b1")
    env.wait_done("b1", "b2")
    assert serial("b1", "b2") == env.log()


def _made_ahead(env: Env, job_id: str) -> Path | None:
    """The workspace made ahead for `job_id` (its staging folder, README checked out), or
    None."""
    ws = env.state / "workspaces"
    names = [n for n in os.listdir(ws) if n.startswith(f".prep.{job_id}+")] \
        if ws.is_dir() else []
    return ws / names[0] if names and (ws / names[0] / "README").is_file() else None


def _prep_left(env: Env) -> list[str]:
    """Staging folders left in the workspaces' folder (half made or made ahead)."""
    ws = env.state / "workspaces"
    return sorted(n for n in os.listdir(ws) if n.startswith(".prep.")) if ws.is_dir() else []


def _head(path: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()


def _base(env: Env, job_id: str) -> str:
    doc = json.loads(env.ctl("status", job_id, "--json").stdout)
    return str(doc["changes"]["app"]["base"])


def test_the_next_job_s_workspace_is_made_while_the_holder_runs(env: Env) -> None:
    """a2 waits behind a1 (exclusive, gated): its workspace is made meanwhile, in a
    staging folder of its own; at the grant that very folder is renamed into place (the
    same file), and a2 runs in a clone of the remote's commit, nothing left behind."""
    env.start()
    env.submit("a1", "app", gated=True)
    env.submit("a2", "app")
    made = until("a2's workspace made ahead", lambda: _made_ahead(env, "a2"))
    inode = (made / "README").stat().st_ino
    assert ["running", "waiting"] == env.states("a1", "a2")
    env.open("a1")
    env.wait_done("a1", "a2")
    tip, ws = _head(env.repo), env.state / "workspaces" / "a2"
    assert (serial("a1", "a2"), tip, tip, [], inode) == (
        env.log(), _head(ws), _base(env, "a2"), _prep_left(env), (ws / "README").stat().st_ino)


def test_a_commit_pushed_while_the_next_job_waits_is_in_its_workspace(env: Env,
                                                                      tmp_path: Path) -> None:
    """The remote moves after a2's workspace was made ahead: at the grant the mirror is
    fetched, the one made ahead is not the clone it would make, so a2 gets a fresh clone
    at the new commit (its base), and the stale one is removed."""
    env.start()
    env.submit("m1", "app", gated=True)
    env.submit("m2", "app")
    until("m2's workspace made ahead", lambda: _made_ahead(env, "m2"))
    src = tmp_path / "src"
    (src / "README").write_text("moved on\n")
    _git("commit", "-q", "-am", "moved", cwd=src)
    _git("push", "-q", str(env.repo), "main", cwd=src)
    env.open("m1")
    env.wait_done("m1", "m2")
    ws = env.state / "workspaces" / "m2"
    assert ("moved on\n", _head(env.repo), _head(env.repo)) == (
        (ws / "README").read_text(), _head(ws), _base(env, "m2"))
    until("the stale workspace made ahead removed", lambda: _prep_left(env) == [])


def test_a_workspace_made_ahead_by_a_killed_batchd_is_swept(env: Env) -> None:
    """SIGKILL batchd once k2's workspace is made ahead: the new scheduler knows none of
    it (memory only), removes the killed one's folder at its start (k2 still waits, so
    only a making can have left it), and makes k2's again (told by the lock table at its
    start and by the restarted locks worker); k2 runs in a good clone of the remote and
    nothing is left in staging."""
    env.start()
    env.submit("k1", "app", gated=True)
    env.submit("k2", "app")
    until("k2's workspace made ahead", lambda: _made_ahead(env, "k2"))
    env.kill9()
    env.start()
    env.open("k1")
    env.wait_done("k1", "k2")
    ws = env.state / "workspaces" / "k2"
    assert (serial("k1", "k2"), _head(env.repo)) == (env.log(), _head(ws))
    until("nothing left in staging", lambda: _prep_left(env) == [])
