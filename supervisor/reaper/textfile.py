"""The reaper's metrics textfile: the one writer of `metrics.textfile` (node_exporter's).

When `metrics.textfile` is set, the reaper rewrites it (state.metrics, the same text as
the api's GET /metrics; state.atomic: temp, fsync, rename) at its start and every
INTERVAL seconds, whether or not the api runs. Why the reaper: it always runs, it is not
batchd's parent (whose loop must stay light), and it serves no client, so the reads of a
100,000-job exposition delay nobody. A crash leaves the old file or the new one; a
failed write is logged and tried again at the next turn.
"""

from __future__ import annotations

from supervisor.config import Config
from supervisor.runtime import Log
from supervisor.state.clock import SYSTEM_CLOCK, Clock
from supervisor.state.layout import Layout
from supervisor.state.metrics import Metrics, write_textfile
from supervisor.state.view import Unreadable

__all__ = ["INTERVAL", "Textfile"]

#: Seconds between rewrites (node_exporter reads the file at each scrape).
INTERVAL = 15.0


class Textfile:
    """When the textfile is due, and the metrics cache between writes."""

    def __init__(self, cfg: Config, layout: Layout, log: Log, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = cfg.metrics.textfile
        self.log = log
        self.clock = clock
        self.metrics = Metrics(cfg, layout) if self.path is not None else None
        self.due = clock.monotonic()

    def wait(self) -> float | None:
        """Seconds until the next write (None: no textfile configured)."""
        return None if self.path is None else max(0.0, self.due - self.clock.monotonic())

    def tick(self) -> bool:
        """Write the file if it is due; whether it was written."""
        if self.path is None or self.metrics is None or self.clock.monotonic() < self.due:
            return False
        self.due = self.clock.monotonic() + INTERVAL
        try:
            write_textfile(self.path, self.metrics.exposition())
        except (OSError, Unreadable) as exc:
            self.log.error("cannot write metrics.textfile", path=str(self.path),
                           error=str(exc))
            return False
        return True
