"""scheduler.dispatch: dispatch, ticks, cancel, re-attachment and leftover killing.

The "adaptor" a test launches is a real process (`sleep`, in a session of its own, with
BATCHD_JOB_ID in its env) started by a fake launcher; the test writes the sentinel and
result files the real adaptor would, and moves an injected clock. The queue is the
in-memory twin; spec, workspace and process checks are real.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import AgentConfig, Config, RepoConfig, SchedulerConfig, SlurmConfig
from supervisor.scheduler import dispatch as _dispatch
from supervisor.scheduler import queued as _queued
from supervisor.scheduler.ahead import Ahead
from supervisor.scheduler.launch import Launched, LaunchError
from supervisor.scheduler.slurm import Client as SlurmClient
from supervisor.scheduler.slurm import SlurmJobs
from supervisor.state.clock import MockClock, iso_now, parse_iso
from supervisor.state.layout import (
    JOB_ENDED,
    LOCK_WANTS,
    REQUEST,
    RESULT,
    SENTINEL,
    WORKER_STATE,
    Layout,
    read_record,
    write_record,
)
from supervisor.state.locktable import Lock, Table, Want, acquire, held_record, page_record
from supervisor.state.proc import alive, start_time
from supervisor.state.queue import JobQueue, MemoryStorage
from tests.helpers import BadDisk, until

DEADLINE = 30.0


class RecLog:
    """A logger that records (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _rec(self, level: str, event: str, **kw: Any) -> None:
        self.lines.append((level, event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self._rec("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._rec("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._rec("error", event, **kw)

    def levels(self, level: str) -> list[str]:
        return [e for lv, e, _ in self.lines if lv == level]


class Procs:
    """Fake adaptors: real processes leading their own session, tagged with their job id."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen[bytes]] = []
        self.strays: list[int] = []
        self.launched: list[str] = []
        self.jobs: dict[str, subprocess.Popen[bytes]] = {}
        self.fail: str | None = None
        self.systemd = False
        self.argv = ["sleep", "60"]

    def spawn(self, job_id: str, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv or self.argv, env={**os.environ, "BATCHD_JOB_ID": job_id},
                             start_new_session=True)
        self.started.append(p)
        return p

    def spawn_group(self, job_id: str, members: list[str | None]
                    ) -> tuple[subprocess.Popen[bytes], list[int]]:
        """A leader (tagged `job_id`) whose group also holds one `sleep` per member,
        tagged BATCHD_JOB_ID=<member> (None: untagged); (leader, member pids)."""
        script = []
        for i, tag in enumerate(members):
            env = "env -u BATCHD_JOB_ID" if tag is None else f"env BATCHD_JOB_ID={tag}"
            script.append(f"{env} sleep 60 & echo $! > {self.tmp}/m{i}")
        leader = self.spawn(job_id, ["sh", "-c", "; ".join(script) + "; wait"])
        pids = []
        for i in range(len(members)):
            path = self.tmp / f"m{i}"
            deadline = time.monotonic() + DEADLINE
            while not (path.exists() and path.read_text().endswith("\n")):
                assert time.monotonic() < deadline, "group member never started"
                time.sleep(0.01)
            pid = int(path.read_text())
            while not _cmdline(pid).startswith(b"sleep\0"):    # exec'd, with its own env
                assert time.monotonic() < deadline, "group member never exec'd sleep"
                time.sleep(0.01)
            pids.append(pid)
            path.unlink()
        self.strays += pids
        return leader, pids

    def __call__(self, job_dir: Path, mode: str) -> Launched:
        self.launched.append(job_dir.name)
        if self.fail is not None:
            raise LaunchError(self.fail)
        p = self.spawn(job_dir.name)
        self.jobs[job_dir.name] = p
        if self.systemd:
            return Launched(None, None, f"batchd-job-{job_dir.name}.service")
        return Launched(p.pid, start_time(p.pid), None)

    def exit(self, job_id: str) -> None:
        """End the job's fake adaptor, as a real one does right after writing its result."""
        p = self.jobs[job_id]
        p.terminate()
        p.wait()

    def by_pid(self, pid: int) -> subprocess.Popen[bytes]:
        return next(p for p in self.started if p.pid == pid)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    yield ps
    for p in ps.started:
        if p.poll() is None:
            p.kill()
        p.wait()
    for pid in ps.strays:
        if alive(pid, None) and pid_tagged(pid):
            os.kill(pid, signal.SIGKILL)


def pid_tagged(pid: int) -> bool:
    try:
        return b"BATCHD_JOB_ID=" in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while alive(pid, None):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.01)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws",
                  scheduler=SchedulerConfig(max_concurrent_jobs=2, heartbeat_interval=0.2,
                                            stale_after=1.0, dead_after=3.0, kill_grace=1.0),
                  launcher="direct")


@pytest.fixture
def clock() -> MockClock:
    """Real processes write real heartbeats: the clock starts at the real time."""
    return MockClock(time.time())


@pytest.fixture
def jobs(cfg: Config, procs: Procs, clock: MockClock) -> _dispatch.Jobs:
    return _dispatch.Jobs.over(cfg, Layout(cfg.state_dir), JobQueue.over(MemoryStorage()),
                               RecLog(), launcher=procs, clock=clock)  # type: ignore[arg-type]


def log_of(j: _dispatch.Jobs) -> RecLog:
    assert isinstance(j.log, RecLog)
    return j.log


def enqueue(j: _dispatch.Jobs, *ids: str, **extra: Any) -> None:
    """Queue jobs as the submit handler does: into the WAL, then into the index."""
    for job_id in ids:
        j.queue.enqueue(job_id, {"agent": "shell", "prompt": "sleep 60", "repos": [],
                                 "timeout": None, "created_at": iso_now(),
                                 "workspace": str(j.cfg.workspace_dir / job_id), **extra})
        doomed = _queued.add(j.runnable, j.queue, get(j, job_id), j.clock.time())
        if doomed is not None:
            j.doomed.append((job_id, doomed))


def get(j: _dispatch.Jobs, job_id: str) -> dict[str, Any]:
    entry = j.queue.get(job_id)
    assert entry is not None
    return entry


def sentinel(j: _dispatch.Jobs, job_id: str, pid: int, *, age: float = 0.0) -> None:
    ts = j.clock.time() - age
    j.layout.job_dir(job_id).mkdir(parents=True, exist_ok=True)
    write_record(SENTINEL, j.layout.job_sentinel(job_id), {
        "id": job_id, "pid": pid, "start": start_time(pid), "heartbeat_at": iso_now(ts),
        "agent_pid": None, "agent_start": None, "output_bytes": 0})


def result(j: _dispatch.Jobs, job_id: str, *, exit_code: int | None = 0,
           sig: int | None = None, reason: str | None = None, **more: Any) -> None:
    j.layout.job_dir(job_id).mkdir(parents=True, exist_ok=True)
    write_record(RESULT, j.layout.job_result(job_id), {
        "id": job_id, "exit_code": exit_code, "signal": sig, "duration_s": 1.0,
        "started_at": iso_now(), "finished_at": iso_now(), "session_id": None,
        "reason": reason, "timed_out": reason in ("timed_out", "idle"), **more})


def wait_dead(p: subprocess.Popen[bytes]) -> int:
    return p.wait(DEADLINE)


def run_one(j: _dispatch.Jobs, procs: Procs, job_id: str = "a") -> subprocess.Popen[bytes]:
    """Enqueue and dispatch one job; its fake adaptor process."""
    enqueue(j, job_id)
    assert 1 == _dispatch.dispatch(j)
    return procs.by_pid(get(j, job_id)["pid"])


# -- dispatch ----------------------------------------------------------------------------------

def test_dispatch_is_fifo_up_to_the_limit(jobs: _dispatch.Jobs, procs: Procs) -> None:
    """Three queued, two slots: the two oldest start (running, pid + start, attempts 1,
    started_at, spec and workspace written); the third waits queued."""
    enqueue(jobs, "a", "b", "c")
    assert 2 == _dispatch.dispatch(jobs)
    assert ["a", "b"] == procs.launched
    a = get(jobs, "a")
    assert ("running", 1, True) == (a["state"], a["attempts"], alive(a["pid"], a["start"]))
    assert isinstance(a["started_at"], str) and "started_ts" not in a
    assert ({"a", "b"}, "queued") == (jobs.active, get(jobs, "c")["state"])
    assert jobs.layout.job_spec("a").is_file()
    assert (jobs.cfg.workspace_dir / "a").is_dir()
    assert 0 == _dispatch.dispatch(jobs)


def test_a_finished_job_frees_its_slot(jobs: _dispatch.Jobs, procs: Procs) -> None:
    """When a running job's result arrives, the next dispatch starts the queued one."""
    enqueue(jobs, "a", "b", "c")
    _dispatch.dispatch(jobs)
    procs.exit("a")
    result(jobs, "a")
    _dispatch.tick_all(jobs)
    assert 1 == _dispatch.dispatch(jobs)
    assert ("completed", "running") == (get(jobs, "a")["state"], get(jobs, "c")["state"])


def test_launch_error_fails_the_job_and_moves_on(jobs: _dispatch.Jobs, procs: Procs) -> None:
    """LaunchError: failed with the reason, counted, slot free for the next job."""
    procs.fail = "fork failed: no memory"
    enqueue(jobs, "a")
    _dispatch.dispatch(jobs)
    a = get(jobs, "a")
    assert ("failed", "launch failed: fork failed: no memory", None, 1) \
        == (a["state"], a["reason"], a["pid"], jobs.queue.stats()["failed"])
    assert set() == jobs.active


def test_unknown_agent_fails_before_any_launch(jobs: _dispatch.Jobs, procs: Procs) -> None:
    """A job whose agent is not configured fails at prepare time; nothing is launched."""
    enqueue(jobs, "a", agent="nosuch")
    _dispatch.dispatch(jobs)
    a = get(jobs, "a")
    assert ("failed", [], 1) == (a["state"], procs.launched, a["attempts"])
    assert "unknown agent 'nosuch'" in a["reason"]


def test_systemd_launch_stays_starting_until_the_sentinel(jobs: _dispatch.Jobs,
                                                          procs: Procs) -> None:
    """No pid from the launcher: starting; the tick that sees a fresh sentinel of a live
    adaptor makes it running with that pid."""
    procs.systemd = True
    enqueue(jobs, "a")
    _dispatch.dispatch(jobs)
    assert ("starting", None) == (get(jobs, "a")["state"], get(jobs, "a").get("pid"))
    _dispatch.tick_all(jobs)
    assert "starting" == get(jobs, "a")["state"]         # within the launch grace
    pid = procs.started[0].pid
    sentinel(jobs, "a", pid)
    _dispatch.tick_all(jobs)
    a = get(jobs, "a")
    assert ("running", pid, start_time(pid)) == (a["state"], a["pid"], a["start"])


# -- results -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("res", "state", "reason"), [
    ({"exit_code": 0}, "completed", None),
    ({"exit_code": 3}, "failed", "exit 3"),
    ({"exit_code": None, "sig": 9}, "failed", "killed by signal 9"),
    ({"exit_code": None, "sig": 15, "reason": "timed_out"}, "timed_out", "timed out after 60s"),
    ({"exit_code": None, "sig": 15, "reason": "idle"}, "timed_out", "idle"),
    ({"exit_code": 0, "reason": "agent error: Invalid API key"}, "failed",
     "agent error: Invalid API key"),
])
def test_a_result_finalizes_the_job(jobs: _dispatch.Jobs, procs: Procs, res: dict[str, Any],
                                    state: str, reason: str | None) -> None:
    """The result decides the terminal state and reason; pid cleared, the state's counter
    incremented, the job no longer active."""
    enqueue(jobs, "a", timeout=60)
    _dispatch.dispatch(jobs)
    procs.exit("a")
    result(jobs, "a", **res)
    _dispatch.tick_job(jobs, "a")
    a = get(jobs, "a")
    assert (state, reason, None, 1, set()) \
        == (a["state"], a["reason"], a["pid"], jobs.queue.stats()[state], jobs.active)


def test_usage_and_session_are_recorded_and_counted_with_the_end(jobs: _dispatch.Jobs,
                                                                  procs: Procs) -> None:
    """A result's usage and session land in the job's record, and its agent's usage
    counters move in the same WAL write as the terminal state (cost in micro-dollars)."""
    enqueue(jobs, "a")
    _dispatch.dispatch(jobs)
    procs.exit("a")
    result(jobs, "a", session_id="s-1", usage={"input_tokens": 11, "output_tokens": 7,
                                               "cost_usd": 0.000184, "turns": 1})
    _dispatch.tick_job(jobs, "a")
    a = get(jobs, "a")
    assert ("completed", "s-1", {"input_tokens": 11, "output_tokens": 7, "cost_usd": 0.000184,
                                 "turns": 1}) == (a["state"], a["session_id"], a["usage"])
    stats = jobs.queue.stats()
    assert (1, 11, 7, 184, 1, 1) == (
        stats["completed"], stats["usage/shell/input_tokens"],
        stats["usage/shell/output_tokens"], stats["usage/shell/cost_micro_usd"],
        stats["usage/shell/turns"], stats["usage/shell/jobs"])


def test_an_adaptor_lingering_after_its_result_is_killed(
        jobs: _dispatch.Jobs, procs: Procs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Terminal means no process left: an adaptor still alive ADAPTOR_EXIT_WAIT after its
    result is SIGKILLed before the job is written completed."""
    monkeypatch.setattr(_dispatch, "ADAPTOR_EXIT_WAIT", 0.2)
    adaptor = run_one(jobs, procs)
    result(jobs, "a")
    _dispatch.tick_all(jobs)
    assert ("completed", -signal.SIGKILL) == (get(jobs, "a")["state"], adaptor.wait(0))


def test_a_finished_job_is_ticked_no_more(jobs: _dispatch.Jobs, procs: Procs) -> None:
    """tick_job on a terminal job does nothing (idempotent job_exited)."""
    run_one(jobs, procs)
    procs.exit("a")
    result(jobs, "a")
    _dispatch.tick_job(jobs, "a")
    assert None is _dispatch.tick_job(jobs, "a")
    assert 1 == jobs.queue.stats()["completed"]


# -- liveness ------------------------------------------------------------------------------------

def test_an_end_whose_webhook_cannot_be_written_is_not_recorded_without_it(
        jobs: _dispatch.Jobs, procs: Procs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the chaos suite (a full disk): the webhook request of a job's end failed to
    be written, and the pass's flush still recorded the end, without its webhook and without
    its counter (`stats` drifted from the jobs). Now the failed write leaves the job running
    in the WAL, counted nowhere; the next tick finalizes it with its webhook and its count."""
    from supervisor.scheduler import events

    real = events.drop_request
    calls: list[str] = []

    def full(layout: Layout, body: dict[str, Any]) -> None:
        calls.append(str(body.get("id")))
        raise OSError(errno.ENOSPC, "No space left on device")

    enqueue(jobs, "a", callback="http://127.0.0.1:9/hook", batch="b")
    _dispatch.dispatch(jobs)
    procs.exit("a")
    result(jobs, "a")
    monkeypatch.setattr(events, "drop_request", full)
    with pytest.raises(OSError):
        _dispatch.tick_all(jobs)
    assert (1, "running", 0) == (len(calls), get(jobs, "a")["state"],
                                 jobs.queue.stats()["completed"])
    monkeypatch.setattr(events, "drop_request", real)
    _dispatch.tick_all(jobs)
    inbox = sorted(n for n in os.listdir(jobs.layout.inbox("callbacks"))
                   if n.endswith(".json"))
    assert ("completed", 1, 2) == (get(jobs, "a")["state"], jobs.queue.stats()["completed"],
                                   len(inbox))


def test_dead_adaptor_is_lost_and_its_group_killed(jobs: _dispatch.Jobs, procs: Procs,
                                                   clock: MockClock) -> None:
    """Adaptor SIGKILLed, heartbeat older than dead_after, no result: lost; the job's
    process left in its group (tagged BATCHD_JOB_ID=a) is killed; an untagged process in
    the same group is not touched."""
    enqueue(jobs, "a")
    adaptor, (agent, stranger) = procs.spawn_group("a", ["a", None])
    jobs.launcher = lambda job_dir, mode: Launched(adaptor.pid, start_time(adaptor.pid), None)
    _dispatch.dispatch(jobs)
    sentinel(jobs, "a", adaptor.pid)
    adaptor.kill()
    wait_dead(adaptor)
    _dispatch.tick_all(jobs)
    assert "running" == get(jobs, "a")["state"]          # stale, not yet dead
    clock.advance(3.5)
    _dispatch.tick_all(jobs)
    a = get(jobs, "a")
    assert ("lost", 1) == (a["state"], jobs.queue.stats()["lost"])
    assert a["reason"].startswith("lost: no heartbeat for")
    wait_gone(agent)
    assert alive(stranger, None)


def test_stale_heartbeat_warns_once_and_keeps(jobs: _dispatch.Jobs, procs: Procs,
                                              clock: MockClock) -> None:
    """A live adaptor whose heartbeat is stale is kept; the warning is rate-limited."""
    adaptor = run_one(jobs, procs)
    sentinel(jobs, "a", adaptor.pid, age=2.0)
    for _ in range(3):
        _dispatch.tick_all(jobs)
    assert ("running", ["job heartbeat is stale; keeping it"]) \
        == (get(jobs, "a")["state"], log_of(jobs).levels("warning"))
    assert None is adaptor.poll()


def test_timeout_backstop_kills_and_times_out(jobs: _dispatch.Jobs, procs: Procs,
                                              clock: MockClock) -> None:
    """An adaptor still running long past its timeout + kill_grace + margin is SIGKILLed
    (its whole group) and the job is timed_out."""
    enqueue(jobs, "a", timeout=1.0)
    _dispatch.dispatch(jobs)
    adaptor = procs.by_pid(get(jobs, "a")["pid"])
    clock.advance(1.0 + 1.0 + 15.0 + 1.0)
    sentinel(jobs, "a", adaptor.pid)
    _dispatch.tick_all(jobs)
    assert ("timed_out", -signal.SIGKILL) == (get(jobs, "a")["state"], wait_dead(adaptor))


# -- cancel --------------------------------------------------------------------------------------

def test_cancel_of_a_queued_job_is_immediate(jobs: _dispatch.Jobs) -> None:
    """queued -> cancelled at once, with the operator reason and the counter."""
    enqueue(jobs, "a")
    assert "queued" == _dispatch.cancel(jobs, "a")
    a = get(jobs, "a")
    assert ("cancelled", "cancelled by operator", 1) \
        == (a["state"], a["reason"], jobs.queue.stats()["cancelled"])


def test_cancel_of_a_running_job(jobs: _dispatch.Jobs, procs: Procs) -> None:
    """running: the intent is recorded, SIGTERM reaches the group once; the result then
    makes it cancelled (not failed), reason "cancelled by operator"."""
    adaptor = run_one(jobs, procs)
    sentinel(jobs, "a", adaptor.pid)
    assert "running" == _dispatch.cancel(jobs, "a")
    a = get(jobs, "a")
    assert ("running", True, -signal.SIGTERM) \
        == (a["state"], a["cancel_requested"], wait_dead(adaptor))
    assert isinstance(a["cancel_sent_at"], str)
    result(jobs, "a", exit_code=None, sig=15, reason="terminated")
    _dispatch.tick_all(jobs)
    a = get(jobs, "a")
    assert ("cancelled", "cancelled by operator", 1) \
        == (a["state"], a["reason"], jobs.queue.stats()["cancelled"])


def test_cancel_overdue_is_killed(jobs: _dispatch.Jobs, procs: Procs, clock: MockClock) -> None:
    """An adaptor that ignores SIGTERM past kill_grace + margin is SIGKILLed; cancelled."""
    trapped = procs.tmp / "trapped"
    procs.argv = ["sh", "-c", f"trap '' TERM; touch {trapped}; sleep 60 & wait; sleep 60"]
    adaptor = run_one(jobs, procs)
    sentinel(jobs, "a", adaptor.pid)
    deadline = time.monotonic() + 30      # SIGTERM before the trap would end it: a flake
    while not trapped.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    _dispatch.cancel(jobs, "a")
    time.sleep(0.1)
    assert None is adaptor.poll()
    clock.advance(1.0 + 15.0 + 1.0)
    sentinel(jobs, "a", adaptor.pid)
    _dispatch.tick_all(jobs)
    a = get(jobs, "a")
    assert ("cancelled", -signal.SIGKILL) == (a["state"], wait_dead(adaptor))
    assert "killed" in a["reason"]


def test_cancel_of_a_finished_job_changes_nothing(jobs: _dispatch.Jobs, procs: Procs) -> None:
    """A replayed cancel of a terminal job: same record, same counters."""
    run_one(jobs, procs)
    procs.exit("a")
    result(jobs, "a")
    _dispatch.tick_all(jobs)
    before = (get(jobs, "a"), jobs.queue.stats())
    assert "completed" == _dispatch.cancel(jobs, "a")
    assert before == (get(jobs, "a"), jobs.queue.stats())


def test_cancel_of_an_unknown_job(jobs: _dispatch.Jobs) -> None:
    """No such job: None, nothing written."""
    assert None is _dispatch.cancel(jobs, "ghost")


# -- re-attachment ---------------------------------------------------------------------------------

def test_reattach_sorts_every_active_job(cfg: Config, jobs: _dispatch.Jobs, procs: Procs,
                                         clock: MockClock) -> None:
    """A restarted scheduler's view: alive + fresh -> reattached (recovered, marked on the
    job), result -> finalized, dead past dead_after -> lost, stale -> kept."""
    enqueue(jobs, "fresh", "done", "dead", "stale")
    jobs.cfg = replace(cfg, scheduler=replace(cfg.scheduler, max_concurrent_jobs=4))
    _dispatch.dispatch(jobs)
    pids = {k: get(jobs, k)["pid"] for k in ("fresh", "done", "dead", "stale")}
    for k in ("fresh", "done", "dead"):
        sentinel(jobs, k, pids[k])
    sentinel(jobs, "stale", pids["stale"], age=2.0)
    procs.exit("done")
    result(jobs, "done")
    procs.by_pid(pids["dead"]).kill()
    wait_dead(procs.by_pid(pids["dead"]))
    clock.advance(0.5)
    sentinel(jobs, "fresh", pids["fresh"])
    sentinel(jobs, "dead", pids["dead"], age=4.0)
    again = _dispatch.Jobs.over(jobs.cfg, jobs.layout, jobs.queue, RecLog(),  # type: ignore[arg-type]
                                launcher=procs, clock=clock)
    assert {"fresh", "done", "dead", "stale"} == again.active
    did = _dispatch.reattach(again)
    assert {"reattached": 1, "stale": 1, "finalized": 1, "lost": 1, "pending": 0,
            "relaunched": 0} == did
    assert (1, "completed", "lost", "running") == (
        get(again, "fresh")["reattached"], get(again, "done")["state"],
        get(again, "dead")["state"], get(again, "stale")["state"])
    assert 1 == again.queue.stats()["recovered"]


def test_reattach_of_a_starting_job_learns_its_pid(jobs: _dispatch.Jobs, procs: Procs) -> None:
    """Scheduler died between the fork and the running record: the adaptor's sentinel
    makes the job running with the adaptor's pid (never a second launch)."""
    enqueue(jobs, "a")
    jobs.queue.update("a", state="starting", attempts=1, dispatched_at=iso_now(jobs.clock.time()))
    adaptor = procs.spawn("a")
    sentinel(jobs, "a", adaptor.pid)
    again = _dispatch.Jobs.over(jobs.cfg, jobs.layout, jobs.queue, RecLog(),  # type: ignore[arg-type]
                                launcher=procs, clock=jobs.clock)
    assert 1 == _dispatch.reattach(again)["reattached"]
    a = get(again, "a")
    assert ("running", adaptor.pid, []) == (a["state"], a["pid"], procs.launched)


# -- leftovers and timing --------------------------------------------------------------------------

def test_tick_interval_is_half_the_heartbeat_at_most_a_second(cfg: Config) -> None:
    """min(1 s, heartbeat_interval / 2)."""
    slow = replace(cfg, scheduler=replace(cfg.scheduler, heartbeat_interval=5.0))
    assert (0.1, 1.0) == (_dispatch.tick_interval(cfg), _dispatch.tick_interval(slow))


# -- repository locks ------------------------------------------------------------------------------

def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def bare_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bare repository with one commit on main (README)."""
    root = tmp_path_factory.mktemp("git")
    src = root / "src"
    _git("init", "-q", "-b", "main", str(src))
    (src / "README").write_text("hello\n")
    _git("add", "README", cwd=src)
    _git("commit", "-q", "-m", "first", cwd=src)
    _git("clone", "-q", "--bare", str(src), str(root / "app.git"))
    return root / "app.git"


@pytest.fixture
def rjobs(jobs: _dispatch.Jobs, bare_repo: Path) -> _dispatch.Jobs:
    """Jobs with two configured repositories over one real bare repo: app is exclusive."""
    jobs.cfg = replace(jobs.cfg, repositories={
        "app": RepoConfig(url=str(bare_repo), exclusive=True),
        "lib": RepoConfig(url=str(bare_repo))})
    return jobs


def finish_clones(j: _dispatch.Jobs) -> None:
    """Wait for the workspaces being cloned off the loop, then run the pass that launches."""
    futures.wait(list(j.preparing.values()), timeout=60)
    _dispatch.tick_all(j)


def lock_requests(j: _dispatch.Jobs) -> dict[str, dict[str, Any]]:
    """The requests waiting in locks/inbox, by file name (without .json)."""
    inbox = j.layout.inbox("locks")
    out = {}
    for name in sorted(os.listdir(inbox)) if inbox.is_dir() else []:
        rec = read_record(REQUEST, inbox / name, owner=False)
        assert isinstance(rec, dict)
        out[name.removesuffix(".json")] = rec
    return out


def grant_table(j: _dispatch.Jobs, *holders: tuple[str, str],
                waiting: dict[str, list[str]] | None = None, gone: tuple[str, ...] = (),
                exclusive: bool = False) -> None:
    """Write the lock table's files as the locks worker would: (repo, job) held (for the
    whole run if `exclusive`) and the jobs blocked on the `gone` repositories in
    locks/state.json, the queues on a page."""
    t = Table(held={repo: Lock(job, iso_now(), exclusive) for repo, job in holders})
    seq = 0
    for repo, queue in (waiting or {}).items():
        for job in queue:
            seq += 1
            acquire(t, job, Want((repo,), False, seq, None))
    j.layout.lock_pages.mkdir(parents=True, exist_ok=True)
    write_record(LOCK_WANTS, j.layout.lock_page(1), page_record(t.wants))
    write_record(WORKER_STATE, j.layout.worker_state("locks"),
                 held_record(t, {repo: q for repo, q in t.waiting.items() if repo in gone}))


def test_a_job_with_repos_waits_and_asks_without_taking_a_slot(rjobs: _dispatch.Jobs,
                                                                procs: Procs) -> None:
    """queued -> waiting (lock_exclusive, lock_seq in the WAL), then acquire-<job>; the
    job without repos behind it runs although the limit is 2 and one slot is used."""
    enqueue(rjobs, "busy")
    _dispatch.dispatch(rjobs)
    enqueue(rjobs, "r", repos=["app"])
    enqueue(rjobs, "s", repos=["lib"], exclusive=True)
    enqueue(rjobs, "n")
    assert 1 == _dispatch.dispatch(rjobs)
    r, s = get(rjobs, "r"), get(rjobs, "s")
    assert ("waiting", True, "waiting", True) == (r["state"], r["lock_exclusive"],
                                                  s["state"], s["lock_exclusive"])
    assert r["lock_seq"] < s["lock_seq"]
    assert ("running", ["busy", "n"]) == (get(rjobs, "n")["state"], procs.launched)
    reqs = lock_requests(rjobs)
    assert ["acquire-r", "acquire-s"] == list(reqs)
    assert (["app"], True, r["lock_seq"]) == (reqs["acquire-r"]["repos"],
                                              reqs["acquire-r"]["exclusive"],
                                              reqs["acquire-r"]["seq"])


def test_a_granted_job_clones_releases_then_launches(rjobs: _dispatch.Jobs,
                                                     procs: Procs) -> None:
    """state.json shows the job holding its repo: dispatched; the workspace is a clone;
    a non-exclusive job asks release-<job> after the clone."""
    enqueue(rjobs, "r", repos=["lib"])
    _dispatch.dispatch(rjobs)
    assert [] == procs.launched
    grant_table(rjobs, ("lib", "r"))
    assert 1 == _dispatch.dispatch(rjobs)
    # The clone runs on a prepare thread: the loop returns with the job still starting.
    assert ("starting", []) == (get(rjobs, "r")["state"], procs.launched)
    finish_clones(rjobs)
    assert ("running", ["r"]) == (get(rjobs, "r")["state"], procs.launched)
    assert "hello\n" == (rjobs.cfg.workspace_dir / "r" / "README").read_text()
    assert ["acquire-r", "release-r"] == list(lock_requests(rjobs))
    assert (rjobs.layout.mirrors_dir / "lib.git").is_dir()


def test_an_exclusive_job_keeps_its_lock_until_it_ends(rjobs: _dispatch.Jobs,
                                                       procs: Procs) -> None:
    """On an exclusive repo no release follows the clone; the terminal finalize sends it."""
    enqueue(rjobs, "x", repos=["app"])
    _dispatch.dispatch(rjobs)
    grant_table(rjobs, ("app", "x"))
    _dispatch.dispatch(rjobs)
    finish_clones(rjobs)
    assert ["acquire-x"] == list(lock_requests(rjobs))
    procs.exit("x")
    result(rjobs, "x")
    _dispatch.tick_all(rjobs)
    assert ("completed", ["acquire-x", "release-x"]) == (get(rjobs, "x")["state"],
                                                         list(lock_requests(rjobs)))


@pytest.mark.parametrize("fails", [1, 2])
def test_an_end_whose_webhook_or_release_cannot_be_written_is_not_recorded(
        rjobs: _dispatch.Jobs, procs: Procs, monkeypatch: pytest.MonkeyPatch,
        fails: int) -> None:
    """The job's webhook event (fails=1) or its lock release (fails=2) cannot be written
    (ENOSPC): the pass raises, and the WAL does not say the job ended (so it is finalized
    again, never left ended without its release or its webhook); the next pass, the disk
    working, records the end with both sent."""
    enqueue(rjobs, "x", repos=["app"], callback="http://127.0.0.1:9/hook")
    _dispatch.dispatch(rjobs)
    grant_table(rjobs, ("app", "x"))
    _dispatch.dispatch(rjobs)
    finish_clones(rjobs)
    procs.exit("x")
    result(rjobs, "x")
    disk = BadDisk(monkeypatch, errno.ENOSPC)
    disk.failures = 1
    if fails == 2:                       # the event goes through, the release does not
        real, calls = _dispatch._release, []

        def release(j: _dispatch.Jobs, job_id: str, why: str) -> None:
            calls.append(job_id)
            disk.failures = 1 if len(calls) == 1 else 0
            real(j, job_id, why)

        monkeypatch.setattr(_dispatch, "_release", release)
        disk.failures = 0
    with pytest.raises(OSError):
        _dispatch.tick_all(rjobs)
    assert ("running", ["acquire-x"]) == (get(rjobs, "x")["state"], list(lock_requests(rjobs)))
    _dispatch.tick_all(rjobs)
    events = os.listdir(rjobs.layout.inbox("callbacks"))
    assert ("completed", ["acquire-x", "release-x"], 1) == (
        get(rjobs, "x")["state"], list(lock_requests(rjobs)), len(events))


def test_a_job_not_holding_all_its_repos_keeps_waiting(rjobs: _dispatch.Jobs,
                                                       procs: Procs) -> None:
    """Held by another job, or no slot free: the waiting job stays waiting."""
    enqueue(rjobs, "r", repos=["app"])
    _dispatch.dispatch(rjobs)
    grant_table(rjobs, ("app", "other"), waiting={"app": ["r"]})
    assert (0, "waiting") == (_dispatch.dispatch(rjobs), get(rjobs, "r")["state"])
    enqueue(rjobs, "n1", "n2")
    _dispatch.dispatch(rjobs)
    grant_table(rjobs, ("app", "r"))
    assert (0, "waiting") == (_dispatch.dispatch(rjobs), get(rjobs, "r")["state"])


def test_cancel_of_a_waiting_job_releases_its_place(rjobs: _dispatch.Jobs) -> None:
    """cancelled at once, and release-<job> leaves the queues."""
    enqueue(rjobs, "r", repos=["app"])
    _dispatch.dispatch(rjobs)
    assert "waiting" == _dispatch.cancel(rjobs, "r")
    assert ("cancelled", ["acquire-r", "release-r"]) == (get(rjobs, "r")["state"],
                                                         list(lock_requests(rjobs)))


def test_a_waiting_job_on_a_repo_no_longer_known_fails(rjobs: _dispatch.Jobs,
                                                       procs: Procs) -> None:
    """Its repository was removed while it waited: failed with the reason, released."""
    enqueue(rjobs, "r", repos=["lib"])
    _dispatch.dispatch(rjobs)
    grant_table(rjobs, waiting={"lib": ["r"]}, gone=("lib",))
    rjobs.cfg = replace(rjobs.cfg, repositories={})
    _dispatch.dispatch(rjobs)
    r = get(rjobs, "r")
    assert ("failed", "launch failed: repository 'lib' is no longer known", []) == (
        r["state"], r["reason"], procs.launched)
    assert "release-r" in lock_requests(rjobs)


def test_resume_waiting_asks_again_for_jobs_the_table_lacks(rjobs: _dispatch.Jobs) -> None:
    """Crash between the WAL's waiting and the acquire: at start, acquire again with the
    recorded seq; a job the table knows is not asked for again."""
    enqueue(rjobs, "lost", repos=["app"])
    enqueue(rjobs, "known", repos=["lib"])
    rjobs.queue.update("lost", state="waiting", lock_seq=5, lock_exclusive=True)
    rjobs.queue.update("known", state="waiting", lock_seq=6, lock_exclusive=False)
    grant_table(rjobs, waiting={"lib": ["known"]})
    assert 1 == _dispatch.resume_waiting(rjobs)
    reqs = lock_requests(rjobs)
    assert (["acquire-lost"], 5, True) == (list(reqs), reqs["acquire-lost"]["seq"],
                                           reqs["acquire-lost"]["exclusive"])


def test_resume_waiting_wants_the_next_in_line_and_drops_what_was_made_before(
        rjobs: _dispatch.Jobs) -> None:
    """At start: the job first in line behind a whole-run holder is wanted for a workspace
    made ahead (as if the locks worker told it again); the staging folders of waiting
    jobs, which only a former scheduler's makings left, are removed in the background; a
    starting job's (a clone in progress) and workspaces are kept."""
    for job_id, state in (("h", "running"), ("n", "waiting"), ("s", "starting")):
        enqueue(rjobs, job_id, repos=["app"] if job_id != "s" else ["lib"])
        rjobs.queue.update(job_id, state=state, lock_seq=5)
    grant_table(rjobs, ("app", "h"), waiting={"app": ["n"]}, exclusive=True)
    ws = rjobs.cfg.workspace_dir
    for name in (".prep.n+0ld", ".prep.s+n0w", "h"):
        (ws / name / ".git").mkdir(parents=True)
    try:
        _dispatch.resume_waiting(rjobs)
        until("the former making removed", lambda: not (ws / ".prep.n+0ld").exists())
        assert (["n"], [".prep.s+n0w", "h"]) == (rjobs.ahead.jobs(), sorted(os.listdir(ws)))
    finally:
        rjobs.close_ahead()


def test_resume_waiting_without_a_lock_table_asks_nothing(rjobs: _dispatch.Jobs) -> None:
    """No lock table at all: the locks worker (started after the scheduler) builds it from
    the WAL, waiting jobs included, so nothing is asked again; an unreadable table: every
    waiting job is asked for again."""
    enqueue(rjobs, "w", repos=["app"])
    rjobs.queue.update("w", state="waiting", lock_seq=5, lock_exclusive=True)
    assert (0, {}) == (_dispatch.resume_waiting(rjobs), dict(lock_requests(rjobs)))
    rjobs.layout.worker_dir("locks").mkdir(parents=True, exist_ok=True)
    rjobs.layout.worker_state("locks").write_bytes(b"{")
    assert (1, ["acquire-w"]) == (_dispatch.resume_waiting(rjobs), list(lock_requests(rjobs)))


def test_a_pass_reads_what_is_held_not_who_waits(rjobs: _dispatch.Jobs) -> None:
    """While jobs wait, every pass asks for what is held: locks/state.json only (the
    waiting jobs' pages are not read), with the jobs blocked on a gone repository."""
    grant_table(rjobs, ("app", "a"), waiting={"app": ["w"], "gone": ["x"]}, gone=("gone",))
    got = _dispatch._lock_table(rjobs)
    assert got is not None
    assert ("a", {"gone": ["x"]}, {}) == (got.holder("app"), got.waiting, got.wants)


def test_reattach_of_a_running_shared_job_releases_again(rjobs: _dispatch.Jobs,
                                                         procs: Procs) -> None:
    """Scheduler restart: a running non-exclusive job's clone is done, so release again;
    a running exclusive one keeps its locks."""
    for job_id, repo in (("shared", "lib"), ("excl", "app")):
        enqueue(rjobs, job_id, repos=[repo])
        _dispatch.dispatch(rjobs)
        grant_table(rjobs, (repo, job_id))
        _dispatch.dispatch(rjobs)
        finish_clones(rjobs)
        sentinel(rjobs, job_id, get(rjobs, job_id)["pid"])
    for name in lock_requests(rjobs):
        (rjobs.layout.inbox("locks") / f"{name}.json").unlink()
    again = _dispatch.Jobs.over(rjobs.cfg, rjobs.layout, rjobs.queue, RecLog(),  # type: ignore[arg-type]
                                launcher=procs, clock=rjobs.clock)
    assert 2 == _dispatch.reattach(again)["reattached"]
    assert ["release-shared"] == list(lock_requests(again))


def test_a_stalled_clone_holds_neither_other_jobs_nor_cancels(
        rjobs: _dispatch.Jobs, procs: Procs) -> None:
    """A repository whose remote accepts and never answers (a real socket on 127.0.0.1):
    while that job's clone hangs, a job without repositories is launched and a cancel of
    a running job is carried out; the stalled job is not ticked (no relaunch) and fails
    with git's error once the remote goes away."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/stalled.git"
    rjobs.cfg = replace(rjobs.cfg, repositories={
        **rjobs.cfg.repositories, "stall": RepoConfig(url=url, branch="main")},
        scheduler=replace(rjobs.cfg.scheduler, max_concurrent_jobs=4))
    try:
        enqueue(rjobs, "run")
        _dispatch.dispatch(rjobs)
        enqueue(rjobs, "slow", repos=["stall"])
        _dispatch.dispatch(rjobs)
        grant_table(rjobs, ("stall", "slow"))
        _dispatch.dispatch(rjobs)
        enqueue(rjobs, "quick")
        _dispatch.dispatch(rjobs)
        _dispatch.cancel(rjobs, "run")
        _dispatch.tick_all(rjobs)
        assert (["run", "quick"], "starting", True) == (
            procs.launched, get(rjobs, "slow")["state"], "slow" in rjobs.preparing)
    finally:
        server.close()                       # the clone fails: connection gone
    finish_clones(rjobs)
    slow = get(rjobs, "slow")
    assert ("failed", ["run", "quick"]) == (slow["state"], procs.launched)
    assert "stalled.git" in str(slow["reason"])


def test_a_cancel_during_a_clone_ends_the_job_cancelled_when_the_clone_ends(
        rjobs: _dispatch.Jobs, procs: Procs) -> None:
    """Cancelled while its clone hangs on a stalled remote: never launched, and recorded
    cancelled by the operator (not failed by the clone, not 'killed after SIGTERM')."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/stalled.git"
    rjobs.cfg = replace(rjobs.cfg, repositories={"stall": RepoConfig(url=url, branch="main")})
    try:
        enqueue(rjobs, "c", repos=["stall"])
        _dispatch.dispatch(rjobs)
        grant_table(rjobs, ("stall", "c"))
        _dispatch.dispatch(rjobs)
        assert "c" in rjobs.preparing
        _dispatch.cancel(rjobs, "c")
        assert "starting" == get(rjobs, "c")["state"]
    finally:
        server.close()
    finish_clones(rjobs)
    c = get(rjobs, "c")
    assert ("cancelled", "cancelled by operator", []) == (c["state"], c["reason"],
                                                          procs.launched)


def test_a_large_submission_waits_in_batches(rjobs: _dispatch.Jobs,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """At most WAIT_BATCH jobs start waiting per pass; backlog says a next pass is due."""
    monkeypatch.setattr(_dispatch, "WAIT_BATCH", 2)
    enqueue(rjobs, "a", "b", "c", repos=["app"])
    _dispatch.dispatch(rjobs)
    assert (True, "queued") == (rjobs.backlog, get(rjobs, "c")["state"])
    _dispatch.dispatch(rjobs)
    assert (False, "waiting") == (rjobs.backlog, get(rjobs, "c")["state"])
    assert ["a", "b", "c"] == rjobs.queue.ids("waiting")


# -- job control --------------------------------------------------------------------------------

def test_higher_priority_starts_first_and_fifo_within_a_priority(
        jobs: _dispatch.Jobs, procs: Procs) -> None:
    """Two slots, four queued: the two best start (priority, then submission order)."""
    enqueue(jobs, "low", priority=-1)
    enqueue(jobs, "first")
    enqueue(jobs, "top", priority=9)
    enqueue(jobs, "second")
    assert 2 == _dispatch.dispatch(jobs)
    assert ["top", "first"] == procs.launched


def test_a_delayed_job_starts_when_its_time_comes(jobs: _dispatch.Jobs, procs: Procs,
                                                  clock: MockClock) -> None:
    """not_before ahead: nothing starts, next_due says when; once the clock passes it, the
    next dispatch starts it."""
    when = iso_now(clock.time() + 30)
    enqueue(jobs, "later", not_before=when)
    assert (0, parse_iso(when)) == (_dispatch.dispatch(jobs), jobs.next_due())
    clock.advance(30)
    assert (1, ["later"]) == (_dispatch.dispatch(jobs), procs.launched)


def test_an_agent_at_its_limit_does_not_hold_back_another_agent(
        jobs: _dispatch.Jobs, procs: Procs) -> None:
    """slow (max_concurrent 1) has two jobs queued first: one starts, the other waits, and
    the free agent's job takes the second slot."""
    jobs.cfg = replace(jobs.cfg, agents={**jobs.cfg.agents, "slow": AgentConfig(
        adaptor="command", max_concurrent=1)})
    enqueue(jobs, "s1", agent="slow")
    enqueue(jobs, "s2", agent="slow")
    enqueue(jobs, "free")
    assert 2 == _dispatch.dispatch(jobs)
    assert (["s1", "free"], "queued", 1) == (procs.launched, get(jobs, "s2")["state"],
                                             jobs.load["slow"])


def test_low_disk_starts_nothing_until_space_returns(jobs: _dispatch.Jobs, procs: Procs,
                                                      clock: MockClock) -> None:
    """Below disk.min_free no job starts (said once in the log); space is measured again
    after DISK_RECHECK, and then the queue starts by itself."""
    free = {"bytes": 10}
    jobs.measure = lambda path: (free["bytes"], 1 << 40)
    enqueue(jobs, "a")
    assert (0, [], True) == (_dispatch.dispatch(jobs), procs.launched,
                             (jobs.disk_low or "").startswith("disk: 10B free on "))
    free["bytes"] = 1 << 40
    assert 0 == _dispatch.dispatch(jobs)             # not measured again yet
    clock.advance(_dispatch.DISK_RECHECK)
    assert (1, ["a"], None) == (_dispatch.dispatch(jobs), procs.launched, jobs.disk_low)
    events = [e for _, e, _ in log_of(jobs).lines if "disk.min_free" in e]
    assert 2 == len(events)


def test_paused_starts_nothing_and_resumed_starts_again(jobs: _dispatch.Jobs,
                                                        procs: Procs) -> None:
    """While paused the queue stays as it is; once resumed the jobs start."""
    jobs.paused = True
    enqueue(jobs, "a")
    assert (0, []) == (_dispatch.dispatch(jobs), procs.launched)
    jobs.paused = False
    assert (1, ["a"]) == (_dispatch.dispatch(jobs), procs.launched)


def test_a_failed_dependency_fails_its_waiters_without_running_them(
        jobs: _dispatch.Jobs, procs: Procs) -> None:
    """b runs after a; a fails: b ends failed `dependency a failed` and never starts, and
    c (after b) follows it down the same way."""
    proc = run_one(jobs, procs, "a")
    enqueue(jobs, "b", after=["a"])
    enqueue(jobs, "c", after=["b"])
    result(jobs, "a", exit_code=3)
    _dispatch.tick_all(jobs)
    proc.wait(DEADLINE)
    _dispatch.dispatch(jobs)
    assert [("failed", "dependency a failed"), ("failed", "dependency b failed"), ["a"]] == [
        (get(jobs, "b")["state"], get(jobs, "b")["reason"]),
        (get(jobs, "c")["state"], get(jobs, "c")["reason"]), procs.launched]


def test_a_failed_job_with_retries_is_queued_again_once(jobs: _dispatch.Jobs,
                                                        procs: Procs) -> None:
    """A job with retries that fails is retried as <id>.r1 (retry_of, one retry less,
    named by the failed job's retried_as); a second finalize (a crash replay) makes no
    second retry."""
    proc = run_one(jobs, procs, "a")
    jobs.queue.update("a", retries=2)
    result(jobs, "a", exit_code=1)
    _dispatch.tick_all(jobs)
    proc.wait(DEADLINE)
    a, retry = get(jobs, "a"), get(jobs, "a.r1")
    assert ("failed", "a.r1", "a", 1, "queued") == (
        a["state"], a["retried_as"], retry["retry_of"], retry["retries"], retry["state"])
    replayed = dict(a, state="running")
    assert "a.r1" == _dispatch._retry(jobs, replayed, {"reason": "exit 1"})
    assert ["a", "a.r1"] == jobs.queue.ids()


# -- launcher: slurm (an in-memory Slurm; the real one runs in tests/proc/slurm) ---------------

class FakeSlurm:
    """sbatch/squeue/scancel/sacct of a cluster in memory: jobs by id (name, state,
    reason, work dir); `down` makes every command fail as with slurmctld dead."""

    def __init__(self) -> None:
        self.jobs: dict[int, list[str]] = {}
        self.calls: list[list[str]] = []
        self.down = False

    def opt(self, argv: list[str], name: str) -> str:
        return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))

    def __call__(self, argv: list[str], env: Any, timeout: float
                 ) -> subprocess.CompletedProcess[str]:
        argv = argv[argv.index("--") + 1:] if "--" in argv else argv
        self.calls.append(argv)
        if self.down:
            return subprocess.CompletedProcess(argv, 1, "", f"{argv[0]}: error: Unable to "
                                               "contact slurm controller (connect failure)")
        out = ""
        if argv[0] == "sbatch":
            sid = max(self.jobs, default=0) + 1
            self.jobs[sid] = [self.opt(argv, "job-name"), "PENDING", "None",
                              self.opt(argv, "chdir")]
            out = f"{sid}\n"
        elif argv[0] == "squeue":
            names = set(argv[argv.index("-n") + 1].split(","))
            out = "".join(f"{sid}|{n}|{st}|{r}|t0|t1|n1|{wd}\n" for sid, (n, st, r, wd)
                          in self.jobs.items() if n in names)
        elif argv[0] == "scancel":
            sid = int(argv[-1])
            if sid not in self.jobs:
                return subprocess.CompletedProcess(argv, 1, "", "Invalid job id specified")
            if "--batch" not in argv:
                self.jobs[sid][1] = "CANCELLED"
        elif argv[0] == "sacct":
            return subprocess.CompletedProcess(argv, 1, "", "accounting storage is disabled")
        return subprocess.CompletedProcess(argv, 0, out, "")

    def set(self, sid: int, state: str) -> None:
        self.jobs[sid][1] = state


@pytest.fixture
def slurm_jobs(cfg: Config, procs: Procs, clock: MockClock) -> tuple[_dispatch.Jobs, FakeSlurm]:
    fake = FakeSlurm()
    scfg = replace(cfg, launcher="slurm", slurm=SlurmConfig(poll=1.0, max_jobs=2))
    side = SlurmJobs(scfg, RecLog(), client=SlurmClient(runner=fake),  # type: ignore[arg-type]
                     clock=clock)
    j = _dispatch.Jobs.over(scfg, Layout(scfg.state_dir), JobQueue.over(MemoryStorage()),
                            RecLog(), launcher=procs, clock=clock,  # type: ignore[arg-type]
                            slurm=side)
    return j, fake


def ask(j: _dispatch.Jobs) -> None:
    """One tick with a fresh answer from Slurm (the poll run in line)."""
    j.clock.advance(1.5)  # type: ignore[attr-defined]
    _dispatch._ask_slurm(j, wait=True)
    _dispatch.tick_all(j)


def test_slurm_jobs_are_submitted_up_to_max_jobs_not_max_concurrent(
        slurm_jobs: tuple[_dispatch.Jobs, FakeSlurm], procs: Procs) -> None:
    """launcher slurm: each dispatched job is one sbatch (its id and launcher recorded, no
    local process); slurm.max_jobs (2) caps them, whatever max_concurrent_jobs says."""
    j, _ = slurm_jobs
    j.cfg = replace(j.cfg, scheduler=replace(j.cfg.scheduler, max_concurrent_jobs=1))
    enqueue(j, "a", "b", "c")
    assert 2 == _dispatch.dispatch(j)
    assert ([], {"a", "b"}) == (procs.launched, j.in_slurm)
    assert [("starting", 1, "slurm"), ("starting", 2, "slurm"), ("queued", None, None)] == [
        (get(j, i)["state"], get(j, i).get("slurm_job_id"), get(j, i).get("launcher"))
        for i in "abc"]


def test_a_slurm_job_runs_on_its_sentinel_and_ends_on_its_result(
        slurm_jobs: tuple[_dispatch.Jobs, FakeSlurm], procs: Procs) -> None:
    """Pending in Slurm: starting. Its adaptor's sentinel (a process here): running, its pid
    learned. Its result: completed; the next job takes the freed place."""
    j, fake = slurm_jobs
    enqueue(j, "a", "b", "c")
    _dispatch.dispatch(j)
    ask(j)
    assert "starting" == get(j, "a")["state"]
    fake.set(1, "RUNNING")
    p = procs.spawn("a")
    sentinel(j, "a", p.pid)
    ask(j)
    assert ("running", p.pid) == (get(j, "a")["state"], get(j, "a")["pid"])
    result(j, "a")
    p.terminate()
    p.wait()
    fake.set(1, "COMPLETED")
    ask(j)
    assert ("completed", 1) == (get(j, "a")["state"], _dispatch.dispatch(j))
    assert 3 == get(j, "c")["slurm_job_id"]
    assert not j.layout.job("a").ended.exists()     # its result guards it already


def test_slurm_silent_at_sbatch_holds_the_job_and_submits_only_after_looking(
        slurm_jobs: tuple[_dispatch.Jobs, FakeSlurm]) -> None:
    """sbatch without an answer: the job stays starting (no id), nothing more is submitted
    while Slurm is silent; once Slurm answers that it has no such job and the launch grace
    is over, it is submitted again (attempt 2): one Slurm job in all."""
    j, fake = slurm_jobs
    fake.down = True
    enqueue(j, "a", "b")
    assert 1 == _dispatch.dispatch(j)
    assert (None, "queued") == (get(j, "a").get("slurm_job_id"), get(j, "b")["state"])
    assert 0 == _dispatch.dispatch(j)
    fake.down = False
    ask(j)
    assert (1, 0) == (get(j, "a")["attempts"], len(fake.jobs))
    j.clock.advance(10.0)  # type: ignore[attr-defined]
    ask(j)
    assert (2, 1, [1]) == (get(j, "a")["attempts"], get(j, "a")["slurm_job_id"],
                           list(fake.jobs))


def test_a_submission_slurm_got_but_batchd_did_not_record_is_adopted(
        slurm_jobs: tuple[_dispatch.Jobs, FakeSlurm]) -> None:
    """sbatch reached Slurm, its answer did not reach the record: the tag finds it, its id
    is recorded, and no second job is ever submitted."""
    j, fake = slurm_jobs
    enqueue(j, "a")
    _dispatch.dispatch(j)
    j.queue.update("a", slurm_job_id=None)
    for _ in range(15):
        ask(j)
    assert (1, 1, "starting") == (get(j, "a")["slurm_job_id"], len(fake.jobs),
                                  get(j, "a")["state"])


def test_cancel_of_a_slurm_job_is_scancel_and_waits_for_an_answer(
        slurm_jobs: tuple[_dispatch.Jobs, FakeSlurm]) -> None:
    """cancel of a pending Slurm job: scancel (recorded as sent only once Slurm took it);
    then Slurm's CANCELLED settles it, and ended.json (written first) keeps a copy Slurm
    may start after all from running it."""
    j, fake = slurm_jobs
    enqueue(j, "a")
    _dispatch.dispatch(j)
    ask(j)
    fake.down = True
    _dispatch.cancel(j, "a")
    assert (True, None) == (get(j, "a")["cancel_requested"], get(j, "a").get("cancel_sent_at"))
    fake.down = False
    ask(j)
    assert (["scancel", "--name=batchd-a", "1"], "CANCELLED") == (
        [c for c in fake.calls if c[0] == "scancel"][-1], fake.jobs[1][1])
    assert get(j, "a").get("cancel_sent_at") is not None
    ask(j)
    ask(j)
    assert ("cancelled", "cancelled by operator") == (get(j, "a")["state"],
                                                      get(j, "a")["reason"])
    ended = read_record(JOB_ENDED, j.layout.job("a").ended, owner=False)
    assert isinstance(ended, dict)
    assert ("a", "cancelled", 1) == (ended["id"], ended["state"], ended["slurm_job_id"])


def test_a_slurm_job_is_not_recorded_ended_before_its_ended_record_is_written(
        slurm_jobs: tuple[_dispatch.Jobs, FakeSlurm], monkeypatch: pytest.MonkeyPatch) -> None:
    """ended.json cannot be written (a full disk): the cancelled Slurm job stays active,
    nothing recorded; once it can, the job ends cancelled with its ended.json."""
    j, fake = slurm_jobs
    enqueue(j, "a")
    _dispatch.dispatch(j)
    ask(j)
    _dispatch.cancel(j, "a")
    ask(j)
    assert "CANCELLED" == fake.jobs[1][1]

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(_dispatch, "write_record", full)
    with pytest.raises(OSError):
        for _ in range(5):
            ask(j)
    assert ("starting", False) == (get(j, "a")["state"], j.layout.job("a").ended.exists())
    monkeypatch.undo()
    ask(j)
    assert ("cancelled", True) == (get(j, "a")["state"], j.layout.job("a").ended.exists())


def test_a_lost_slurm_job_has_its_slurm_job_cancelled(
        slurm_jobs: tuple[_dispatch.Jobs, FakeSlurm], procs: Procs) -> None:
    """A running job whose heartbeat died while Slurm still shows it RUNNING (a dead node):
    lost after dead_after, and its Slurm job is cancelled (no process of it remains)."""
    j, fake = slurm_jobs
    enqueue(j, "a")
    _dispatch.dispatch(j)
    fake.set(1, "RUNNING")
    p = procs.spawn("a")
    sentinel(j, "a", p.pid)
    ask(j)
    p.kill()
    p.wait()
    j.clock.advance(5.0)  # type: ignore[attr-defined]
    ask(j)
    assert ("lost", "CANCELLED") == (get(j, "a")["state"], fake.jobs[1][1])


def test_a_job_finalized_again_after_a_crash_ends_as_first_decided(
        jobs: _dispatch.Jobs, procs: Procs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook event of a job's end is durable before its terminal WAL record; when
    that record is lost (the scheduler died, or the WAL write failed) and a second look
    at the files decides otherwise, the job still ends as its webhook said (chaos seed
    494710626: a webhook said `failed`, the job ended `completed`): the first decision is
    kept in jobs/<id>/ended.json and taken by the next finalize."""
    from supervisor.scheduler import events
    real, said = events.drop_request, []

    def drop(layout: Layout, body: dict[str, Any]) -> None:
        said.append(body["payload"]["job"]["state"])
        real(layout, body)
    monkeypatch.setattr(events, "drop_request", drop)
    enqueue(jobs, "a", callback="http://127.0.0.1:9/hook")
    _dispatch.dispatch(jobs)
    procs.exit("a")
    result(jobs, "a", exit_code=3)

    def lost(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(jobs.queue, "update_many", lost)
    with pytest.raises(OSError):
        _dispatch.tick_all(jobs)
    monkeypatch.setattr(jobs.queue, "update_many", JobQueue.update_many.__get__(jobs.queue))
    assert "running" == get(jobs, "a")["state"]
    result(jobs, "a", exit_code=0)                 # the second look sees another end
    again = _dispatch.Jobs.over(jobs.cfg, jobs.layout, jobs.queue, RecLog(),
                                launcher=procs, clock=jobs.clock)  # type: ignore[arg-type]
    _dispatch.tick_all(again)
    a = get(again, "a")
    assert ("failed", "exit 3", 1, ["failed", "failed"]) == (
        a["state"], a["reason"], jobs.queue.stats()["failed"], said)


def test_a_job_without_effects_outside_the_wal_writes_no_ended_record(
        jobs: _dispatch.Jobs, procs: Procs) -> None:
    """No callback, no batch, no retry: nothing outside the WAL could contradict a second
    decision, so the common end costs no extra durable write."""
    enqueue(jobs, "a")
    _dispatch.dispatch(jobs)
    procs.exit("a")
    result(jobs, "a", exit_code=3)
    _dispatch.tick_all(jobs)
    assert ("failed", False) == (get(jobs, "a")["state"], jobs.layout.job("a").ended.exists())


def test_make_ahead_forgets_the_ended_and_holds_back_for_busy_repos_and_pause(
        jobs: _dispatch.Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    """make_ahead (each pass): a job told next in line that ended while waiting is
    forgotten; the making is started with the repositories a clone uses now as busy;
    nothing starts while paused."""
    busy: list[set[str]] = []
    monkeypatch.setattr(Ahead, "start",
                        lambda self, b, known: busy.append(set(b())) or 0)
    enqueue(jobs, "w1", "gone", repos=["app"])
    enqueue(jobs, "p", repos=["lib"])
    jobs.queue.update("w1", state="waiting")
    jobs.queue.update("gone", state="cancelled")
    jobs.queue.update("p", state="starting")
    for job_id in ("w1", "gone"):
        jobs.ahead.want(get(jobs, job_id))
    jobs.preparing["p"] = futures.Future()
    try:
        _dispatch.make_ahead(jobs)
        assert ([{"lib"}], ["w1"]) == (busy, jobs.ahead.jobs())
        jobs.paused = True
        _dispatch.make_ahead(jobs)
        assert [{"lib"}] == busy
    finally:
        jobs.close_ahead()
