"""Tests for supervisor.scheduler: recovery, the inbox (submit, cancel, job_exited) and the loop."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import log as _log
from supervisor import runtime as _runtime
from supervisor import scheduler
from supervisor.config import Config
from supervisor.scheduler.dispatch import Jobs
from supervisor.scheduler.launch import Launched
from supervisor.state.atomic import CORRUPT_MARK
from supervisor.state.clock import MockClock, iso_now, parse_iso
from supervisor.state.fs import OsFS
from supervisor.state.jobs import cancel_request, submit_request
from supervisor.state.layout import REQUEST, RESULT, Layout, write_record
from supervisor.state.locktable import next_hint
from supervisor.state.proc import start_time
from supervisor.state.queue import SUBLOG_COUNTER, JobQueue, MemoryStorage
from supervisor.state.sublog import SubmissionLog


@pytest.fixture(autouse=True)
def _no_stop() -> Iterator[None]:
    """Each test starts and ends without a pending stop request."""
    _runtime._state.stop = False
    yield
    _runtime._state.stop = False


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws")


@pytest.fixture
def sched(cfg: Config) -> Iterator[scheduler.Scheduler]:
    """A scheduler over the real disk (its WAL under the tmp state dir)."""
    s, _, _, _ = scheduler.recover(cfg, Layout(cfg.state_dir), _log.get("test"),
                                   launcher=no_launch)
    yield s
    s.queue.close()


@pytest.fixture
def mem(cfg: Config) -> scheduler.Scheduler:
    """A scheduler over the queue's in-memory twin (handler logic only)."""
    queue = JobQueue.over(MemoryStorage())
    layout = Layout(cfg.state_dir)
    return scheduler.Scheduler(cfg, layout, queue, _log.get("test"),
                               Jobs.over(cfg, layout, queue, _log.get("test"),
                                         launcher=no_launch))


def no_launch(job_dir: Path, mode: str) -> Launched:
    """A launcher that must not be reached by the ingestion tests."""
    raise AssertionError(f"unexpected launch of {job_dir}")


def job(job_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "agent": "shell", "prompt": "echo hi", "repos": [], "callback": None,
            "timeout": None, "batch": None, "exclusive": False, "created_at": iso_now(),
            **extra}


def drop(s: scheduler.Scheduler, body: dict[str, Any]) -> Path:
    """Write a request into the scheduler's inbox exactly as batchctl does."""
    inbox = s.layout.inbox("scheduler")
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / f"{body['id']}.json"
    write_record(REQUEST, path, body)
    return path


def inbox_names(s: scheduler.Scheduler) -> list[str]:
    return sorted(os.listdir(s.layout.inbox("scheduler")))


def test_recovery_of_a_fresh_state_dir(cfg: Config) -> None:
    """No WAL yet: an empty queue, nothing replayed, nothing degraded."""
    s, found, did, degraded = scheduler.recover(cfg, Layout(cfg.state_dir), _log.get("test"))
    s.queue.close()
    assert ({"jobs": {}, "records_replayed": 0, "torn_bytes": 0, "quarantined": [],
             "active": 0}, []) == (found, degraded)
    assert {"truncated_bytes": 0, "quarantined": 0, "reattached": 0, "stale": 0,
            "finalized": 0, "lost": 0, "pending": 0, "relaunched": 0,
            "lock_requests_resent": 0} == did


def test_submit_request_is_ingested_and_removed(sched: scheduler.Scheduler, cfg: Config) -> None:
    """A submit request's jobs are queued in order with their workspace (the output path
    is derived, not stored); the request file is removed and `submitted` counts them."""
    path = drop(sched, submit_request([job("a"), job("b", batch="n1")], request_id="s1"))
    scheduler.take_inbox(sched)
    assert not path.exists()
    assert ["a", "b"] == sched.queue.ids()
    b = sched.queue.get("b")
    assert b is not None
    assert ("queued", "n1", 0) == (b["state"], b["batch"], b["attempts"])
    assert str(cfg.workspace_dir / "b") == b["workspace"]
    assert "output_path" not in b
    assert 2 == sched.queue.stats()["submitted"]


def test_a_resumed_job_keeps_the_workspace_it_was_given(sched: scheduler.Scheduler,
                                                         cfg: Config) -> None:
    """A job that resumes another's session runs in that job's workspace (the door put it
    in the request); the others get <workspace_dir>/<id>."""
    resumed = job("r", resume_of="a", resume_session="s-1", workspace="/srv/ws/a")
    drop(sched, submit_request([job("a"), resumed], request_id="s1"))
    scheduler.take_inbox(sched)
    r = sched.queue.get("r")
    assert r is not None
    assert ("/srv/ws/a", "a", "s-1") == (r["workspace"], r["resume_of"], r["resume_session"])
    assert str(cfg.workspace_dir / "a") == (sched.queue.get("a") or {})["workspace"]


def test_jobs_survive_a_restart(cfg: Config, sched: scheduler.Scheduler) -> None:
    """What was ingested is found again by the next start's recovery."""
    drop(sched, submit_request([job("a"), job("b")], request_id="s1"))
    scheduler.take_inbox(sched)
    sched.queue.close()
    s2, found, _, _ = scheduler.recover(cfg, Layout(cfg.state_dir), _log.get("test"))
    try:
        assert (["a", "b"], {"queued": 2}) == (s2.queue.ids(), found["jobs"])
        assert found["records_replayed"] >= 2
    finally:
        s2.queue.close()


def test_crash_replay_of_a_submit_adds_no_duplicate(cfg: Config,
                                                    sched: scheduler.Scheduler) -> None:
    """Request handled but its file not removed (crash): after a restart it is handled
    again, and every job is still there exactly once."""
    body = submit_request([job("a"), job("b")], request_id="s1")
    path = drop(sched, body)
    scheduler.submit(sched, {**body, "schema": REQUEST.schema, "v": REQUEST.version})
    sched.queue.close()                          # the crash: the file is still there
    s2, _, _, _ = scheduler.recover(cfg, Layout(cfg.state_dir), _log.get("test"),
                                    launcher=no_launch)
    try:
        scheduler.take_inbox(s2)
        assert not path.exists()
        assert ["a", "b"] == s2.queue.ids()
        assert 2 == s2.queue.stats()["submitted"]
    finally:
        s2.queue.close()


def test_a_job_already_known_is_skipped_and_the_rest_queued(mem: scheduler.Scheduler) -> None:
    """A submit naming a known id queues only the new ones (idempotent by job id)."""
    drop(mem, submit_request([job("a")], request_id="s1"))
    scheduler.take_inbox(mem)
    mem.queue.update("a", state="running")
    drop(mem, submit_request([job("a"), job("c")], request_id="s2"))
    scheduler.take_inbox(mem)
    assert (["a", "c"], "running", 2) == (mem.queue.ids(), mem.queue.state("a"),
                                          mem.queue.stats()["submitted"])


@pytest.mark.parametrize(("jobs", "why"), [
    ([], "no jobs"),
    ("a", "jobs not a list"),
    ([job("a"), "b"], "a job not an object"),
    ([job("a"), job("../etc")], "bad id"),
    ([job("a"), job("a")], "id twice"),
    ([job("a", state="completed")], "forges the state"),
    ([job("a", agent=None)], "no agent"),
])
def test_a_bad_submit_is_quarantined_and_queues_nothing(mem: scheduler.Scheduler,
                                                        jobs: Any, why: str) -> None:
    """All or nothing: one bad job quarantines the whole request; no job is queued."""
    drop(mem, {"id": "s1", "kind": "submit", "created_at": iso_now(), "jobs": jobs})
    scheduler.take_inbox(mem)
    assert [] == mem.queue.ids(), why
    assert [True] == [n.startswith("s1.json" + CORRUPT_MARK) for n in inbox_names(mem)]


def test_unknown_request_kinds_are_quarantined(mem: scheduler.Scheduler) -> None:
    """A request of a kind the scheduler has no handler for is moved aside, not dropped."""
    drop(mem, {"id": "r1", "kind": "frobnicate", "created_at": iso_now()})
    scheduler.take_inbox(mem)
    assert [True] == [n.startswith("r1.json" + CORRUPT_MARK) for n in inbox_names(mem)]


def test_cancel_of_a_queued_job(mem: scheduler.Scheduler) -> None:
    """A queued job is cancelled at once: state, finished_at, reason and the counter."""
    drop(mem, submit_request([job("a"), job("b")], request_id="s1"))
    scheduler.take_inbox(mem)
    drop(mem, cancel_request("a"))
    scheduler.take_inbox(mem)
    a = mem.queue.get("a")
    assert a is not None
    assert ("cancelled", "cancelled by operator") == (a["state"], a["reason"])
    assert isinstance(a["finished_at"], str)
    assert ("queued", 1, []) == (mem.queue.state("b"), mem.queue.stats()["cancelled"],
                                 inbox_names(mem))


def test_cancel_replayed_changes_nothing(mem: scheduler.Scheduler) -> None:
    """A second cancel of the same job (a replay) leaves it and the counter as they were."""
    drop(mem, submit_request([job("a")], request_id="s1"))
    scheduler.take_inbox(mem)
    req = {**cancel_request("a"), "schema": REQUEST.schema, "v": REQUEST.version}
    scheduler.cancel(mem, req)
    first = mem.queue.get("a")
    scheduler.cancel(mem, req)
    assert (first, 1) == (mem.queue.get("a"), mem.queue.stats()["cancelled"])


def test_cancel_and_job_exited_of_a_running_job(cfg: Config, tmp_path: Path) -> None:
    """cancel of a running job: intent recorded, SIGTERM to its group (the request is
    removed); the adaptor's job_exited request after its result finalizes it cancelled."""
    started: list[subprocess.Popen[bytes]] = []

    got_term = tmp_path / "got-term"
    trapped = tmp_path / "trapped"

    def launcher(job_dir: Path, mode: str) -> Launched:
        """An adaptor stand-in that notes SIGTERM and runs on (until the test ends it)."""
        p = subprocess.Popen(["sh", "-c", f"trap 'touch {got_term}' TERM; touch {trapped}; "
                              "while :; do sleep 0.05; done"], start_new_session=True)
        started.append(p)
        return Launched(p.pid, start_time(p.pid), None)

    s = scheduler.Scheduler(cfg, Layout(cfg.state_dir), JobQueue.over(MemoryStorage()),
                            _log.get("test"), None)  # type: ignore[arg-type]
    s.jobs = Jobs.over(cfg, s.layout, s.queue, s.log, launcher=launcher)
    try:
        drop(s, submit_request([job("a")], request_id="s1"))
        scheduler.one_pass(s)
        assert "running" == s.queue.state("a")
        deadline = time.monotonic() + 30
        while not trapped.exists():       # SIGTERM before the trap would just kill it
            assert time.monotonic() < deadline, "the adaptor stand-in never started"
            time.sleep(0.01)
        drop(s, cancel_request("a"))
        scheduler.one_pass(s)
        a = s.queue.get("a")
        assert a is not None
        assert ("running", True, []) == (a["state"], a["cancel_requested"], inbox_names(s))
        deadline = time.monotonic() + 30
        while not got_term.exists():
            assert time.monotonic() < deadline, "the adaptor never got SIGTERM"
            time.sleep(0.01)
        started[0].kill()          # the adaptor writes its result and exits
        started[0].wait()
        write_record(RESULT, s.layout.job_result("a"), {
            "id": "a", "exit_code": None, "signal": 15, "finished_at": iso_now(),
            "reason": "terminated"})
        drop(s, {"id": "exited-a", "kind": "job_exited", "job": "a", "created_at": iso_now()})
        scheduler.one_pass(s)
        a = s.queue.get("a")
        assert a is not None
        assert ("cancelled", "cancelled by operator", None, []) \
            == (a["state"], a["reason"], a["pid"], inbox_names(s))
    finally:
        for p in started:
            p.kill()
            p.wait()


def test_job_exited_for_an_unknown_or_finished_job_is_removed(mem: scheduler.Scheduler) -> None:
    """job_exited naming no active job changes nothing and is not kept around."""
    drop(mem, {"id": "e1", "kind": "job_exited", "job": "ghost", "created_at": iso_now()})
    scheduler.take_inbox(mem)
    assert ([], []) == (mem.queue.ids(), inbox_names(mem))


def test_job_exited_with_a_bad_job_id_is_quarantined(mem: scheduler.Scheduler) -> None:
    """A malformed job_exited request is moved aside, not dropped."""
    drop(mem, {"id": "e1", "kind": "job_exited", "job": "../x", "created_at": iso_now()})
    scheduler.take_inbox(mem)
    assert [True] == [n.startswith("e1.json" + CORRUPT_MARK) for n in inbox_names(mem)]


class FakeWatcher:
    """Records wait() timeouts and lets them run out on the clock (5 s for None); requests
    a stop after `passes` waits."""

    def __init__(self, passes: int, clock: MockClock) -> None:
        self.timeouts: list[float | None] = []
        self.passes, self.clock = passes, clock

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        self.clock.advance(5.0 if timeout is None else timeout)
        if len(self.timeouts) >= self.passes:
            _runtime.request_stop()
        return False


def test_serve_sleeps_without_timeout_when_no_job_is_active(mem: scheduler.Scheduler) -> None:
    """Idle is asleep: with no starting/running job the loop waits for a hint only."""
    clock = MockClock()
    watcher = FakeWatcher(3, clock)
    scheduler.serve(mem, watcher, clock=clock)  # type: ignore[arg-type]
    assert [None, None, None] == watcher.timeouts


def test_serve_ticks_active_jobs_every_interval(mem: scheduler.Scheduler) -> None:
    """With an active job the loop wakes after the tick interval (min(1 s, 5 s / 2)) and
    ticks it; its result had arrived, so it is finalized and the loop sleeps again."""
    mem.queue.enqueue("a", {"agent": "shell", "prompt": "true", "created_at": iso_now()})
    mem.queue.update("a", state="running", pid=None, started_at=iso_now(time.time()))
    mem.jobs.active.add("a")
    mem.layout.job_dir("a").mkdir(parents=True)
    write_record(RESULT, mem.layout.job_result("a"), {
        "id": "a", "exit_code": 0, "signal": None, "finished_at": iso_now(), "reason": None})
    clock = MockClock()
    watcher = FakeWatcher(3, clock)
    scheduler.serve(mem, watcher, clock=clock)  # type: ignore[arg-type]
    assert ("completed", [1.0, None, None]) == (mem.queue.state("a"), watcher.timeouts)


def test_main_exits_3_when_the_queue_cannot_be_opened(cfg: Config) -> None:
    """The WAL folder being a file is a failed recovery: exit 3, no ready record."""
    layout = Layout(cfg.state_dir)
    layout.wal_dir.parent.mkdir(parents=True)
    layout.wal_dir.write_bytes(b"")
    assert _runtime.EXIT_RECOVERY_FAILED == scheduler.main(cfg)
    assert not layout.ready_file("scheduler").exists()


def test_recovery_reports_a_torn_tail(cfg: Config, sched: scheduler.Scheduler) -> None:
    """A record cut short by a crash is truncated at start; the ready data says how much,
    and every job acknowledged before it is there."""
    drop(sched, submit_request([job("a"), job("b")], request_id="s1"))
    scheduler.take_inbox(sched)
    sched.queue.close()
    wal = Layout(cfg.state_dir).wal_dir
    segment = max(wal.glob("*.wal"))
    with open(segment, "ab") as f:
        f.write(b"\xfeREC\x00\x01\x00\x00\x12\x34\x56\x78partial")
    s2, found, _, degraded = scheduler.recover(cfg, Layout(cfg.state_dir), _log.get("test"))
    try:
        # Segments are pre-zeroed in 64 KiB steps, so the torn tail runs from the last
        # valid record to the end of the file: at least the 19 bytes appended.
        assert ["a", "b"] == s2.queue.ids()
        assert found["torn_bytes"] >= 19
        assert [] == degraded
    finally:
        s2.queue.close()


def test_counters_never_drift_from_the_jobs_they_count(cfg: Config, tmp_path: Path) -> None:
    """A power cut at any instant of a submit and of a job's end: `submitted` equals the
    jobs in the queue and `completed` the completed ones, in every crash state (the
    counts were separate WAL records written after what they count, so a crash in
    between lost an increment for good)."""
    from tests.crashfs import CrashFS, explore

    result = {"id": "a", "exit_code": 0, "finished_at": iso_now(), "reason": None}

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        queue = JobQueue.open(os.path.join(root, "wal"), fs=fs)
        s = scheduler.Scheduler(cfg, Layout(cfg.state_dir), queue, _log.get("test"),
                                None)  # type: ignore[arg-type]
        s.jobs = Jobs.over(cfg, s.layout, s.queue, s.log, launcher=no_launch)
        scheduler.submit(s, {"id": "s1", "kind": "submit", "jobs": [job("a"), job("b")]})
        yield
        queue.update("a", state="running", pid=None, started_at=iso_now())
        s.jobs.active.add("a")
        yield
        from supervisor.scheduler import dispatch as _dispatch
        s.layout.job_dir("a").mkdir(parents=True, exist_ok=True)
        write_record(RESULT, s.layout.job_result("a"), result)
        _dispatch.tick_all(s.jobs)
        yield
        queue.close()

    def picture(root: str) -> tuple[int, int, int, int]:
        with JobQueue.open(os.path.join(root, "wal"), readonly=True) as q:
            stats, counts = q.stats(), q.counts()
            return (stats["submitted"], len(q), stats["completed"], counts["completed"])

    report = explore(tmp_path / "crash", setup=lambda root: None, workload=workload,
                     recover=picture, expected=[(0, 0, 0, 0), (2, 2, 0, 0), (2, 2, 0, 0),
                                                (2, 2, 1, 1)])
    assert {0, 1, 3} <= set(report.recovered_to)


def test_a_cancel_filed_before_its_submit_is_not_lost(mem: scheduler.Scheduler) -> None:
    """A cancel whose file time is older than its job's submit (equal mtimes, a clock step
    back) is taken after the submit in the same pass; a cancel for a job that has not
    arrived yet stays in the inbox and takes effect when the job comes (it used to be
    dropped as "no such job")."""
    cancel_a = drop(mem, cancel_request("a"))
    submit = drop(mem, submit_request([job("a")], request_id="s1"))
    os.utime(cancel_a, ns=(1, 1))
    os.utime(submit, ns=(2, 2))
    scheduler.take_inbox(mem)
    assert ("cancelled", []) == (mem.queue.state("a"), inbox_names(mem))
    early = drop(mem, cancel_request("b"))
    scheduler.take_inbox(mem)
    assert (None, [early.name]) == (mem.queue.state("b"), inbox_names(mem))
    drop(mem, submit_request([job("b")], request_id="s2"))
    scheduler.take_inbox(mem)
    assert ("cancelled", []) == (mem.queue.state("b"), inbox_names(mem))


def test_a_cancel_for_a_job_that_never_comes_is_quarantined_after_an_hour(
        mem: scheduler.Scheduler) -> None:
    """A cancel of a job no submit ever brings is kept NOT_YET_KEEP, then moved aside
    (kept as evidence, logged), never dropped silently."""
    stale = cancel_request("ghost", now=time.time() - 2 * 3600)
    drop(mem, stale)
    scheduler.take_inbox(mem)
    names = inbox_names(mem)
    assert 1 == len(names) and CORRUPT_MARK in names[0], names


def test_serve_wakes_for_a_delayed_job_at_its_time(cfg: Config) -> None:
    """A job delayed 0.4 s (less than a tick: no tick would start it): the loop sleeps
    exactly until then (a timer, not a poll), and the pass at that moment starts it."""
    clock = MockClock()
    launched: list[str] = []

    def launcher(job_dir: Path, mode: str) -> Launched:
        launched.append(job_dir.name)
        return Launched(None, None, None)

    s = scheduler.Scheduler(cfg, Layout(cfg.state_dir), JobQueue.over(MemoryStorage()),
                            _log.get("test"), None)  # type: ignore[arg-type]
    s.jobs = Jobs.over(cfg, s.layout, s.queue, s.log, launcher=launcher, clock=clock)
    drop(s, submit_request([job("d", not_before=iso_now(clock.time() + 0.4))],
                           request_id="s1"))
    scheduler.take_inbox(s)
    watcher = FakeWatcher(2, clock)
    scheduler.serve(s, watcher, clock=clock)  # type: ignore[arg-type]
    assert (0.4, ["d"]) == (round(watcher.timeouts[0] or 0, 3), launched)


class FullDisk(OsFS):
    """The real file system, except that the next `failures` data writes fail ENOSPC."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.refused = 0

    def _maybe_full(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")

    def write(self, fd: int, data: bytes) -> None:
        self._maybe_full()
        super().write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self._maybe_full()
        super().pwrite(fd, data, offset)


class HintingWatcher(FakeWatcher):
    """Every wait returns a hint (the inbox changed); stops after `passes` waits."""

    def wait(self, timeout: float | None = None) -> bool:
        super().wait(timeout)
        return True


def test_a_full_disk_never_exits_the_scheduler_and_loses_no_submission(cfg: Config) -> None:
    """A submit whose WAL write fails ENOSPC (the disk full for a while, even while the
    queue is reopened): the scheduler does not exit; it reopens its queue from disk after
    1 s, 2 s, 4 s...; the request stays in the inbox until its job is durably queued,
    exactly once."""
    disk = FullDisk(failures=0)
    s, _, _, _ = scheduler.recover(cfg, Layout(cfg.state_dir), _log.get("test"),
                                   launcher=no_launch, fs=disk)
    drop(s, submit_request([job("a", not_before=iso_now(time.time() + 3600))],
                           request_id="r1"))       # stays queued: nothing to launch
    disk.failures = 4
    clock = MockClock()
    t0 = clock.monotonic()
    watcher = HintingWatcher(4, clock)
    s = scheduler.serve(s, watcher, clock=clock)  # type: ignore[arg-type]
    try:
        assert (["a"], [], 4) == (s.queue.ids("queued"), inbox_names(s), disk.refused)
        assert clock.monotonic() - t0 >= 1.0 + 2.0 + 4.0
    finally:
        s.queue.close()
    with JobQueue.open(cfg.state_dir / "scheduler" / "wal", readonly=True) as q:
        assert (["a"], 1) == (q.ids(), q.stats()["submitted"])


def test_waiting_submits_go_into_one_wal_group_and_a_bad_one_fails_alone(
        mem: scheduler.Scheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every submit request waiting is enqueued with ONE enqueue_many (one WAL group, one
    fsync), in the requests' order; a bad request among them is quarantined alone, a job
    already known (a replay) is skipped, and each request is logged and removed."""
    calls: list[int] = []
    real = mem.queue.enqueue_many

    def counting(entries: Any, **kw: Any) -> list[bool]:
        entries = list(entries)
        calls.append(len(entries))
        return real(entries, **kw)

    monkeypatch.setattr(mem.queue, "enqueue_many", counting)
    for n, body in enumerate((submit_request([job("a")], request_id="s1"),
                              {"id": "s2", "kind": "submit", "created_at": iso_now(),
                               "jobs": [job("x"), job("x")]},
                              submit_request([job("b"), job("a"), job("c")],
                                             request_id="s3"))):
        os.utime(drop(mem, body), ns=((n + 1) * 10**9, (n + 1) * 10**9))
    assert 2 == scheduler.take_inbox(mem)
    assert ([4], ["a", "b", "c"], 3) == (calls, mem.queue.ids(),
                                         mem.queue.stats()["submitted"])
    assert [True] == [n.startswith("s2.json" + CORRUPT_MARK) for n in inbox_names(mem)]


def test_a_power_cut_during_many_submits_keeps_all_or_none(cfg: Config,
                                                           tmp_path: Path) -> None:
    """submit_many of two requests: a power cut at any instant leaves both requests' jobs
    and their count in the queue, or none of them."""
    from tests.crashfs import CrashFS, explore

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        queue = JobQueue.open(os.path.join(root, "wal"), fs=fs)
        s = scheduler.Scheduler(cfg, Layout(cfg.state_dir), queue, _log.get("test"),
                                None)  # type: ignore[arg-type]
        s.jobs = Jobs.over(cfg, s.layout, s.queue, s.log, launcher=no_launch)
        assert [None, None] == scheduler.submit_many(s, [
            {"id": "s1", "kind": "submit", "jobs": [job("a"), job("b")]},
            {"id": "s2", "kind": "submit", "jobs": [job("c")]}])
        yield
        queue.close()

    def picture(root: str) -> tuple[int, list[str]]:
        with JobQueue.open(os.path.join(root, "wal"), readonly=True) as q:
            return q.stats()["submitted"], q.ids()

    report = explore(tmp_path / "crash", setup=lambda root: None, workload=workload,
                     recover=picture, expected=[(0, []), (3, ["a", "b", "c"])])
    assert {0, 1} == set(report.recovered_to)


def _log_request(log: SubmissionLog, *jobs: dict[str, Any], at: str | None = None) -> int:
    """Append one submit request to the api's log, as the api does."""
    return log.append(submit_request(list(jobs), now=parse_iso(at) if at else None))


def test_the_api_log_is_enqueued_with_its_bookmark_and_never_twice(
        cfg: Config, sched: scheduler.Scheduler) -> None:
    """Records of the api's submission log are enqueued in one WAL group with the queue's
    SUBLOG_COUNTER advanced to the last seq; a pass finds nothing new after that, and a
    restarted scheduler (a fresh reader of the same log) does not bring back a job that
    was forgotten meanwhile."""
    log = SubmissionLog(sched.layout.sublog_dir, consumed=0)
    _log_request(log, job("a"), job("b"))
    _log_request(log, job("c"))
    assert 2 == scheduler.take_inbox(sched)
    assert (["a", "b", "c"], 2, 3) == (sched.queue.ids(), sched.queue.counter(SUBLOG_COUNTER),
                                       sched.queue.stats()["submitted"])
    assert SUBLOG_COUNTER not in sched.queue.stats()
    assert 0 == scheduler.take_inbox(sched)
    sched.queue.update("a", state="completed")
    sched.queue.forget(["a"])
    sched.queue.close()
    s2, _, _, _ = scheduler.recover(cfg, Layout(cfg.state_dir), _log.get("test"),
                                    launcher=no_launch)
    try:
        _log_request(log, job("d"))
        assert 1 == scheduler.take_inbox(s2)
        assert (["b", "c", "d"], 3) == (s2.queue.ids(), s2.queue.counter(SUBLOG_COUNTER))
    finally:
        s2.queue.close()
        log.close()


def test_jobs_of_both_doors_are_one_group_so_either_may_wait_for_the_other(
        sched: scheduler.Scheduler) -> None:
    """A batchctl request `--after` a job the api logged, and a logged job `--after` a
    job of that request: both are enqueued in the same pass, in request order, and
    neither is doomed as naming an unknown dependency."""
    log = SubmissionLog(sched.layout.sublog_dir, consumed=0)
    _log_request(log, job("api1"), at="2026-12-03T23:00:00Z")
    drop(sched, submit_request([job("ctl1", after=["api1"])], request_id="s1",
                               now=parse_iso("2026-12-03T23:00:01Z")))
    _log_request(log, job("api2", after=["ctl1"]), at="2026-12-03T23:00:02Z")
    scheduler.take_inbox(sched)
    log.close()
    assert ["api1", "ctl1", "api2"] == sched.queue.ids()
    assert [] == sched.jobs.doomed
    assert {"queued"} == {sched.queue.state(i) for i in ("api1", "ctl1", "api2")}


def test_a_cancel_in_the_pass_that_takes_the_api_log_finds_its_job(
        sched: scheduler.Scheduler) -> None:
    """A job the api logged and its cancel (batchctl saw it pending) in the same pass:
    the log is enqueued before the cancels, so the cancel does not wait for a later pass."""
    log = SubmissionLog(sched.layout.sublog_dir, consumed=0)
    _log_request(log, job("c1"))
    drop(sched, cancel_request("c1"))
    scheduler.take_inbox(sched)
    log.close()
    assert ("cancelled", []) == (sched.queue.state("c1"), inbox_names(sched))


def test_a_log_record_that_fails_the_check_is_kept_aside_and_passed_over(
        sched: scheduler.Scheduler) -> None:
    """A record of the api's log the check refuses (only a bug makes one) does not stop
    the records after it: the bookmark moves past it, and its content is kept as the
    scheduler's `sublog-<seq>.json.corrupted.<ts>`, as a bad request file is quarantined."""
    log = SubmissionLog(sched.layout.sublog_dir, consumed=0)
    _log_request(log, job("bad id"))
    _log_request(log, job("good"))
    scheduler.take_inbox(sched)
    log.close()
    assert (["good"], 2) == (sched.queue.ids(), sched.queue.counter(SUBLOG_COUNTER))
    [kept] = [p for p in sched.layout.worker_dir("scheduler").iterdir()
              if p.name.startswith("sublog-1.json.corrupted.")]
    assert ["bad id"] == [j["id"] for j in json.loads(kept.read_text())["jobs"]]


def test_a_next_in_line_hint_records_a_waiting_job_only(mem: scheduler.Scheduler) -> None:
    """lock_next: a job the WAL says is waiting is wanted for a workspace made ahead; a
    job that is no longer waiting, or unknown, is passed over; the hint goes like a
    grant hint."""
    mem.queue.enqueue("w", {**job("w", repos=["app"]), "state": "waiting"})
    mem.queue.enqueue("r", {**job("r", repos=["app"]), "state": "running"})
    for name in ("w", "r", "ghost"):
        drop(mem, next_hint(name, created_at=iso_now()))
    scheduler.take_inbox(mem)
    assert (["w"], []) == (mem.jobs.ahead.jobs(), inbox_names(mem))
    mem.jobs.close_ahead()


@pytest.mark.parametrize("name", ["granted-w.json", "next-w.json"])
def test_a_torn_lock_hint_is_dropped_not_quarantined(mem: scheduler.Scheduler,
                                                     name: str) -> None:
    """The locks worker's hints are written without fsyncs: one a power cut tore is
    removed, with nothing moved aside as corrupt."""
    inbox = mem.layout.inbox("scheduler")
    inbox.mkdir(parents=True)
    (inbox / name).write_bytes(b'{"id": "')
    scheduler.take_inbox(mem)
    assert [] == inbox_names(mem)
