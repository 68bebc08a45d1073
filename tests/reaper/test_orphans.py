"""reaper.orphans: real processes of finished or unknown jobs, SIGTERM then SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.reaper.orphans import Orphans
from supervisor.state.proc import Tagged, alive, start_time, tagged
from supervisor.state.retention import Known

STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
MEEK = "import time\ntime.sleep(60)\n"


class Spawner:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, jobs_dir: Path, job_id: str, code: str = MEEK) -> subprocess.Popen[bytes]:
        env = {**os.environ, "BATCHD_JOB_ID": job_id,
               "BATCHD_JOB_DIR": str(jobs_dir / job_id)}
        p = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
        self.procs.append(p)
        deadline = time.monotonic() + 10
        while not any(t.pid == p.pid for t in tagged(str(jobs_dir))):   # exec'd, env set
            assert time.monotonic() < deadline
            time.sleep(0.01)
        if code is STUBBORN:
            time.sleep(0.3)                          # the handler is installed
        return p


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    s = Spawner()
    yield s
    for p in s.procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _signals() -> tuple[list[tuple[str, str, str]], object]:
    seen: list[tuple[str, str, str]] = []

    def on_signal(t: Tagged, sig: str, why: str) -> None:
        seen.append((t.job_id, sig, why))
    return seen, on_signal


def test_tagged_finds_this_state_dirs_job_processes_only(tmp_path: Path,
                                                         spawn: Spawner) -> None:
    """tagged(): a process of this jobs dir, with its pid, start time and uid; another
    state dir's job (same id) is not listed."""
    mine = spawn(tmp_path / "a" / "jobs", "j1")
    spawn(tmp_path / "b" / "jobs", "j1")
    assert [Tagged(mine.pid, start_time(mine.pid) or -1, "j1", os.getuid())] == \
        tagged(str(tmp_path / "a" / "jobs"))


def test_an_orphan_gets_sigterm_and_one_that_ignores_it_sigkill_after_the_grace(
        tmp_path: Path, spawn: Spawner) -> None:
    """Finished job: SIGTERM at once (the meek one dies of it); the stubborn one is still
    there until kill_grace has passed, then SIGKILL; each signal is reported once."""
    jobs = tmp_path / "jobs"
    meek, stubborn = spawn(jobs, "done"), spawn(jobs, "gone", STUBBORN)
    known = Known.of([{"id": "done", "state": "completed"}])
    states = {"done": "completed"}
    o = Orphans(grace=0.0, kill_grace=0.5, jobs_dir=str(jobs))
    seen, on_signal = _signals()
    now = time.time()
    assert 2 == o.reap(known, now, states.get, on_signal)      # type: ignore[arg-type]
    assert -15 == meek.wait(10)
    time.sleep(0.2)
    assert 0 == o.reap(known, now + 0.2, states.get, on_signal)  # type: ignore[arg-type]
    assert None is stubborn.poll()
    o.reap(known, now + 0.6, states.get, on_signal)               # type: ignore[arg-type]
    assert -9 == stubborn.wait(10)
    assert sorted([("done", "SIGTERM", "job completed"), ("gone", "SIGTERM", "job unknown"),
                   ("gone", "SIGKILL", "job unknown")]) == sorted(seen)
    o.reap(known, now + 1, states.get, on_signal)                 # type: ignore[arg-type]
    assert {} == o.due


def test_live_jobs_young_processes_and_a_job_that_came_back_are_left_alone(
        tmp_path: Path, spawn: Spawner) -> None:
    """A running job's process, a process younger than the grace, and one whose job
    reads as live when checked again right before the signal: never signalled."""
    jobs = tmp_path / "jobs"
    procs = [spawn(jobs, "run"), spawn(jobs, "back")]
    known = Known.of([{"id": "run", "state": "running"}, {"id": "back", "state": "failed"}])
    seen, on_signal = _signals()
    fresh = {"run": "running", "back": "queued"}                 # id used again meanwhile
    assert 0 == Orphans(0.0, 0.1, str(jobs)).reap(known, time.time(), fresh.get,
                                                   on_signal)  # type: ignore[arg-type]
    assert 0 == Orphans(3600.0, 0.1, str(jobs)).reap(Known.of([]), time.time(), {}.get,
                                                      on_signal)  # type: ignore[arg-type]
    assert ([], [True, True]) == (seen, [alive(p.pid, None) for p in procs])
