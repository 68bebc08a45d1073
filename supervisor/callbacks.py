"""The callbacks worker: the webhook outbox, one DELIVERY record per pending delivery.

Recovery (its start-up): scan `callbacks/outbox/` — each `<event id>.json` is one pending
delivery. A record that cannot be read (unparseable, wrong schema) is moved aside as
`NAME.corrupted.<UTC ts>`, counted and named in the ready record's `degraded`: only that
webhook is affected. Temp files (a write in progress) are not deliveries and are left to
the reaper. Delivery, the retry schedule and dead letters arrive with the callbacks issue.

Crash safety: the outbox has one writer, this worker; recovery only reads and
quarantines (a rename, the folder fsynced), so a crash during it is recovered again by
the next start.

Inbox `callbacks/inbox/`: the handler table is empty until deliveries arrive with their
issue, so every request is quarantined as of an unknown kind (logged, never dropped).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor import _log
from supervisor._atomic import CORRUPT_MARK, Corrupt, ensure_dir, is_tmp_name
from supervisor._config import Config
from supervisor._jobs import iso_now
from supervisor._layout import DELIVERY, Layout, read_record
from supervisor._runtime import (
    EXIT_OK,
    EXIT_RECOVERY_FAILED,
    Log,
    Watcher,
    handle_inbox,
    report_ready,
    run_loop,
    run_standalone,
)

__all__ = ["HANDLERS", "NAME", "Callbacks", "main", "recover"]

NAME = "callbacks"


@dataclass
class Callbacks:
    """What the worker holds: rebuilt from the outbox at every start."""

    layout: Layout
    log: Log
    pending: list[dict[str, Any]]


#: request kind -> handler (deliveries arrive with the callbacks issue).
HANDLERS: dict[str, Callable[[Callbacks, dict[str, Any]], None]] = {}


def recover(layout: Layout, log: Log) -> tuple[Callbacks, dict[str, Any], list[str]]:
    """Read every pending delivery: (state, found, degraded). OSError: cannot."""
    outbox = layout.callbacks_outbox
    ensure_dir(outbox)
    pending: list[dict[str, Any]] = []
    degraded: list[str] = []
    for name in sorted(os.listdir(outbox)):
        if is_tmp_name(name) or CORRUPT_MARK in name:
            continue
        rec = read_record(DELIVERY, outbox / name, owner=True)
        if isinstance(rec, dict):
            pending.append(rec)
        elif isinstance(rec, Corrupt):
            log.warning("corrupt delivery quarantined", path=rec.path, moved_to=rec.moved_to,
                        reason=rec.reason)
            degraded.append(f"callback delivery {name} was corrupt: moved to {rec.moved_to}")
    found = {"pending": len(pending), "corrupt": len(degraded)}
    return Callbacks(layout, log, pending), found, degraded


def main(cfg: Config) -> int:
    """Recover the outbox, report ready, then serve the inbox until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    try:
        state, found, degraded = recover(layout, log)
    except OSError as exc:
        log.error("recovery failed", error=str(exc))
        return EXIT_RECOVERY_FAILED
    inbox = layout.inbox(NAME)
    with Watcher([inbox], log=log) as watcher:
        report_ready(layout, NAME, found=found, did={"quarantined": found["corrupt"]},
                     degraded=degraded, started_monotonic=started, started_at=started_at)
        log.info("ready", **found)
        run_loop(watcher, lambda: handle_inbox(inbox, HANDLERS, state, log))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_standalone(NAME, main))
