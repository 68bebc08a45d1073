"""SIGKILL a real writer of the job queue at random instants: after every kill, every
acknowledged job is there, in submission order, none duplicated."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.state.queue import JobQueue

WRITER = Path(__file__).with_name("wal_writer.py")
ROOT = Path(__file__).resolve().parents[2]


def kill_cycles(folder: Path, kills: int, seed: int) -> tuple[int, int]:
    """Run `kills` start/kill/verify cycles on one growing log; return (acked, stored)."""
    rng = random.Random(seed)
    acked: list[str] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    stored: list[str] = []
    for cycle in range(kills):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(folder), "300"],
                                stdout=subprocess.PIPE, env=env, cwd=ROOT)
        head = b""
        if rng.random() < 0.75:       # into the writes; else anywhere, recovery included
            assert proc.stdout is not None
            head = proc.stdout.readline()       # "ready": a loaded machine starts slowly
        time.sleep(rng.uniform(0.0, 0.12))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        out = head + out
        assert -signal.SIGKILL == proc.returncode, (cycle, proc.returncode)
        lines = out.decode().split("\n")
        acked += [x for x in lines[:-1] if x.startswith("k")]   # the last may be cut
        ro = JobQueue.open(folder, readonly=True)
        stored = ro.ids()
        ro.close()
        q = JobQueue.open(folder)
        assert stored == q.ids(), cycle           # read-only and owner agree
        assert [] == q.recovery.errors, (cycle, q.recovery.errors)
        q.close()
        assert len(stored) == len(set(stored)), cycle
        assert sorted(stored) == stored, cycle    # FIFO: ids were submitted increasing
        missing = set(acked) - set(stored)
        assert not missing, (cycle, sorted(missing)[:5])
    return len(acked), len(stored)


def test_sigkilled_writer_loses_no_acknowledged_job(tmp_path: Path) -> None:
    """120 SIGKILLs at random instants (most of them once the writer is writing, the
    others anywhere from its start): acknowledged jobs all survive, in order, once."""
    acked, stored = kill_cycles(tmp_path / "wal", 120, seed=20261128)
    assert acked > 120                # the writer did get work done between kills
    assert stored >= acked


@pytest.mark.chaos
@pytest.mark.timeout(1200)        # each cycle waits for the writer's start: minutes
def test_sigkilled_writer_many_seeds(tmp_path: Path) -> None:
    """The same with 1000 kills and another seed (long: chaos only)."""
    acked, stored = kill_cycles(tmp_path / "wal", 1000, seed=7)
    assert stored >= acked > 1000
