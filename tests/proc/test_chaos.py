"""The chaos suite (bench.chaos) as tests: a real batchd under load, random SIGKILLs of every
process, every invariant checked after the settle.

The default run keeps 60 seconds of it with a fresh random seed each time (printed, so a
failure can be replayed: `python -m bench.chaos --seed N --duration 60s`, or set
BATCHD_CHAOS_SEED for this test); `make chaos` runs the 10-minute version (at least 1,000
kills). docs/CHAOS.md has the faults, the invariants and how to read a report.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _seed() -> int:
    given = os.environ.get("BATCHD_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(1, 10**9)


def _chaos(seed: int, duration: int, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Run `python -m bench.chaos --json` and return its report (the seed printed first)."""
    with capsys.disabled():
        print(f"\nchaos seed {seed} ({duration} s): python -m bench.chaos --seed {seed} "
              f"--duration {duration}s", flush=True)
    done = subprocess.run([sys.executable, "-m", "bench.chaos", "--seed", str(seed),
                           "--duration", f"{duration}s", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=duration + 900,
                          check=False)
    assert done.stdout.strip(), f"no report (exit {done.returncode}): {done.stderr[-2000:]}"
    report: dict[str, Any] = json.loads(done.stdout)
    with capsys.disabled():
        print(f"chaos seed {seed}: {report['kills']} kills, {report['jobs']} jobs, "
              f"{report['violations']} violations, settled in {report['settle_ms']:.0f} ms",
              flush=True)
    assert (1 if report["violations"] else 0) == done.returncode
    return report


@pytest.mark.timeout(1200)
def test_a_minute_of_chaos_breaks_no_invariant(capsys: pytest.CaptureFixture[str]) -> None:
    """60 s of random SIGKILLs (batchd, each worker, adaptors, agents), SIGSTOPs, clean
    restarts and full-disk windows under a steady mix of jobs: every invariant holds after
    the settle, and the faults were many."""
    seed = _seed()
    report = _chaos(seed, 60, capsys)
    assert (seed, 0, []) == (report["seed"], report["violations"],
                             report["violation_examples"]), "\n".join(report["checks"])
    assert report["kills"] >= 30, report["kills_by"]     # 67 on a machine at load 10
    assert all(n > 0 for n in report["kills_by"].values()), report["kills_by"]


@pytest.mark.chaos
@pytest.mark.timeout(2400)
def test_ten_minutes_of_chaos_with_a_thousand_kills(capsys: pytest.CaptureFixture[str]) -> None:
    """`make chaos`: 10 minutes, at least 1,000 SIGKILLs, no violation."""
    seed = _seed()
    report = _chaos(seed, 600, capsys)
    assert (seed, 0, []) == (report["seed"], report["violations"],
                             report["violation_examples"]), "\n".join(report["checks"])
    assert report["kills"] >= 1000, report["kills_by"]
