"""Process tests of the workers: real subprocesses, real signals, real SIGKILL mid-ingest."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.atomic import write_json
from supervisor.state.clock import iso_now
from supervisor.state.jobs import submit_request
from supervisor.state.layout import READY, REQUEST, Layout, read_record, write_record
from supervisor.state.proc import alive
from tests.helpers import until

DEADLINE = 60.0
WORKERS = ("scheduler", "locks", "reaper", "callbacks")


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "batchd.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n"
                    "log: {level: info, format: json}\n"
                    "reaper: {interval: 1s, grace: 10m}\n")
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; any still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def start_worker(name: str, cfg: Path, procs: list[subprocess.Popen[bytes]],
                 log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log or os.devnull, "ab")  # noqa: SIM115 - the child owns it for its life
    p = subprocess.Popen([sys.executable, "-m", f"supervisor.{name}", "-c", str(cfg)],
                         stdout=out, stderr=out)
    out.close()
    procs.append(p)
    return p


def wait_ready(layout: Layout, name: str, pid: int, proc: subprocess.Popen[Any] | None = None
               ) -> dict[str, Any]:
    """The READY record of process `pid`, once it is there (fails if the process died)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        rec = read_record(READY, layout.ready_file(name), owner=False)
        if isinstance(rec, dict) and rec["pid"] == pid:
            return rec
        assert proc is None or proc.poll() is None, f"{name} exited {proc.returncode}"
        time.sleep(0.01)
    raise AssertionError(f"{name} (pid {pid}) never reported ready")


@pytest.mark.parametrize("name", WORKERS)
def test_worker_standalone_reports_ready_and_stops_on_sigterm(
        name: str, cfg_file: Path, tmp_path: Path,
        procs: list[subprocess.Popen[bytes]]) -> None:
    """`python -m supervisor.<name> -c CFG` recovers, writes its ready record (this pid,
    its start time) and exits 0 on SIGTERM."""
    layout = Layout(tmp_path / "state")
    p = start_worker(name, cfg_file, procs)
    rec = wait_ready(layout, name, p.pid, p)
    assert (name, True) == (rec["worker"], alive(rec["pid"], rec["start"]))
    assert [] == rec["degraded"]
    p.send_signal(signal.SIGTERM)
    assert 0 == p.wait(DEADLINE)


def test_standalone_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    """A configuration error is reported in one message, exit 2, nothing created."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"state_dir: {tmp_path / 'state'}\nreaper: {{grace: soon}}\n")
    run = subprocess.run([sys.executable, "-m", "supervisor.reaper", "-c", str(bad)],
                         capture_output=True, timeout=DEADLINE, check=False)
    assert 2 == run.returncode
    assert b"reaper.grace" in run.stderr and b"Traceback" not in run.stderr
    assert not (tmp_path / "state").exists()


def test_scheduler_that_cannot_open_its_queue_exits_3(
        cfg_file: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """The wal folder being a file is a failed recovery: exit 3 and no ready record."""
    layout = Layout(tmp_path / "state")
    layout.wal_dir.parent.mkdir(parents=True)
    layout.wal_dir.write_bytes(b"not a folder")
    p = start_worker("scheduler", cfg_file, procs)
    assert 3 == p.wait(DEADLINE)
    assert not layout.ready_file("scheduler").exists()


def test_a_corrupt_locks_state_degrades_only_the_locks(
        cfg_file: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """Corrupt locks/state.json: locks starts degraded; the reaper beside it is unaffected."""
    layout = Layout(tmp_path / "state")
    layout.worker_dir("locks").mkdir(parents=True)
    layout.worker_state("locks").write_bytes(b"\x00\x00garbage")
    locks_p = start_worker("locks", cfg_file, procs)
    reaper_p = start_worker("reaper", cfg_file, procs)
    locks_rec = wait_ready(layout, "locks", locks_p.pid, locks_p)
    reaper_rec = wait_ready(layout, "reaper", reaper_p.pid, reaper_p)
    assert 1 == len(locks_rec["degraded"]) and "locks state was corrupt" in locks_rec["degraded"][0]
    assert [] == reaper_rec["degraded"]
    for p in (locks_p, reaper_p):
        p.send_signal(signal.SIGTERM)
        assert 0 == p.wait(DEADLINE)


def test_scheduler_ingests_and_cancels_through_its_inbox(
        cfg_file: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """A running scheduler takes a submit request, then a cancel of one of its queued jobs
    (one job slot: j0 runs, j1 and j2 wait; j1 is cancelled before it ever starts)."""
    from supervisor.state.queue import JobQueue

    layout = Layout(tmp_path / "state")
    cfg_file.write_text(cfg_file.read_text() + "scheduler: {max_concurrent_jobs: 1}\n")
    p = start_worker("scheduler", cfg_file, procs)
    wait_ready(layout, "scheduler", p.pid, p)
    inbox = layout.inbox("scheduler")
    jobs = [{"id": f"j{i}", "agent": "shell", "prompt": "sleep 30", "repos": [],
             "callback": None, "timeout": None, "batch": None, "exclusive": False,
             "created_at": iso_now()} for i in range(3)]
    write_record(REQUEST, inbox / "s1.json", submit_request(jobs, request_id="s1"))
    until("submit never taken", lambda: not (inbox / "s1.json").exists())
    write_record(REQUEST, inbox / "c1.json",
                 {"id": "c1", "kind": "cancel", "job": "j1", "created_at": iso_now()})
    until("cancel never taken", lambda: not (inbox / "c1.json").exists())
    p.send_signal(signal.SIGTERM)
    assert 0 == p.wait(DEADLINE)
    q = JobQueue.open(layout.wal_dir, readonly=True)
    try:
        assert ["j0", "j1", "j2"] == q.ids()
        assert ["running", "cancelled", "queued"] == [q.state(f"j{i}") for i in range(3)]
        j0 = q.get("j0")
    finally:
        q.close()
    assert j0 is not None
    os.killpg(j0["pid"], signal.SIGKILL)   # the job outlives its scheduler: end it here


# -- the fork path: worker_entry in a child of a parent that is not batchd -----------------

PARENT = r"""
import os, sys
from pathlib import Path
from supervisor.config import Config
from supervisor.runtime import worker_entry
from tests.helpers import until

state, name, leak_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
leak = os.open(leak_path, os.O_RDONLY)
pid = os.fork()
if pid == 0:
    worker_entry(name, Config(state_dir=state, workspace_dir=state / "ws"))
print(pid, leak, flush=True)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), flush=True)
"""


def start_parent(tmp_path: Path, name: str) -> tuple[subprocess.Popen[str], int, int]:
    leak = tmp_path / "parent-only"
    leak.write_text("the parent's file")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "state"), name,
                               str(leak)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child, fd = (int(x) for x in parent.stdout.readline().split())
    return parent, child, fd


def test_worker_entry_runs_the_worker_in_the_forked_child(tmp_path: Path) -> None:
    """A forked child in worker_entry reports ready as itself, holds none of the parent's
    descriptors, and exits 0 on SIGTERM."""
    parent, child, fd = start_parent(tmp_path, "locks")
    try:
        layout = Layout(tmp_path / "state")
        wait_ready(layout, "locks", child)
        held = [os.readlink(f"/proc/{child}/fd/{n}") for n in os.listdir(f"/proc/{child}/fd")]
        assert str(tmp_path / "parent-only") == os.readlink(f"/proc/{parent.pid}/fd/{fd}")
        assert str(tmp_path / "parent-only") not in held
        os.kill(child, signal.SIGTERM)
        assert parent.stdout is not None
        assert "0" == parent.stdout.readline().strip()
    finally:
        parent.kill()
        parent.wait()


def test_worker_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL of the parent kills the worker too (PR_SET_PDEATHSIG)."""
    parent, child, _ = start_parent(tmp_path, "callbacks")
    rec = wait_ready(Layout(tmp_path / "state"), "callbacks", child)
    parent.kill()
    parent.wait()
    until("the worker outlived its parent", lambda: not alive(child, rec["start"]))


def test_sigint_and_sighup_do_not_stop_a_forked_worker(tmp_path: Path) -> None:
    """^C on the terminal and batchd's reload signal are the parent's: the worker ignores them."""
    parent, child, _ = start_parent(tmp_path, "reaper")
    try:
        rec = wait_ready(Layout(tmp_path / "state"), "reaper", child)
        os.kill(child, signal.SIGINT)
        os.kill(child, signal.SIGHUP)
        os.kill(child, signal.SIGTERM)
        assert parent.stdout is not None
        assert "0" == parent.stdout.readline().strip()
        assert not alive(child, rec["start"])
    finally:
        parent.kill()
        parent.wait()


# -- SIGKILL in the middle of a big submit ---------------------------------------------------

def _kill_mid_ingest(tmp_path: Path, cfg_file: Path, procs: list[subprocess.Popen[bytes]],
                     n_jobs: int, kills: int) -> None:
    from supervisor.state.queue import JobQueue

    layout = Layout(tmp_path / "state")
    ids = [f"job-{i:05d}" for i in range(n_jobs)]
    jobs = [{"id": i, "agent": "shell", "prompt": f"echo {i}", "repos": [], "callback": None,
             "timeout": None, "batch": "big", "exclusive": False, "created_at": iso_now()}
            for i in ids]
    request = layout.inbox("scheduler") / "big.json"
    request.parent.mkdir(parents=True)
    body = submit_request(jobs, request_id="big")
    write_json(request, {**body, "schema": REQUEST.schema, "v": REQUEST.version})
    rng = random.Random(1234)
    log = tmp_path / "scheduler.log"
    for _ in range(kills):
        p = start_worker("scheduler", cfg_file, procs, log)
        wait_ready(layout, "scheduler", p.pid, p)
        time.sleep(rng.uniform(0.0, 0.1))
        p.kill()
        p.wait()
        q = JobQueue.open(layout.wal_dir, readonly=True)
        try:
            present = q.ids()
        finally:
            q.close()
        assert len(present) == len(set(present))
        if not request.exists():   # removed only once its effect was durable
            assert ids == present
    p = start_worker("scheduler", cfg_file, procs, log)
    wait_ready(layout, "scheduler", p.pid, p)
    until("the submit was never finished", lambda: not request.exists())
    p.send_signal(signal.SIGTERM)
    assert 0 == p.wait(DEADLINE)
    q = JobQueue.open(layout.wal_dir, readonly=True)
    try:
        assert ids == q.ids()
        # The scheduler dispatches while it ingests: each job is there once, in some state.
        assert n_jobs == sum(q.counts().values())
    finally:
        q.close()


def test_scheduler_sigkilled_mid_ingest_keeps_every_job_once(
        tmp_path: Path, cfg_file: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL during a 5,000-job submit, restart, again: every job exactly once, in order."""
    _kill_mid_ingest(tmp_path, cfg_file, procs, 5000, kills=3)


@pytest.mark.chaos
def test_scheduler_sigkilled_mid_ingest_many_times(
        tmp_path: Path, cfg_file: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """The long version: 25 SIGKILLs at random points of a 5,000-job submit."""
    _kill_mid_ingest(tmp_path, cfg_file, procs, 5000, kills=25)
