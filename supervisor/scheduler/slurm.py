"""Jobs as Slurm batch jobs (`launcher: slurm`): sbatch, Slurm's view of jobs in flight, scancel.

The scheduler's one contact with Slurm's client commands, each run with a timeout. Every
Slurm job is tagged with its batchd job (name `batchd-<id>`, comment `batchd:<id>`, work
dir = the job folder), and found by that tag, never by its Slurm id alone: a slurmctld
crash can lose a submission and give its id to the next one. docs/SCALE.md has the
deployment, docs/JOBS.md ("Slurm jobs") the rules the job table applies to what is seen.
"""

from __future__ import annotations

import functools
import math
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.config import Config
from supervisor.runtime import Log
from supervisor.scheduler.lifecycle import SLURM_LIVE, SLURM_PENDING, SlurmSeen
from supervisor.state.clock import SYSTEM_CLOCK, Clock, parse_iso

__all__ = [
    "CALL_TIMEOUT",
    "RELAUNCH_WINDOW_S",
    "START_MODULE",
    "Client",
    "Runner",
    "SlurmDown",
    "SlurmError",
    "SlurmJobs",
    "SlurmRow",
    "comment",
    "parse_sacct",
    "parse_squeue",
    "sbatch_argv",
    "slurm_time",
    "tag",
    "time_limit_minutes",
    "transient",
]

#: Seconds one client call may take. While slurmctld is down, clients give up after
#: MessageTimeout - 1 s (9 s with Slurm's default of 10): this is beyond that.
CALL_TIMEOUT = 20.0
#: The batch step's entry point on the node: it waits until Slurm has saved the job's
#: start, then execs `python -m adaptors.run JOB_DIR` (adaptors/slurmstart.py).
START_MODULE = "adaptors.slurmstart"
#: What a Slurm job gets beyond the job's own timeout and kill grace: the start gate and
#: Slurm's own slack (it checks time limits about every 30 s).
_TIME_SLACK_S = 60.0
_SQUEUE_FORMAT = "%i|%j|%T|%r|%S|%e|%N|%Z"     # the work dir last: it may contain '|'
_SACCT_FIELDS = "JobIDRaw,JobName,State,Start,End,NodeList,WorkDir"
_NO_VALUE = frozenset({"", "N/A", "None", "Unknown", "(null)"})
#: Seconds after a slurmctld start within which it relaunches the jobs it recovered (its
#: first scheduling passes; the lab saw 5-30 s): a job submitted before that start and
#: CANCELLED on a node in this window is Slurm's own cancel of a relaunch it could not make.
RELAUNCH_WINDOW_S = 90.0
#: stderr of a client that could not reach slurmctld (or munge): nothing is known.
_TRANSIENT = (
    "unable to contact slurm controller", "socket timed out", "temporarily unable",
    "resource temporarily unavailable", "zero bytes were transmitted",
    "communication connection failure", "transport endpoint", "connection refused",
    "unable to establish", "connection timed out", "munge", "authentication",
    "slurmctld is busy", "sending/receiving", "node failure",
)


class SlurmError(Exception):
    """Slurm refused (sbatch: a bad partition, account or option): the job cannot run there."""


class SlurmDown(Exception):
    """Slurm did not answer (slurmctld down, munge, a timeout): nothing may be concluded."""


def tag(job_id: str) -> str:
    """The Slurm job name of a batchd job."""
    return f"batchd-{job_id}"


def comment(job_id: str) -> str:
    """The Slurm job comment of a batchd job (squeue %k, for people and scripts)."""
    return f"batchd:{job_id}"


def time_limit_minutes(timeout: float, kill_grace: float) -> int:
    """Slurm's --time for a job: its timeout and kill grace plus slack, in whole minutes
    (the adaptor enforces the timeout itself; this is Slurm's backstop)."""
    return max(1, math.ceil((timeout + kill_grace + _TIME_SLACK_S) / 60.0))


def sbatch_argv(cfg: Config, job_dir: Path, *, timeout: float, kill_grace: float,
                python: str | None = None) -> list[str]:
    """The sbatch command line that submits the job in `job_dir` (its spec written)."""
    job_id = job_dir.name
    interpreter = cfg.slurm.python or python or sys.executable
    argv = ["sbatch", "--parsable", f"--job-name={tag(job_id)}", f"--comment={comment(job_id)}",
            "--no-requeue", f"--chdir={job_dir}", f"--output={job_dir / 'adaptor.log'}",
            "--open-mode=append", "--export=ALL",
            f"--time={time_limit_minutes(timeout, kill_grace)}"]
    if cfg.slurm.partition:
        argv.append(f"--partition={cfg.slurm.partition}")
    if cfg.slurm.account:
        argv.append(f"--account={cfg.slurm.account}")
    argv += list(cfg.slurm.sbatch_args)
    script = shlex.join([interpreter, "-m", START_MODULE, str(job_dir)])
    return [*argv, f"--wrap=exec {script}"]


@dataclass(frozen=True)
class SlurmRow:
    """One Slurm job as squeue or sacct shows it (times as Slurm prints them)."""

    slurm_job_id: int
    name: str
    state: str
    reason: str
    workdir: str
    start: str = ""
    end: str = ""
    nodes: str = ""

    def ended_at_launch(self, submitted: float | None = None,
                        boot: float | None = None) -> bool:
        """Slurm's own cancel of a launch it could not make, not an operator's: after a
        slurmctld restart, slurmd refuses a second copy of a job ("not able to requeue it,
        cancelling job"). CANCELLED on a node either the instant it started (no run time),
        or, for a job `submitted` before slurmctld's `boot` (epoch seconds), within
        RELAUNCH_WINDOW_S after that boot (its start and end can fall a second apart)."""
        if self.state != "CANCELLED" or self.nodes in _NO_VALUE:
            return False
        if self.start not in _NO_VALUE and self.start == self.end:
            return True
        end = slurm_time(self.end)
        return (submitted is not None and boot is not None and end is not None
                and submitted < boot and 0.0 <= end - boot <= RELAUNCH_WINDOW_S)


def slurm_time(text: str) -> float | None:
    """A time as Slurm prints it (`2026-12-03T12:00:00`, local time) in epoch seconds."""
    if text in _NO_VALUE:
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def parse_squeue(text: str) -> list[SlurmRow]:
    """`squeue -h -o '%i|%j|%T|%r|%S|%e|%N|%Z'` lines; a line that is not one is skipped."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|", 7)]
        if len(parts) != 8 or not parts[0].isdigit():
            continue
        job, name, state, reason, start, end, nodes, workdir = parts
        rows.append(SlurmRow(int(job), name, state, reason, workdir, start, end, nodes))
    return rows


def parse_sacct(text: str) -> list[SlurmRow]:
    """`sacct -P -n -o JobIDRaw,JobName,State,Start,End,NodeList,WorkDir` lines (steps such
    as `12.batch` and headers skipped); State "CANCELLED by 0" is CANCELLED."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|", 6)]
        if len(parts) != 7 or not parts[0].isdigit():
            continue
        job, name, state, start, end, nodes, workdir = parts
        rows.append(SlurmRow(int(job), name, state.split(" ", 1)[0], "", workdir, start, end,
                             nodes))
    return rows


def transient(stderr: str) -> bool:
    """Whether a client's error says Slurm could not be reached (try again), not a refusal."""
    low = stderr.lower()
    return any(word in low for word in _TRANSIENT)


Runner = Callable[[list[str], Mapping[str, str] | None, float],
                  "subprocess.CompletedProcess[str]"]


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def _run(argv: list[str], env: Mapping[str, str] | None,
         timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a client command (stdin closed, dying with its caller: `setpriv --pdeathsig`)."""
    setpriv = _setpriv()
    full = [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv
    return subprocess.run(full, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=None if env is None else dict(env), timeout=timeout, check=False)


@dataclass
class Client:
    """Slurm's client commands with timeouts; SlurmDown when Slurm does not answer."""

    runner: Runner = _run
    timeout: float = CALL_TIMEOUT

    def call(self, argv: list[str], env: Mapping[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        """Run argv; SlurmError if the command is missing, SlurmDown if it timed out or
        failed with a transient error. Other failures are returned (rc != 0)."""
        try:
            done = self.runner(argv, env, self.timeout)
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]} not found on PATH: install Slurm's client "
                             "commands (docs/SCALE.md)") from None
        except subprocess.TimeoutExpired:
            raise SlurmDown(f"{argv[0]} did not answer within {self.timeout:g}s") from None
        if done.returncode != 0 and transient(done.stderr + done.stdout):
            raise SlurmDown(f"{argv[0]}: {_words(done)}")
        return done

    def sbatch(self, argv: list[str], env: Mapping[str, str]) -> int:
        """Submit; the Slurm job id. SlurmError: refused; SlurmDown: maybe submitted."""
        done = self.call(argv, env)
        if done.returncode != 0:
            raise SlurmError(f"sbatch: {_words(done)}")
        first = done.stdout.strip().split(";", 1)[0]
        if not first.isdigit():
            raise SlurmDown(f"sbatch printed {done.stdout.strip()!r}, not a job id")
        return int(first)

    def squeue(self, names: Iterable[str]) -> list[SlurmRow]:
        """Every job (pending, running, and ended within MinJobAge) with one of `names`."""
        wanted = sorted(set(names))
        if not wanted:
            return []
        done = self.call(["squeue", "-h", "-t", "all", "-n", ",".join(wanted),
                          "-o", _SQUEUE_FORMAT])
        if done.returncode != 0:
            raise SlurmDown(f"squeue: {_words(done)}")
        return parse_squeue(done.stdout)

    def history(self, names: Iterable[str], since: float | None) -> list[SlurmRow]:
        """Ended jobs with one of `names` that squeue no longer shows: sacct (slurmdbd),
        else `sacct -c` (the jobcomp/filetxt log); [] when neither is available."""
        wanted = set(names)
        if not wanted:
            return []
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since or 0.0))
        for argv in (["sacct", "-X", "-P", "-n", f"--name={','.join(sorted(wanted))}",
                      f"--starttime={start}", "-o", _SACCT_FIELDS],
                     ["sacct", "-c", "-P", "-n", "-o", _SACCT_FIELDS]):
            try:
                done = self.call(argv)          # SlurmDown goes up: nothing is known
            except SlurmError:                  # no sacct here
                return []
            if done.returncode == 0:
                return [row for row in parse_sacct(done.stdout) if row.name in wanted]
        return []

    def scancel(self, slurm_job_id: int, name: str, *, batch_term: bool = False) -> bool:
        """Cancel (or, batch_term, SIGTERM only the batch step: the adaptor) the job with
        that id AND that name: a reused id never cancels another job. False if Slurm does
        not know it (any more)."""
        argv = ["scancel", f"--name={name}"]
        if batch_term:
            argv += ["--batch", "--signal=TERM"]
        done = self.call([*argv, str(slurm_job_id)])
        if done.returncode != 0:
            words = _words(done).lower()
            if "invalid job id" in words or "already completing" in words \
                    or "completed" in words or "pending" in words:
                return False
            raise SlurmDown(f"scancel: {_words(done)}")
        return True

    def boot_time(self) -> float | None:
        """slurmctld's BOOT_TIME (`scontrol show config`) in epoch seconds; None when it
        does not say (SlurmDown when it does not answer)."""
        done = self.call(["scontrol", "show", "config"])
        for line in done.stdout.splitlines() if done.returncode == 0 else []:
            key, _, value = line.partition("=")
            if key.strip() == "BOOT_TIME":
                return slurm_time(value.strip())
        return None

    def release(self, slurm_job_id: int) -> None:
        """`scontrol release ID`, then start it now (a requeued job waits for BeginTime)."""
        self.call(["scontrol", "release", str(slurm_job_id)])
        self.call(["scontrol", "update", f"jobid={slurm_job_id}", "starttime=now"])


def _words(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stderr.strip() or done.stdout.strip())[-500:]
    return text or f"exit status {done.returncode}"


# ------------------------------------------------------------------------- jobs in flight


@dataclass
class _Poll:
    """One answer of Slurm: when it was asked, for which jobs, and the rows by job (with
    `history`, those only Slurm's accounting or completion log still has)."""

    at: float
    jobs: frozenset[str]
    rows: dict[str, list[SlurmRow]] | None      # None: Slurm did not answer
    history: dict[str, list[SlurmRow]] = field(default_factory=dict)
    boot: float | None = None                    # slurmctld's start, asked when a job ended


def _match(rows: Iterable[SlurmRow], wanted: Mapping[str, str]) -> dict[str, list[SlurmRow]]:
    """The rows carrying each wanted job's tag: its name and its job folder as work dir."""
    by_tag = {tag(job_id): job_id for job_id in wanted}
    out: dict[str, list[SlurmRow]] = {}
    for row in rows:
        job_id = by_tag.get(row.name)
        if job_id is not None and row.workdir == wanted[job_id]:
            out.setdefault(job_id, []).append(row)
    return out


def _choose(rows: list[SlurmRow], known_id: object) -> SlurmRow:
    """The Slurm job that carries a batchd job now: a live one (the recorded id first),
    else the recorded id, else the last one listed."""
    live = [r for r in rows if r.state in SLURM_LIVE]
    for pool in (live, rows):
        for row in pool:
            if row.slurm_job_id == known_id:
                return row
        if pool is live and live:
            return live[-1]
    return rows[-1]


@dataclass
class SlurmJobs:
    """The scheduler's Slurm side: submits, asks Slurm about the jobs in flight every
    `slurm.poll` (squeue by tag, on a thread so a silent slurmctld never holds the loop),
    and cancels. Its memory (the last answer, when a final state was first seen) is only
    a cache: a restart asks again."""

    cfg: Config
    log: Log
    client: Client = field(default_factory=Client)
    clock: Clock = SYSTEM_CLOCK
    last: _Poll | None = None
    down_since: float | None = None             # the last call found Slurm silent
    _final_since: dict[tuple[str, int, str], float] = field(default_factory=dict)
    _history: dict[str, list[SlurmRow]] = field(default_factory=dict)
    _future: Future[_Poll] | None = None
    _asked: float = float("-inf")                # clock.monotonic() of the last poll start
    _pool: ThreadPoolExecutor | None = None

    # -- submitting -------------------------------------------------------------------------
    def submit(self, job_dir: Path, *, timeout: float, kill_grace: float,
               env: Mapping[str, str]) -> int:
        """sbatch the job (its spec is written); its Slurm job id. SlurmError: refused;
        SlurmDown: no answer (it may have been submitted: the tag finds it later)."""
        argv = sbatch_argv(self.cfg, job_dir, timeout=timeout, kill_grace=kill_grace)
        try:
            slurm_job_id = self.client.sbatch(argv, env)
        except SlurmDown:
            self.down_since = self.clock.time()
            raise
        self.down_since = None
        return slurm_job_id

    def accepting(self) -> bool:
        """Whether new jobs may be submitted: Slurm answered the last time it was asked, or
        that was `slurm.poll` ago (then one submission finds out)."""
        return (self.down_since is None
                or self.clock.time() - self.down_since >= self.cfg.slurm.poll)

    # -- polling ------------------------------------------------------------------------------
    def _poll(self, wanted: dict[str, str], since: float | None,
              known: dict[str, list[SlurmRow]]) -> _Poll:
        """squeue by tag; for a job squeue does not show (and `known`, the history found
        before, lacks) the accounting or completion log. Runs on the poll thread: it
        touches nothing of self but the client, the clock and the log."""
        at = self.clock.time()
        try:
            rows = _match(self.client.squeue(tag(job_id) for job_id in wanted), wanted)
            missing = {k: v for k, v in wanted.items() if k not in rows and k not in known}
            history = _match(self.client.history((tag(k) for k in missing), since), missing) \
                if missing else {}
            for job_id, found in {**known, **history}.items():
                if job_id in wanted and job_id not in rows:
                    rows[job_id] = found
            # slurmctld's start tells Slurm's losses from a job's own: asked only when a
            # job is over in Slurm or gone from it
            ended = any(job_id not in rows or any(r.state not in SLURM_LIVE for r in found)
                        for job_id, found in ((k, rows.get(k, [])) for k in wanted))
            boot = self.client.boot_time() if ended else None
        except (SlurmDown, SlurmError) as exc:
            self.log.warning("slurm did not answer; no conclusion drawn", error=str(exc))
            return _Poll(at, frozenset(wanted), None)
        return _Poll(at, frozenset(wanted), rows, history, boot)

    def refresh(self, jobs: Mapping[str, Mapping[str, Any]], job_dir: Callable[[str], Path], *,
                wait: bool = False) -> None:
        """Take a finished poll's answer; start the next when `slurm.poll` has passed since
        the last (at once with `wait`, and wait for it: the scheduler's recovery).
        `jobs`: the entries of the Slurm jobs in flight, by id."""
        if self._future is not None and (self._future.done() or wait):
            self._take(self._future.result())
            self._future = None
        if not jobs or self._future is not None:
            return
        if not wait and self.clock.monotonic() - self._asked < self.cfg.slurm.poll:
            return
        self._asked = self.clock.monotonic()
        wanted = {job_id: str(job_dir(job_id)) for job_id in jobs}
        stamps = [parse_iso(e.get("dispatched_at")) for e in jobs.values()]
        since = min((t for t in stamps if t is not None), default=None)
        known = dict(self._history)
        if wait:
            self._take(self._poll(wanted, since, known))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slurm-poll")
        self._future = self._pool.submit(self._poll, wanted, since, known)

    def _take(self, poll: _Poll) -> None:
        self.last = poll
        if poll.rows is None:
            self.down_since = poll.at
            return
        self.down_since = None
        keep = poll.jobs
        self._final_since = {k: v for k, v in self._final_since.items() if k[0] in keep}
        self._history = {k: v for k, v in {**self._history, **poll.history}.items() if k in keep}
        for job_id, rows in poll.rows.items():
            for row in rows:
                if row.state not in SLURM_LIVE:
                    self._final_since.setdefault((job_id, row.slurm_job_id, row.state), poll.at)

    def seen(self, job_id: str, entry: Mapping[str, Any], now: float) -> SlurmSeen:
        """What the last answer says about the job (lifecycle.SlurmSeen): not known when
        Slurm did not answer, was not asked about it, or was asked before its dispatch."""
        poll = self.last
        if poll is None or poll.rows is None or job_id not in poll.jobs:
            return SlurmSeen()
        dispatched = parse_iso(entry.get("dispatched_at"))
        if dispatched is not None and poll.at < dispatched:
            return SlurmSeen()
        restarted = (poll.boot is not None and dispatched is not None
                     and dispatched < poll.boot)
        rows = poll.rows.get(job_id)
        if not rows:
            return SlurmSeen(known=True, restarted=restarted)
        row = _choose(rows, entry.get("slurm_job_id"))
        final_for = 0.0
        if row.state not in SLURM_LIVE:
            first = self._final_since.get((job_id, row.slurm_job_id, row.state), poll.at)
            final_for = max(0.0, now - first)
        return SlurmSeen(known=True, slurm_job_id=row.slurm_job_id, state=row.state,
                         reason=row.reason, final_for=final_for,
                         at_launch=row.ended_at_launch(dispatched, poll.boot),
                         restarted=restarted)

    # -- stopping -------------------------------------------------------------------------------
    def stop(self, job_id: str, entry: Mapping[str, Any], seen: SlurmSeen | None, *,
             hard: bool) -> bool:
        """Stop the job's Slurm job: a soft stop SIGTERMs only its batch step (the adaptor,
        which stops its agent and writes its result; a pending job is just cancelled), a
        hard one is scancel (SIGTERM to every process, SIGKILL after Slurm's KillWait).
        False: there was nothing to stop. SlurmDown: Slurm did not answer."""
        sid = seen.slurm_job_id if seen is not None and seen.found else entry.get("slurm_job_id")
        if not isinstance(sid, int):
            return False
        # `scancel --batch` of a job that has not started hangs (22.05): only a job Slurm
        # was seen running gets the batch step's SIGTERM; any other is cancelled outright
        started = seen is not None and seen.live and seen.state not in SLURM_PENDING
        try:
            return self.client.scancel(sid, tag(job_id), batch_term=not hard and started)
        except SlurmDown:
            self.down_since = self.clock.time()
            raise

    def release(self, slurm_job_id: int) -> None:
        """Release a job Slurm held after a failed launch (its first run never began)."""
        self.client.release(slurm_job_id)

    def close(self) -> None:
        """Stop the poll thread (a poll in flight is abandoned)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

