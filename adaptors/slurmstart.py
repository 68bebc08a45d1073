"""A Slurm job's batch step: wait until Slurm has saved the job's start, then exec the adaptor.

`sbatch --wrap 'exec PYTHON -m adaptors.slurmstart JOB_DIR'` (supervisor.scheduler.slurm).
slurmctld writes its state at most every 5 s; SIGKILLed before it did, it forgets the
start, recovers the job PENDING, kills this copy when the node re-registers and runs the
job again: its agent would have run twice. So the agent is held back until the start is
durable: the job shown RUNNING, under its own name, for START_GATE seconds by one and the
same slurmctld (its BOOT_TIME unchanged), asked with `scontrol`. Then `exec python -m
adaptors.run JOB_DIR`: the same process, so the batch step Slurm signals is the adaptor.
A copy that sees slurmctld restarted and its job not running (or its id on another job)
is the forgotten one: it waits, touching nothing, for Slurm to kill it. Writes only lines
on stderr (the job's adaptor.log); docs/SCALE.md has the measurements behind it.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ["START_GATE", "Answer", "Gate", "ask_slurm", "main", "wait_until_durable"]

#: Seconds a start must have been RUNNING under one slurmctld: its state save interval
#: (SAVE_MAX_WAIT, 5 s in src/slurmctld/state_save.c) plus a second.
START_GATE = 6.0
#: Seconds between questions while slurmctld does not answer or the job is not running.
_RETRY_S = 2.0
_CALL_TIMEOUT_S = 20.0
_EXIT_USAGE = 2


class Gate(enum.Enum):
    GO = "go"             # the start is durable: run the adaptor
    DOOMED = "doomed"     # this copy's start was forgotten (or its id reused): never run


#: (slurmctld's BOOT_TIME, the job's JobState, its JobName), or None when it did not answer.
Answer = tuple[str, str, str] | None


def _scontrol(scontrol: str, *args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run([scontrol, *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=_CALL_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def ask_slurm(scontrol: str, slurm_job_id: str) -> Answer:
    """slurmctld's BOOT_TIME and the job's state and name; ("...", "", "") for a job
    slurmctld does not know; None when it does not answer."""
    config = _scontrol(scontrol, "show", "config")
    if config is None or config.returncode != 0:
        return None
    boot = next((line.split("=", 1)[1].strip() for line in config.stdout.splitlines()
                 if line.startswith("BOOT_TIME") and "=" in line), None)
    if boot is None:
        return None
    job = _scontrol(scontrol, "show", "job", "-o", slurm_job_id)
    if job is None:
        return None
    if job.returncode != 0:
        return (boot, "", "") if "invalid job id" in job.stderr.lower() else None
    fields = dict(word.split("=", 1) for word in job.stdout.split() if "=" in word)
    return boot, fields.get("JobState", ""), fields.get("JobName", "")


def wait_until_durable(ask: Callable[[], Answer], name: str, *, gate: float = START_GATE,
                       sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.monotonic) -> Gate:
    """Ask until the job has been RUNNING as `name` for `gate` seconds under one slurmctld
    (GO), or slurmctld restarted since it was seen so and shows it otherwise (DOOMED)."""
    boot_seen: str | None = None      # the slurmctld that showed it running, since `since`
    since = 0.0
    while True:
        answer = ask()
        if answer is None:
            sleep(_RETRY_S)
            continue
        boot, state, shown_as = answer
        mine = state == "RUNNING" and shown_as == name
        if not mine:
            if boot_seen is not None and boot != boot_seen:
                return Gate.DOOMED
            sleep(_RETRY_S)
            continue
        now = clock()
        if boot != boot_seen:                    # first seen, or seen again after a restart
            boot_seen, since = boot, now
        elif now - since >= gate:
            return Gate.GO
        sleep(max(0.0, gate - (now - since)))


def _say(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    try:
        sys.stderr.write(f"{stamp} batchd-slurmstart pid={os.getpid()}: {message}\n")
        sys.stderr.flush()
    except OSError:
        return


def main(argv: Sequence[str] | None = None) -> int:
    """Gate, then exec `python -m adaptors.run JOB_DIR` (never returns on GO)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m adaptors.slurmstart JOB_DIR", file=sys.stderr)
        return _EXIT_USAGE
    slurm_job_id = os.environ.get("SLURM_JOB_ID")
    scontrol = shutil.which("scontrol")
    if not slurm_job_id:
        _say("not in a Slurm job (no SLURM_JOB_ID): starting the adaptor at once")
    elif scontrol is None:
        _say("scontrol not found on PATH: cannot wait for Slurm to save the start")
    else:
        name = os.environ.get("SLURM_JOB_NAME", "")
        started = time.monotonic()
        verdict = wait_until_durable(lambda: ask_slurm(scontrol, slurm_job_id), name)
        if verdict is Gate.DOOMED:
            _say(f"slurmctld restarted and forgot this start of job {slurm_job_id}: "
                 "not running it; waiting for Slurm to end this copy")
            while True:
                time.sleep(3600)
        _say(f"slurm job {slurm_job_id}: start saved, adaptor runs "
             f"(waited {time.monotonic() - started:.1f}s)")
    python = sys.executable
    os.execv(python, [python, "-m", "adaptors.run", args[0]])
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
