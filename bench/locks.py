"""Repository locks benchmark: recovering a waiting queue, release to the next job, workspaces.

    python -m bench.locks --json [--quick] [--dir DIR]

Printed as ONE JSON object. A real batchd (launcher direct) on a fresh state dir; the
repository is a real bare git repository, configured `exclusive: true` (one job at a
time holds it for its whole run).

- recover_waiting_ms_1000: one job holds the repository (it waits for a gate file) and
  1,000 jobs wait for it; the locks worker is SIGKILLed (9 times; batchd starts another)
  and each time the wall time is taken until the new worker's ready record says it
  holds the same lock and the same 1,000 jobs waiting in the same order (checked against
  the table's files before and after): the p50, the worst, and the recovery's own
  duration. Its peer in the same run, recover_waiting_ms_0: the same with none waiting
  (what a restart costs whatever the table holds: batchd's fork, the worker's start).
- grant_ms_p50/p99: 30 jobs of `true` (--quick: 15) on the repository, submitted at once,
  so each one waits for the one before; each figure is from the release of a job's locks
  (the scheduler's "lock release requested", written with the release request) to the
  next job running (the scheduler's "job running", after its mirror fetch, workspace clone
  and launch), from batchd's log (microseconds). Beside it the parts: release -> the
  locks worker's grant (state.json written), grant -> the scheduler's dispatch (the clone
  starts), clone start -> running.
- workspace_ms and git_clone_ms: a repository of 5,000 files behind a `file://` URL (the
  git transport a remote uses); the workspace as the scheduler makes it
  (scheduler.jobfiles.prepare_workspace: the mirror fetched unless the remote's refs are
  already its own, the workspace hard-linked from it, origin = the URL, checked out by one
  git read-tree) against a plain `git clone URL`, alternated 5 times (--quick: 3) in the
  same run, medians; the workspace must not be slower.
  grant_handoff_ms is the lock's own part: release -> the next job's clone starting.
- waiting_per_s: 2,000 jobs (--quick: 500) submitted behind a holder, from their
  `batchctl submit --from` until all wait in the lock table.
- recover_waiting_ms_N, grant_ms_p50_N_waiting (N = 100,000; --quick: 10,000): the
  state a gated holder and N jobs waiting behind it leave, made in-process by the
  scheduler's and the locks worker's own code; then 3 SIGKILLs of the locks worker (as
  above) and 6 grants with N waiting behind. What a change costs must not grow with N:
  the table is locks/state.json (what is held) and pages of waiting jobs, and a pass
  rewrites only what it changed.

Targets: recover <= 50 ms, grant p50 <= 20 ms, workspace_ms <= git_clone_ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench._common import percentile, stop, until
from supervisor import log as _log
from supervisor.config import Config, LogConfig, RepoConfig
from supervisor.scheduler.jobfiles import prepare_workspace
from supervisor.state.clock import parse_iso
from supervisor.state.layout import READY, Layout, read_record
from supervisor.state.lockfiles import read_table
from supervisor.state.locktable import Table
from supervisor.state.proc import alive

DEADLINE = 600.0
ROOT = Path(__file__).resolve().parent.parent

CONFIG = """\
state_dir: {state}
log: {{level: info, format: json, file: {log}}}
launcher: direct
scheduler: {{max_concurrent_jobs: 4, heartbeat_interval: 1, stale_after: 10, dead_after: 30,
            kill_grace: 1}}
workers:
  locks: {{startsecs: 0}}
repositories:
  app: {{url: "{url}", branch: main, exclusive: true}}
"""


def git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=b@example.com",
                          "-c", "init.defaultBranch=main", *args], cwd=cwd,
                         capture_output=True, text=True, check=True)
    return out.stdout


def make_remote(root: Path, files: int) -> Path:
    """A bare repository of `files` small files (100 per folder), one commit."""
    work = root / "src"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    for i in range(files):
        folder = work / f"d{i // 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:05d}.txt").write_text(f"file {i}\n" * 20)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "content", cwd=work)
    bare = root / "app.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    shutil.rmtree(work)
    return bare


class Daemon:
    """A state dir with its config naming the remote; a batchd; the scheduler's log."""

    def __init__(self, root: Path, url: str) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.config = root / "batchd.yaml"
        self.log = root / "batchd.log"
        self.config.write_text(CONFIG.format(state=root / "state", log=self.log, url=url))
        self.layout = Layout(root / "state")
        self.proc: subprocess.Popen[bytes] | None = None
        self.gate = root / "gate"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.batchd", "-c",
                                      str(self.config)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until("the locks worker ready", lambda: self.ready("locks"))

    def stop(self) -> None:
        self.gate.touch()
        if self.proc is not None:
            stop(self.proc, DEADLINE)

    def ready(self, worker: str, other_than: int = 0) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.poll() is None, "batchd exited"
        rec = read_record(READY, self.layout.ready_file(worker), owner=False)
        if isinstance(rec, dict) and rec["pid"] != other_than and alive(rec["pid"],
                                                                         rec["start"]):
            return rec
        return None

    def submit(self, jobs: list[dict[str, Any]]) -> float:
        """`batchctl submit --from` of `jobs`; the seconds it took."""
        path = self.root / f"jobs-{time.monotonic_ns()}.jsonl"
        path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(self.config),
                        "submit", "--from", str(path)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, timeout=DEADLINE)
        return time.monotonic() - t0

    def table(self) -> Table | None:
        got = read_table(self.layout)
        return got if isinstance(got, Table) else None

    def waiting(self) -> list[str]:
        table = self.table()
        return [] if table is None else list(table.waiting.get("app", []))

    def holder(self) -> str | None:
        table = self.table()
        return None if table is None else table.holder("app")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _hold(d: Daemon) -> None:
    d.submit([{"agent": "shell", "id": "holder", "repos": ["app"],
               "prompt": f"while [ ! -e {d.gate} ]; do sleep 0.05; done"}])
    until("the holder holding the repository", lambda: d.holder() == "holder")


def _recover(d: Daemon, n: int, kills: int) -> dict[str, Any]:
    """Kill the locks worker `kills` times with `n` jobs waiting: wall ms until ready."""
    before = d.waiting()
    assert len(before) == n, f"{len(before)} of {n} waiting"
    walls: list[float] = []
    durations: list[float] = []
    for _ in range(kills):
        rec = d.ready("locks")
        assert rec is not None
        t0 = time.monotonic()
        os.kill(rec["pid"], signal.SIGKILL)
        new = until("the new locks worker ready",
                    lambda p=rec["pid"]: d.ready("locks", p), poll=0.0005)
        walls.append((time.monotonic() - t0) * 1000.0)
        durations.append(float(new["duration_ms"]))
        assert (new["did"]["waiting"], d.holder(), d.waiting()) == (n, "holder", before)
    return {"p50": percentile(walls, 50), "max": round(max(walls), 1),
            "recovery_ms_p50": percentile(durations, 50)}


def bench_recover(root: Path, url: str, n: int = 1000, kills: int = 9) -> dict[str, Any]:
    """The locks worker SIGKILLed with n jobs waiting, and (its peer, the same run) with
    none waiting: the part of a restart that is batchd's and the machine's."""
    d = Daemon(root, url)
    d.start()
    try:
        _hold(d)
        bare = _recover(d, 0, kills)
        d.submit([{"agent": "shell", "id": f"w{i:06d}", "repos": ["app"], "prompt": "true"}
                  for i in range(n)])
        until(f"{n} jobs waiting", lambda: len(d.waiting()) == n, poll=0.05)
        got = _recover(d, n, kills)
    finally:
        d.stop()
    return {f"recover_waiting_ms_{n}": got["p50"], f"recover_waiting_ms_{n}_max": got["max"],
            f"recover_waiting_recovery_ms_{n}": got["recovery_ms_p50"],
            "recover_waiting_ms_0": bare["p50"],
            "recover_waiting_recovery_ms_0": bare["recovery_ms_p50"]}


def _ts(event: dict[str, Any]) -> float:
    t = parse_iso(event["timestamp"])
    assert t is not None
    return t


def _grants(d: Daemon, order: list[str]) -> dict[str, list[float]]:
    """release of order[i] -> running of order[i+1], and its parts, in ms."""
    first: dict[tuple[str, str], float] = {}
    for ev in d.events():
        key = (str(ev.get("event")), str(ev.get("job")))
        if key not in first and "timestamp" in ev:
            first[key] = _ts(ev)
    parts: dict[str, list[float]] = {"total": [], "to_grant": [], "to_dispatch": [],
                                     "workspace_launch": []}
    for prev, job in pairwise(order):
        release = first.get(("lock release requested", prev))
        granted = first.get(("locks granted", job))
        cloning = first.get(("cloning the workspace", job))
        running = first.get(("job running", job))
        if None in (release, granted, cloning, running):
            continue
        assert release is not None and granted is not None and cloning is not None \
            and running is not None
        parts["total"].append((running - release) * 1000.0)
        parts["to_grant"].append((granted - release) * 1000.0)
        parts["to_dispatch"].append((cloning - granted) * 1000.0)
        parts["workspace_launch"].append((running - cloning) * 1000.0)
    return parts


def _run_chain(d: Daemon, jobs: int, tag: str) -> dict[str, list[float]]:
    order = [f"{tag}{i:03d}" for i in range(jobs)]
    d.submit([{"agent": "shell", "id": job, "repos": ["app"], "prompt": "true"}
              for job in order])

    def over() -> bool:
        return any(ev.get("event") == "job finished" and ev.get("job") == order[-1]
                   for ev in d.events())
    until("the last job of the chain to end", over, poll=0.05)
    return _grants(d, order)


def bench_grant(root: Path, url: str, jobs: int) -> dict[str, Any]:
    d = Daemon(root, url)
    d.start()
    try:
        parts = _run_chain(d, jobs, "g")
    finally:
        d.stop()
    total = parts["total"]
    handoff = [a + b for a, b in zip(parts["to_grant"], parts["to_dispatch"], strict=True)]
    return {"grant_ms_p50": percentile(total, 50), "grant_ms_p99": percentile(total, 99),
            "grant_handoff_ms_p50": percentile(handoff, 50),
            "grant_handoff_ms_p99": percentile(handoff, 99),
            "grant_parts_ms_p50": {k: percentile(v, 50) for k, v in parts.items()
                                   if k != "total"},
            "grant_pairs": len(total)}


def bench_workspace(root: Path, url: str, rounds: int) -> dict[str, Any]:
    """The scheduler's workspace (mirror fetch + clone) against `git clone URL`."""
    root.mkdir(parents=True)
    cfg = Config(state_dir=root / "state", workspace_dir=root / "ws",
                 repositories={"app": RepoConfig(url, "main", True)})
    mirrors = root / "state" / "mirrors"

    def workspace(i: int) -> float:
        entry = {"id": f"ws{i}", "repos": ["app"]}
        t0 = time.monotonic()
        ws = prepare_workspace(cfg, entry, mirrors_dir=mirrors)
        took = time.monotonic() - t0
        assert (ws / "d000" / "f00000.txt").is_file()
        shutil.rmtree(ws)
        return took * 1000.0

    def plain(i: int) -> float:
        dest = root / f"clone{i}"
        t0 = time.monotonic()
        git("clone", "--quiet", url, str(dest))
        took = time.monotonic() - t0
        assert (dest / "d000" / "f00000.txt").is_file()
        shutil.rmtree(dest)
        return took * 1000.0

    workspace(-1)                                # the mirror is made once, untimed
    ws_times, git_times = [], []
    for i in range(rounds):
        ws_times.append(workspace(i))
        git_times.append(plain(i))
    return {"workspace_ms": round(statistics.median(ws_times), 1),
            "git_clone_ms": round(statistics.median(git_times), 1),
            "workspace_vs_git_clone": round(statistics.median(ws_times)
                                            / statistics.median(git_times), 2),
            "workspace_rounds": rounds}


def _waiting_wal(d: Daemon, n: int) -> None:
    """The state a scheduler and a locks worker leave with a gated job holding the
    repository and n jobs waiting behind it, made in-process by their own code (set-up,
    not measured): the submission ingested by the scheduler's handler, every job moved to
    waiting with its lock_seq in one WAL write (the scheduler writes the same fields one
    job at a time), then the lock table built from the WAL by the locks worker's own
    recovery (its path when it finds no table), the holder granted."""
    from supervisor import locks as _locks
    from supervisor import scheduler as _scheduler
    from supervisor.config import load
    from supervisor.runtime import handle_inbox
    from supervisor.state.submission import Checker, Known, assign_ids, write_submission

    cfg = load(str(d.config))
    checker = Checker(Known(agents=frozenset({"shell"}), repos=frozenset({"app"}),
                            ids=frozenset()))
    jobs = [checker.check({"agent": "shell", "id": "holder", "repos": ["app"],
                           "prompt": f"while [ ! -e {d.gate} ]; do sleep 0.05; done"})]
    jobs += [checker.check({"agent": "shell", "id": f"w{i:06d}", "repos": ["app"],
                            "prompt": "true"}) for i in range(n)]
    assign_ids(jobs, frozenset())
    write_submission(d.layout, jobs)
    log = _log.get("bench")
    s, _, _, _ = _scheduler.recover(cfg, d.layout, log)
    try:
        handle_inbox(d.layout.inbox("scheduler"), _scheduler.HANDLERS, s, log)
        s.queue.update_many([(job["id"], {"state": "waiting", "lock_exclusive": True,
                                          "lock_seq": seq})
                             for seq, job in enumerate(jobs, start=1)])
    finally:
        s.queue.close()
    _locks.recover(cfg, d.layout, log)


def bench_scale(root: Path, url: str, n: int) -> dict[str, Any]:
    """N jobs waiting: a SIGKILL of the locks worker, then grants with N waiting behind."""
    d = Daemon(root, url)
    _waiting_wal(d, n)
    d.start()
    try:
        until("the holder running", lambda: any(
            ev.get("event") == "job running" and ev.get("job") == "holder"
            for ev in d.events()), poll=0.1)
        recovered = _recover(d, n, 3)
        d.gate.touch()
        order = ["holder"] + [f"w{i:06d}" for i in range(6)]

        def started() -> bool:
            return any(ev.get("event") == "job running" and ev.get("job") == order[-1]
                       for ev in d.events())
        until("six grants", started, poll=0.1)
        parts = _grants(d, order)
        pages = len(list(d.layout.lock_pages.iterdir()))
        size = d.layout.worker_state("locks").stat().st_size
    finally:
        d.stop()
    return {f"recover_waiting_ms_{n}": recovered["p50"],
            f"recover_waiting_recovery_ms_{n}": recovered["recovery_ms_p50"],
            f"grant_ms_p50_{n}_waiting": percentile(parts["total"], 50),
            f"grant_handoff_ms_p50_{n}_waiting": percentile(
                [a + b for a, b in zip(parts["to_grant"], parts["to_dispatch"],
                                       strict=True)], 50),
            "scale_files": {"pages": pages, "state_json_bytes": size}}


def bench_waiting_rate(root: Path, url: str, n: int) -> dict[str, Any]:
    """n jobs submitted behind a holder: from `batchctl submit --from` until all wait in
    the lock table (the scheduler's WAL write and acquire per job, the worker's pass)."""
    d = Daemon(root, url)
    d.start()
    try:
        _hold(d)
        t0 = time.monotonic()
        d.submit([{"agent": "shell", "id": f"w{i:06d}", "repos": ["app"], "prompt": "true"}
                  for i in range(n)])
        until(f"{n} jobs waiting", lambda: len(d.waiting()) == n, poll=0.05)
        took = time.monotonic() - t0
    finally:
        d.stop()
    return {"waiting_per_s": round(n / took), "waiting_jobs": n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.locks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--dir", help="where the state dirs go (default: a temp dir)")
    parser.add_argument("--skip-scale", action="store_true",
                        help="leave out the N-waiting run")
    args = parser.parse_args(argv)
    _log.setup(LogConfig(level="warning"), name="bench")
    base = Path(tempfile.mkdtemp(prefix="bench-locks-", dir=args.dir))
    try:
        small = make_remote(base / "small", 1)
        big = make_remote(base / "big", 5000)
        out: dict[str, Any] = {"quick": args.quick}
        out.update(bench_recover(base / "recover", small.as_uri()))
        out.update(bench_grant(base / "grant", small.as_uri(), 15 if args.quick else 30))
        out.update(bench_workspace(base / "workspace", big.as_uri(), 3 if args.quick else 5))
        out.update(bench_waiting_rate(base / "rate", small.as_uri(),
                                      500 if args.quick else 2000))
        if not args.skip_scale:
            out.update(bench_scale(base / "scale", small.as_uri(),
                                   10_000 if args.quick else 100_000))
        out["targets"] = {"recover_waiting_ms_1000": 50, "grant_ms_p50": 20,
                          "workspace_ms": "<= git_clone_ms"}
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
