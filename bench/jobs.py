"""Jobs benchmark: submit-to-running latency, re-attachment after a crash, bulk submission.

    python -m bench.jobs --json [--quick] [--dir DIR]

Every figure runs a real batchd (`python -m supervisor.batchd`, launcher direct) on a
fresh state directory under DIR (default: a temp dir), with real adaptors running `shell`
jobs. Printed as ONE JSON object:

- submit_to_running_ms_p50/p99: 200 jobs of `true` (--quick: 50) submitted one at a time
  through batchctl's code path (supervisor.state.submission: Checker.check, assign_ids,
  write_submission) on an otherwise idle batchd; each is timed from the moment
  write_submission returned (the request is durable) to the `started_at` of the job's
  running record in the WAL (the scheduler's clock right after the adaptor exists). The
  next job is submitted once the previous one is terminal.
- reattach_ms_100: 100 running `sleep` jobs; batchd SIGKILLed; a new batchd started; the
  wall time from its Popen until the scheduler's ready record reports all 100 re-attached
  (process start, imports, the fork of the scheduler and its recovery included).
  reattach_recovery_ms_100 is the scheduler's own recovery (its ready record's duration_ms).
- submit_cli_per_s: `batchctl submit --from FILE` of 100,000 lines (--quick: 20,000), the
  wall time of the batchctl process (batchd not running: submission is file-only).
- scheduler_ingest_100k_s: the scheduler's handling of that one request (inbox read,
  checks, one enqueue_many, the counter), timed in-process with no dispatching.

Targets: p50 <= 20 ms, p99 <= 100 ms, reattach <= 1000 ms, submit --from >= 20,000 jobs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import percentile, stop, until
from supervisor import log as _log
from supervisor.config import Config, LogConfig, SchedulerConfig
from supervisor.state.clock import parse_iso
from supervisor.state.layout import READY, Layout, read_record
from supervisor.state.proc import alive
from supervisor.state.queue import TERMINAL_STATES, JobQueue
from supervisor.state.submission import Checker, Known, assign_ids, write_submission

DEADLINE = 120.0


def _at(entry: dict[str, Any], key: str) -> float:
    """An instant of a WAL entry (ISO text) as epoch seconds."""
    when = parse_iso(entry.get(key))
    if when is None:
        raise ValueError(f"job {entry.get('id')}: no {key}")
    return when
ROOT = Path(__file__).resolve().parent.parent

CONFIG = """\
state_dir: {state}
log: {{level: warning, format: json, file: {log}}}
launcher: direct
scheduler: {{max_concurrent_jobs: {slots}, heartbeat_interval: 1, stale_after: 10,
            dead_after: 30, kill_grace: 1}}
"""


class Daemon:
    """One state dir with its config; a batchd to start, SIGKILL and stop."""

    def __init__(self, root: Path, *, slots: int) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.config = root / "batchd.yaml"
        self.config.write_text(CONFIG.format(state=root / "state", log=root / "batchd.log",
                                             slots=slots))
        self.layout = Layout(root / "state")
        self.proc: subprocess.Popen[bytes] | None = None
        self.scheduler_pid = 0

    def start(self) -> dict[str, Any]:
        """Start batchd; the scheduler's (new) ready record once written."""
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.batchd",
                                      "-c", str(self.config)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self.wait_ready()

    def wait_ready(self, done: Callable[[dict[str, Any]], bool] = lambda rec: True,
                   poll: float = 0.002) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc is not None and self.proc.poll() is None, "batchd exited"
            rec = read_record(READY, self.layout.ready_file("scheduler"), owner=False)
            if isinstance(rec, dict) and rec["pid"] != self.scheduler_pid and done(rec):
                return rec
            return None
        rec: dict[str, Any] = until("the scheduler's ready record", ready, poll=poll)
        self.scheduler_pid = rec["pid"]
        return rec

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        until("the scheduler to die", lambda: not alive(self.scheduler_pid, None))

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, DEADLINE)

    def queue(self) -> JobQueue:
        return JobQueue.open(self.layout.wal_dir, readonly=True)

    def kill_jobs(self) -> None:
        """SIGKILL the process group of every starting/running job (verified pid + start)."""
        q = self.queue()
        try:
            for job_id in q.ids("running") + q.ids("starting"):
                entry = q.get(job_id) or {}
                pid, start = entry.get("pid"), entry.get("start")
                if isinstance(pid, int) and alive(pid, start):
                    os.killpg(pid, signal.SIGKILL)
        finally:
            q.close()


def _cfg(root: Path) -> Config:
    return Config(state_dir=root / "state", workspace_dir=root / "state" / "workspaces",
                  scheduler=SchedulerConfig())


def bench_latency(root: Path, n: int) -> dict[str, Any]:
    """submit_to_running_ms: n `true` jobs, one at a time, each after the last is over."""
    d = Daemon(root, slots=4)
    d.start()
    checker = Checker(Known(agents=frozenset(_cfg(root).agents), repos=frozenset(),
                            ids=frozenset()))
    durable: dict[str, float] = {}
    try:
        for i in range(n):
            jobs = [checker.check({"agent": "shell", "prompt": "true", "id": f"lat-{i}"})]
            assign_ids(jobs, frozenset())
            write_submission(d.layout, jobs)
            durable[jobs[0]["id"]] = time.time()

            def over(job_id: str = jobs[0]["id"]) -> bool:
                q = d.queue()
                try:
                    return q.state(job_id) in TERMINAL_STATES
                finally:
                    q.close()
            until(f"job {jobs[0]['id']} to end", over, poll=0.005)
        q = d.queue()
        try:
            entries = {job_id: q.get(job_id) or {} for job_id in durable}
        finally:
            q.close()
    finally:
        d.stop()
    states = {e.get("state") for e in entries.values()}
    lat = [(_at(entries[j], "started_at") - t) * 1000.0 for j, t in durable.items()]
    # the two halves: durable -> dispatch began (inbox hint, ingest), dispatch -> running
    # (WAL starting, workspace, spec, fork + exec of the adaptor)
    to_dispatch = [(_at(entries[j], "dispatched_at") - t) * 1000.0 for j, t in durable.items()]
    launching = [(_at(e, "started_at") - _at(e, "dispatched_at")) * 1000.0
                 for e in entries.values()]
    return {"submit_to_running_ms_p50": percentile(lat, 50),
            "submit_to_running_ms_p99": percentile(lat, 99),
            "submit_to_running_ms_max": round(max(lat), 2),
            "submit_to_dispatch_ms_p50_p99": [percentile(to_dispatch, 50),
                                              percentile(to_dispatch, 99)],
            "dispatch_to_running_ms_p50_p99": [percentile(launching, 50),
                                               percentile(launching, 99)],
            "submit_to_running_jobs": n,
            "submit_to_running_states": sorted(str(s) for s in states)}


def bench_reattach(root: Path, n: int) -> dict[str, Any]:
    """reattach_ms: n running `sleep` jobs, batchd SIGKILLed, a new one until all re-attached."""
    d = Daemon(root, slots=n)
    d.start()
    jsonl = root / "sleepers.jsonl"
    jsonl.write_text("".join(json.dumps({"agent": "shell", "prompt": "sleep 600",
                                         "id": f"sleep-{i}"}) + "\n" for i in range(n)))
    try:
        subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(d.config),
                        "submit", "--from", str(jsonl)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, timeout=DEADLINE)

        def all_running() -> bool:
            q = d.queue()
            try:
                return q.counts()["running"] == n
            finally:
                q.close()
        until("every sleeper running", all_running, poll=0.05)
        d.kill9()
        t0 = time.monotonic()
        d.proc = subprocess.Popen([sys.executable, "-m", "supervisor.batchd",
                                   "-c", str(d.config)], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rec = d.wait_ready(lambda r: int(r["did"].get("reattached", 0)) == n, poll=0.001)
        wall = (time.monotonic() - t0) * 1000.0
    finally:
        d.stop()
        d.kill_jobs()
    return {f"reattach_ms_{n}": round(wall, 1),
            f"reattach_recovery_ms_{n}": rec["duration_ms"],
            "reattach_did": rec["did"]}


def bench_submit_cli(root: Path, n: int) -> dict[str, Any]:
    """submit_cli_per_s: batchctl submit --from with n lines (batchd not running);
    scheduler_ingest_s: the scheduler's handling of the resulting request, in-process."""
    d = Daemon(root, slots=4)
    jsonl = root / "many.jsonl"
    jsonl.write_text("".join(json.dumps({"agent": "shell", "prompt": "true", "batch": "b"})
                             + "\n" for _ in range(n)))
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(d.config),
                    "submit", "--from", str(jsonl)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, timeout=DEADLINE)
    cli_s = time.monotonic() - t0

    from supervisor import scheduler
    from supervisor.runtime import handle_inbox

    cfg = _cfg(root)
    s, _, _, _ = scheduler.recover(cfg, d.layout, _log.get("bench"))
    try:
        t0 = time.monotonic()
        handle_inbox(d.layout.inbox("scheduler"), scheduler.HANDLERS, s, s.log)
        ingest_s = time.monotonic() - t0
        queued = s.queue.counts()["queued"]
    finally:
        s.queue.close()
    assert queued == n, f"{queued} of {n} jobs ingested"
    return {"submit_cli_per_s": round(n / cli_s), "submit_cli_lines": n,
            f"scheduler_ingest_{n // 1000}k_s": round(ingest_s, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer jobs (under a minute)")
    parser.add_argument("--dir", help="where the state dirs go (default: a temp dir)")
    args = parser.parse_args(argv)
    _log.setup(LogConfig(level="warning"), name="bench")
    base = Path(tempfile.mkdtemp(prefix="bench-jobs-", dir=args.dir))
    try:
        out: dict[str, Any] = {"quick": args.quick}
        out.update(bench_latency(base / "latency", 50 if args.quick else 200))
        out.update(bench_reattach(base / "reattach", 100))
        out.update(bench_submit_cli(base / "submit", 20_000 if args.quick else 100_000))
        out["targets"] = {"submit_to_running_ms_p50": 20, "submit_to_running_ms_p99": 100,
                          "reattach_ms_100": 1000, "submit_cli_per_s": 20_000}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:34} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
