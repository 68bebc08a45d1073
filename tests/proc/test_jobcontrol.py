"""Job control with a real batchd: dependencies, priorities, delays, pause, agent limits,
retries, each across a SIGKILL of batchd where it matters."""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path
from typing import Any

from supervisor.state.clock import parse_iso
from tests.helpers import until
from tests.proc.harness import Env


def _runs(marks: Path) -> list[str]:
    """The job ids that ran, in order (each job appends its id to `marks` when it runs)."""
    return marks.read_text().split() if marks.exists() else []


def _mark(marks: Path, body: str = "") -> str:
    return f'echo "$BATCHD_JOB_ID" >> {marks}; {body}'


def _started(env: Env, job_id: str) -> float:
    rec = env.record(job_id)
    when = parse_iso(rec["started_at"])
    assert when is not None, rec
    return when


def test_a_diamond_with_a_failing_branch_survives_a_sigkill(tmp_path: Path) -> None:
    """a -> (b fails, c) -> d needs both: d fails as `dependency b failed` without running;
    e after c alone runs; f after-any b runs; batchd SIGKILLed while c runs: every job
    that runs runs exactly once."""
    env = Env(tmp_path)
    marks = tmp_path / "marks"
    gate = tmp_path / "gate"
    try:
        env.start()
        jobs = [
            {"id": "a", "prompt": _mark(marks)},
            {"id": "b", "prompt": _mark(marks, "exit 3"), "after": ["a"]},
            {"id": "c", "prompt": _mark(marks, f"until [ -e {gate} ]; do sleep 0.05; done"),
             "after": ["a"]},
            {"id": "d", "prompt": _mark(marks), "after": ["b", "c"]},
            {"id": "e", "prompt": _mark(marks), "after": ["c"]},
            {"id": "f", "prompt": _mark(marks), "after_any": ["b"]},
        ]
        jsonl = tmp_path / "diamond.jsonl"
        jsonl.write_text("".join(json.dumps({"agent": "shell", **j}) + "\n" for j in jobs))
        env.ctl("submit", "--from", str(jsonl))
        env.wait_state("c", "running")
        env.wait_state("d", "failed")
        env.kill9()
        env.start()
        gate.touch()
        for job_id in ("e", "f"):
            env.wait_state(job_id, "completed")
        states = {j["id"]: env.record(j["id"])["state"] for j in jobs}
        assert {"a": "completed", "b": "failed", "c": "completed", "d": "failed",
                "e": "completed", "f": "completed"} == states
        assert "dependency b failed" == env.record("d")["reason"]
        ran = _runs(marks)
        assert (["a", "b", "c", "e", "f"], len(ran)) == (sorted(set(ran)), len(set(ran)))
    finally:
        env.close()


def test_priorities_and_delays_hold_across_a_restart(tmp_path: Path) -> None:
    """One slot, a blocker running: low, high and mid priority jobs queue behind it; batchd
    SIGKILLed and started again; when the blocker ends they start high, mid, low. A job
    delayed 3 s starts after its time (not before), soon after it."""
    env = Env(tmp_path, max_jobs=1)
    gate = tmp_path / "gate"
    try:
        env.start()
        env.submit("blocker", f"until [ -e {gate} ]; do sleep 0.05; done")
        env.wait_state("blocker", "running")
        for job_id, priority in (("low", "-5"), ("high", "50"), ("mid", "0")):
            env.submit(job_id, "true", "--priority", priority)
        env.submit("later", "true", "--delay", "3s", "--priority", "1000")
        env.kill9()
        env.start()
        assert "queued" == env.record("high")["state"]
        gate.touch()
        for job_id in ("low", "later"):
            env.wait_state(job_id, "completed")
        order = sorted(("high", "mid", "low"), key=lambda j: _started(env, j))
        assert ["high", "mid", "low"] == order
        later = env.record("later")
        not_before = parse_iso(later["not_before"])
        assert not_before is not None
        assert 0.0 <= _started(env, "later") - not_before < 5.0, later
    finally:
        env.close()


def test_pause_survives_a_restart_and_resume_starts_the_queue(tmp_path: Path) -> None:
    """`pause` while batchd is down is kept (status says paused); a job submitted then
    stays queued with reason `paused` across a SIGKILL; `resume` starts it."""
    env = Env(tmp_path)
    try:
        assert 0 == env.ctl("pause").returncode
        assert json.loads(env.ctl("status", "--json").stdout)["paused"] is True
        env.start()
        env.submit("p1", "true")
        until("the scheduler to take p1", lambda: env.state_of("p1") == "queued")
        env.kill9()
        env.start()
        rec = env.record("p1")
        assert ("queued", "paused") == (rec["state"], rec["reason"])
        assert json.loads(env.ctl("status", "--json").stdout)["paused"] is True
        env.ctl("resume")
        env.wait_state("p1", "completed")
        assert json.loads(env.ctl("status", "--json").stdout)["paused"] is False
    finally:
        env.close()


def test_an_agent_limit_of_one_beside_a_free_agent(tmp_path: Path) -> None:
    """`slow` may run one job at a time: its three jobs never overlap, and while they run
    one by one the `shell` jobs submitted after them start at once (no head-of-line
    blocking); a queued slow job says why it waits."""
    env = Env(tmp_path, extra="agents:\n  slow: {adaptor: command, max_concurrent: 1}\n")
    gate = tmp_path / "gate"
    try:
        env.start()
        for i in range(3):
            env.ctl("submit", "--agent", "slow", "--id", f"s{i}", "--prompt",
                    f"until [ -e {gate} ]; do sleep 0.05; done; sleep 0.3")
        for i in range(2):
            env.submit(f"free{i}", "true")
        env.wait_state("free1", "completed")
        assert ["running", "queued", "queued"] == [env.state_of(f"s{i}") for i in range(3)]
        assert "agent limit (slow: 1)" == env.record("s2")["reason"]
        gate.touch()
        env.wait_state("s2", "completed")
        spans = sorted((_started(env, f"s{i}"),
                        parse_iso(env.record(f"s{i}")["finished_at"]) or 0.0) for i in range(3))
        assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    finally:
        env.close()


def _kill_job(env: Env, job_id: str, marks: Path) -> None:
    """Once the job's agent ran (it marked), SIGKILL its adaptor and group (no result:
    the job ends lost)."""
    until(f"{job_id} to run", lambda: job_id in _runs(marks))
    sentinel: dict[str, Any] | None = until(f"{job_id}'s sentinel",
                                           lambda: env.sentinel(job_id))
    assert sentinel is not None
    os.killpg(int(sentinel["pid"]), signal.SIGKILL)


def test_retries_two_on_a_job_sigkilled_twice(tmp_path: Path) -> None:
    """--retries 2: killed, it is lost and retried as a new job (retry_of, one retry less);
    killed again, retried again; the third run completes. Three runs, each once."""
    env = Env(tmp_path, extra="callbacks: {retry_schedule: [500ms, 500ms]}\n")
    marks, done = tmp_path / "marks", tmp_path / "done"
    try:
        env.start()
        env.submit("r", _mark(marks, f"until [ -e {done} ]; do sleep 0.05; done"),
                   "--retries", "2")
        env.wait_state("r", "running")
        _kill_job(env, "r", marks)
        env.wait_state("r", "lost")
        first = env.record("r")
        retry = until("the first retry", lambda: env.entry("r.r1"))
        assert ("r", 1) == (retry["retry_of"], retry["retries"])
        env.wait_state("r.r1", "running")
        _kill_job(env, "r.r1", marks)
        env.wait_state("r.r1", "lost")
        env.wait_state("r.r2", "running")
        done.touch()
        env.wait_state("r.r2", "completed")
        last = env.record("r.r2")
        assert ("r.r1", 0, "lost") == (last["retry_of"], last["retries"], first["state"])
        assert ["r", "r.r1", "r.r2"] == _runs(marks)
        assert 3 == env.stats()["submitted"]
    finally:
        env.close()
