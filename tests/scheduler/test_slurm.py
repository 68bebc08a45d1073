"""scheduler.slurm without a cluster: sbatch's command line, parsing squeue/sacct, telling
Slurm's refusals from its silence, and the view of the jobs in flight (a recorded fake
client; the real commands run in tests/proc/slurm under `make test-slurm`)."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config, SlurmConfig
from supervisor.scheduler.lifecycle import SlurmSeen
from supervisor.scheduler.slurm import (
    Client,
    SlurmDown,
    SlurmError,
    SlurmJobs,
    SlurmRow,
    parse_sacct,
    parse_squeue,
    sbatch_argv,
    slurm_time,
    tag,
    time_limit_minutes,
    transient,
)
from supervisor.state.clock import MockClock, iso_now
from tests.conftest import T0

JOB_DIR = Path("/srv/state/jobs/j1")


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    warning = error = info


class Fake:
    """A recorded Slurm: each command's argv is kept; answers come from `replies`, keyed by
    the command name (a list is consumed in order; an exception is raised)."""

    def __init__(self, **replies: Any) -> None:
        self.calls: list[list[str]] = []
        self.envs: list[Mapping[str, str] | None] = []
        self.replies = replies

    def __call__(self, argv: list[str], env: Mapping[str, str] | None,
                 timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        self.envs.append(env)
        reply = self.replies.get(argv[0], (0, "", ""))
        if isinstance(reply, list):
            reply = reply.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        rc, out, err = reply
        return subprocess.CompletedProcess(argv, rc, out, err)


def config(**slurm: Any) -> Config:
    return Config(state_dir=Path("/srv/state"), workspace_dir=Path("/srv/ws"),
                  launcher="slurm", slurm=SlurmConfig(**slurm))


# --------------------------------------------------------------------------- sbatch


def test_sbatch_argv_tags_the_job_and_wraps_the_start_gate() -> None:
    """The job's tag (name, comment), its folder as work dir, Slurm's output into
    adaptor.log, no requeue, a time limit, the config's partition, account and args, and
    the batch script that execs the start gate with the nodes' python."""
    cfg = config(partition="gpu", account="lab", sbatch_args=("--mem=2G", "-c", "2"),
                 python="/opt/batchd/bin/python")
    argv = sbatch_argv(cfg, Path("/srv/st ate/jobs/j1"), timeout=3600.0, kill_grace=10.0)
    assert ["sbatch", "--parsable", "--job-name=batchd-j1", "--comment=batchd:j1",
            "--no-requeue", "--chdir=/srv/st ate/jobs/j1",
            "--output=/srv/st ate/jobs/j1/adaptor.log", "--open-mode=append", "--export=ALL",
            "--time=62", "--partition=gpu", "--account=lab", "--mem=2G", "-c", "2",
            "--wrap=exec /opt/batchd/bin/python -m adaptors.slurmstart "
            "'/srv/st ate/jobs/j1'"] == argv
    script = argv[-1].removeprefix("--wrap=")
    assert ["exec", "/opt/batchd/bin/python", "-m", "adaptors.slurmstart",
            "/srv/st ate/jobs/j1"] == shlex.split(script)


def test_sbatch_argv_defaults_to_our_own_python_and_no_partition() -> None:
    """Without slurm.python the nodes run batchd's interpreter (same path on the nodes)."""
    argv = sbatch_argv(config(), JOB_DIR, timeout=60.0, kill_grace=0.0, python="/x/python")
    assert not any(a.startswith(("--partition", "--account")) for a in argv)
    assert "--wrap=exec /x/python -m adaptors.slurmstart /srv/state/jobs/j1" == argv[-1]


@pytest.mark.parametrize(("timeout", "grace", "minutes"), [
    (1.0, 0.0, 2), (60.0, 10.0, 3), (86400.0, 10.0, 1442), (0.0, 0.0, 1)])
def test_time_limit_covers_timeout_grace_and_slack(timeout: float, grace: float,
                                                   minutes: int) -> None:
    """Slurm's --time: the job's timeout + kill_grace + 60 s, rounded up to minutes."""
    assert minutes == time_limit_minutes(timeout, grace)


# --------------------------------------------------------------------------- parsing


def test_parse_squeue_keeps_a_work_dir_with_bars_and_skips_noise() -> None:
    """%i|%j|%T|%r|%S|%e|%N|%Z: the work dir is last and may contain '|'; other lines are
    skipped."""
    text = ("12|batchd-a|RUNNING|None|2026-12-03T12:00:00|N/A|n1|/srv/a|b\n"
            "squeue: error: something\n"
            "13|batchd-b|PENDING|launch_failed_requeued_held|N/A|N/A||/srv/b\n\n")
    assert [SlurmRow(12, "batchd-a", "RUNNING", "None", "/srv/a|b", "2026-12-03T12:00:00",
                     "N/A", "n1"),
            SlurmRow(13, "batchd-b", "PENDING", "launch_failed_requeued_held", "/srv/b",
                     "N/A", "N/A", "")] == parse_squeue(text)


def test_parse_sacct_takes_the_first_word_of_the_state_and_skips_steps() -> None:
    """JobIDRaw|JobName|State|Start|End|NodeList|WorkDir; `CANCELLED by 0` is CANCELLED;
    12.batch is skipped."""
    text = ("12|batchd-a|CANCELLED by 0|Unknown|2026-12-03T12:00:00|None assigned|/srv/a\n"
            "12.batch|batch|CANCELLED|||n1|\n14|x|FAILED|t1|t2|n1|/w\n")
    assert [SlurmRow(12, "batchd-a", "CANCELLED", "", "/srv/a", "Unknown",
                     "2026-12-03T12:00:00", "None assigned"),
            SlurmRow(14, "x", "FAILED", "", "/w", "t1", "t2", "n1")] == parse_sacct(text)


@pytest.mark.parametrize(("row", "at_launch"), [
    (SlurmRow(1, "a", "CANCELLED", "None", "/w", "t1", "t1", "n1"), True),
    (SlurmRow(1, "a", "CANCELLED", "None", "/w", "t1", "t2", "n1"), False),
    (SlurmRow(1, "a", "CANCELLED", "JobHeldUser", "/w", "t1", "t1", ""), False),
    (SlurmRow(1, "a", "FAILED", "None", "/w", "t1", "t1", "n1"), False),
    (SlurmRow(1, "a", "CANCELLED", "", "/w", "Unknown", "Unknown", "n1"), False),
], ids=["slurm-cancelled-its-own-launch", "ran-then-scancel", "pending-scancel",
        "failed", "no-times"])
def test_ended_at_launch_tells_slurms_own_cancel_from_an_operators(
        row: SlurmRow, at_launch: bool) -> None:
    """Slurm cancels a launch it cannot make (slurmd: "already running ... not able to
    requeue it, cancelling job") on a node with no run time; an operator's scancel of a
    pending job has no node, of a running one some run time (measured on 22.05)."""
    assert at_launch == row.ended_at_launch()


BOOT = "2026-12-03T12:00:00"


@pytest.mark.parametrize(("submitted", "end", "at_launch"), [
    (-10.0, "2026-12-03T12:00:05", True),
    (-10.0, "2026-12-03T12:01:30", True),
    (-10.0, "2026-12-03T12:01:31", False),
    (-10.0, "2026-12-03T11:59:59", False),
    (+5.0, "2026-12-03T12:00:07", False),
    (None, "2026-12-03T12:00:05", False),
], ids=["just-after-the-restart", "window-end", "past-the-window", "before-the-restart",
        "submitted-after-the-restart", "submission-unknown"])
def test_a_cancel_right_after_a_restart_of_a_job_from_before_it_is_slurms_own(
        submitted: float | None, end: str, at_launch: bool) -> None:
    """A job submitted before slurmctld's BOOT_TIME and CANCELLED on a node within
    RELAUNCH_WINDOW_S after it is Slurm's own cancel of a relaunch, even with a second
    between its start and end (a flaky start == end in the slurmctld-restart test); any
    other cancel of a job with run time is an operator's."""
    boot = slurm_time(BOOT)
    assert boot is not None
    row = SlurmRow(1, "a", "CANCELLED", "None", "/w", "2026-12-03T12:00:04", end, "n1")
    when = None if submitted is None else boot + submitted
    assert at_launch == row.ended_at_launch(when, boot)
    assert not row.ended_at_launch(when, None)


def test_boot_time_is_asked_only_when_a_job_is_over_in_slurm(clock: MockClock) -> None:
    """slurmctld's BOOT_TIME (scontrol show config) is asked only when a job is over in
    Slurm (or gone from it); a job dispatched before it and cancelled in the window is
    at_launch, and restarted (Slurm's loss, not the job's)."""
    boot = slurm_time(BOOT)
    assert boot is not None
    fake = Fake(squeue=[(0, "7|batchd-a|RUNNING|None|t|u|n1|/srv/state/jobs/a\n", ""),
                        (0, "7|batchd-a|CANCELLED|None|2026-12-03T12:00:04|"
                         "2026-12-03T12:00:05|n1|/srv/state/jobs/a\n", "")],
                scontrol=(0, f"Configuration data as of x\nBOOT_TIME               = {BOOT}\n"
                          "ClusterName = lab\n", ""))
    side = jobs_side(fake, clock)
    e = entry("a", boot - 30.0, slurm_job_id=7)
    side.refresh({"a": e}, job_dir, wait=True)
    assert [] == [c for c in fake.calls if c[0] == "scontrol"]
    side.refresh({"a": e}, job_dir, wait=True)
    assert [["scontrol", "show", "config"]] == [c for c in fake.calls if c[0] == "scontrol"]
    seen = side.seen("a", e, clock.time())
    assert (boot, True, True) == (side.last.boot if side.last else None, seen.at_launch,
                                  seen.restarted)
    after = entry("a", boot + 30.0, slurm_job_id=7)
    assert (False, False) == (side.seen("a", after, clock.time()).at_launch,
                              side.seen("a", after, clock.time()).restarted)


@pytest.mark.parametrize(("stderr", "silent"), [
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller "
     "(connect failure)", True),
    ("slurm_load_jobs error: Socket timed out on send/recv operation", True),
    ("sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying", True),
    ("sbatch: error: Invalid authentication credential (munge)", True),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", False),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition "
     "combination specified", False),
])
def test_transient_tells_silence_from_refusal(stderr: str, silent: bool) -> None:
    """Slurm unreachable (try again, conclude nothing) versus Slurm saying no (fail)."""
    assert silent == transient(stderr)


# --------------------------------------------------------------------------- the client


def test_sbatch_returns_the_id_of_a_parsable_answer() -> None:
    """`12` and `12;cluster` are job 12; the job's environment is handed to sbatch."""
    fake = Fake(sbatch=[(0, "12\n", ""), (0, "13;lab\n", "")])
    client = Client(runner=fake)
    assert (12, 13) == (client.sbatch(["sbatch"], {"A": "1"}), client.sbatch(["sbatch"], {}))
    assert {"A": "1"} == fake.envs[0]


@pytest.mark.parametrize(("reply", "error"), [
    ((1, "", "sbatch: error: Batch job submission failed: Invalid partition name specified"),
     SlurmError),
    ((1, "", "sbatch: error: Batch job submission failed: Unable to contact slurm "
      "controller (connect failure)"), SlurmDown),
    (subprocess.TimeoutExpired(["sbatch"], 20.0), SlurmDown),
    (FileNotFoundError(2, "No such file"), SlurmError),
    ((0, "Submitted batch job 12\n", ""), SlurmDown),
])
def test_sbatch_failures(reply: Any, error: type[Exception]) -> None:
    """A refusal fails the job (SlurmError, with Slurm's words); silence, a timeout or an
    answer that is not an id may have submitted it (SlurmDown: look for it by its tag)."""
    with pytest.raises(error):
        Client(runner=Fake(sbatch=reply)).sbatch(["sbatch"], {})


def test_squeue_asks_by_name_for_every_state() -> None:
    """One squeue for all the names, finished jobs included; its silence is SlurmDown."""
    fake = Fake(squeue=[(0, "5|batchd-b|RUNNING|None|t|N/A|n1|/w/b\n", ""),
                        (1, "", "slurm_load_jobs error: Unable to contact slurm controller")])
    client = Client(runner=fake)
    assert [SlurmRow(5, "batchd-b", "RUNNING", "None", "/w/b", "t", "N/A", "n1")] == client.squeue(
        ["batchd-b", "batchd-a", "batchd-b"])
    assert ["squeue", "-h", "-t", "all", "-n", "batchd-a,batchd-b", "-o",
            "%i|%j|%T|%r|%S|%e|%N|%Z"] \
        == fake.calls[0]
    with pytest.raises(SlurmDown):
        client.squeue(["batchd-a"])
    assert [] == client.squeue([])


def test_history_falls_back_to_the_completion_log() -> None:
    """sacct without slurmdbd says accounting is disabled: `sacct -c` reads the jobcomp log;
    only the asked names come back."""
    fake = Fake(sacct=[(1, "", "Slurm accounting storage is disabled"),
                       (0, "3|batchd-a|CANCELLED|t|t|n|/w/a\n4|other|COMPLETED|t|t|n|/w\n", "")])
    rows = Client(runner=fake).history(["batchd-a"], since=T0)
    assert [SlurmRow(3, "batchd-a", "CANCELLED", "", "/w/a", "t", "t", "n")] == rows
    assert "--name=batchd-a" in fake.calls[0] and "-c" in fake.calls[1]


def test_scancel_names_the_job_so_a_reused_id_is_never_cancelled() -> None:
    """scancel --name=<tag> ID (Slurm cancels nothing when the name differs); a soft stop
    signals the batch step only; an unknown id is False; silence is SlurmDown."""
    fake = Fake(scancel=[(0, "", ""), (0, "", ""),
                         (1, "", "scancel: error: Kill job error on job id 9: Invalid job id "
                                 "specified"),
                         (8, "", "scancel: error: Kill job error on job id 9: Unable to contact "
                                 "slurm controller (connect failure)")])
    client = Client(runner=fake)
    assert client.scancel(9, "batchd-a", batch_term=True)
    assert client.scancel(9, "batchd-a")
    assert not client.scancel(9, "batchd-a")
    with pytest.raises(SlurmDown):
        client.scancel(9, "batchd-a")
    assert [["scancel", "--name=batchd-a", "--batch", "--signal=TERM", "9"],
            ["scancel", "--name=batchd-a", "9"]] == fake.calls[:2]


# --------------------------------------------------------------------------- jobs in flight


def jobs_side(fake: Fake, clock: MockClock, **cfg: Any) -> SlurmJobs:
    return SlurmJobs(config(**cfg), Log(), client=Client(runner=fake),  # type: ignore[arg-type]
                     clock=clock)


def entry(job_id: str, since: float, **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "launcher": "slurm", "dispatched_at": iso_now(since), **fields}


def job_dir(job_id: str) -> Path:
    return Path("/srv/state/jobs") / job_id


def test_seen_is_unknown_until_slurm_answers_after_the_dispatch(clock: MockClock) -> None:
    """Before any answer, for a job not asked about, or from an answer asked before the
    job's (re)dispatch: nothing is known (no conclusion from silence)."""
    fake = Fake(squeue=(0, "", ""), sacct=(1, "", "Slurm accounting storage is disabled"))
    side = jobs_side(fake, clock)
    e = entry("a", T0 - 5)
    assert SlurmSeen() == side.seen("a", e, T0)
    side.refresh({"a": e}, job_dir, wait=True)
    assert SlurmSeen(known=True) == side.seen("a", e, T0)
    assert SlurmSeen() == side.seen("b", entry("b", T0 - 5), T0)
    assert SlurmSeen() == side.seen("a", entry("a", T0 + 1), T0 + 2)


def test_seen_matches_the_tag_and_the_job_folder(clock: MockClock) -> None:
    """A row counts for a job only with its name AND its folder as work dir (another
    batchd's job of the same id is not ours); a live row beats an ended one."""
    rows = ("7|batchd-a|FAILED|NonZeroExitCode|t|u|n1|/srv/state/jobs/a\n"
            "8|batchd-a|RUNNING|None|t|u|n1|/elsewhere/jobs/a\n"
            "9|batchd-a|PENDING|Resources|t|u|n1|/srv/state/jobs/a\n")
    side = jobs_side(Fake(squeue=(0, rows, "")), clock)
    e = entry("a", T0 - 5, slurm_job_id=7)
    side.refresh({"a": e}, job_dir, wait=True)
    assert SlurmSeen(True, 9, "PENDING", "Resources", 0.0) == side.seen("a", e, T0)


def test_a_final_state_is_timed_from_when_it_was_first_seen(clock: MockClock) -> None:
    """final_for: seconds since the first answer that showed this final state."""
    fake = Fake(squeue=[(0, "7|batchd-a|RUNNING|None|t|u|n1|/srv/state/jobs/a\n", ""),
                        (0, "7|batchd-a|CANCELLED|None|t|u|n1|/srv/state/jobs/a\n", ""),
                        (0, "7|batchd-a|CANCELLED|None|t|u|n1|/srv/state/jobs/a\n", "")])
    side = jobs_side(fake, clock, poll=1.0)
    e = entry("a", T0 - 5, slurm_job_id=7)
    for _ in range(3):
        side.refresh({"a": e}, job_dir, wait=True)
        clock.advance(4.0)
    assert (7, "CANCELLED", 8.0) == (side.seen("a", e, clock.time()).slurm_job_id,
                                     side.seen("a", e, clock.time()).state,
                                     side.seen("a", e, clock.time()).final_for)


def test_silence_forgets_the_view_and_stops_submissions(clock: MockClock) -> None:
    """Slurm not answering: every job's view is unknown and no new job is submitted until
    an answer comes."""
    fake = Fake(squeue=[(0, "7|batchd-a|RUNNING|None|t|u|n1|/srv/state/jobs/a\n", ""),
                        (1, "", "Unable to contact slurm controller"),
                        (0, "7|batchd-a|RUNNING|None|t|u|n1|/srv/state/jobs/a\n", "")])
    side = jobs_side(fake, clock)
    e = entry("a", T0 - 5)
    answers = []
    for _ in range(3):
        side.refresh({"a": e}, job_dir, wait=True)
        answers.append((side.seen("a", e, T0).known, side.accepting()))
    assert [(True, True), (False, False), (True, True)] == answers


def test_history_answers_for_jobs_squeue_forgot_and_is_asked_once(clock: MockClock) -> None:
    """A job squeue no longer shows is looked up in the accounting or completion log once;
    what was found there is remembered while the job is in flight."""
    fake = Fake(squeue=(0, "", ""),
                sacct=[(0, "4|batchd-a|CANCELLED|t|u|n|/srv/state/jobs/a\n", "")])
    side = jobs_side(fake, clock)
    e = entry("a", T0 - 5)
    side.refresh({"a": e}, job_dir, wait=True)
    side.refresh({"a": e}, job_dir, wait=True)
    assert (4, "CANCELLED") == (side.seen("a", e, T0).slurm_job_id, side.seen("a", e, T0).state)
    assert 1 == sum(call[0] == "sacct" for call in fake.calls)


def test_polls_run_on_a_thread_at_most_every_poll_interval(clock: MockClock) -> None:
    """refresh without wait: one poll in flight at a time, the next only after slurm.poll."""
    fake = Fake(squeue=(0, "7|batchd-a|RUNNING|None|t|u|n1|/srv/state/jobs/a\n", ""))
    side = jobs_side(fake, clock, poll=10.0)
    e = entry("a", T0 - 5)
    side.refresh({"a": e}, job_dir)
    assert side._future is not None
    side._future.result(timeout=10)
    side.refresh({"a": e}, job_dir)
    clock.advance(5.0)
    side.refresh({"a": e}, job_dir)
    assert (1, "RUNNING") == (len(fake.calls), side.seen("a", e, T0).state)
    clock.advance(6.0)
    side.refresh({"a": e}, job_dir)
    assert side._future is not None
    side._future.result(timeout=10)
    side.close()
    assert 2 == len(fake.calls)


@pytest.mark.parametrize(("seen", "hard", "expected"), [
    (SlurmSeen(True, 7, "RUNNING"), False, ["scancel", "--name=batchd-a", "--batch",
                                             "--signal=TERM", "7"]),
    (SlurmSeen(True, 7, "PENDING"), False, ["scancel", "--name=batchd-a", "7"]),
    (SlurmSeen(), False, ["scancel", "--name=batchd-a", "5"]),
    (SlurmSeen(True, 7, "RUNNING"), True, ["scancel", "--name=batchd-a", "7"]),
], ids=["running-soft", "pending", "unknown-uses-recorded-id", "hard"])
def test_stop_signals_the_batch_step_only_of_a_running_job(
        clock: MockClock, seen: SlurmSeen, hard: bool, expected: list[str]) -> None:
    """A soft stop of a running job is SIGTERM to its batch step (the adaptor); a pending
    or unseen one is cancelled (`scancel --batch` of a pending job hangs); hard: scancel."""
    fake = Fake()
    side = jobs_side(fake, clock)
    assert side.stop("a", {"slurm_job_id": 5}, seen, hard=hard)
    assert [expected] == fake.calls


def test_stop_of_a_job_never_submitted_does_nothing(clock: MockClock) -> None:
    """No Slurm id seen or recorded: nothing to scancel."""
    fake = Fake()
    assert not jobs_side(fake, clock).stop("a", {}, SlurmSeen(known=True), hard=True)
    assert [] == fake.calls


def test_tag_is_the_name() -> None:
    """The Slurm job name of job j1."""
    assert "batchd-j1" == tag("j1")


def test_config_python_wins_over_the_default() -> None:
    """slurm.python is what the nodes run, whatever batchd runs on."""
    cfg = replace(config(), slurm=SlurmConfig(python="/nodes/python"))
    assert sbatch_argv(cfg, JOB_DIR, timeout=1.0, kill_grace=0.0,
                       python="/x").pop().startswith("--wrap=exec /nodes/python ")
