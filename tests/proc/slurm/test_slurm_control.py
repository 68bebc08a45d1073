"""Stopping Slurm jobs, from batchd and from outside; Slurm refusing; Slurm's daemons dying.

Real batchd, real adaptor, real single-host Slurm (conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from supervisor.state.layout import RESULT, read_record
from tests.helpers import until
from tests.proc.harness import LINES_5S
from tests.proc.slurm.slurmenv import SlurmEnv
from tests.proc.slurm.slurmlab import SlurmCluster, _proc_table

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

DEADLINE = 120.0
LONG = "i=0; while [ $i -lt 600 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done"


def result(env: SlurmEnv, job_id: str) -> dict[str, object] | None:
    rec = read_record(RESULT, env.layout.job_result(job_id), owner=False)
    return rec if isinstance(rec, dict) else None


def slurm_id(env: SlurmEnv, job_id: str) -> int:
    got: int = until(f"{job_id} submitted to slurm",
                     lambda: (env.entry(job_id) or {}).get("slurm_job_id"), DEADLINE)
    return got


def test_cancel_is_scancel_and_the_adaptor_writes_its_result(senv: SlurmEnv) -> None:
    """batchctl cancel of a running Slurm job: the adaptor gets SIGTERM first (through
    Slurm's signal to the batch step), stops its agent and writes its result; the job ends
    cancelled by the operator, its Slurm job gone. A job still in Slurm's start gate is
    cancelled outright."""
    senv.start()
    senv.submit("run", LONG)
    senv.wait_state("run", "running", deadline=DEADLINE)
    until("output", lambda: senv.lines("run") > 3, DEADLINE)
    senv.ctl("cancel", "run")
    senv.wait_state("run", "cancelled", deadline=DEADLINE)
    rec = senv.record("run")
    res = result(senv, "run")
    assert res is not None and ("terminated", 15) == (res["reason"], res["signal"])
    assert "cancelled by operator" == rec["reason"]
    senv.submit("gated", LONG)
    sid = slurm_id(senv, "gated")
    senv.ctl("cancel", "gated")
    senv.wait_state("gated", "cancelled", deadline=DEADLINE)
    assert ("cancelled by operator", None) == (senv.record("gated")["reason"],
                                               result(senv, "gated"))
    until("both slurm jobs over", lambda: all(
        j["JobState"] not in ("RUNNING", "PENDING", "COMPLETING")
        for job_id in ("run", "gated") for j in senv.slurm_jobs(job_id)), DEADLINE)
    assert [str(sid)] == [j["JobId"] for j in senv.slurm_jobs("gated")]


def test_scancel_from_outside_ends_the_job_cancelled_with_slurms_state(
        senv: SlurmEnv) -> None:
    """`scancel` by someone else: the running job's adaptor stops on Slurm's SIGTERM and
    writes `terminated`; batchd records cancelled with Slurm's state as the reason. The same
    for a job scancelled before its adaptor started (no result at all)."""
    senv.start()
    senv.submit("out", LONG)
    senv.wait_state("out", "running", deadline=DEADLINE)
    senv.cluster.run("scancel", str(slurm_id(senv, "out")))
    senv.wait_state("out", "cancelled", deadline=DEADLINE)
    rec = senv.record("out")
    assert (f"cancelled in Slurm: slurm job {rec['slurm_job_id']} CANCELLED", True) == (
        rec["reason"], result(senv, "out") is not None)
    senv.submit("early", LONG)
    sid = slurm_id(senv, "early")
    senv.cluster.run("scancel", str(sid))
    senv.wait_state("early", "cancelled", deadline=DEADLINE)
    assert (f"cancelled in Slurm: slurm job {sid} CANCELLED", None) == (
        senv.record("early")["reason"], result(senv, "early"))
    assert 0 == senv.stats()["lost"]


def test_a_cancelled_job_slurmctld_brings_back_never_runs(tmp_path: Path,
                                                          slurm: SlurmCluster) -> None:
    """Jobs pending in Slurm (`--begin` an hour ahead) are cancelled; slurmctld is SIGKILLed
    once batchd has recorded them cancelled, and restarted. Measured on 22.05: slurmctld
    does not save the cancel of a pending job by itself (even 40 s later), so they come
    back PENDING. Started now, each copy finds the job's ended.json and refuses: no agent
    runs, the records stay cancelled."""
    env = SlurmEnv(tmp_path, slurm)
    env.config.write_text(env.config.read_text().replace(
        "slurm: {", "slurm: {sbatch_args: [--begin=now+1hour], "))
    ids = [f"c{i}" for i in range(3)]
    try:
        env.start()
        for job_id in ids:
            env.submit(job_id, f'echo "$BATCHD_JOB_ID" >> {env.state.parent / "runs"}')
        for job_id in ids:
            slurm_id(env, job_id)
        time.sleep(7.0)     # slurmctld has saved the submissions: only the cancels are at risk
        for job_id in ids:
            env.ctl("cancel", job_id)
        until("every job cancelled", lambda: all(env.state_of(j) == "cancelled" for j in ids),
              DEADLINE)
        slurm.kill_ctld()
        slurm.start_ctld()
        back = [r["JobId"] for j in ids for r in env.slurm_jobs(j) if r["JobState"] == "PENDING"]
        for sid in back:
            slurm.run("scontrol", "update", f"jobid={sid}", "starttime=now")
        until("no slurm job of theirs live", lambda: not [
            r for j in ids for r in env.slurm_jobs(j)
            if r["JobState"] in ("PENDING", "RUNNING", "COMPLETING")], 2 * DEADLINE)
        refused = [j for j in ids if "batchd ended this job before it ran"
                   in env.layout.job_adaptor_log(j).read_text(errors="replace")]
        assert ({j: 0 for j in ids}, {j: "cancelled" for j in ids}) == (
            {j: env.runs(j) for j in ids}, {j: env.state_of(j) for j in ids})
        assert len(back) == len(refused)
        print(json.dumps({"cancelled_pending_back_after_slurmctld_kill": len(back),
                          "refused": len(refused)}))
    finally:
        env.close()


def test_sbatch_refusal_fails_the_job_naming_slurms_words(tmp_path: Path,
                                                           slurm: SlurmCluster) -> None:
    """A partition Slurm does not have: the job fails at once, its reason Slurm's error."""
    env = SlurmEnv(tmp_path, slurm)
    env.config.write_text(env.config.read_text().replace("slurm: {", "slurm: {partition: nope, "))
    try:
        env.start()
        env.submit("bad", "true")
        env.wait_state("bad", "failed", deadline=DEADLINE)
        reason = env.record("bad")["reason"]
        assert reason.startswith("launch failed: sbatch: ")
        assert "invalid partition" in reason.lower()
    finally:
        env.close()


def test_max_jobs_caps_the_jobs_in_slurm(tmp_path: Path, slurm: SlurmCluster) -> None:
    """slurm.max_jobs: 2 of 6 jobs are in Slurm at once; max_concurrent_jobs (8 here) is for
    local jobs and does not apply."""
    env = SlurmEnv(tmp_path, slurm, max_jobs=2)
    ids = [f"m{i}" for i in range(6)]
    seen: list[int] = []
    try:
        env.start()
        for job_id in ids:
            env.submit(job_id, "sleep 2")

        def all_done() -> bool:
            states = [env.state_of(j) for j in ids]
            seen.append(sum(s in ("starting", "running") for s in states))
            return all(s == "completed" for s in states)
        until("every job completed", all_done, 4 * DEADLINE, interval=0.2)
    finally:
        env.close()
    assert 2 == max(seen)


def test_crash_between_sbatch_and_its_record_submits_no_second_job(
        tmp_path: Path, slurm: SlurmCluster) -> None:
    """The scheduler is SIGKILLed right after sbatch returned, before the id is recorded (an
    sbatch on PATH runs the real one, then kills its caller). The restarted scheduler finds
    the Slurm job by its tag and records it: one Slurm job, the agent ran once."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    once = tmp_path / "killed-once"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"""#!/bin/sh
out=$(/usr/bin/sbatch "$@") || exit $?
if [ ! -e {once} ]; then touch {once}; kill -9 $PPID; sleep 5; fi
echo "$out"
""")
    sbatch.chmod(0o755)
    env = SlurmEnv(tmp_path, slurm)
    env.cluster = slurm
    try:
        env.start_with_path(bin_dir)
        first = env.scheduler_pid
        env.submit("x", f'echo "$BATCHD_JOB_ID" >> {tmp_path / "runs"}; echo done')
        assert env.wait_scheduler()["pid"] != first
        env.wait_state("x", "completed", deadline=DEADLINE)
        rows = env.slurm_jobs("x")
        assert ([env.record("x")["slurm_job_id"]], 1, "done\n") == (
            [int(j["JobId"]) for j in rows], env.runs("x"), env.output("x"))
        assert once.exists()
    finally:
        env.close()


def _descendants(root: int) -> list[int]:
    table = _proc_table()
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        kids = [p for p, (pp, _) in table.items() if pp == pid]
        out += kids
        stack += kids
    return out


def test_slurmd_sigkill_jobs_carry_on_and_complete(senv: SlurmEnv) -> None:
    """slurmd SIGKILLed while 4 jobs run (slurmstepd survives it): measured, the jobs run
    to their end and complete with whole output, ran once, while slurmd is still dead."""
    senv.start()
    ids = [f"d{i}" for i in range(4)]
    for job_id in ids:
        senv.submit(job_id, f'echo "$BATCHD_JOB_ID" >> {senv.state.parent / "runs"}; '
                    + LINES_5S)
    until("every job running", lambda: all(senv.state_of(j) == "running" for j in ids),
          DEADLINE)
    t0 = time.monotonic()
    senv.cluster.kill_slurmd()
    for job_id in ids:
        senv.wait_state(job_id, "completed", deadline=DEADLINE)
    took = time.monotonic() - t0
    assert not senv.cluster.alive("slurmd")
    assert {j: 1 for j in ids} == {j: senv.runs(j) for j in ids}
    assert all(senv.lines(j) == 100 for j in ids)
    print(json.dumps({"slurmd_sigkill": "completed", "jobs": len(ids),
                      "kill_to_all_completed_s": round(took, 1)}))


def test_node_death_ends_its_jobs_lost_within_dead_after(senv: SlurmEnv) -> None:
    """The node dies: slurmd, slurmstepd and the jobs SIGKILLed. Slurm still shows the jobs
    RUNNING (until SlurmdTimeout, 300 s here), but their heartbeats stop: lost within
    dead_after (3 s) plus a tick, and their Slurm jobs are cancelled."""
    senv.start()
    ids = [f"n{i}" for i in range(3)]
    for job_id in ids:
        senv.submit(job_id, LONG)
    until("every job running", lambda: all(senv.state_of(j) == "running" for j in ids),
          DEADLINE)
    slurmd = senv.cluster.pid("slurmd")
    assert slurmd is not None
    victims = _descendants(slurmd) + senv.job_pids()
    senv.cluster.kill_slurmd()
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    t0 = time.monotonic()
    for job_id in ids:
        senv.wait_state(job_id, "lost", deadline=DEADLINE)
    took = time.monotonic() - t0
    assert all(senv.record(j)["reason"].startswith("lost: no heartbeat for") for j in ids)
    assert took < 3.0 + 5.0
    print(json.dumps({"node_death": "lost", "jobs": len(ids),
                      "kill_to_all_lost_s": round(took, 1)}))
