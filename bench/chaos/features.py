"""What this batchd can do, asked from outside: the switches of the workload and the checks.

Each feature is detected, never assumed from a branch name, so an entry of the workload
(bench.chaos.workload.PARTS) or a strict form of a check switches itself on the day the
feature is merged:

- `agents`: `batchctl agents --json` exits 0 (real-agent adaptors with strict fakes).
- `push`: `batchctl submit --help` offers `--push` (results).
- `batch_settle`: `batchd --check` accepts `callbacks: {batch_settle: ...}` (batch events
  held for a settle window: exactly one per batch and URL, else at least one).
"""

from __future__ import annotations

from bench.chaos.rig import Rig

__all__ = ["FEATURES", "detect"]

FEATURES = ("agents", "push", "batch_settle")


def detect(rig: Rig) -> frozenset[str]:
    """The features this batchd has (see the module docstring)."""
    found: set[str] = set()
    if rig.ctl("agents", "--json").returncode == 0:
        found.add("agents")
    helped = rig.ctl("submit", "--help")
    if helped.returncode == 0 and b"--push" in helped.stdout:
        found.add("push")
    if rig.config_accepted(rig.config_text(callbacks_extra="  batch_settle: 1s\n")):
        found.add("batch_settle")
    return frozenset(found)
