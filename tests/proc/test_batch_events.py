"""Process test of batch events: a real batchd, real `batchctl submit`s, a real HTTP
receiver on 127.0.0.1, and a real SIGKILL of batchd inside the settle window.

A batch whose jobs come from three `submit` calls, each job ending before the next call,
becomes "done" three times with three member sets; with `callbacks.batch_settle` each
distinct callback URL still gets exactly one batch event, listing all three jobs, even
when batchd is SIGKILLed after the last job ended and before the window closed.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.clock import parse_iso
from supervisor.state.layout import READY, Layout, read_record
from supervisor.state.proc import alive
from supervisor.state.queue import TERMINAL_STATES, JobQueue
from tests.helpers import until

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0
SETTLE = 3.0

CONFIG = """\
state_dir: {state}
log: {{level: info, format: json, file: {log}}}
launcher: direct
scheduler: {{max_concurrent_jobs: 4, heartbeat_interval: 0.2, stale_after: 1, dead_after: 3,
            kill_grace: 1}}
workers:
  scheduler: {{startsecs: 0.1, stopwaitsecs: 5}}
  locks: {{startsecs: 0.1, stopwaitsecs: 5}}
  reaper: {{startsecs: 0.1, stopwaitsecs: 5}}
  callbacks: {{startsecs: 0.1, stopwaitsecs: 5}}
callbacks: {{batch_settle: {settle}s, retry_schedule: [200ms, 200ms]}}
"""


class Env:
    """A state dir and config, a batchd to start and SIGKILL, batchctl, the WAL read-only."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "batchd.yaml"
        self.config.write_text(CONFIG.format(state=tmp_path / "state",
                                             log=tmp_path / "batchd.log", settle=SETTLE))
        self.layout = Layout(tmp_path / "state")
        self.batchd: subprocess.Popen[bytes] | None = None
        self.seen: dict[str, int] = {}

    def start(self) -> None:
        """Start batchd; return once this batchd's scheduler and callbacks are ready."""
        self.batchd = subprocess.Popen(
            [sys.executable, "-m", "supervisor.batchd", "-c", str(self.config)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for worker in ("scheduler", "callbacks"):
            self.seen[worker] = until(f"the {worker}'s ready record",
                                      lambda w=worker: self._ready(w))

    def _ready(self, worker: str) -> int | None:
        assert self.batchd is not None and self.batchd.poll() is None, "batchd exited"
        rec = read_record(READY, self.layout.ready_file(worker), owner=False)
        if isinstance(rec, dict) and rec["pid"] != self.seen.get(worker) \
                and alive(rec["pid"], rec["start"]):
            return int(rec["pid"])
        return None

    def kill9(self) -> None:
        """SIGKILL batchd; its workers die with it."""
        assert self.batchd is not None
        self.batchd.send_signal(signal.SIGKILL)
        self.batchd.wait(DEADLINE)
        until("the workers to die with batchd",
              lambda: not any(alive(pid, None) for pid in self.seen.values()))

    def close(self) -> None:
        if self.batchd is not None and self.batchd.poll() is None:
            self.batchd.send_signal(signal.SIGTERM)
            try:
                self.batchd.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.batchd.kill()
                self.batchd.wait()

    def submit(self, job_id: str, *extra: str) -> None:
        run = subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(self.config),
                              "submit", "--agent", "shell", "--id", job_id, "--prompt", "true",
                              *extra], cwd=ROOT, capture_output=True, text=True,
                             timeout=DEADLINE, check=False)
        assert 0 == run.returncode, run.stderr

    def entry(self, job_id: str) -> dict[str, Any] | None:
        queue = JobQueue.open(self.layout.wal_dir, readonly=True)
        try:
            return queue.get(job_id)
        finally:
            queue.close()

    def ended(self, job_id: str) -> dict[str, Any] | None:
        entry = self.entry(job_id)
        return entry if entry is not None and entry["state"] in TERMINAL_STATES else None


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


@pytest.fixture
def hits() -> Iterator[tuple[str, list[tuple[str, dict[str, Any], float]]]]:
    """A real HTTP receiver on 127.0.0.1 (port 0): every POST as (path, JSON body, when)."""
    got: list[tuple[str, dict[str, Any], float]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.append((self.path, json.loads(body), time.time()))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()


def test_a_batch_from_three_submits_gets_one_event_per_url_across_a_sigkill(
        env: Env, hits: tuple[str, list[tuple[str, dict[str, Any], float]]]) -> None:
    """Jobs a (-> /one), b (-> /two), c (-> /one) of batch B from three submits, each
    ending before the next is submitted; batchd SIGKILLed right after c ended (inside the
    settle window, before any batch event was POSTed); after the restart /one and /two
    each get exactly one batch event, listing a, b and c, no earlier than the window."""
    url, got = hits
    os.environ.setdefault("NO_PROXY", "127.0.0.1")
    env.start()
    for job_id, path in (("a", "/one"), ("b", "/two"), ("c", "/one")):
        env.submit(job_id, "--batch", "B", "--callback", f"{url}{path}")
        until(f"job {job_id} to end", lambda j=job_id: env.ended(j))
    env.kill9()
    killed_at = time.time()
    last = env.ended("c")
    assert last is not None
    ended_at = parse_iso(last["finished_at"])
    assert ended_at is not None and killed_at - ended_at < SETTLE, "not inside the window"
    assert [] == [p for p, body, _ in got if "batch" in body]

    env.start()
    until("a batch event at each URL", lambda: {p for p, body, _ in got if "batch" in body}
          == {"/one", "/two"}, deadline=DEADLINE)
    time.sleep(SETTLE + 1.0)         # a later (double) event would have arrived by now
    batch = [(p, body, at) for p, body, at in got if "batch" in body]
    assert ["/one", "/two"] == sorted(p for p, _, _ in batch)
    for _, body, at in batch:
        assert {"batch": "B", "counts": {"completed": 3}, "done": True,
                "jobs": ["a", "b", "c"]} == body["batch"]
        assert at >= ended_at + SETTLE - 0.05
    assert 2 == len({body["event_id"] for _, body, _ in batch})
    jobs = sorted({body["job"]["id"] for _, body, _ in got if "job" in body})
    assert ["a", "b", "c"] == jobs
