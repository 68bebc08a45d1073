"""Benchmark of the job queue's WAL against the disk's fdatasync rate and persist-queue.

    python -m bench.queue [--json] [--quick] [--dir DIR]

Everything runs in one folder on one filesystem (default: a temp dir under /tmp unless /tmp
is a tmpfs, else under the current directory), so the fdatasync rate, our queue and
persist-queue's SQLiteAckQueue see the same disk. Recovery is timed in fresh subprocesses
(imports done before the clock starts), the median of several runs.

Figures (JSON keys):
  fdatasync_per_s            raw: write 64 bytes + os.fdatasync, in a loop
  enqueue_single_per_s       JobQueue.enqueue, one durable job per call, one thread
  enqueue_threads8_per_s     the same from 8 threads (group commit), fdatasyncs_per_job
  enqueue_batch_per_s        enqueue_many in batches of 1000, 1e5 jobs from empty
  persistqueue_sqliteack_per_s   SQLiteAckQueue.put, auto_commit, synchronous=FULL
  recover_ms_1e5             open a log of 1e5 queued jobs (~220-byte bodies) until
                             first_queued() returns
  recover_get_ms_1e5         ... until get(first_queued()) returns (ready to dispatch)
  recover_ms_1e5_max_tail    1e5 jobs in the snapshot + a tail of compaction-threshold - 1
                             updates (the slowest recovery the thresholds allow)
  persistqueue_recover_ms_1e5    reopen SQLiteAckQueue holding 1e5 until the first get
  enqueue_single_vs_fdatasync, enqueue_single_vs_persistqueue, recover_vs_persistqueue
                             the ratios the targets are stated in
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from supervisor.state.fs import OsFS
from supervisor.state.queue import JobQueue
from supervisor.state.wal import DEFAULT_COMPACT_RECORDS, Wal

N_RECOVER = 100_000
BATCH = 1000


def body(i: int) -> dict[str, Any]:
    """A realistic job body (~220 bytes of JSON)."""
    return {"agent": "shell", "prompt": f"echo job {i} && make -C /srv/work test",
            "repos": ["app"], "batch": "nightly-2026-11-28", "callback":
            "http://127.0.0.1:8080/hook", "timeout": 3600, "exclusive": False,
            "created_at": "2026-11-28T11:45:02.123456Z"}


def is_tmpfs(path: str) -> bool:
    """True if `path` lives on a tmpfs/ramfs (fsync there measures nothing)."""
    best, kind = "", ""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mount, fstype = parts[1], parts[2]
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fstype
    return kind in ("tmpfs", "ramfs")


def base_dir(arg: str | None) -> str:
    if arg:
        os.makedirs(arg, exist_ok=True)
        return tempfile.mkdtemp(prefix="bench-queue.", dir=arg)
    tmp = tempfile.gettempdir()
    parent = os.getcwd() if is_tmpfs(os.path.realpath(tmp)) else tmp
    return tempfile.mkdtemp(prefix="bench-queue.", dir=parent)


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


class Meter:
    """One figure measured in short rounds interleaved with the others (the disk's speed
    drifts with other load on the machine; interleaving keeps the ratios fair)."""

    def __init__(self, step: Callable[[int], object]) -> None:
        self.step = step
        self.calls = 0
        self.seconds = 0.0

    def round(self, seconds: float) -> None:
        t0 = time.perf_counter()
        while True:
            self.step(self.calls)
            self.calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                self.seconds += elapsed
                return

    @property
    def per_s(self) -> float:
        return rate(self.calls, self.seconds)


def raw_sync_step(folder: str) -> tuple[Callable[[int], object], Callable[[], None]]:
    fd = os.open(os.path.join(folder, "raw"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def step(i: int) -> None:
        os.write(fd, b"x" * 64)
        os.fdatasync(fd)
    return step, lambda: os.close(fd)


def persistqueue_step(folder: str) -> tuple[Callable[[int], object], Callable[[], None]] | None:
    try:
        import persistqueue
    except ImportError:
        return None
    q = persistqueue.SQLiteAckQueue(os.path.join(folder, "pq-put"), auto_commit=True,
                                    multithreading=False)
    q._putter.execute("PRAGMA synchronous=FULL")     # durable puts
    return (lambda i: q.put(body(i))), q.close


def durable_rates(folder: str, rounds: int, seconds: float) -> dict[str, float]:
    """Raw fdatasync, our single enqueue and persist-queue's put, interleaved."""
    sync_step, sync_close = raw_sync_step(folder)
    queue = JobQueue.open(os.path.join(folder, "single"))
    pq = persistqueue_step(folder)
    meters = {"fdatasync_per_s": Meter(sync_step),
              "enqueue_single_per_s": Meter(lambda i: queue.enqueue(f"s{i}", body(i)))}
    if pq is not None:
        meters["persistqueue_sqliteack_per_s"] = Meter(pq[0])
    for _ in range(rounds):
        for meter in meters.values():
            meter.round(seconds)
    sync_close()
    queue.close()
    if pq is not None:
        pq[1]()
    return {name: meter.per_s for name, meter in meters.items()}


class CountingFS(OsFS):
    """Counts fdatasync calls (to show group commit)."""

    def __init__(self) -> None:
        self.syncs = 0

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        os.fdatasync(fd)


def enqueue_threads_rate(folder: str, seconds: float, threads: int = 8) -> dict[str, float]:
    fs = CountingFS()
    done = [0] * threads
    stop = threading.Event()
    with JobQueue.open(os.path.join(folder, "threads"), fs=fs) as q:
        def worker(k: int) -> None:
            i = 0
            while not stop.is_set():
                q.enqueue(f"t{k}-{i}", body(i))
                i += 1
            done[k] = i
        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        t0 = time.perf_counter()
        before = fs.syncs
        for t in pool:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
    jobs = sum(done)
    return {"enqueue_threads8_per_s": rate(jobs, elapsed),
            "fdatasyncs_per_job_threads8": round((fs.syncs - before) / max(jobs, 1), 3)}


def fill(folder: str, n: int, *, compact_records: int = DEFAULT_COMPACT_RECORDS) -> float:
    """enqueue_many n jobs in batches of 1000 into a fresh log; return jobs per second."""
    bodies = [body(i) for i in range(n)]
    q = JobQueue.over(Wal.open(folder, compact_records=compact_records))
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        q.enqueue_many([(f"job-{i:08d}", bodies[i]) for i in range(start, min(n, start + BATCH))])
    elapsed = time.perf_counter() - t0
    q.close()
    return rate(n, elapsed)


def add_update_tail(folder: str, n: int) -> None:
    """Append n updates of the oldest jobs (a tail of n records, under the threshold)."""
    q = JobQueue.over(Wal.open(folder))
    ids = q.ids()[:n]
    for start in range(0, n, BATCH):
        q.update_many([(j, {"state": "waiting", "attempts": 1}) for j in ids[start:start + BATCH]])
    q.close()


_OUR_PROBE = """
import sys, time
from supervisor.state.queue import JobQueue
t0 = time.perf_counter()
q = JobQueue.open(sys.argv[1])
first = q.first_queued()
t1 = time.perf_counter()
job = q.get(first)
t2 = time.perf_counter()
assert job is not None and job["state"] == "queued"
print((t1 - t0) * 1000, (t2 - t0) * 1000)
"""

_PQ_PROBE = """
import sys, time, persistqueue
t0 = time.perf_counter()
q = persistqueue.SQLiteAckQueue(sys.argv[1], auto_commit=True, multithreading=False)
item = q.get(block=False)
t1 = time.perf_counter()
q.nack(item)
q.close()
print((t1 - t0) * 1000)
"""


def probe(script: str, folder: str, runs: int) -> list[list[float]]:
    out = []
    for _ in range(runs):
        res = subprocess.run([sys.executable, "-c", script, folder], capture_output=True,
                             text=True, check=True, cwd=os.getcwd())
        out.append([float(x) for x in res.stdout.split()])
    return out


def median_of(rows: list[list[float]], col: int) -> float:
    return round(statistics.median(r[col] for r in rows), 2)


def persistqueue_recover(folder: str, runs: int) -> dict[str, float]:
    try:
        import persistqueue
    except ImportError:
        return {}
    path = os.path.join(folder, "pq-1e5")
    q = persistqueue.SQLiteAckQueue(path, auto_commit=True, multithreading=False)
    q._putter.execute("PRAGMA synchronous=OFF")     # only to fill the fixture quickly
    for i in range(N_RECOVER):
        q.put(body(i))
    q.close()
    return {"persistqueue_recover_ms_1e5": median_of(probe(_PQ_PROBE, path, runs), 0)}


def run(folder: str, quick: bool) -> dict[str, Any]:
    rounds, seconds = (4, 0.25) if quick else (10, 0.3)
    runs = 5 if quick else 9
    res: dict[str, Any] = {"dir": folder, "quick": quick}
    res.update(durable_rates(folder, rounds, seconds))
    res.update(enqueue_threads_rate(folder, rounds * seconds / 2))
    big = os.path.join(folder, "q-1e5")
    res["enqueue_batch_per_s"] = fill(big, N_RECOVER)
    tail = os.path.join(folder, "q-1e5-tail")
    fill(tail, N_RECOVER, compact_records=N_RECOVER)
    add_update_tail(tail, DEFAULT_COMPACT_RECORDS - 1)
    res.update(persistqueue_recover(folder, 1))        # build it before timing anything
    ours, worst, theirs = [], [], []
    pq_path = os.path.join(folder, "pq-1e5")
    for _ in range(runs):                                # interleaved, fresh processes
        ours += probe(_OUR_PROBE, big, 1)
        worst += probe(_OUR_PROBE, tail, 1)
        if os.path.isdir(pq_path):
            theirs += probe(_PQ_PROBE, pq_path, 1)
    res["recover_ms_1e5"] = median_of(ours, 0)
    res["recover_get_ms_1e5"] = median_of(ours, 1)
    res["recover_ms_1e5_max_tail"] = median_of(worst, 0)
    if theirs:
        res["persistqueue_recover_ms_1e5"] = median_of(theirs, 0)
    res["enqueue_single_vs_fdatasync"] = round(
        res["enqueue_single_per_s"] / res["fdatasync_per_s"], 3)
    if "persistqueue_sqliteack_per_s" in res:
        res["enqueue_single_vs_persistqueue"] = round(
            res["enqueue_single_per_s"] / res["persistqueue_sqliteack_per_s"], 3)
    if theirs:
        res["recover_vs_persistqueue"] = round(
            res["recover_ms_1e5"] / res["persistqueue_recover_ms_1e5"], 3)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="shorter runs (under a minute)")
    ap.add_argument("--dir", help="folder to run in (default: a temp dir on a real disk)")
    args = ap.parse_args(argv)
    folder = base_dir(args.dir)
    try:
        res = run(folder, args.quick)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        width = max(len(k) for k in res)
        for key, value in res.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
