"""Process-level proof of the jobs promise: jobs outlive batchd and are found again.

A real batchd (`python -m supervisor.batchd`), the real batchctl, real adaptors running
`shell` jobs (the command adaptor) and real SIGKILLs. Small timings: heartbeat 0.2 s,
stale_after 1 s, dead_after 3 s, kill_grace 1 s. Every wait is a condition polled with a
generous deadline; fixed sleeps never prove anything.
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
from typing import Any

import pytest

from supervisor.state.layout import RESULT, read_record
from tests.helpers import until
from tests.proc.harness import DEAD_AFTER, DEADLINE, EXPECTED, LINES_5S, ROOT, Env


def _five_jobs(env: Env) -> list[str]:
    ids = [f"five-{i}" for i in range(5)]
    jsonl = env.state.parent / "five.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "agent": "shell", "prompt": LINES_5S}) + "\n"
                             for i in ids))
    env.ctl("submit", "--from", str(jsonl))
    until("five running jobs", lambda: all(env.state_of(i) == "running" for i in ids))
    return ids


def _assert_five_done(env: Env, ids: list[str]) -> None:
    for job_id in ids:
        env.wait_state(job_id, "completed", "failed", "lost", "timed_out", "cancelled")
    for job_id in ids:
        rec, entry = env.record(job_id), env.entry(job_id)
        assert entry is not None
        assert ("completed", 1, None) == (rec["state"], rec["attempts"], rec["pid"])
        assert EXPECTED == env.output(job_id)
        assert entry.get("reattached", 0) >= 1, f"{job_id} was never re-attached"
    assert env.stats()["recovered"] >= 5
    until("no process of any job", lambda: [] == env.job_pids())


def test_jobs_survive_batchd_sigkilled_twice(env: Env) -> None:
    """Five 5-second jobs; batchd SIGKILLed twice and restarted: all complete, each output
    has every line once and in order, each job was started once and re-attached."""
    env.start()
    ids = _five_jobs(env)
    for at_least in (20, 50):
        until(f"{at_least} lines of output", lambda n=at_least: all(  # type: ignore[misc]
            env.lines(i) >= n for i in ids))
        env.kill9()
        did = env.start()["did"]
        assert (5, 0) == (did["reattached"] + did["stale"] + did["finalized"], did["lost"])
    _assert_five_done(env, ids)


def test_jobs_survive_the_scheduler_sigkilled(env: Env) -> None:
    """The same with the scheduler worker alone SIGKILLed (batchd restarts it) twice."""
    env.start()
    ids = _five_jobs(env)
    for at_least in (20, 50):
        until(f"{at_least} lines of output", lambda n=at_least: all(  # type: ignore[misc]
            env.lines(i) >= n for i in ids))
        os.kill(env.scheduler_pid, signal.SIGKILL)
        env.wait_scheduler()
    _assert_five_done(env, ids)


LOOP = "while true; do sleep 0.2; done"


def test_a_killed_adaptor_is_lost_and_leaves_no_process(env: Env) -> None:
    """SIGKILL of a job's adaptor: the job is `lost` within dead_after (plus slack), and
    its agent (the sh and its sleep, left in the group) is killed too."""
    env.start()
    env.submit("orphan", LOOP)
    env.wait_state("orphan", "running")
    sentinel = until("the agent's pid", lambda: (s := env.sentinel("orphan")) and
                     s["agent_pid"] and s)
    os.kill(sentinel["pid"], signal.SIGKILL)
    killed = time.monotonic()
    env.wait_state("orphan", "lost", deadline=DEAD_AFTER + 30)
    assert time.monotonic() - killed >= DEAD_AFTER - 1.0
    rec = env.record("orphan")
    assert ("lost", None) == (rec["state"], rec["pid"])
    assert rec["reason"].startswith("lost: no heartbeat")
    until("no process of the lost job", lambda: [] == env.job_pids("orphan"))
    assert 1 == env.stats()["lost"]


def test_a_killed_agent_fails_the_job_naming_signal_9(env: Env) -> None:
    """SIGKILL of the agent (the sh): failed, reason "killed by signal 9"."""
    env.start()
    env.submit("agentkill", LOOP)
    sentinel = until("the agent's pid", lambda: (s := env.sentinel("agentkill")) and
                     s["agent_pid"] and s)
    os.kill(sentinel["agent_pid"], signal.SIGKILL)
    env.wait_state("agentkill", "failed")
    rec = env.record("agentkill")
    assert ("failed", "killed by signal 9", None) == (rec["state"], rec["reason"],
                                                     rec["exit_code"])
    until("no process of the job", lambda: [] == env.job_pids("agentkill"))


def test_cancel_running_and_cancel_while_the_scheduler_is_stopped(env: Env) -> None:
    """cancel of a running job -> cancelled, no process left; a cancel written while the
    scheduler is stopped is carried out when it is started again."""
    env.start()
    env.submit("c1", LOOP)
    env.submit("c2", LOOP)
    env.wait_state("c1", "running")
    env.wait_state("c2", "running")
    env.ctl("cancel", "c1")
    env.wait_state("c1", "cancelled")
    rec = env.record("c1")
    assert ("cancelled", "cancelled by operator") == (rec["state"], rec["reason"])
    until("no process of c1", lambda: [] == env.job_pids("c1"))

    env.ctl("stop", "scheduler")
    env.ctl("cancel", "c2")
    assert env.job_pids("c2") and "running" == env.state_of("c2")
    env.ctl("start", "scheduler")
    env.wait_state("c2", "cancelled")
    until("no process of c2", lambda: [] == env.job_pids("c2"))
    assert 2 == env.stats()["cancelled"]


def test_timeout_is_kept_while_batchd_is_down(env: Env) -> None:
    """--timeout 1s on `sleep 30`, batchd SIGKILLed as soon as the job runs: the adaptor
    ends the job on time by itself; the restarted batchd records it timed_out."""
    env.start()
    env.submit("late", "sleep 30", "--timeout", "1s")
    env.wait_state("late", "running")
    env.kill9()
    result = until("the adaptor's result", lambda: isinstance(
        r := read_record(RESULT, env.layout.job_result("late"), owner=False), dict) and r,
        deadline=20)
    assert ("timed_out", True) == (result["reason"], result["timed_out"])
    assert result["duration_s"] < 10
    until("no process of the job", lambda: [] == env.job_pids("late"))
    ready = env.start()
    assert 1 == ready["did"]["finalized"]
    rec = env.record("late")
    assert ("timed_out", "timed out after 1s") == (rec["state"], rec["reason"])


def test_tail_follow_across_a_batchd_restart(env: Env) -> None:
    """`batchctl tail -f` started with the job and kept across a batchd SIGKILL + restart
    prints every line exactly once and ends with the job."""
    env.start()
    env.submit("tailed", LOOP.replace("while true", "for i in $(seq 1 60)").replace(
        "sleep 0.2", 'echo "line $i"; sleep 0.05'))
    env.wait_state("tailed", "running")
    tail = subprocess.Popen(
        [sys.executable, "-m", "supervisor.ctl", "-c", str(env.config),
         "tail", "tailed", "-n", "1000", "-f"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        until("some output", lambda: env.lines("tailed") >= 15)
        env.kill9()
        until("more output with batchd down", lambda: env.lines("tailed") >= 30)
        env.start()
        out, err = tail.communicate(timeout=DEADLINE)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert 0 == tail.returncode, err
    assert "".join(f"line {i}\n" for i in range(1, 61)) == out
    assert "completed" == env.record("tailed")["state"]


@pytest.mark.chaos
def test_chaos_random_kills_during_dispatch_and_run(env: Env) -> None:
    """Twenty 1-second jobs through four slots while batchd or the scheduler is SIGKILLed at
    random moments a dozen times (mid-dispatch included): every job completes with its
    output exactly once (no agent ever ran twice), and nothing is left running."""
    import random

    rng = random.Random(int(os.environ.get("CHAOS_SEED", "7")))
    env.config.write_text(env.config.read_text().replace("max_concurrent_jobs: 8",
                                                         "max_concurrent_jobs: 4"))
    env.start()
    ids = [f"chaos-{i:02d}" for i in range(20)]
    prompt = 'for i in $(seq 1 40); do echo "line $i"; sleep 0.025; done'
    jsonl = env.state.parent / "chaos.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "agent": "shell", "prompt": prompt}) + "\n"
                             for i in ids))
    env.ctl("submit", "--from", str(jsonl))
    for _ in range(12):
        time.sleep(rng.uniform(0.0, 0.6))
        if rng.random() < 0.5:
            env.kill9()
            env.start()
        else:
            os.kill(env.scheduler_pid, signal.SIGKILL)
            env.wait_scheduler()
    for job_id in ids:
        env.wait_state(job_id, "completed", "failed", "lost", "timed_out", "cancelled",
                       deadline=120)
    expected = "".join(f"line {i}\n" for i in range(1, 41))
    assert {i: ("completed", expected) for i in ids} \
        == {i: (env.record(i)["state"], env.output(i)) for i in ids}
    until("no process of any job", lambda: [] == env.job_pids())


# -- webhooks: the scheduler's events reach a real receiver through the callbacks worker -------

class _Hook(http.server.BaseHTTPRequestHandler):
    hits: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.hits.append((self.path, dict(self.headers.items()), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """A real HTTP server on 127.0.0.1 (port 0) recording every POST."""
    hits: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Hook", (_Hook,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_job_and_batch_webhooks_survive_a_sigkill_of_batchd(
        env: Env, receiver: tuple[str, list[tuple[str, dict[str, str], bytes]]]) -> None:
    """Two jobs of one batch with callbacks; batchd SIGKILLed while they run: after the
    restart each job's event arrives (Idempotency-Key = event_id) and the batch's event
    once both are terminal (at least once: replays carry the same key)."""
    url, hits = receiver
    env.start()
    env.submit("hook-a", "sleep 1; echo a", "--batch", "nightly", "--callback", f"{url}/a")
    env.submit("hook-b", "sleep 1; echo b", "--batch", "nightly", "--callback", f"{url}/b")
    env.wait_state("hook-a", "running")
    env.kill9()
    env.start()
    until("both job events and both batch events", lambda: {
        (p, json.loads(b).get("job", {}).get("id") or "batch") for p, _, b in hits}
        >= {("/a", "hook-a"), ("/b", "hook-b"), ("/a", "batch"), ("/b", "batch")})
    for path, headers, body in hits:
        doc = json.loads(body)
        assert (path, "application/json", doc["event_id"]) == (
            path, headers["Content-Type"], headers["Idempotency-Key"])
        if "batch" in doc:
            assert ({"batch": "nightly", "counts": {"completed": 2}, "done": True,
                     "jobs": ["hook-a", "hook-b"]}) == doc["batch"]
        else:
            assert "completed" == doc["job"]["state"]
