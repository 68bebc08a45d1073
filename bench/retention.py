"""Retention benchmark: a million jobs through the queue, and what is left of them.

    python -m bench.retention --json [--quick] [--dir DIR]

The real `JobQueue` on disk (a real WAL under DIR, default a temp dir; never a tmpfs),
driven in-process as the scheduler and the reaper drive it: 10,000 live jobs queued at
every moment; jobs submitted with `enqueue_many` (1,000 per request, count=submitted),
dispatched (running: dispatched_at, started_at, pid) and finished (completed: finished_at,
exit_code, session_id; counters in the same write) with `update_many` in batches of
1,000; the 5,000 most recently finished kept (the retention window), the older ones
forgotten 1,000 at a time as the reaper's steps do: their contract records (the records
the reaper archives: `state.jobs.job_record` of the queue entry, plus `forgotten_at`)
appended to `history/` with `state.archive.append`, then `JobQueue.forget`. Job ids have
`new_job_id`'s form, jobs are submitted 2.6 s apart (a million jobs is a month) and run
5 s to 30 min (seeded random), session ids are UUIDs.
Printed as ONE JSON object (--quick: 100,000 jobs instead of 1,000,000, keys `_1e5`):

- state_bytes_1e6: the WAL folder's bytes (snapshot + segments) after 1,000,000 jobs went
  through; state_bytes_1e4: the same run with 10,000 jobs through. Target: the first
  <= 2 x the second (state follows what is live and recent, not history).
- recover_ms_after_1e6: `JobQueue.open` of that WAL (as the scheduler opens it, 10,000
  live jobs in it) until `first_queued()` answers: the queue is closed and opened again
  before each of the last 20 batches and once at the end (a scheduler restarting at 21
  moments of the compaction cycle: a tail to replay from none to the thresholds' limit);
  the median, and _max the slowest (the longest tail). Target <= 50 ms.
  recover_ms_after_1e4(_max): the same in the 1e4 run (it has 10 batches: before each).
- archive_bytes_per_job: history/ bytes / jobs archived in the 1e6 run.
- the run's wall time, split into queue work and archiving.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.queue import is_tmpfs
from supervisor import log as _log
from supervisor.config import LogConfig
from supervisor.state import archive
from supervisor.state.jobs import job_record
from supervisor.state.layout import Layout
from supervisor.state.queue import JobQueue

__all__ = ["main", "run"]

LIVE = 10_000
RECENT = 5_000
BATCH = 1000
T0 = 1_767_225_600.0            # 2026-01-01T00:00:00Z
STEP = 2.6                      # simulated seconds between two jobs


_DAYS: dict[int, str] = {}


def _iso(t: float) -> str:
    """An instant in state.clock.iso_now's form, three times faster (the benchmark makes
    millions; a millisecond may round the other way)."""
    secs, frac = divmod(round(t * 1_000_000), 1_000_000)
    day, s = divmod(secs, 86400)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%dT")
    return f"{date}{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{frac // 1000:03d}Z"


def _job_id(t: float, rng: random.Random) -> str:
    """An id as state.jobs.new_job_id makes them: 20260101T000000-3fa9c1d2."""
    stamp = _iso(t)
    return (f"{stamp[0:4]}{stamp[5:7]}{stamp[8:10]}T{stamp[11:13]}{stamp[14:16]}"
            f"{stamp[17:19]}-{rng.getrandbits(32):08x}")


def _body(job_id: str, k: int, workspaces: str) -> dict[str, Any]:
    """A job as the scheduler enqueues it (a checked submission, created_at, workspace)."""
    return {"id": job_id, "agent": "claude" if k % 3 else "shell",
            "prompt": f"Fix issue #{k % 9973} in the payments service and open a PR",
            "repos": ["app"], "callback": "http://127.0.0.1:8080/hook", "timeout": None,
            "batch": f"nightly-{k // 5000}", "exclusive": False,
            "labels": {"team": "infra" if k % 7 else "web"},
            "created_at": _iso(T0 + k * STEP), "workspace": workspaces + job_id}


def _bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())


def _open(layout: Layout) -> tuple[JobQueue, float]:
    """The queue opened as the scheduler opens it, and the ms until it could dispatch."""
    t0 = time.perf_counter()
    q = JobQueue.open(layout.wal_dir)
    q.first_queued()
    ms = (time.perf_counter() - t0) * 1000.0
    assert not q.recovery.errors, q.recovery.errors
    return q, ms


def run(root: Path, through: int, *, live: int = LIVE, recent: int = RECENT,
        batch: int = BATCH, restarts: int = 20) -> dict[str, Any]:
    """`through` jobs submitted, finished and (but the `recent` last) forgotten, with
    `live` queued at every moment; the figures of the module docstring. In the last
    `restarts` batches the queue is closed and opened again (a scheduler restart) before
    each batch: the tail to replay differs at each, as the compaction cycle goes."""
    layout = Layout(root / "state")
    layout.wal_dir.mkdir(parents=True)
    rng = random.Random(through)
    workspaces = f"{layout.root}/workspaces/"
    queued: deque[str] = deque()
    finished: deque[str] = deque()
    made = archived = 0
    queue_s = archive_s = 0.0
    opens: list[float] = []
    t_start = time.perf_counter()
    q = JobQueue.open(layout.wal_dir)
    try:
        def submit(n: int) -> None:
            nonlocal made
            jobs = []
            for _ in range(n):
                job_id = _job_id(T0 + made * STEP, rng)
                jobs.append((job_id, _body(job_id, made, workspaces)))
                made += 1
            q.enqueue_many(jobs, count="submitted")
            queued.extend(job_id for job_id, _ in jobs)

        for _ in range(0, live, batch):
            submit(min(batch, live - len(queued)))
        done = 0
        while done < through:
            if through - done <= restarts * batch:
                q.close()
                q, ms = _open(layout)
                opens.append(ms)
            t0 = time.perf_counter()
            n = min(batch, through - done)
            submit(n)
            ids = [queued.popleft() for _ in range(n)]
            at = T0 + made * STEP
            took = [rng.uniform(5.0, 1800.0) for _ in ids]
            q.update_many([(j, {"state": "running", "dispatched_at": _iso(at - t - 1),
                                "started_at": _iso(at - t), "pid": rng.randrange(2, 4 << 20),
                                "start": rng.randrange(1 << 30)})
                           for j, t in zip(ids, took, strict=True)])
            q.update_many([(j, {"state": "completed", "finished_at": _iso(at),
                                "exit_code": 0, "reason": None, "signal": None,
                                "session_id": str(uuid.UUID(int=rng.getrandbits(128)))})
                           for j in ids], counters={"completed": n})
            finished.extend(ids)
            done += n
            queue_s += time.perf_counter() - t0
            while len(finished) - recent >= batch or (done >= through
                                                      and len(finished) > recent):
                step = [finished.popleft() for _ in range(min(batch, len(finished) - recent))]
                t0 = time.perf_counter()
                records = []
                for job_id in step:
                    entry = q.get(job_id)
                    assert entry is not None and entry["state"] == "completed", job_id
                    records.append({**job_record(entry, layout),
                                    "forgotten_at": _iso(T0 + made * STEP)})
                archive.append(layout, records)
                archived += len(records)
                t1 = time.perf_counter()
                archive_s += t1 - t0
                assert step == q.forget(step)
                queue_s += time.perf_counter() - t1
        counts, stats = q.counts(), q.stats()
    finally:
        q.close()
    wall = time.perf_counter() - t_start
    kept = min(recent, through)
    assert (live, kept) == (counts["queued"], counts["completed"]), counts
    assert (live + through, through) == (stats["submitted"], stats["completed"]), stats
    q, ms = _open(layout)                          # and once more at the very end
    opens.append(ms)
    assert (queued[0], live + kept) == (q.first_queued(), len(q))
    q.close()
    history = _bytes(layout.history_dir) if layout.history_dir.exists() else 0
    return {"state_bytes": _bytes(layout.wal_dir),
            "recover_ms": round(statistics.median(opens), 1),
            "recover_ms_max": round(max(opens), 1), "opens": len(opens),
            "archived": archived, "archive_bytes": history,
            "archive_bytes_per_job": round(history / archived, 1) if archived else None,
            "wall_s": round(wall, 1), "queue_s": round(queue_s, 1),
            "archive_s": round(archive_s, 1)}


def _tag(n: int) -> str:
    """1e6 for 1,000,000."""
    return f"1e{round(math.log10(n))}"


def _base(arg: str | None) -> Path:
    if arg:
        os.makedirs(arg, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="bench-retention.", dir=arg))
    tmp = tempfile.gettempdir()
    parent = os.getcwd() if is_tmpfs(os.path.realpath(tmp)) else tmp
    return Path(tempfile.mkdtemp(prefix="bench-retention.", dir=parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true",
                        help="100,000 jobs through instead of 1,000,000")
    parser.add_argument("--dir", help="where the state dirs go (default: a temp dir)")
    args = parser.parse_args(argv)
    _log.setup(LogConfig(level="warning"), name="bench")
    base = _base(args.dir)
    big = 100_000 if args.quick else 1_000_000
    small, large = _tag(10_000), _tag(big)
    try:
        ref = run(base / "small", 10_000)
        got = run(base / "large", big)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out: dict[str, Any] = {
        "quick": args.quick, "jobs_through": big, "live": LIVE, "recent_kept": RECENT,
        f"state_bytes_{large}": got["state_bytes"], f"state_bytes_{small}": ref["state_bytes"],
        f"state_ratio_{large}_{small}": round(got["state_bytes"] / ref["state_bytes"], 2),
        f"recover_ms_after_{large}": got["recover_ms"],
        f"recover_ms_after_{large}_max": got["recover_ms_max"],
        f"recover_ms_after_{small}": ref["recover_ms"],
        f"recover_ms_after_{small}_max": ref["recover_ms_max"],
        "recover_opens": got["opens"],
        "archive_bytes_per_job": got["archive_bytes_per_job"],
        "archived_jobs": got["archived"], "archive_bytes": got["archive_bytes"],
        f"run_s_{large}": got["wall_s"], f"run_queue_s_{large}": got["queue_s"],
        f"run_archive_s_{large}": got["archive_s"],
        "targets": {f"state_ratio_{large}_{small}": 2.0, f"recover_ms_after_{large}": 50}}
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:34} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
