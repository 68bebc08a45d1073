"""The reaper worker: removes what crashes leave behind; for now, stale temp files.

A writer killed between creating its temp file (`.tmp.<name>.<pid>.<rand>`) and renaming
it leaves the temp file behind. The reaper removes those older than `reaper.grace` (a
younger one may belong to a write in progress) in every folder of the state directory,
at its start (its recovery) and then every `reaper.interval`. It walks the state
directory without following symlinks, never enters the workspaces folder (job content)
nor the repository mirrors (git's own object stores), and under `jobs/` looks only in
`jobs/` and each `jobs/<id>/` itself, never deeper
(a job's own files are the job's). Orphaned processes, workspaces and stale sentinels
arrive with their issues.

Each pass is recorded in `reaper/state.json` (WORKER_STATE {worker, last_pass_at,
removed, total_removed}), written only by this worker and atomically (temp, fsync,
rename, fsync dir): a crash leaves the previous pass's record. A corrupt record is
quarantined and the total restarts from 0 (a degraded note says so). Removing a temp
file is an idempotent unlink, so a pass cut short by a crash is simply done again.

Metrics: when `metrics.textfile` is set, the reaper is its one writer. It rewrites the file
(state.metrics, the same text as the api's /metrics; state.atomic: temp, fsync, rename) at
its start and every METRICS_INTERVAL seconds, whether or not the api runs: the reaper
always runs, is not the parent (whose loop must stay light), and does nothing on a hot
path, so the reads a 100,000-job exposition makes cost nobody a latency. A crash leaves the
old file or the new one.

Inbox `reaper/inbox/`: the handler table is empty until requests arrive with their
issues, so every request is quarantined as of an unknown kind (logged, never dropped).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor import log as _log
from supervisor.config import Config
from supervisor.runtime import (
    EXIT_OK,
    EXIT_RECOVERY_FAILED,
    Log,
    Watcher,
    handle_inbox,
    report_ready,
    run_loop,
    run_standalone,
)
from supervisor.state.atomic import Corrupt, clean_tmp, ensure_dir, is_tmp_name, quarantine
from supervisor.state.clock import iso_now
from supervisor.state.layout import WORKER_STATE, Layout, read_record, write_record
from supervisor.state.metrics import Metrics, write_textfile

__all__ = ["HANDLERS", "METRICS_INTERVAL", "NAME", "Reaper", "folders", "main", "recover",
           "sweep", "sweep_and_record", "write_metrics"]

NAME = "reaper"
#: Seconds between rewrites of metrics.textfile (node_exporter reads it at each scrape).
METRICS_INTERVAL = 15.0


@dataclass
class Reaper:
    """What the worker holds between passes (the running total, rebuilt from state.json)."""

    cfg: Config
    layout: Layout
    log: Log
    total_removed: int = 0
    metrics: Metrics | None = None      # made on the first textfile write (its cache)


#: request kind -> handler (requests arrive with the reaper's later issues).
HANDLERS: dict[str, Callable[[Reaper, dict[str, Any]], None]] = {}


def _subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def folders(layout: Layout, workspace_dir: Path) -> Iterator[Path]:
    """Every folder of the state dir the reaper may clean (see the module docstring)."""
    skip = {os.path.abspath(workspace_dir), os.path.abspath(layout.mirrors_dir)}
    jobs = layout.jobs_dir
    stack = [layout.root]
    while stack:
        folder = stack.pop()
        yield folder
        for sub in reversed(_subdirs(folder)):
            if os.path.abspath(sub) in skip:
                continue
            if folder == jobs:
                yield sub          # jobs/<id>/ itself, never what the job put below it
            else:
                stack.append(sub)


def sweep(layout: Layout, workspace_dir: Path, grace: float,
          now: float | None = None) -> tuple[int, int]:
    """Remove temp files older than `grace` seconds; return (temp files seen, removed)."""
    seen = removed = 0
    for folder in folders(layout, workspace_dir):
        try:
            found = sum(1 for name in os.listdir(folder) if is_tmp_name(name))
        except FileNotFoundError:
            continue               # removed by its owner meanwhile
        seen += found
        if found:                  # most folders hold none: one listing, not two
            removed += len(clean_tmp(folder, grace, now=now))
    return seen, removed


def _record(reaper: Reaper, removed: int) -> None:
    reaper.total_removed += removed
    write_record(WORKER_STATE, reaper.layout.worker_state(NAME), {
        "worker": NAME, "last_pass_at": iso_now(), "removed": removed,
        "total_removed": reaper.total_removed})


def sweep_and_record(reaper: Reaper) -> tuple[int, int]:
    """One periodic pass: sweep, then record it in reaper/state.json."""
    seen, removed = sweep(reaper.layout, reaper.cfg.workspace_dir, reaper.cfg.reaper.grace)
    _record(reaper, removed)
    if removed:
        reaper.log.info("stale temp files removed", removed=removed)
    return seen, removed


def write_metrics(reaper: Reaper) -> bool:
    """Rewrite metrics.textfile if configured (a failure is logged, not raised); whether
    it was written."""
    path = reaper.cfg.metrics.textfile
    if path is None:
        return False
    if reaper.metrics is None:
        reaper.metrics = Metrics(reaper.cfg, reaper.layout)
    try:
        write_textfile(path, reaper.metrics.exposition())
    except OSError as exc:
        reaper.log.error("cannot write metrics.textfile", path=str(path), error=str(exc))
        return False
    return True


def recover(cfg: Config, layout: Layout, log: Log) -> tuple[Reaper, dict[str, Any],
                                                             dict[str, Any], list[str]]:
    """Read the last pass's record, then do a first pass: (reaper, found, did, degraded)."""
    ensure_dir(layout.worker_dir(NAME))
    path = layout.worker_state(NAME)
    reaper = Reaper(cfg, layout, log)
    degraded: list[str] = []
    rec = read_record(WORKER_STATE, path, owner=True)
    if isinstance(rec, dict) and not isinstance(rec.get("total_removed"), int):
        rec = Corrupt(str(path), quarantine(path), "'total_removed' must be an integer")
    if isinstance(rec, dict):
        reaper.total_removed = rec["total_removed"]
    elif isinstance(rec, Corrupt):
        log.warning("reaper state corrupt, total restarts from 0", path=str(path),
                    moved_to=rec.moved_to, reason=rec.reason)
        degraded.append(f"reaper state was corrupt: moved to {rec.moved_to}")
    seen, removed = sweep_and_record(reaper)
    return reaper, {"tmp_files": seen}, {"removed": removed}, degraded


def main(cfg: Config) -> int:
    """Recover (a first sweep), report ready, then sweep every reaper.interval until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    try:
        reaper, found, did, degraded = recover(cfg, layout, log)
    except OSError as exc:
        log.error("recovery failed", error=str(exc))
        return EXIT_RECOVERY_FAILED
    inbox = layout.inbox(NAME)
    with Watcher([inbox], log=log) as watcher:
        report_ready(layout, NAME, found=found, did=did, degraded=degraded,
                     started_monotonic=started, started_at=started_at)
        log.info("ready", **found, **did)
        write_metrics(reaper)
        run_loop(watcher, lambda: handle_inbox(inbox, HANDLERS, reaper, log),
                 periodic=(cfg.reaper.interval, lambda: sweep_and_record(reaper)),
                 also=[(METRICS_INTERVAL, lambda: write_metrics(reaper))]
                 if cfg.metrics.textfile is not None else [])
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_standalone(NAME, main))
