"""supervisor.state.flock: holding a lock for a block, and probing one without taking it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.flock import exclusive, probe_lock


def hold_lock(path: Path, how: str) -> subprocess.Popen[str]:
    """A child process that takes an exclusive lock on `path` (flock or lockf) and keeps it."""
    call = {"flock": "fcntl.flock(fd, fcntl.LOCK_EX)", "lockf": "fcntl.lockf(fd, fcntl.LOCK_EX)"}
    code = (f"import fcntl, os, sys, time\nfd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
            f"{call[how]}\nprint('locked', flush=True)\ntime.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert "locked\n" == p.stdout.readline()
    return p


def stop(p: subprocess.Popen[Any]) -> None:
    p.kill()
    p.wait()


@pytest.mark.parametrize("how", ["flock", "lockf"])
def test_probe_lock_sees_a_held_lock_and_its_pid(tmp_path: Path, how: str) -> None:
    """flock (via /proc/locks) and POSIX locks (via F_GETLK) are both seen, with the holder."""
    path = tmp_path / "adaptor.lock"
    p = hold_lock(path, how)
    try:
        assert (True, p.pid) == probe_lock(path)
    finally:
        stop(p)
    assert (False, None) == probe_lock(path)


def test_probe_lock_does_not_take_or_create_the_lock(tmp_path: Path) -> None:
    """Probing a missing file creates nothing; probing a free lock leaves it free to take."""
    path = tmp_path / "adaptor.lock"
    assert (False, None) == probe_lock(path)
    assert not path.exists()
    path.write_bytes(b"")
    assert (False, None) == probe_lock(path)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # would raise if the probe held it
    finally:
        os.close(fd)


def test_probe_lock_matches_device_and_inode_only(tmp_path: Path) -> None:
    """A lock on another file is not this file's lock."""
    other, mine = tmp_path / "other.lock", tmp_path / "mine.lock"
    mine.write_bytes(b"")
    p = hold_lock(other, "flock")
    try:
        assert (False, None) == probe_lock(mine)
    finally:
        stop(p)


def test_exclusive_holds_an_flock_for_the_block_and_creates_the_file_empty(
        tmp_path: Path) -> None:
    """Inside the block the lock is held (probe sees us); after it, free; the file is empty."""
    path = tmp_path / "submit.lock"
    with exclusive(path):
        assert (True, os.getpid()) == probe_lock(path)
    assert ((False, None), 0) == (probe_lock(path), path.stat().st_size)


def test_a_folder_in_place_of_a_lock_file_is_moved_aside(tmp_path: Path) -> None:
    """Found by the chaos suite: a folder where scheduler/submit.lock belongs refused every
    submission ("Is a directory"). Nobody can hold a lock on it (every taker opens with
    O_CREAT), so the taker moves it aside and locks a fresh empty file."""
    path = tmp_path / "submit.lock"
    path.mkdir()
    with exclusive(path):
        assert (True, os.getpid()) == probe_lock(path)
    assert (0, ["submit.lock"]) == (path.stat().st_size, sorted(
        n for n in os.listdir(tmp_path) if ".corrupted." not in n))
    assert 1 == len([n for n in os.listdir(tmp_path) if n.startswith("submit.lock.corrupted.")])
