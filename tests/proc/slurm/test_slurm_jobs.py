"""Jobs through a real Slurm: 20 at once, a batchd SIGKILL, slurmctld and slurmd dying.

Every job here is a Slurm batch job of the real adaptor on a real single-host cluster
(conftest.py); its prompt notes each start of the agent in `runs`, so "ran exactly once"
is counted, not assumed.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers import until
from tests.proc.harness import EXPECTED, LINES_5S
from tests.proc.slurm.slurmenv import SlurmEnv

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

DEADLINE = 120.0


def counted(env: SlurmEnv, body: str) -> str:
    """A prompt that notes its start in `runs`, then runs `body`."""
    return f'echo "$BATCHD_JOB_ID" >> {env.state.parent / "runs"}; {body}'


def test_twenty_jobs_complete_with_whole_output(senv: SlurmEnv) -> None:
    """20 jobs through Slurm: each completes, with its whole output, ran once, as one
    Slurm job whose id is in the record."""
    senv.start()
    ids = [f"s{i:02d}" for i in range(20)]
    for job_id in ids:
        senv.submit(job_id, counted(senv, LINES_5S))
    for job_id in ids:
        senv.wait_state(job_id, "completed", deadline=DEADLINE)
    records = {job_id: senv.record(job_id) for job_id in ids}
    assert {job_id: EXPECTED for job_id in ids} == {job_id: senv.output(job_id) for job_id in ids}
    assert {job_id: 1 for job_id in ids} == {job_id: senv.runs(job_id) for job_id in ids}
    slurm = {job_id: senv.slurm_jobs(job_id) for job_id in ids}
    assert {job_id: [(str(records[job_id]["slurm_job_id"]), "COMPLETED")] for job_id in ids} \
        == {job_id: [(j["JobId"], j["JobState"]) for j in rows] for job_id, rows in slurm.items()}


def test_batchd_sigkill_while_slurm_jobs_run_reattaches_them(senv: SlurmEnv) -> None:
    """batchd SIGKILLed while 6 Slurm jobs run: the new batchd re-attaches each by its
    Slurm job id (verified by its tag), and every byte of output is there once."""
    senv.start()
    ids = [f"k{i}" for i in range(6)]
    for job_id in ids:
        senv.submit(job_id, counted(senv, LINES_5S + "; " + LINES_5S))
    until("every job running with output", lambda: all(
        senv.state_of(j) == "running" and senv.lines(j) > 5 for j in ids), DEADLINE)
    senv.kill9()
    ready = senv.start()
    assert len(ids) == ready["did"]["reattached"]
    for job_id in ids:
        senv.wait_state(job_id, "completed", deadline=DEADLINE)
    assert {j: EXPECTED * 2 for j in ids} == {j: senv.output(j) for j in ids}
    assert {j: 1 for j in ids} == {j: senv.runs(j) for j in ids}
    assert {j: 1 for j in ids} == {j: len(senv.slurm_jobs(j)) for j in ids}
    assert len(ids) == senv.stats()["recovered"]


def test_slurmctld_sigkill_and_restart_mid_run_loses_nothing(senv: SlurmEnv) -> None:
    """slurmctld SIGKILLed while 6 jobs run (and 2 more were just submitted), restarted
    3 s later: every job completes once, with its whole output."""
    senv.start()
    ids = [f"c{i}" for i in range(6)]
    for job_id in ids:
        senv.submit(job_id, counted(senv, LINES_5S + "; " + LINES_5S))
    until("every job running", lambda: all(senv.state_of(j) == "running" for j in ids),
          DEADLINE)
    late = ["c6", "c7"]
    for job_id in late:
        senv.submit(job_id, counted(senv, LINES_5S))
    until("the late jobs submitted to slurm", lambda: all(
        (senv.entry(j) or {}).get("slurm_job_id") for j in late), DEADLINE)
    senv.cluster.kill_ctld()
    time.sleep(3.0)
    senv.cluster.start_ctld()
    for job_id in ids + late:
        wait_operating(senv, job_id, "completed")
    assert {j: EXPECTED * 2 for j in ids} == {j: senv.output(j) for j in ids}
    assert {j: EXPECTED for j in late} == {j: senv.output(j) for j in late}
    assert {j: 1 for j in ids + late} == {j: senv.runs(j) for j in ids + late}


def wait_operating(env: SlurmEnv, job_id: str, *states: str, deadline: float = 300.0) -> None:
    """Wait for the job's state while acting as the cluster's operator: a node Slurm drained
    after a slurmctld crash ("Duplicate jobid") is resumed, as NOTES.md says an admin does."""
    def done() -> bool:
        node = env.cluster.node_state() or ""
        if "DRAIN" in node:
            env.cluster.resume_node()
        return env.state_of(job_id) in states
    until(f"job {job_id} to be {'/'.join(states)}", done, deadline, interval=0.2)


def test_slurmctld_sigkilled_within_2s_of_a_submit_20_times_runs_each_job_once(
        senv: SlurmEnv) -> None:
    """20 times: a job is submitted, slurmctld is SIGKILLed 0 to 1.9 s after its sbatch
    (before its state reaches disk: Slurm then loses the job, reuses its id, or runs it
    again), and restarted 1 s later. Every job still runs, and its agent exactly once."""
    senv.start()
    ids = [f"t{i:02d}" for i in range(20)]
    for n, job_id in enumerate(ids):
        senv.submit(job_id, counted(senv, "echo ran; sleep 1"))
        until(f"{job_id} submitted to slurm",
              lambda job_id=job_id: (senv.entry(job_id) or {}).get("slurm_job_id"), DEADLINE)
        time.sleep((n % 10) * 0.2)
        senv.cluster.kill_ctld()
        time.sleep(1.0)
        senv.cluster.start_ctld()
    for job_id in ids:
        wait_operating(senv, job_id, "completed", "failed", "lost", "cancelled")
    assert {j: "completed" for j in ids} == {j: senv.state_of(j) for j in ids}
    assert {j: 1 for j in ids} == {j: senv.runs(j) for j in ids}
    assert {j: "ran\n" for j in ids} == {j: senv.output(j) for j in ids}
