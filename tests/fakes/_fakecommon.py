"""Shared bits of the fake agent CLIs: record how we were called, print events, exit.

Environment knobs (set through the job spec's `env`):
  FAKE_RECORD  path: write {"argv", "cwd", "env"} there as JSON (argv without the program)
  FAKE_EXIT    exit status (default 0)
  FAKE_HANG    seconds to sleep after the first event (timeouts, cancels)
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

SESSION_ENV = ("BATCHD_JOB_ID", "BATCHD_JOB_DIR", "BATCHD_WORKSPACE", "FAKE_EXTRA")


def record() -> None:
    path = os.environ.get("FAKE_RECORD")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(),
                       "env": {k: os.environ.get(k) for k in SESSION_ENV}}, f)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def hang() -> None:
    seconds = float(os.environ.get("FAKE_HANG") or 0)
    if seconds:
        time.sleep(seconds)


def finish() -> None:
    sys.stdout.flush()
    sys.exit(int(os.environ.get("FAKE_EXIT") or 0))
