"""Slurm benchmark: submit-to-running through Slurm beside the direct launcher, sbatch rate.

    python -m bench.slurm --json [--quick] [--dir DIR]

Needs root and Slurm's and munge's binaries (`make bench-slurm` installs them with apt): it
starts a real single-host cluster (tests/proc/slurm/slurmlab.py: munged, slurmctld,
slurmd, 24 job slots, `batch_sched_delay=0`) and real batchds on fresh state dirs, one
with `launcher: slurm` (slurm.poll 1s), one with `launcher: direct`, in the same run.
Printed as ONE JSON object:

- submit_to_running_ms_p50/p90 (slurm) and direct_submit_to_running_ms_p50/p90: 20 jobs of
  `true` (--quick: 8) submitted one at a time through batchctl's code path, each timed
  from the moment the submission was durable to the `started_at` of its running record
  (for a Slurm job: its adaptor's sentinel, after Slurm started it and the start gate
  saw the start saved). The next job is submitted once the previous one is terminal.
- start_gate_s_p50: how long the batch step waited for Slurm to save the start (from the
  jobs' adaptor.log); slurm_without_gate_ms_p50: submit-to-running minus that wait.
- sbatch_per_s: batchd's submission rate into Slurm: 200 jobs (--quick: 50) in one
  `submit --from`, held in Slurm by `sbatch_args: [--begin=now+1hour]`; the first to the
  last "job submitted to slurm" of the scheduler's log. sbatch_raw_per_s: plain
  sequential `sbatch --parsable --hold --wrap true` on the same cluster (the peer).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import percentile, stop, until
from supervisor import log as _log
from supervisor.config import LogConfig
from supervisor.state.clock import parse_iso
from supervisor.state.layout import READY, Layout, read_record
from supervisor.state.queue import TERMINAL_STATES, JobQueue
from supervisor.state.submission import Checker, Known, assign_ids, write_submission

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.proc.slurm.slurmlab import SlurmCluster, available  # noqa: E402

DEADLINE = 180.0
CONFIG = """\
state_dir: {state}
log: {{level: info, format: json, file: {log}}}
launcher: {launcher}
scheduler: {{max_concurrent_jobs: 4, heartbeat_interval: 1, stale_after: 10, dead_after: 30,
            kill_grace: 1}}
slurm: {{poll: 1s, max_jobs: 1000, sbatch_args: [{args}]}}
"""


class Daemon:
    """A batchd on its own state dir, with the cluster's client environment."""

    def __init__(self, root: Path, cluster: SlurmCluster, launcher: str, args: str = "") -> None:
        root.mkdir(parents=True)
        self.root = root
        self.config = root / "batchd.yaml"
        self.log = root / "batchd.log"
        self.config.write_text(CONFIG.format(state=root / "state", log=self.log,
                                             launcher=launcher, args=args))
        self.layout = Layout(root / "state")
        self.env = cluster.client_env()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.batchd", "-c",
                                      str(self.config)], cwd=ROOT, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "batchd exited"
            return isinstance(read_record(READY, self.layout.ready_file("scheduler"),
                                          owner=False), dict)
        until("the scheduler's ready record", ready, timeout=DEADLINE)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, DEADLINE)

    def entries(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        q = JobQueue.open(self.layout.wal_dir, readonly=True)
        try:
            return {job_id: q.get(job_id) or {} for job_id in ids}
        finally:
            q.close()


def _at(entry: dict[str, Any], key: str) -> float:
    when = parse_iso(entry.get(key))
    if when is None:
        raise ValueError(f"job {entry.get('id')}: no {key} (state {entry.get('state')})")
    return when


def one_at_a_time(d: Daemon, n: int, prefix: str) -> tuple[list[float], dict[str, float]]:
    """n `true` jobs, each submitted once the last is over: (latencies ms, durable times)."""
    checker = Checker(Known(agents=frozenset({"shell"}), repos=frozenset(), ids=frozenset()))
    durable: dict[str, float] = {}
    for i in range(n):
        jobs = [checker.check({"agent": "shell", "prompt": "true", "id": f"{prefix}-{i}"})]
        assign_ids(jobs, frozenset())
        write_submission(d.layout, jobs)
        job_id = jobs[0]["id"]
        durable[job_id] = time.time()
        until(f"job {job_id} to end", lambda job_id=job_id: d.entries([job_id])[job_id].get(
            "state") in TERMINAL_STATES, timeout=DEADLINE, poll=0.01)
    entries = d.entries(list(durable))
    bad = {j: e.get("state") for j, e in entries.items() if e.get("state") != "completed"}
    assert not bad, f"jobs that did not complete: {bad}"
    return [(_at(entries[j], "started_at") - t) * 1000.0 for j, t in durable.items()], durable


_WAITED = re.compile(r"waited ([0-9.]+)s")


def gate_waits(d: Daemon, ids: list[str]) -> list[float]:
    waits = []
    for job_id in ids:
        text = d.layout.job_adaptor_log(job_id).read_text()
        found = _WAITED.search(text)
        if found:
            waits.append(float(found.group(1)))
    return waits


def bench_latency(base: Path, cluster: SlurmCluster, n: int) -> dict[str, Any]:
    slurm = Daemon(base / "slurm", cluster, "slurm")
    direct = Daemon(base / "direct", cluster, "direct")
    try:
        slurm.start()
        lat, durable = one_at_a_time(slurm, n, "s")
        waits = gate_waits(slurm, list(durable))
        slurm.stop()
        direct.start()
        dlat, _ = one_at_a_time(direct, n, "d")
    finally:
        slurm.stop()
        direct.stop()
    without = [ms - w * 1000.0 for ms, w in zip(lat, waits, strict=False)]
    return {"submit_to_running_ms_p50": percentile(lat, 50),
            "submit_to_running_ms_p90": percentile(lat, 90),
            "direct_submit_to_running_ms_p50": percentile(dlat, 50),
            "direct_submit_to_running_ms_p90": percentile(dlat, 90),
            "start_gate_s_p50": percentile(waits, 50) if waits else None,
            "slurm_without_gate_ms_p50": percentile(without, 50) if without else None,
            "latency_jobs": n}


def bench_sbatch_rate(base: Path, cluster: SlurmCluster, n: int, raw: int = 50
                      ) -> dict[str, Any]:
    d = Daemon(base / "rate", cluster, "slurm", args="--begin=now+1hour")
    jsonl = base / "rate.jsonl"
    jsonl.write_text("".join(json.dumps({"agent": "shell", "prompt": "true", "id": f"r{i}"})
                             + "\n" for i in range(n)))
    try:
        d.start()
        subprocess.run([sys.executable, "-m", "supervisor.ctl", "-c", str(d.config), "submit",
                        "--from", str(jsonl)], cwd=ROOT, check=True, env=d.env,
                       stdout=subprocess.DEVNULL, timeout=DEADLINE)
        ids = [f"r{i}" for i in range(n)]
        until("every job submitted to slurm", lambda: all(
            e.get("slurm_job_id") for e in d.entries(ids).values()), timeout=DEADLINE,
            poll=0.2)
    finally:
        d.stop()
        cluster.cancel_all()
    stamps = sorted(parse_iso(json.loads(line)["timestamp"]) or 0.0
                    for line in d.log.read_text().splitlines()
                    if '"job submitted to slurm"' in line)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    t0 = time.monotonic()
    for _ in range(raw):
        cluster.sbatch("--hold", "--output=/dev/null", f"--chdir={cluster.shared_dir}",
                       "--wrap", "true")
    raw_rate = raw / (time.monotonic() - t0)
    cluster.cancel_all()
    return {"sbatch_per_s": round(rate, 1), "sbatch_jobs": len(stamps),
            "sbatch_raw_per_s": round(raw_rate, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slurm", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer jobs")
    parser.add_argument("--dir", help="where the state dirs go (default: a temp dir)")
    args = parser.parse_args(argv)
    why = available()
    if why is not None:
        print(f"bench.slurm: {why} (`make bench-slurm` installs Slurm as root)",
              file=sys.stderr)
        return 2
    _log.setup(LogConfig(level="warning"), name="bench")
    base = Path(tempfile.mkdtemp(prefix="bench-slurm-", dir=args.dir))
    root = Path(tempfile.mkdtemp(prefix="slurmlab-", dir="/tmp"))
    root.chmod(0o755)
    cluster = SlurmCluster(root, kill_wait=5, cpus=24)
    try:
        cluster.start()
        out: dict[str, Any] = {"quick": args.quick,
                               "slurm": cluster.run("sbatch", "--version").stdout.strip()}
        out.update(bench_latency(base, cluster, 8 if args.quick else 20))
        out.update(bench_sbatch_rate(base, cluster, 50 if args.quick else 200))
    finally:
        cluster.stop(remove=True)
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:34} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
