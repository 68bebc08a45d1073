"""The benchmarks' core functions at a tiny size, so their code cannot rot (the figures
themselves come from `make bench`; a benchmark is not a test). tests/bench/ would shadow
the bench package (tests/ is on sys.path), hence one module here."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bench import callbacks as bench_callbacks
from bench import jobcontrol as bench_jobcontrol
from bench import locks as bench_locks
from bench import reaper as bench_reaper
from bench import results as bench_results
from bench import retention as bench_retention
from bench import slurm as bench_slurm
from tests.proc.slurm.slurmlab import SlurmCluster


def test_reaper_scan_removes_nothing_and_a_removal_pass_removes_everything(
        tmp_path: Path) -> None:
    """bench.reaper: passes over finished jobs that are not due remove nothing (checked
    inside), timed; one pass over due jobs removes each job folder and workspace,
    archives each record and asks the scheduler to forget each job."""
    scan = bench_reaper.bench_scan(tmp_path / "scan", 30, passes=2)
    assert ["scan_ms_30", "scan_ms_30_min_max"] == sorted(scan)
    assert scan["scan_ms_30"] > 0
    removed = bench_reaper.bench_remove(tmp_path / "remove", 20)
    assert (20, {"jobs": 20, "workspaces": 20}) == (removed["remove_jobs"],
                                                    removed["remove_did"])
    assert removed["remove_per_s"] > 0


def test_retention_keeps_only_the_live_and_recent_jobs(tmp_path: Path) -> None:
    """bench.retention: 3,000 jobs submitted, finished and (but the 400 most recent)
    archived and forgotten with 500 live throughout (counts and counters checked
    inside); the queue reopened before each of the last 3 batches and at the end."""
    got = bench_retention.run(tmp_path, 3000, live=500, recent=400, batch=250, restarts=3)
    assert (2600, 4) == (got["archived"], got["opens"])
    assert 0 < got["archive_bytes_per_job"] < 200
    assert 0 < got["state_bytes"]
    assert got["recover_ms"] <= got["recover_ms_max"]


def test_callbacks_figures_at_a_tiny_size(tmp_path: Path) -> None:
    """bench.callbacks: 3 jobs' events reach the receiver (job end to arrival, timed), and
    20 events waiting in a stopped worker's inbox are all delivered on disk."""
    latency = bench_callbacks.bench_complete_to_delivered(tmp_path / "latency", 3)
    assert (3, True) == (latency["complete_to_delivered_jobs"],
                         0 < latency["complete_to_delivered_ms_p50"])
    rate = bench_callbacks.bench_throughput(tmp_path / "rate", 20)
    assert (20, True) == (rate["deliveries"], rate["deliveries_per_s"] > 0)


def test_locks_workspace_against_a_plain_clone_at_a_tiny_size(tmp_path: Path) -> None:
    """bench.locks: a workspace made as the scheduler makes it and a plain git clone of a
    20-file file:// remote, each timed once."""
    remote = bench_locks.make_remote(tmp_path / "remote", 20)
    got = bench_locks.bench_workspace(tmp_path / "ws", remote.as_uri(), 1)
    assert (1, True, True) == (got["workspace_rounds"], got["workspace_ms"] > 0,
                               got["git_clone_ms"] > 0)


def test_results_bench_collects_a_small_tree(tmp_path: Path) -> None:
    """bench.results: a tree of 200 files with 20 changed is collected whole (the bench
    checks every changed file is listed) and timed beside plain git."""
    got = bench_results.bench_collect(tmp_path, 200, 20, runs=1)
    assert (200, 20) == (got["files"], got["changed"])
    assert got["collect_ms"] > 0 and got["git_baseline_ms"] > 0


def test_jobcontrol_passes_over_a_chain_and_a_fan_in(tmp_path: Path) -> None:
    """bench.jobcontrol's passes run the real dispatch over a chain and a fan-in (each
    asserts the waiting jobs stay queued) and give a time."""
    figures = (bench_jobcontrol.bench_pass(tmp_path, 50, passes=3),
               bench_jobcontrol.bench_fanin(tmp_path, 50, passes=3))
    assert [True, True] == [isinstance(f, float) and f >= 0 for f in figures]


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_slurm_figures_at_a_tiny_size(tmp_path: Path) -> None:
    """bench.slurm on a cluster of its own (run by `make test-slurm`): 2 jobs through Slurm
    and 2 through the direct launcher, each timed (Slurm's behind its start gate of at
    least 6 s), and 5 jobs submitted into Slurm by batchd beside 5 plain sbatch calls."""
    root = Path(tempfile.mkdtemp(prefix="slurmbench-", dir="/tmp"))
    root.chmod(0o755)
    cluster = SlurmCluster(root, kill_wait=5, cpus=8)
    try:
        cluster.start()
        latency = bench_slurm.bench_latency(tmp_path / "latency", cluster, 2)
        rate = bench_slurm.bench_sbatch_rate(tmp_path / "rate", cluster, 5, raw=5)
    finally:
        cluster.stop(remove=True)
    assert (2, True, True) == (
        latency["latency_jobs"], latency["start_gate_s_p50"] >= 6.0,
        latency["submit_to_running_ms_p50"] > latency["direct_submit_to_running_ms_p50"] > 0)
    assert (5, True, True) == (rate["sbatch_jobs"], rate["sbatch_per_s"] > 0,
                               rate["sbatch_raw_per_s"] > 0)


def test_chaos_rig_counts_an_adaptors_child_before_its_exec_as_the_agent(
        tmp_path: Path) -> None:
    """bench.chaos: a child the adaptor forked, before it execs the agent, shows the
    adaptor's command line; killing it fails the job as an agent's kill does, so the rig
    counts it as the agent (seed 494710626 counted two such kills as the adaptor's and
    found the jobs' `failed` unexplained)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from bench.chaos.rig import Rig
    rig = Rig(tmp_path / "work", slots=1, tmpfs_mb=None)
    env = {**os.environ, "BATCHD_JOB_DIR": str(rig.state / "jobs" / "j1")}
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(30)\ntime.sleep(30)\n"
    proc = subprocess.Popen([sys.executable, "-c", code, "adaptors.run"], env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(found := rig.job_procs()) < 2:
            assert time.monotonic() < deadline, found
            time.sleep(0.02)
        assert ([proc.pid], [proc.pid]) == ([p.pid for p in found if p.adaptor],
                                            [p.ppid for p in found if not p.adaptor])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
