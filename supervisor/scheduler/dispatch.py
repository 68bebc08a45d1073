"""Running jobs for the scheduler: dispatch, tick, cancel, re-attach (executing _lifecycle).

Every decision comes from the pure table of scheduler.lifecycle; this module carries
out its actions in order, batching the WAL writes of a pass. docs/JOBS.md has the
whole of dispatch, ticks, cancels, re-attachment, leftovers and the crash argument.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.config import Config, RepoConfig
from supervisor.runtime import Log, stop_requested
from supervisor.scheduler import jobfiles as _jobfiles
from supervisor.scheduler import lifecycle as lc
from supervisor.scheduler import queued as _queued
from supervisor.scheduler.ahead import Ahead, mirrors_held
from supervisor.scheduler.events import BatchIndex, emit_job_end
from supervisor.scheduler.launch import Launched, LaunchError, job_environ, launch
from supervisor.scheduler.runnable import Runnable
from supervisor.scheduler.slurm import SlurmDown, SlurmError, SlurmJobs
from supervisor.state import disk
from supervisor.state.atomic import Missing
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.jobs import job_timeout, usage_counters
from supervisor.state.layout import (
    JOB_ENDED,
    Layout,
    read_record,
    send_request,
    staging_owner,
    write_record,
)
from supervisor.state.lockfiles import read_held, read_table
from supervisor.state.locktable import (
    Table,
    acquire_request,
    exclusive_for,
    next_in_line,
    release_request,
)
from supervisor.state.proc import alive, kill_job
from supervisor.state.queue import TERMINAL_STATES, JobQueue
from supervisor.state.repos import all_repositories

__all__ = [
    "ADAPTOR_EXIT_WAIT",
    "STALE_WARN_EVERY",
    "Jobs",
    "Launcher",
    "cancel",
    "dispatch",
    "reattach",
    "resume_waiting",
    "tick_all",
    "tick_interval",
    "tick_job",
]

#: A job whose heartbeat is stale is warned about at most once per this many seconds.
STALE_WARN_EVERY = 60.0
#: How long finalizing waits for the leftovers it SIGKILLed to be gone.
_LEFTOVER_WAIT = 1.0
#: How long finalizing waits for an adaptor that wrote its result to exit before killing it.
ADAPTOR_EXIT_WAIT = 2.0
#: At most this many queued jobs start waiting for locks in one pass (each is a WAL write
#: and an acquire file): a large submission never stalls ticks and the inbox for long; the
#: loop runs the next pass at once while `Jobs.backlog` says more are left.
WAIT_BATCH = 64
#: Free space is measured at most this often (seconds); while it is low, the loop wakes
#: this often to see whether it is back.
DISK_RECHECK = 2.0

Launcher = Callable[[Path, str], Launched]


def _launch(job_dir: Path, mode: str) -> Launched:
    return launch(job_dir, mode=mode)


def tick_interval(cfg: Config) -> float:
    """How often the scheduler ticks its starting/running jobs: min(1 s, heartbeat / 2)."""
    return min(1.0, cfg.scheduler.heartbeat_interval / 2.0)


@dataclass
class Jobs:
    """What running jobs needs: the queue, where files go, the seams, and the active ids.

    `launcher(job_dir, mode)` starts an adaptor (supervisor.scheduler.launch.launch in production);
    `clock` is the epoch clock the adaptors' heartbeats use.
    """

    cfg: Config
    layout: Layout
    queue: JobQueue
    log: Log
    timing: lc.Timing
    launcher: Launcher = _launch
    clock: Clock = SYSTEM_CLOCK
    active: set[str] = field(default_factory=set)       # starting/running job ids
    warned: dict[str, float] = field(default_factory=dict)   # id -> last stale warning
    batches: BatchIndex = field(default_factory=BatchIndex)  # cache for batch events
    #: Workspaces being cloned off the loop: job id -> the clone's future, which gives the
    #: job's repositories with their bases for the spec (see _do_launch).
    preparing: dict[str, Future[list[dict[str, Any]]]] = field(default_factory=dict)
    #: Wakes the scheduler's loop (its Watcher's wake, set by serve): a finished clone is
    #: launched at once, not at the next tick.
    wake: Callable[[], None] = lambda: None
    _pool: ThreadPoolExecutor | None = None
    _ahead: Ahead | None = None

    @property
    def ahead(self) -> Ahead:
        """The workspaces made ahead for jobs next in line (scheduler.ahead); made on first
        use, by the loop thread only (a clone thread reads `_ahead`)."""
        if self._ahead is None:
            self._ahead = Ahead(self.cfg, self.layout.mirrors_dir, self.log)
        return self._ahead

    def close_ahead(self, *, remove: bool = False) -> None:
        """Stop making workspaces ahead: the scheduler stops, or reopens its queue
        (`remove`: what was made goes too; see Ahead.close)."""
        if self._ahead is not None:
            self._ahead.close(remove=remove)
            self._ahead = None

    def pool(self) -> ThreadPoolExecutor:
        """The threads that clone workspaces (git waits off the scheduler's loop)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=max(1, self.cfg.scheduler.max_concurrent_jobs),
                thread_name_prefix="prepare")
        return self._pool
    lock_seq: int = 0            # the last acquire's seq (increasing: FIFO across passes)
    backlog: bool = False        # the last dispatch left queued jobs it could have moved
    #: The queued jobs' order and readiness (scheduler.runnable), rebuilt from the queue.
    runnable: Runnable = field(default_factory=Runnable)
    #: Queued jobs a dependency's end dooms: (job, reason), failed by the next dispatch.
    doomed: list[tuple[str, str]] = field(default_factory=list)
    #: Jobs of each agent waiting for locks, starting or running (its max_concurrent).
    load: Counter[str] = field(default_factory=Counter)
    #: `batchctl pause`: start nothing new (scheduler/paused.json; survives restarts).
    paused: bool = False
    #: Why no job starts for lack of space (state.disk.low), None when there is room;
    #: measured at most every DISK_RECHECK seconds, with `measure` (a seam for tests).
    disk_low: str | None = None
    disk_checked: float = -math.inf
    measure: Callable[[Path], disk.Usage] = disk.usage
    #: The active jobs that run as Slurm jobs (their entry says `launcher: slurm`).
    in_slurm: set[str] = field(default_factory=set)
    #: The Slurm side (submit, the view of jobs in flight, scancel); made on first use.
    slurm_side: SlurmJobs | None = None

    @property
    def slurm(self) -> SlurmJobs:
        """The Slurm side, made on first use (a scheduler that never sees a Slurm job never
        runs a Slurm command)."""
        if self.slurm_side is None:
            self.slurm_side = SlurmJobs(self.cfg, self.log, clock=self.clock)
        return self.slurm_side

    def full(self) -> bool:
        """Whether no new job may start now: with `launcher: slurm`, slurm.max_jobs jobs in
        Slurm (or Slurm not answering); else scheduler.max_concurrent_jobs local ones."""
        if self.cfg.launcher == "slurm":
            return (len(self.in_slurm) >= self.cfg.slurm.max_jobs
                    or not self.slurm.accepting())
        return len(self.active) - len(self.in_slurm) >= self.cfg.scheduler.max_concurrent_jobs

    @classmethod
    def over(cls, cfg: Config, layout: Layout, queue: JobQueue, log: Log, *,
             launcher: Launcher | None = None, clock: Clock = SYSTEM_CLOCK,
             slurm: SlurmJobs | None = None) -> Jobs:
        """Jobs over an open queue: the active set (and which of it is in Slurm), the index
        of queued jobs, the agents' load and the pause flag, all rebuilt from files."""
        active = {*queue.ids(lc.State.STARTING.value), *queue.ids(lc.State.RUNNING.value)}
        in_slurm = {job_id for job_id in active
                    if (queue.get(job_id) or {}).get("launcher") == "slurm"}
        runnable, doomed = _queued.index(queue, clock.time())
        return cls(cfg, layout, queue, log, lc.Timing.from_config(cfg.scheduler),
                   launcher=launcher or _launch, clock=clock, active=active,
                   runnable=runnable, doomed=doomed, load=_queued.agent_load(queue),
                   paused=_queued.Paused.read(layout, owner=True).paused,
                   in_slurm=in_slurm, slurm_side=slurm)

    def room(self, agent: str) -> bool:
        """Whether `agent` may have one more job waiting, starting or running."""
        spec = self.cfg.agents.get(agent)
        limit = None if spec is None else spec.max_concurrent
        return limit is None or self.load[agent] < limit

    def next_due(self) -> float | None:
        """When the earliest delayed job may start (epoch seconds), or None."""
        return self.runnable.next_delayed()


# -- the WAL writes of one pass ----------------------------------------------------------------

@dataclass
class _Batch:
    """WAL updates and counter increments collected during a pass, written with one fsync."""

    updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)

    def state_of(self, job_id: str, queue: JobQueue) -> str | None:
        """A job's state counting updates of this pass not yet flushed (latest wins)."""
        for other, fields in reversed(self.updates):
            if other == job_id and "state" in fields:
                return str(fields["state"])
        return queue.state(job_id)

    def flush(self, queue: JobQueue) -> None:
        """The updates and the counters of what they did, in one atomic, durable write."""
        if self.updates or self.counters:
            queue.update_many(self.updates, counters=self.counters)
            self.updates = []
        self.counters.clear()


@dataclass
class _Job:
    """One job being acted on: its queue entry (kept current) and what was observed."""

    entry: dict[str, Any]
    obs: lc.Observation | None = None

    @property
    def id(self) -> str:
        return str(self.entry["id"])


# -- repository locks ----------------------------------------------------------------------------

def _repositories(j: Jobs) -> dict[str, RepoConfig]:
    """Every repository a job may name now: the config's plus those registered."""
    return all_repositories(j.cfg, j.layout)


def _repos_of(entry: dict[str, Any]) -> list[str]:
    return [str(r) for r in entry.get("repos") or []]


def _send(j: Jobs, worker: str, body: dict[str, Any]) -> None:
    """Drop a request into `worker`'s inbox (atomic, durable). A failure is not swallowed:
    like a webhook event's, it ends the pass before the WAL records what the request was
    for, so the restarted scheduler's replay sends it again (a lost release would keep a
    finished job's repositories locked)."""
    send_request(j.layout, worker, body)


def _release(j: Jobs, job_id: str, why: str) -> None:
    """Ask the locks worker to free what `job_id` holds or waits for (idempotent)."""
    _send(j, "locks", release_request(job_id, created_at=iso_now()))
    j.log.info("lock release requested", job=job_id, why=why)


def _release_if_shared(j: Jobs, entry: dict[str, Any], why: str) -> None:
    """Release the locks of a job with repositories that does not hold them all run."""
    if _repos_of(entry) and not exclusive_for(entry, _repositories(j)):
        _release(j, str(entry["id"]), why)


def _lock_table(j: Jobs) -> Table | None:
    """What is held, as the locks worker last wrote it, with `waiting` = the jobs waiting
    for a repository it no longer knows (its `blocked`); None if absent or unreadable."""
    table = read_held(j.layout)       # small: the waiting jobs are on the pages
    if isinstance(table, str):
        j.log.warning("locks state unreadable; waiting jobs wait", reason=table)
        return None
    return table


def _next_seq(j: Jobs) -> int:
    j.lock_seq = max(time.time_ns(), j.lock_seq + 1)
    return j.lock_seq


def _acquire(j: Jobs, entry: dict[str, Any]) -> None:
    """The acquire request of a job the WAL already says is waiting."""
    seq = entry.get("lock_seq")
    _send(j, "locks", acquire_request(
        str(entry["id"]), _repos_of(entry),
        exclusive=exclusive_for(entry, _repositories(j)),
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else _next_seq(j),
        created_at=iso_now()))


def _wait_for_locks(j: Jobs, entry: dict[str, Any], repositories: dict[str, RepoConfig]
                    ) -> None:
    """queued -> waiting (durable, with lock_exclusive and lock_seq), then the acquire."""
    batch = _Batch()
    d = lc.step(entry, lc.Event.WAIT_LOCK, lc.Facts(now=j.clock.time(), timing=j.timing))
    job = _Job(entry)
    j.load[str(entry.get("agent"))] += 1
    _execute(j, job, d, batch)
    extra = {"lock_exclusive": exclusive_for(entry, repositories), "lock_seq": _next_seq(j)}
    entry.update(extra)
    batch.updates.append((job.id, extra))
    batch.flush(j.queue)          # the WAL says waiting before the request exists
    _acquire(j, entry)
    j.log.info("job waiting for repository locks", job=job.id, repos=_repos_of(entry),
               exclusive=extra["lock_exclusive"])


def _made_ahead_before(j: Jobs, waiting: list[str]) -> None:
    """At scheduler start: the staging folders of waiting jobs in the workspaces' folder
    were made ahead by a former scheduler (a grant's are made only once a job is
    dispatched, which no pass has done yet); this one knows none of them: removed, on
    the making thread, before anything it makes."""
    ids = set(waiting)
    try:
        with os.scandir(j.cfg.workspace_dir) as entries:
            left = [Path(e.path) for e in entries if staging_owner(e.name) in ids]
    except OSError:                    # no workspaces' folder yet: nothing made
        return
    if left:
        j.ahead.remove_later(left)
        j.log.info("workspaces a former scheduler made ahead removed", folders=len(left))


def resume_waiting(j: Jobs) -> int:
    """At scheduler start: acquire again for every waiting job the lock table does not
    know (none readable: all of them); how many requests were sent. The jobs first in line
    behind a whole-run holder are wanted for a workspace made ahead (scheduler.ahead), as
    if the locks worker told them again."""
    waiting = j.queue.ids(lc.State.WAITING.value)
    if not waiting:
        return 0
    _made_ahead_before(j, waiting)
    whole = read_table(j.layout)           # held and every waiting job's page, once
    if isinstance(whole, Missing):
        # No lock table yet: the locks worker, which starts after the scheduler, builds
        # it from this WAL (every waiting job in its place): nothing to ask again.
        return 0
    table = whole if isinstance(whole, Table) else None
    if table is not None:                  # what the locks worker told a former scheduler
        for job_id in sorted(next_in_line(table)):
            entry = j.queue.get(job_id)
            if entry is not None and entry["state"] == lc.State.WAITING.value:
                j.ahead.want(entry)
    sent = 0
    for job_id in waiting:
        if table is not None and table.knows(job_id):
            continue                    # (asked before reading the entry: 100,000 wait)
        entry = j.queue.get(job_id)
        if entry is None:
            continue
        _acquire(j, entry)
        sent += 1
    if sent:
        j.log.info("lock requests sent again for waiting jobs", jobs=sent)
    return sent


# -- executing actions -------------------------------------------------------------------------

def _do_update(j: Jobs, job: _Job, action: lc.Update, batch: _Batch) -> None:
    job.entry.update(action.fields)
    batch.updates.append((job.id, dict(action.fields)))


def _clone(j: Jobs, entry: dict[str, Any], known: dict[str, Any]) -> list[dict[str, Any]]:
    """Fetch the mirrors and clone the workspace (the job holds its repositories' locks);
    the job's repositories with the commit each clone is at (`base`, for the spec).
    Runs on a `prepare` thread: it touches only the job's workspace and the mirrors."""
    heads: dict[str, str] = {}
    ahead = j._ahead                            # (made by the loop thread only)
    made = None if ahead is None else ahead.claim(str(entry["id"]))
    with mirrors_held(_repos_of(entry)):       # no making ahead reads them meanwhile
        try:
            ws = _jobfiles.prepare_workspace(j.cfg, entry, repositories=known,
                                             mirrors_dir=j.layout.mirrors_dir, heads=heads,
                                             made=made)
        finally:
            if ahead is not None and made is not None and os.path.lexists(made.staging):
                ahead.discard(made)             # not used: the mirrors moved on
    return _jobfiles.workspace_repos(j.layout, entry, ws, known, heads)


def _do_launch(j: Jobs, job: _Job, action: lc.Launch, batch: _Batch) -> None:
    """Launch a dispatched job. A job without repositories gets its (empty) workspace and
    is launched at once. A job with repositories has its clone started on a `prepare`
    thread and stays `starting`; `_finish_prepared` launches it on a later pass, so a long
    clone or a stalled remote never holds the loop (cancels, timeouts, other dispatches).
    """
    batch.flush(j.queue)        # `starting` is durable before anything of the launch exists
    names = _repos_of(job.entry)
    if not names:
        try:
            _jobfiles.prepare_workspace(j.cfg, job.entry)
        except (_jobfiles.PrepareError, OSError) as exc:
            _launch_failed(j, job, exc, batch)
            return
        _launch_now(j, job, action.relaunch, batch)
        return
    known = _repositories(j)
    gone = [name for name in names if name not in known]
    if gone and not _jobfiles.workspace_path(j.cfg, job.entry).is_dir():
        _launch_failed(j, job, _jobfiles.PrepareError(
            f"repository {gone[0]!r} is no longer known"), batch)
        return
    if job.id not in j.preparing:
        j.log.info("cloning the workspace", job=job.id, repos=names)
        future = j.pool().submit(_clone, j, dict(job.entry), known)
        future.add_done_callback(lambda _done: j.wake())    # launch it without waiting a tick
        j.preparing[job.id] = future
        try:
            _jobfiles.make_job_dir(j.layout, job.id)    # while it clones: not on the path
        except OSError as exc:                          # write_spec tries again
            j.log.warning("cannot make the job folder yet", job=job.id, error=str(exc))


def _finish_prepared(j: Jobs, job: _Job, batch: _Batch) -> None:
    """The clone of `job` ended: release shared locks, then launch, or fail it, or, when a
    cancel came meanwhile, settle it as cancelled (the table's cancel_settled row: no
    process of it ever ran)."""
    future = j.preparing.pop(job.id)
    if job.entry.get("cancel_requested"):       # its finalize releases the locks
        j.log.info("job cancelled while its workspace was cloned: not launched", job=job.id)
        _execute(j, job, lc.step(job.entry, lc.Event.CANCEL_SETTLED,
                                 lc.Facts(now=j.clock.time(), timing=j.timing)), batch)
        return
    exc = future.exception()
    if exc is not None:
        _launch_failed(j, job, exc, batch)
        return
    known = _repositories(j)
    if not exclusive_for(job.entry, known):
        _release(j, job.id, "workspace cloned")
    _launch_now(j, job, bool(job.entry.get("attempts", 1) > 1), batch, future.result())


def _launch_failed(j: Jobs, job: _Job, exc: BaseException, batch: _Batch) -> None:
    j.log.warning("job launch failed", job=job.id, error=str(exc))
    d = lc.step(job.entry, lc.Event.LAUNCH_FAILED,
                lc.Facts(now=j.clock.time(), timing=j.timing, error=str(exc)))
    _execute(j, job, d, batch)


def _submit_now(j: Jobs, job: _Job, relaunch: bool, batch: _Batch,
                repos: list[dict[str, Any]] | None = None) -> None:
    """sbatch a Slurm job (its `starting` durable), then record the id sbatch printed. When
    Slurm does not answer the job stays `starting`: the table looks for it by its tag and
    submits it again only once Slurm says it has none (the job never runs twice)."""
    try:
        spec = _jobfiles.write_spec(j.layout, j.cfg, job.entry, repos)
        job_dir = spec.parent
        sid = j.slurm.submit(job_dir, timeout=job_timeout(j.cfg, job.entry),
                             kill_grace=j.cfg.scheduler.kill_grace, env=job_environ(job_dir))
    except SlurmDown as exc:
        j.log.warning("slurm did not answer sbatch; the job waits (looked for by its tag "
                      "before any new submission)", job=job.id, error=str(exc))
        return
    except (_jobfiles.PrepareError, SlurmError, OSError) as exc:
        _launch_failed(j, job, exc, batch)
        return
    d = lc.step(job.entry, lc.Event.SUBMITTED,
                lc.Facts(now=j.clock.time(), timing=j.timing, slurm_job_id=sid))
    j.log.info("job submitted to slurm", job=job.id, slurm_job_id=sid, relaunch=relaunch)
    _execute(j, job, d, batch)   # durable with the pass (lost in a crash: found by its tag)


def _launch_now(j: Jobs, job: _Job, relaunch: bool, batch: _Batch,
                repos: list[dict[str, Any]] | None = None) -> None:
    if job.entry.get("launcher") == "slurm":
        _submit_now(j, job, relaunch, batch, repos)
        return
    try:
        _jobfiles.write_spec(j.layout, j.cfg, job.entry, repos)
        launched = j.launcher(j.layout.job_dir(job.id), j.cfg.launcher)
    except (_jobfiles.PrepareError, LaunchError, OSError) as exc:
        _launch_failed(j, job, exc, batch)
        return
    if launched.pid is None:
        j.log.info("job launched; its pid comes with its sentinel", job=job.id,
                   unit=launched.unit, relaunch=relaunch)
        return
    d = lc.step(job.entry, lc.Event.LAUNCHED,
                lc.Facts(now=j.clock.time(), timing=j.timing, pid=launched.pid,
                         start=launched.start))
    j.log.info("job running", job=job.id, adaptor=launched.pid, relaunch=relaunch)
    _execute(j, job, d, batch)


def _do_kill(j: Jobs, job: _Job, action: lc.KillGroup, batch: _Batch) -> None:
    if job.entry.get("launcher") == "slurm":
        hard = action.signal == signal.SIGKILL
        seen = job.obs.slurm if job.obs is not None else None
        sent = j.slurm.stop(job.id, job.entry, seen, hard=hard)   # SlurmDown: not sent
        j.log.info("slurm job stopped" if sent else "slurm job not stopped: Slurm has none",
                   job=job.id, slurm_job_id=seen.slurm_job_id if seen else None,
                   how="scancel" if hard else "scancel --batch --signal=TERM (or cancel "
                   "while pending)")
        return
    sent = _jobfiles.kill_group(action.pid, action.start, action.signal)
    j.log.info("job signalled" if sent else "job not signalled: its adaptor is gone",
               job=job.id, adaptor=action.pid, signal=signal.Signals(action.signal).name)


def _do_release(j: Jobs, job: _Job, action: lc.SlurmRelease, batch: _Batch) -> None:
    j.slurm.release(action.slurm_job_id)
    j.log.warning("slurm held the job after a failed launch (a slurmctld restart); released",
                  job=job.id, slurm_job_id=action.slurm_job_id)


def _do_warn(j: Jobs, job: _Job, action: lc.WarnStale, batch: _Batch) -> None:
    now = j.clock.time()
    last = j.warned.get(job.id)
    if last is not None and now - last < STALE_WARN_EVERY:
        return
    j.warned[job.id] = now
    j.log.warning("job heartbeat is stale; keeping it", job=job.id, age_s=round(action.age_s, 1),
                  adaptor=action.pid, stale_after=j.timing.stale_after,
                  dead_after=j.timing.dead_after)


def _no_process_left(j: Jobs, job: _Job) -> None:
    """Before a job is written terminal: none of its processes may remain.

    With a result, the adaptor has already emptied its process group and is exiting: wait
    for it (up to ADAPTOR_EXIT_WAIT). Without one (lost, scheduler-decided ends, unreadable
    result) or if it lingers, whatever is left of the job is killed (state.proc.kill_job).
    """
    obs = job.obs
    if job.entry.get("launcher") == "slurm":
        _no_slurm_job_left(j, job)
        return
    pid = obs.pid if obs is not None and obs.pid else job.entry.get("pid")
    if not isinstance(pid, int) or pid <= 1:
        return
    if obs is not None and obs.result is not None:
        deadline = time.monotonic() + ADAPTOR_EXIT_WAIT
        while alive(pid, obs.start) and time.monotonic() < deadline:
            time.sleep(0.001)      # the job's end (and its webhook) waits on this: look often
        if not alive(pid, obs.start):
            return
    killed, _ = kill_job(pid, str(j.layout.job_dir(job.id)), job_id=job.id,
                         exclude=frozenset({os.getpid()}), wait=_LEFTOVER_WAIT)
    if killed:
        j.log.warning("killed what was left of the job", job=job.id, pids=killed)


def _no_slurm_job_left(j: Jobs, job: _Job) -> None:
    """Before a Slurm job is written terminal: cancel its Slurm job if Slurm may still run
    it (one waiting, or one whose adaptor wrote no result); SlurmDown (Slurm silent) stops
    the finalize, which the next tick tries again. An adaptor that wrote its result exits
    by itself, and Slurm ends whatever is left of the job's processes (KillWait)."""
    seen = job.obs.slurm if job.obs is not None else None
    has_result = job.obs is not None and job.obs.result is not None
    if seen is not None and seen.found and not seen.live:
        return
    if has_result and not (seen is not None and seen.pending):
        return
    if j.slurm.stop(job.id, job.entry, seen, hard=True):
        j.log.warning("cancelled the job's slurm job", job=job.id,
                      slurm_job_id=seen.slurm_job_id if seen else job.entry.get("slurm_job_id"))


def _settle_end(j: Jobs, job: _Job, fields: dict[str, Any]) -> dict[str, Any]:
    """The job's terminal fields, as decided the FIRST time it was finalized.

    What a finalize does outside the WAL (its webhook events, its batch's event, the job
    that retries it; and for a Slurm job without a result, a copy Slurm may still start)
    happens before its terminal WAL record. A scheduler that dies in between finalizes the
    job again from the files, and a second look may decide otherwise (a launch failed in a
    full-disk window whose adaptor ran after all: chaos seed 494710626 saw a webhook say
    `failed` of a job that ended `completed`). So such a decision is first made durable in
    `jobs/<id>/ended.json` (its `fields`), and a later finalize of the job takes those.
    A job with none of those effects is not written: nothing outside could contradict it.
    A write that fails stops the finalize before anything is done (the job stays active
    and is finalized again); a job folder that was never made has nothing to keep."""
    path = j.layout.job(job.id).ended
    prior = read_record(JOB_ENDED, path, owner=True)
    if isinstance(prior, dict):
        kept = prior.get("fields")
        if isinstance(kept, dict) and kept.get("state") == prior.get("state") \
                and kept.get("state") in TERMINAL_STATES:
            if kept.get("state") != fields.get("state"):
                j.log.warning("job finalized as first decided", job=job.id,
                              state=kept["state"], now_seen=fields.get("state"))
            return {**kept, "pid": None}
    entry = job.entry
    slurm_gone = entry.get("launcher") == "slurm" and (job.obs is None or job.obs.result is None)
    effects = (bool(entry.get("callback")) or bool(entry.get("batch"))
               or (fields.get("state") in ("failed", "lost")
                   and int(entry.get("retries") or 0) > 0))
    if slurm_gone or effects:
        with contextlib.suppress(FileNotFoundError):
            write_record(JOB_ENDED, path,
                         {"id": job.id, "state": fields["state"],
                          "ended_at": iso_now(j.clock.time()),
                          "slurm_job_id": entry.get("slurm_job_id"), "fields": fields})
    return fields


def _do_finalize(j: Jobs, job: _Job, action: lc.Finalize, batch: _Batch) -> None:
    fields = _settle_end(j, job, {**action.fields, "pid": None})
    _no_process_left(j, job)
    before = str(job.entry.get("state"))
    if fields["state"] in ("failed", "lost") and int(job.entry.get("retries") or 0) > 0:
        fields["retried_as"] = _retry(j, job.entry, fields)
    job.entry.update(fields)
    # The webhook events and the release are durable before the terminal state joins the
    # pass's WAL batch (see supervisor.scheduler.events): a pass whose write of either
    # fails (a full disk) still flushes what it did before (the callers flush in
    # `finally`), but never this terminal state, so the reopened scheduler finalizes the
    # job again and sends them then. state_of sees this pass's unflushed states.
    end = str(fields["state"])
    emit_job_end(j.layout, j.queue, j.batches, {**job.entry, "id": job.id},
                 lambda other: end if other == job.id else batch.state_of(other, j.queue))
    if _repos_of(job.entry):
        _release(j, job.id, f"job {end}")
    batch.updates.append((job.id, fields))
    batch.counters[str(fields["state"])] += 1
    batch.counters.update(usage_counters(str(job.entry.get("agent")), fields.get("usage")))
    j.active.discard(job.id)
    j.in_slurm.discard(job.id)
    j.warned.pop(job.id, None)
    if before in (lc.State.WAITING.value, lc.State.STARTING.value, lc.State.RUNNING.value):
        j.load[str(job.entry.get("agent"))] -= 1
    j.doomed += j.runnable.ended(job.id, str(fields["state"]), fields.get("retried_as"),
                                 j.clock.time())
    j.log.info("job finished", job=job.id, state=fields["state"],
               exit_code=fields.get("exit_code"), reason=fields.get("reason"))


def _retry(j: Jobs, entry: dict[str, Any], fields: dict[str, Any]) -> str:
    """Queue the job that retries `entry` (lost or failed with retries left), durably,
    BEFORE the terminal record that names it (`retried_as`): a crash in between finalizes
    the job again, which finds its retry queued already (same id) and queues no second."""
    n = int(entry.get("retry_n") or 0) + 1
    taken: list[str] = []
    while True:
        new_id = _queued.retry_id(entry, n, taken)
        other = j.queue.get(new_id)
        if other is None or other.get("retry_of") == entry["id"]:
            break
        taken.append(new_id)                 # an id someone else chose: qualify ours
    if other is None:
        body = _queued.retry_job(
            entry, new_id, finished=j.clock.time(),
            schedule=j.cfg.callbacks.retry_schedule,
            workspace=str(j.cfg.workspace_dir / new_id))
        j.queue.enqueue_many([(new_id, body)], count="submitted")
        reason = _queued.add(j.runnable, j.queue, {**body, "state": "queued"}, j.clock.time())
        if reason is not None:
            j.doomed.append((new_id, reason))
        j.log.info("job retried as a new job", job=entry["id"], retry=new_id,
                   retries_left=body["retries"], not_before=body["not_before"],
                   why=fields.get("reason"))
    return new_id


_Executor = Callable[[Jobs, _Job, Any, _Batch], None]

#: Action type -> what carries it out.
_EXECUTORS: dict[type, _Executor] = {
    lc.Update: _do_update,
    lc.Launch: _do_launch,
    lc.KillGroup: _do_kill,
    lc.SlurmRelease: _do_release,
    lc.WarnStale: _do_warn,
    lc.Finalize: _do_finalize,
}


def _execute(j: Jobs, job: _Job, d: lc.Decision, batch: _Batch) -> None:
    """Carry out the decision's actions in order. When Slurm does not answer (a Slurm
    job's scancel or release), the rest of the decision waits: the next tick decides
    again from the same files (a stop is never recorded as sent, nor a job as ended,
    while Slurm may still run it)."""
    for action in d.actions:
        try:
            _EXECUTORS[type(action)](j, job, action, batch)
        except SlurmDown as exc:
            j.log.warning("slurm did not answer; the job's step waits for the next tick",
                          job=job.id, on=str(d.event), error=str(exc))
            return


# -- leftovers -----------------------------------------------------------------------------------

# -- ticking ---------------------------------------------------------------------------------------

def _tick(j: Jobs, job_id: str, batch: _Batch) -> tuple[_Job, lc.Decision] | None:
    entry = j.queue.get(job_id)
    if entry is None or entry["state"] not in lc.ACTIVE:
        j.active.discard(job_id)
        j.in_slurm.discard(job_id)
        return None
    future = j.preparing.get(job_id)
    if future is not None:
        # Its clone runs off the loop: no tick may judge it (the launch grace would
        # relaunch it); once the clone is done, the launch goes on here.
        if not future.done():
            return None
        prepared = _Job(entry)
        _finish_prepared(j, prepared, batch)      # its actions update prepared.entry
        entry = prepared.entry
        if entry["state"] not in lc.ACTIVE:
            return None
    now = j.clock.time()
    seen = j.slurm.seen(job_id, entry, now) if entry.get("launcher") == "slurm" else None
    job = _Job(entry, _jobfiles.observe(j.layout, entry, now, j.cfg, seen))
    assert job.obs is not None
    d = lc.tick(entry, job.obs, now, j.timing)
    if d.event is lc.Event.SENTINEL_FRESH and j.warned.pop(job_id, None) is not None:
        j.log.info("job heartbeat is fresh again", job=job_id)
    _execute(j, job, d, batch)
    if d.state is lc.State.STARTING and d.next_state is lc.State.RUNNING:
        _release_if_shared(j, entry, "job seen running")    # its clone is done
    return job, d


def tick_job(j: Jobs, job_id: str) -> lc.Decision | None:
    """Observe one job and act on it now (durable on return); None if it is not active."""
    batch = _Batch()
    try:
        done = _tick(j, job_id, batch)
    finally:
        batch.flush(j.queue)
    return None if done is None else done[1]


def _ask_slurm(j: Jobs, *, wait: bool = False) -> None:
    """Take Slurm's latest answer about the jobs in flight there, and ask again when
    slurm.poll has passed (`wait`: now, and wait for the answer)."""
    if not j.in_slurm and j.slurm_side is None:
        return
    entries = {job_id: j.queue.get(job_id) or {} for job_id in sorted(j.in_slurm)}
    j.slurm.refresh(entries, j.layout.job_dir, wait=wait)


def tick_all(j: Jobs) -> list[lc.Decision]:
    """Observe every starting/running job and act on it (durable on return)."""
    batch = _Batch()
    decisions = []
    _ask_slurm(j)
    try:
        for job_id in sorted(j.active):
            if stop_requested():
                break
            done = _tick(j, job_id, batch)
            if done is not None:
                decisions.append(done[1])
    finally:
        batch.flush(j.queue)
    return decisions


#: What a recovery tick amounts to, by event (when the decision does not end the job).
_REATTACH_KIND: dict[lc.Event, str] = {
    lc.Event.SENTINEL_STALE: "stale",
    lc.Event.LAUNCH_PENDING: "pending",
    lc.Event.NOT_LAUNCHED: "relaunched",
}


def reattach(j: Jobs) -> dict[str, int]:
    """Tick every starting/running job once at scheduler start; what came of them.

    Keys: reattached (alive with a fresh heartbeat: counted in `recovered`, and the job
    gets `reattached` (a count) and `reattached_at`), stale (kept, warned), finalized (a
    result or an end the scheduler decided), lost, pending/relaunched (a `starting` job
    with no sign of its adaptor yet).
    """
    did: Counter[str] = Counter()
    batch = _Batch()
    _ask_slurm(j, wait=True)
    try:
        for job_id in sorted(j.active):
            done = _tick(j, job_id, batch)
            if done is None:
                continue
            job, d = done
            if d.terminal:
                did["lost" if d.next_state is lc.State.LOST else "finalized"] += 1
                continue
            kind = _REATTACH_KIND.get(d.event, "reattached") if d.event else "reattached"
            did[kind] += 1
            if d.state is lc.State.RUNNING:     # (starting -> running: _tick released)
                _release_if_shared(j, job.entry, "running job re-attached")
            if kind == "reattached":
                n = int(job.entry.get("reattached") or 0) + 1
                batch.updates.append((job_id, {"reattached": n, "reattached_at": iso_now()}))
        if did["reattached"]:
            batch.counters["recovered"] += did["reattached"]
    finally:
        batch.flush(j.queue)
    return {k: did[k] for k in ("reattached", "stale", "finalized", "lost", "pending",
                                "relaunched")}


# -- dispatching and cancelling ----------------------------------------------------------------

def _dispatch_one(j: Jobs, entry: dict[str, Any], batch: _Batch) -> bool:
    """Step DISPATCHED and carry it out (the launch included); False if it does not apply."""
    d = lc.step(entry, lc.Event.DISPATCHED, lc.Facts(now=j.clock.time(), timing=j.timing,
                                                     launcher=j.cfg.launcher))
    if d.ignored:      # cannot happen for a queued/waiting job; never loop on it
        j.log.error("job not dispatchable", job=entry.get("id"), state=entry["state"])
        return False
    j.active.add(str(entry["id"]))
    if "slurm" in (j.cfg.launcher, entry.get("launcher")):
        j.in_slurm.add(str(entry["id"]))
    if entry["state"] == lc.State.QUEUED.value:
        j.load[str(entry.get("agent"))] += 1
    _execute(j, _Job(entry), d, batch)
    return True


def _dispatch_waiting(j: Jobs, batch: _Batch) -> int:
    """Waiting jobs that hold all their locks (slots permitting, in grant order), and those
    naming a repository that no longer exists (at once: their launch fails saying so)."""
    if not j.queue.holds(lc.State.WAITING.value):
        return 0
    table = _lock_table(j)
    if table is None:
        return 0
    known = _repositories(j)
    gone = [job for repo, queue in table.waiting.items() if repo not in known for job in queue]
    granted = [job for job in dict.fromkeys(lock.job for lock in table.held.values())
               if job not in gone]
    started = 0
    for job_id in dict.fromkeys(gone + granted):
        if stop_requested():
            break
        entry = j.queue.get(job_id)
        if entry is None or entry["state"] != lc.State.WAITING.value:
            continue
        if job_id not in gone:
            if j.full():
                break
            if any(table.holder(repo) != job_id for repo in _repos_of(entry)):
                continue
        started += _dispatch_one(j, entry, batch)
    return started


def _dispatch_queued(j: Jobs, batch: _Batch) -> int:
    """Ready queued jobs, best first (priority, then submission order; an agent at its
    max_concurrent is passed over, not waited for): with repositories -> waiting (no slot
    needed, at most WAIT_BATCH per pass); without -> dispatched while a slot is free."""
    started = waited = 0
    known: dict[str, RepoConfig] | None = None
    while not stop_requested():
        if j.full() and waited >= WAIT_BATCH:
            break
        picked = j.runnable.pop(j.room)
        if picked is None:
            break
        job_id, item = picked
        entry = j.queue.get(job_id)
        if entry is None or entry["state"] != lc.State.QUEUED.value:
            continue
        names = _repos_of(entry)
        if names:
            if waited >= WAIT_BATCH:
                j.runnable.restore(job_id, item)
                j.backlog = True
                break
            known = _repositories(j) if known is None else known
            if all(name in known for name in names):
                batch.flush(j.queue)
                _wait_for_locks(j, entry, known)
                waited += 1
                continue
            # a repository it names is gone: no lock to wait for, its launch fails
        if j.full():
            j.runnable.restore(job_id, item)
            break
        if not _dispatch_one(j, entry, batch):
            break
        started += 1
    return started


def _fail_doomed(j: Jobs, batch: _Batch) -> int:
    """Fail the queued jobs a dependency doomed (and those their ends doom in turn)."""
    failed = 0
    while j.doomed and not stop_requested():
        job_id, reason = j.doomed.pop(0)
        entry = j.queue.get(job_id)
        if entry is None or entry["state"] != lc.State.QUEUED.value:
            continue
        d = lc.step(entry, lc.Event.DEPENDENCY_FAILED,
                    lc.Facts(now=j.clock.time(), timing=j.timing, error=reason))
        _execute(j, _Job(entry), d, batch)
        failed += 1
    return failed


def check_disk(j: Jobs) -> str | None:
    """`disk.min_free` as of at most DISK_RECHECK seconds ago (logged when it changes)."""
    now = j.clock.monotonic()
    if now - j.disk_checked >= DISK_RECHECK:
        j.disk_checked = now
        was, j.disk_low = j.disk_low, disk.low(j.cfg, j.measure)
        if j.disk_low is not None and was is None:
            j.log.warning("no job starts: free space is below disk.min_free", why=j.disk_low)
        elif j.disk_low is None and was is not None:
            j.log.info("free space is back above disk.min_free: jobs start again")
    return j.disk_low


def dispatch(j: Jobs) -> int:
    """Fail what a dependency doomed; then, unless paused or short of disk space, start
    what may start now (granted waiting jobs, then the best ready queued ones) and move
    queued jobs with repositories to waiting; how many were dispatched."""
    batch = _Batch()
    j.backlog = False
    try:
        _fail_doomed(j, batch)
        j.runnable.due(j.clock.time())
        if j.paused or check_disk(j) is not None:
            return 0
        return _dispatch_waiting(j, batch) + _dispatch_queued(j, batch)
    finally:
        batch.flush(j.queue)


def make_ahead(j: Jobs) -> int:
    """Start making the workspaces of the jobs next in line (scheduler.ahead), once the
    ones that ended while they waited are dropped; none while paused or short of disk
    space, none on a repository a clone uses now. How many were started."""
    ahead = j._ahead
    if ahead is None:
        return 0
    jobs = ahead.jobs()
    if not jobs:
        return 0
    for job_id in jobs:
        state = j.queue.state(job_id)
        if state is None or state in TERMINAL_STATES:
            ahead.forget(job_id)
    if j.paused or j.disk_low is not None:
        return 0
    return ahead.start(
        lambda: {repo for job_id in j.preparing for repo in _repos_of(j.queue.get(job_id) or {})},
        lambda: _repositories(j))


def cancel(j: Jobs, job_id: str) -> str | None:
    """Cancel `job_id` by its state (idempotent); its state before, None if unknown.

    queued/waiting: cancelled at once. starting/running: `cancel_requested` is made
    durable first, then the job is ticked, which sends SIGTERM to its process group
    (once); the result (or the overdue rule) finishes it. Terminal: nothing.
    """
    entry = j.queue.get(job_id)
    if entry is None:
        return None
    state = str(entry["state"])
    if state in lc.ACTIVE:
        if not entry.get("cancel_requested"):
            j.queue.update(job_id, cancel_requested=True)
        j.log.info("cancel requested", job=job_id, state=state)
        tick_job(j, job_id)
        return state
    batch = _Batch()
    try:
        d = lc.step(entry, lc.Event.CANCEL_REQUESTED, lc.Facts(now=j.clock.time(), timing=j.timing))
        if d.ignored:
            j.log.info("cancel: job already finished, nothing to do", job=job_id, state=state)
        _execute(j, _Job(entry), d, batch)
    finally:
        batch.flush(j.queue)
    return state
