"""What batchd tells the world about its workers: workers.json and systemd's STATUS= line.

workers.json (kind WORKERS) is written only by batchd, atomically, after every change
(`Publisher.publish` is called once per loop turn and writes only when something
changed): a crash loses at most the last change, and the next batchd writes its own.
A write that fails (a full or failing disk) is tried again on batchd's "publish" timer,
1, 2, 4 .. 30 s apart, until it succeeds (Batchd.publish).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from structlog.typing import FilteringBoundLogger

from supervisor.batchd.procstate import Proc, State
from supervisor.batchd.sdnotify import Notifier
from supervisor.runtime import WRITE_RETRY_FIRST, WRITE_RETRY_MAX
from supervisor.state.atomic import Corrupt
from supervisor.state.clock import iso_now
from supervisor.state.layout import WORKERS, Layout, read_record, write_record

__all__ = ["Publisher", "previous_restarts", "status_text", "workers_record"]


def workers_record(batchd_pid: int, procs: Sequence[Proc], now: float,
                   restarts_before: dict[str, int] | None = None) -> dict[str, Any]:
    """The body of workers.json (kind WORKERS) for `procs` in startup order.

    `restarts` counts this batchd's restarts of a worker (supervisord's view);
    `restarts_total` adds those of earlier batchd lives (`restarts_before`), so the
    counter `batchctl stats` shows survives a restart of batchd itself.
    """
    before = restarts_before or {}
    return {
        "batchd_pid": batchd_pid,
        "updated_at": iso_now(now),
        "workers": [{
            "name": p.name,
            "state": p.state.value,
            "pid": p.pid,
            "start": p.start,
            "since": iso_now(p.since) if p.since else None,
            "restarts": p.restarts,
            "restarts_total": before.get(p.name, 0) + p.restarts,
            "critical": p.critical,
            "exitstatus": p.exitstatus,
            "message": p.message,
        } for p in procs],
    }


def previous_restarts(layout: Layout, log: FilteringBoundLogger) -> dict[str, int]:
    """The cumulative restart counters from the workers.json of the last batchd.

    Called once the instance lock is held (batchd owns the file): a corrupt one is
    quarantined and logged, and the counters start again from zero.
    """
    rec = read_record(WORKERS, layout.workers_file, owner=True)
    if isinstance(rec, Corrupt):
        log.warning("workers.json was corrupt: moved aside; restart counters restart",
                    reason=rec.reason, moved_to=rec.moved_to)
        return {}
    if not isinstance(rec, dict) or not isinstance(rec.get("workers"), list):
        return {}
    out: dict[str, int] = {}
    for w in rec["workers"]:
        if not isinstance(w, dict) or not isinstance(w.get("name"), str):
            continue
        total = w.get("restarts_total", w.get("restarts"))
        if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
            out[w["name"]] = total
    return out


def status_text(procs: Sequence[Proc], degraded: bool) -> str:
    """The STATUS= line of a running batchd: workers running, and what is not whole."""
    running = [p for p in procs if p.state is State.RUNNING]
    bad = [p for p in procs if p.state in (State.FATAL, State.BACKOFF)]
    text = f"{len(running)}/{len(procs)} workers running"
    if bad or degraded:
        notes = ", ".join(f"{p.name} {p.state.value}" for p in bad) or "see startup-log"
        return f"degraded: {notes}; {text}"
    return text


class Publisher:
    """Writes workers.json when told something changed, and STATUS= when it differs."""

    def __init__(self, layout: Layout, notifier: Notifier, log: FilteringBoundLogger,
                 pid: int, restarts_before: dict[str, int] | None = None) -> None:
        self.layout = layout
        self.notifier = notifier
        self.log = log
        self.pid = pid
        self.restarts_before = dict(restarts_before or {})
        self.last_status = ""
        self.retry_in = WRITE_RETRY_FIRST    # the wait after the next failed write

    def workers(self, procs: Sequence[Proc], now: float) -> float | None:
        """Rewrite workers.json: None when written; when the write failed (logged), in
        how many seconds to try again (1, 2, 4 .. 30 while writes keep failing)."""
        try:
            write_record(WORKERS, self.layout.workers_file,
                         workers_record(self.pid, procs, now, self.restarts_before))
        except OSError as exc:
            retry, self.retry_in = self.retry_in, min(self.retry_in * 2, WRITE_RETRY_MAX)
            self.log.error("cannot write workers.json: tried again", error=str(exc),
                           errno=exc.errno, retry_in_s=retry)
            return retry
        self.retry_in = WRITE_RETRY_FIRST
        return None

    def status(self, text: str) -> None:
        """Send STATUS= to systemd when it changed."""
        if text != self.last_status:
            self.last_status = text
            self.notifier.status(text)
