"""A real small file system filled up under a running batchd: submissions refused with
exit 1, nothing acknowledged lost, no worker in a crash loop, work resumes by itself."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import until
from tests.proc.harness import Env


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs (skipped where mounting is not allowed)."""
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(where)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * (1 << 20)
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    os.sync()


def test_a_full_file_system_refuses_submissions_and_resumes_by_itself(small_fs: Path,
                                                                       tmp_path: Path) -> None:
    """Fill the state dir's file system while batchd runs and a delayed job waits:
    `submit` exits 1 naming the free space and the floor (nothing written), `status`
    says `disk` is degraded, the queued job stays queued with reason `disk: ...`, no
    worker restarts; free the space: the job runs, and submit works again."""
    env = Env(tmp_path, extra="disk: {min_free: 4MiB}\n")
    env.state = small_fs / "state"
    env.config.write_text(env.config.read_text().replace(str(tmp_path / "state"),
                                                         str(env.state)))
    env.layout = type(env.layout)(env.state)
    try:
        env.start()
        env.submit("early", "echo early")
        env.wait_state("early", "completed")
        env.submit("later", "echo later", "--delay", "3s")
        _fill(small_fs / "filler")
        refused = env.ctl("submit", "--agent", "shell", "--prompt", "true", check=False)
        assert (1, True, True) == (
            refused.returncode, refused.stderr.startswith("batchctl: submission refused: disk: "),
            "below min_free 4MiB" in refused.stderr)
        status = json.loads(env.ctl("status", "--json").stdout)
        assert [True] == [d.startswith("disk: ") for d in status["degraded"]]
        time.sleep(4)                                      # past later's not_before
        rec = env.record("later")
        assert ("queued", True) == (rec["state"], str(rec["reason"]).startswith("disk: "))
        workers = json.loads(env.ctl("workers", "--json").stdout)
        assert {(w["name"], w["state"], w["restarts"]) for w in workers} == {
            (n, "RUNNING", 0) for n in ("scheduler", "locks", "reaper", "callbacks")}
        (small_fs / "filler").unlink()
        env.wait_state("later", "completed", deadline=30)
        env.submit("after", "echo after")
        env.wait_state("after", "completed")
        assert ("later\n", 3) == (env.output("later"), env.stats()["completed"])
    finally:
        env.close()


def test_writes_that_fail_for_lack_of_space_lose_no_acknowledged_job(small_fs: Path,
                                                                       tmp_path: Path) -> None:
    """With no disk floor (min_free 0) the writes themselves fail ENOSPC while a job runs
    (its output, heartbeats, records): a submission batchctl could not write is refused
    (exit 1, nothing half-written); the running job goes on and completes, its output
    taken up again once space returns; a new job runs; no worker is in a crash loop."""
    env = Env(tmp_path, extra="disk: {min_free: 0}\n")
    env.state = small_fs / "state"
    env.config.write_text(env.config.read_text().replace(str(tmp_path / "state"),
                                                         str(env.state)))
    env.layout = type(env.layout)(env.state)
    try:
        env.start()
        env.submit("first", "echo first")
        env.wait_state("first", "completed")
        env.submit("busy", 'for i in $(seq 1 60); do echo "line $i"; sleep 0.1; done')
        env.wait_state("busy", "running")
        until("the job's first line", lambda: env.output("busy").startswith("line 1\n"))
        _fill(small_fs / "filler")
        time.sleep(2)                          # output, heartbeats, records all fail now
        refused = env.ctl("submit", "--agent", "shell", "--prompt", "true", check=False)
        assert (1, "No space left on device" in refused.stderr) == (refused.returncode, True)
        inbox = env.layout.inbox("scheduler")
        assert [] == [n for n in os.listdir(inbox) if not n.startswith(".")]
        (small_fs / "filler").unlink()
        env.submit("second", "echo second")
        env.wait_state("second", "completed", deadline=30)
        env.wait_state("busy", "completed", "failed", "lost", deadline=30)
        workers = json.loads(env.ctl("workers", "--json").stdout)
        assert all(w["state"] == "RUNNING" for w in workers), workers
        assert ("completed", True) == (env.state_of("busy"),
                                       env.output("busy").endswith("line 60\n"))
        until("no temp file left", lambda: not [n for n in os.listdir(inbox)
                                                if n.startswith(".tmp.")])
    finally:
        env.close()
