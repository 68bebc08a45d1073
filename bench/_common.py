"""What the benchmarks share: percentiles, waiting for a condition, stopping a daemon."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from collections.abc import Callable
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
