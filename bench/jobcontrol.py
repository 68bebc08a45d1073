"""Job-control benchmark: a scheduler pass over a long dependency chain, delayed starts,
`jobs` filters over 100,000 jobs.

    python -m bench.jobcontrol --json [--quick] [--dir DIR]

Printed as ONE JSON object:

- pass_ms_10000_deps / pass_ms_100_deps: one scheduler dispatch pass (in-process, the
  real scheduler code over an in-memory queue, launcher a no-op) with 10,000 (100) queued
  jobs in a chain, each `--after` the one before, the head running: the median of 200
  passes. Target: <= 5 ms, and the same order as with 100.
- pass_ms_10000_fanin: the same pass with one queued job `--after` 10,000 others, all
  finished but one (running). Target: <= 5 ms.
- delay_error_ms_p50/_p99: a real batchd (as many slots as jobs: the timer alone is
  measured); 40 `true` jobs (--quick: 20) submitted with --not-before spread over the next
  4 s; for each, its started_at (the adaptor runs) minus its not_before. Target p99 <= 50 ms.
  delay_dispatch_ms_*: the same to dispatched_at (the scheduler acts on the time).
- jobs_filter_ms_1e5: a WAL of 100,000 jobs (1,000 of them labelled team=infra);
  the wall time of `batchctl jobs --label team=infra --json` (process start included),
  the median of 5 runs.

Bytecode is compiled first, as an installed package's is (a checkout run with
PYTHONDONTWRITEBYTECODE would otherwise compile every module in every adaptor and batchctl
process).
  Target <= 300 ms.
"""

from __future__ import annotations

import argparse
import compileall
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import percentile, until
from bench.jobs import Daemon
from supervisor import log as _log
from supervisor.config import Config, LogConfig, SchedulerConfig
from supervisor.scheduler import dispatch as _dispatch
from supervisor.scheduler import queued as _queued
from supervisor.scheduler.launch import Launched
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.layout import Layout
from supervisor.state.queue import TERMINAL_STATES, JobQueue, MemoryStorage
from supervisor.state.submission import write_submission

ROOT = Path(__file__).resolve().parent.parent


def _noop_launcher(job_dir: Path, mode: str) -> Launched:
    return Launched(None, None, None)


def bench_pass(root: Path, n: int, passes: int = 200) -> float:
    """The median ms of one dispatch pass with n chained queued jobs, the head running."""
    cfg = Config(state_dir=root / f"state-{n}", workspace_dir=root / f"ws-{n}",
                 scheduler=SchedulerConfig(max_concurrent_jobs=4))
    queue = JobQueue.over(MemoryStorage())
    body = {"agent": "shell", "prompt": "true", "repos": [], "created_at": iso_now()}
    queue.enqueue_many([(f"c{i}", {**body, **({"after": [f"c{i - 1}"]} if i else {})})
                        for i in range(n)])
    queue.update("c0", state="running", pid=None, started_at=iso_now())
    jobs = _dispatch.Jobs.over(cfg, Layout(cfg.state_dir), queue, _log.get("bench"),
                               launcher=_noop_launcher)
    jobs.active.clear()                 # the head "runs" elsewhere: nothing to tick
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        _dispatch.dispatch(jobs)
        times.append((time.perf_counter() - t0) * 1000.0)
    assert len(_queued.index(queue, time.time())[0]) == n - 1
    return round(statistics.median(times), 3)


def bench_fanin(root: Path, n: int, passes: int = 200) -> float:
    """The median ms of one dispatch pass with one queued job `--after` n others, all
    finished but one, which runs: what the sink waits for is indexed, not rescanned."""
    cfg = Config(state_dir=root / f"fanin-{n}", workspace_dir=root / f"fanin-ws-{n}",
                 scheduler=SchedulerConfig(max_concurrent_jobs=4))
    queue = JobQueue.over(MemoryStorage())
    body = {"agent": "shell", "prompt": "true", "repos": [], "created_at": iso_now()}
    queue.enqueue_many([(f"f{i}", dict(body)) for i in range(n)]
                       + [("sink", {**body, "after": [f"f{i}" for i in range(n)]})])
    queue.update("f0", state="running", pid=None, started_at=iso_now())
    for i in range(1, n):
        queue.update(f"f{i}", state="completed", exit_code=0, finished_at=iso_now())
    jobs = _dispatch.Jobs.over(cfg, Layout(cfg.state_dir), queue, _log.get("bench"),
                               launcher=_noop_launcher)
    jobs.active.clear()
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        _dispatch.dispatch(jobs)
        times.append((time.perf_counter() - t0) * 1000.0)
    assert queue.state("sink") == "queued"
    return round(statistics.median(times), 3)


def bench_delay(root: Path, n: int) -> dict[str, float]:
    """started_at - not_before over n jobs delayed 0.5..4.5 s from now (a real batchd)."""
    d = Daemon(root / "delay", slots=n)      # never the global limit: the timer alone
    d.start()
    try:
        now = time.time()
        jobs = [{"id": f"d{i}", "agent": "shell", "prompt": "true", "repos": [],
                 "callback": None, "timeout": None, "batch": None, "exclusive": False,
                 "not_before": iso_now(now + 0.5 + 4.0 * i / n)} for i in range(n)]
        write_submission(d.layout, jobs)

        def done() -> list[dict[str, Any]] | None:
            q = JobQueue.open(d.layout.wal_dir, readonly=True)
            try:
                entries = [q.get(f"d{i}") for i in range(n)]
            finally:
                q.close()
            ok = all(e is not None and e["state"] in TERMINAL_STATES for e in entries)
            return [e for e in entries if e is not None] if ok else None

        entries = until("the delayed jobs to run", done, timeout=120, poll=0.2)
        def late(key: str) -> list[float]:
            return [((parse_iso(e[key]) or 0.0) - (parse_iso(e["not_before"]) or 0.0)) * 1000.0
                    for e in entries]
        errors, dispatched = late("started_at"), late("dispatched_at")
        return {"delay_error_ms_p50": percentile(errors, 50),
                "delay_error_ms_p99": percentile(errors, 99),
                "delay_error_ms_min": round(min(errors), 2),
                "delay_dispatch_ms_p50": percentile(dispatched, 50),
                "delay_dispatch_ms_p99": percentile(dispatched, 99)}
    finally:
        d.stop()


def bench_filter(root: Path, n: int, runs: int = 5) -> float:
    """The median wall ms of `batchctl jobs --label team=infra --json` over n jobs."""
    state = root / "filter" / "state"
    layout = Layout(state)
    layout.wal_dir.mkdir(parents=True)
    created = iso_now()
    with JobQueue.open(layout.wal_dir) as q:
        batch: list[tuple[str, dict[str, Any]]] = []
        for i in range(n):
            body: dict[str, Any] = {"agent": "shell", "prompt": "true", "repos": [],
                                    "created_at": created}
            if i % 100 == 0:
                body["labels"] = {"team": "infra"}
            batch.append((f"j{i:06d}", body))
            if len(batch) == 10_000:
                q.enqueue_many(batch)
                batch = []
        q.enqueue_many(batch)
    config = root / "filter" / "batchd.yaml"
    config.write_text(f"state_dir: {state}\n")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(config),
                              "jobs", "--label", "team=infra", "--json"], cwd=ROOT,
                             capture_output=True, check=True)
        times.append((time.perf_counter() - t0) * 1000.0)
        assert n // 100 == len(json.loads(out.stdout))
    return round(statistics.median(times), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobcontrol")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer delayed jobs")
    parser.add_argument("--dir", help="where to work (default: a temp dir)")
    args = parser.parse_args(argv)
    _log.setup(LogConfig(level="warning"), name="bench")
    for package in ("supervisor", "adaptors"):      # bytecode, as `pip install` leaves it
        compileall.compile_dir(ROOT / package, quiet=1)
    root = Path(args.dir or tempfile.mkdtemp(prefix="batchd-bench-jobcontrol-"))
    try:
        result: dict[str, Any] = {"quick": args.quick,
                                  "pass_ms_100_deps": bench_pass(root, 100),
                                  "pass_ms_10000_deps": bench_pass(root, 10_000),
                                  "pass_ms_10000_fanin": bench_fanin(root, 10_000)}
        result.update(bench_delay(root, 20 if args.quick else 40))
        result["jobs_filter_ms_1e5"] = bench_filter(root, 100_000)
        result["targets"] = {"pass_ms_10000_deps": 5, "pass_ms_10000_fanin": 5,
                             "delay_error_ms_p99": 50,
                             "jobs_filter_ms_1e5": 300}
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
