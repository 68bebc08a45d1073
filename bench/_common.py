"""What the benchmarks share: percentiles, waiting for a condition, stopping a daemon."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["percentile", "stop", "until"]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100), rounded to 0.01."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return round(ordered[rank - 1], 2)


def until(what: str, cond: Callable[..., Any], *, timeout: float = 120.0,
          poll: float = 0.002) -> Any:
    """Poll `cond` until it is truthy and return it; TimeoutError(what) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(poll)


def stop(proc: subprocess.Popen[Any], grace: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `grace` seconds; reaped either way."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fdatasync_rate(folder: Path, seconds: float = 1.0) -> float:
    """Raw `write 64 bytes + fdatasync` per second on this disk."""
    path = folder / "sync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    n, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            os.write(fd, b"x" * 64)
            os.fdatasync(fd)
            n += 1
    finally:
        os.close(fd)
        path.unlink()
    return round(n / (time.perf_counter() - t0), 1)
