"""The Slurm batch step's start gate: wait until Slurm saved the start, then exec the adaptor.

The gate's decisions are driven by a scripted slurmctld (answers in order, a fake clock);
`ask_slurm` and the exec run for real, with a stand-in `scontrol` on PATH. The real
slurmctld crash cases are in tests/proc/slurm (`make test-slurm`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from adaptors.slurmstart import START_GATE, Answer, Gate, ask_slurm, wait_until_durable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit

B1, B2 = "2026-12-03T10:00:00", "2026-12-03T10:05:00"


class Script:
    """slurmctld's answers in order (the last repeats) and a clock that sleeps move."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.now = 0.0
        self.asked_at: list[float] = []

    def ask(self) -> Answer:
        self.asked_at.append(self.now)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def run(self, name: str = "batchd-j1") -> Gate:
        return wait_until_durable(self.ask, name, sleep=self.sleep, clock=lambda: self.now)


def test_a_start_seen_running_for_the_gate_under_one_slurmctld_goes() -> None:
    """RUNNING as its own name, then again START_GATE later under the same BOOT_TIME: go,
    after two questions."""
    s = Script((B1, "RUNNING", "batchd-j1"))
    assert Gate.GO == s.run()
    assert [0.0, START_GATE] == s.asked_at


def test_a_silent_slurmctld_is_waited_for() -> None:
    """No answer: ask again later, conclude nothing."""
    s = Script(None, None, (B1, "RUNNING", "batchd-j1"))
    assert Gate.GO == s.run()
    assert 4.0 + START_GATE == s.now


def test_a_restart_that_kept_the_start_waits_a_new_window() -> None:
    """slurmctld restarted and shows the job RUNNING (its start was saved): the window
    starts again under the new slurmctld, then go."""
    s = Script((B1, "RUNNING", "batchd-j1"), (B2, "RUNNING", "batchd-j1"),
               (B2, "RUNNING", "batchd-j1"))
    assert Gate.GO == s.run()
    assert [0.0, START_GATE, 2 * START_GATE] == s.asked_at


def test_a_restart_that_forgot_the_start_dooms_this_copy() -> None:
    """slurmctld restarted and shows the job PENDING (the start was not saved; Slurm will
    run it again), unknown (the submission was lost), or its id on another job: this copy
    never runs the adaptor."""
    for after in ((B2, "PENDING", "batchd-j1"), (B2, "", ""), (B2, "RUNNING", "batchd-other")):
        assert Gate.DOOMED == Script((B1, "RUNNING", "batchd-j1"), after).run()


def test_not_running_yet_under_the_same_slurmctld_waits() -> None:
    """CONFIGURING (or any state but RUNNING) under one slurmctld: wait, never doomed."""
    s = Script((B1, "CONFIGURING", "batchd-j1"), (B1, "RUNNING", "batchd-j1"))
    assert Gate.GO == s.run()
    assert 2.0 + START_GATE == s.now


def scontrol(bin_dir: Path, job_line: str, *, job_rc: int = 0, config_rc: int = 0) -> None:
    """A stand-in scontrol: `show config` prints a BOOT_TIME, `show job -o ID` job_line."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "scontrol"
    path.write_text(f"""#!/bin/sh
if [ "$2" = config ]; then echo 'Configuration data as of now'; \
echo 'BOOT_TIME               = {B1}'; exit {config_rc}; fi
if [ {job_rc} -ne 0 ]; then echo 'slurm_load_jobs error: Invalid job id specified' >&2; \
exit {job_rc}; fi
echo '{job_line}'
""")
    path.chmod(0o755)


def test_ask_slurm_reads_boot_time_state_and_name(tmp_path: Path) -> None:
    """One `scontrol show config` and one `scontrol show job -o ID`, parsed; an unknown job
    is ("", ""); a slurmctld that does not answer is None."""
    bin_dir = tmp_path / "bin"
    scontrol(bin_dir, "JobId=7 JobName=batchd-j1 UserId=root(0) JobState=RUNNING Reason=None")
    assert (B1, "RUNNING", "batchd-j1") == ask_slurm(str(bin_dir / "scontrol"), "7")
    scontrol(bin_dir, "", job_rc=1)
    assert (B1, "", "") == ask_slurm(str(bin_dir / "scontrol"), "7")
    scontrol(bin_dir, "", config_rc=1)
    assert ask_slurm(str(bin_dir / "scontrol"), "7") is None


def gate_env(bin_dir: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def test_outside_slurm_it_execs_the_adaptor_at_once(tmp_path: Path) -> None:
    """Without SLURM_JOB_ID (run by hand): no gate; the adaptor runs the job in this very
    process (exec: the result's pid is the process started)."""
    job = fakekit.make_job(tmp_path / "state", "g1", adaptor="command", prompt="echo hi")
    proc = subprocess.run([sys.executable, "-m", "adaptors.slurmstart", str(job)],
                          cwd=fakekit.REPO, env=gate_env(None), capture_output=True,
                          timeout=60, check=False, start_new_session=True)
    assert (0, b"hi\n") == (proc.returncode, fakekit.output(job))
    assert b"not in a Slurm job" in proc.stderr


def test_in_slurm_it_waits_for_the_saved_start_then_execs(tmp_path: Path) -> None:
    """SLURM_JOB_ID set and scontrol showing the job RUNNING: the adaptor starts only after
    START_GATE, in the same process (its result names the pid that was started)."""
    bin_dir = tmp_path / "bin"
    scontrol(bin_dir, "JobId=7 JobName=batchd-g2 JobState=RUNNING Reason=None")
    job = fakekit.make_job(tmp_path / "state", "g2", adaptor="command", prompt="echo hi")
    proc = subprocess.Popen([sys.executable, "-m", "adaptors.slurmstart", str(job)],
                            cwd=fakekit.REPO, stderr=subprocess.PIPE, start_new_session=True,
                            env=gate_env(bin_dir, SLURM_JOB_ID="7", SLURM_JOB_NAME="batchd-g2"))
    _, err = proc.communicate(timeout=60)
    result = fakekit.result(job)
    assert (0, proc.pid, b"hi\n") == (proc.returncode, result["pid"], fakekit.output(job))
    assert b"start saved, adaptor runs" in err
    assert START_GATE <= float(err.split(b"(waited ")[1].split(b"s)")[0])


def test_usage_error() -> None:
    """No job folder: exit 2 with a usage line."""
    proc = subprocess.run([sys.executable, "-m", "adaptors.slurmstart"], cwd=fakekit.REPO,
                          capture_output=True, timeout=60, check=False)
    assert (2, b"usage: python -m adaptors.slurmstart JOB_DIR\n") == (proc.returncode,
                                                                        proc.stderr)
