"""Reaper benchmark: one pass over 10,000 finished jobs, and how fast due ones go.

    python -m bench.reaper --json [--quick] [--dir DIR]

Each figure runs the real `supervisor.reaper.one_pass` in-process over a real state dir on
disk (under DIR, default a temp dir; never a tmpfs, where fsync measures nothing): a real
WAL written through `JobQueue.open` (each job enqueued, then completed with the fields the
scheduler records), and for each job its folder `jobs/<id>/` (spec.json, sentinel.json,
result.json, output, adaptor.lock) and its workspace (a small tree: README.md, src/ with
two files, .git/HEAD), all older than `reaper.grace`. Printed as ONE JSON object:

- scan_ms_10000: 10,000 completed jobs that ended an hour ago, so nothing is due
  (retention.jobs 30 days, retention.workspaces 7 days): the wall time of one whole pass
  (temp and quarantine sweeps, the queue read, processes, workspaces, job folders,
  mirrors, retention, reaper/state.json), the median of 7 passes (--quick: 2,000 jobs,
  the key says so: scan_ms_2000). Each pass must remove nothing. Target <= 500 ms; the
  system this replaces allowed a pass 30 s.
- remove_per_s: 2,000 completed jobs that ended 31 days ago (--quick: 500), so all are
  due: one pass archives their records (history/), removes each job folder and each
  workspace (renamed to trash, deleted, the folder fsynced) and asks the scheduler to
  forget them; (job folders + workspaces removed) / the pass's wall time. Every folder
  and workspace must be gone, every record archived, every job asked to be forgotten.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.queue import is_tmpfs
from supervisor import log as _log
from supervisor import reaper
from supervisor.config import Config, LogConfig, ReaperConfig, RetentionConfig
from supervisor.state import archive
from supervisor.state.clock import iso_now
from supervisor.state.layout import REQUEST, Layout, read_record
from supervisor.state.queue import JobQueue

__all__ = ["bench_remove", "bench_scan", "build", "main"]

DAY = 86400.0
GRACE = 600.0
BATCH = 1000

_SPEC = {"agent": "shell", "prompt": "make -C /srv/work test", "repos": ["app"],
         "timeout": 3600, "exclusive": False}


def _cfg(root: Path) -> Config:
    state = root / "state"
    return Config(state_dir=state, workspace_dir=state / "workspaces",
                  reaper=ReaperConfig(grace=GRACE), retention=RetentionConfig())


def _write(path: Path, data: str) -> None:
    with open(path, "w") as f:
        f.write(data)


def _job_files(layout: Layout, job_id: str, ended: str) -> None:
    """A finished job's folder, as the scheduler and the adaptor leave it."""
    folder = layout.job_dir(job_id)
    folder.mkdir(parents=True)
    _write(folder / "spec.json", json.dumps({"id": job_id, **_SPEC, "workspace": None}))
    _write(folder / "sentinel.json", json.dumps({"id": job_id, "pid": 4242, "start": 1,
                                                 "heartbeat_at": ended}))
    _write(folder / "result.json", json.dumps({"id": job_id, "exit_code": 0, "signal": None,
                                               "finished_at": ended, "reason": None}))
    _write(folder / "output", f"job {job_id}\n" + "ok\n" * 40)
    _write(folder / "adaptor.lock", "")


def _workspace(path: Path) -> None:
    """A small checkout: a few files in a few folders."""
    (path / "src").mkdir(parents=True)
    (path / ".git").mkdir()
    _write(path / "README.md", "# app\n")
    _write(path / "src" / "main.py", "print('hello')\n")
    _write(path / "src" / "util.py", "X = 1\n")
    _write(path / ".git" / "HEAD", "ref: refs/heads/main\n")


def build(root: Path, n: int, *, ended_ago: float, now: float,
          prefix: str = "j") -> tuple[Config, Layout, list[str]]:
    """A state dir under `root` with `n` completed jobs that ended `ended_ago` seconds
    before `now`: WAL entries, job folders and workspaces, all older than the grace."""
    cfg = _cfg(root)
    layout = Layout(cfg.state_dir)
    ids = [f"{prefix}{i:06d}" for i in range(n)]
    created, ended = iso_now(now - ended_ago - 3600), iso_now(now - ended_ago)
    with JobQueue.open(layout.wal_dir) as q:
        for at in range(0, n, BATCH):
            chunk = ids[at:at + BATCH]
            q.enqueue_many([(j, {**_SPEC, "batch": "nightly", "created_at": created,
                                 "workspace": str(cfg.workspace_dir / j)}) for j in chunk],
                           count="submitted")
            q.update_many([(j, {"state": "completed", "dispatched_at": created,
                                "started_at": created, "finished_at": ended, "exit_code": 0,
                                "reason": None, "signal": None, "session_id": None})
                           for j in chunk], counters={"completed": len(chunk)})
    old = now - 2 * GRACE
    for j in ids:
        _job_files(layout, j, ended)
        os.utime(layout.job_dir(j), (old, old))
        ws = cfg.workspace_dir / j
        _workspace(ws)
        os.utime(ws, (old, old))
    os.sync()
    return cfg, layout, ids


def _reaper(cfg: Config, layout: Layout) -> reaper.Reaper:
    return reaper.Reaper(cfg, layout, _log.get("bench"))


def bench_scan(root: Path, n: int, passes: int = 7) -> dict[str, Any]:
    """The median ms of one pass over `n` finished jobs of which nothing is due."""
    cfg, layout, _ = build(root, n, ended_ago=3600.0, now=time.time())
    r = _reaper(cfg, layout)
    reaper.one_pass(r)                          # the first pass makes reaper/ (as recover)
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        did = reaper.one_pass(r)
        times.append((time.perf_counter() - t0) * 1000.0)
        assert not +did, f"a pass with nothing due removed {dict(did)}"
    return {f"scan_ms_{n}": round(statistics.median(times), 1),
            f"scan_ms_{n}_min_max": [round(min(times), 1), round(max(times), 1)]}


def _forget_asked(layout: Layout) -> set[str]:
    inbox = layout.inbox("scheduler")
    asked: set[str] = set()
    for name in os.listdir(inbox):
        rec = read_record(REQUEST, inbox / name, owner=False)
        if isinstance(rec, dict) and rec.get("kind") == "forget":
            asked.update(rec["jobs"])
    return asked


def bench_remove(root: Path, n: int) -> dict[str, Any]:
    """(job folders + workspaces removed) per second by one pass over `n` due jobs."""
    cfg, layout, ids = build(root, n, ended_ago=31 * DAY, now=time.time())
    r = _reaper(cfg, layout)
    t0 = time.perf_counter()
    did: Counter[str] = reaper.one_pass(r)
    wall = time.perf_counter() - t0
    folders = sum(not layout.job_dir(j).exists() for j in ids)
    workspaces = sum(not (cfg.workspace_dir / j).exists() for j in ids)
    archived, notes = archive.read(layout)
    assert (n, n, n, []) == (folders, workspaces, len(archived), notes), did
    assert set(ids) == _forget_asked(layout)
    return {"remove_per_s": round((folders + workspaces) / wall),
            "remove_jobs": n, "remove_pass_s": round(wall, 3),
            "remove_did": {k: v for k, v in sorted(did.items()) if v}}


def _base(arg: str | None) -> Path:
    if arg:
        os.makedirs(arg, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="bench-reaper.", dir=arg))
    tmp = tempfile.gettempdir()
    parent = os.getcwd() if is_tmpfs(os.path.realpath(tmp)) else tmp
    return Path(tempfile.mkdtemp(prefix="bench-reaper.", dir=parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reaper", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer jobs (seconds)")
    parser.add_argument("--dir", help="where the state dirs go (default: a temp dir)")
    args = parser.parse_args(argv)
    _log.setup(LogConfig(level="warning"), name="bench")
    base = _base(args.dir)
    n_scan, n_remove = (2_000, 500) if args.quick else (10_000, 2_000)
    try:
        out: dict[str, Any] = {"quick": args.quick}
        out.update(bench_scan(base / "scan", n_scan))
        out.update(bench_remove(base / "remove", n_remove))
        out["targets"] = {f"scan_ms_{n_scan}": 500, "replaced_system_scan_ms": 30_000}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
