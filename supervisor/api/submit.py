"""The api's submissions: concurrent POSTs gathered into one durable request per write.

Every POST /v1/jobs is checked by the one validator (state.submission.Checker, as
`batchctl submit`) in the request's own thread; the checked jobs then wait for the one
writer thread here, which takes every submission waiting at that moment and hands them to
state.submission.accept_many: one submit lock, one read of the ids in use (the inbox, and
the queue's ids followed in the log by a state.queueids.QueueIds this writer keeps, so a
write does not replay the whole log), ONE request file written and fsynced for all of
them. Each POST is answered only after that write
returned (durable: it survives a crash from then on), and each stays all or nothing. One
submission's failure is its own (state.submission.accept_many): only what fails the whole
write — the disk (OSError, answered 503 storage), free space, an unreadable queue — fails every
waiter of it. A
crash of the api before the rename loses only unanswered POSTs (their clients retry; a
retry with the same ids is then a replay, answered as accepted and written once).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from supervisor.config import Config
from supervisor.state.layout import Layout
from supervisor.state.queuefollow import QueueIds
from supervisor.state.submission import accept_many

__all__ = ["MAX_GROUP_JOBS", "Batcher"]

#: A write takes whole submissions until it holds at least this many jobs.
MAX_GROUP_JOBS = 10_000

_Item = tuple[list[dict[str, Any]], "Future[list[str]]"]


class Batcher:
    """The one writer thread of submissions; `submit(jobs)` is a Future of their ids."""

    def __init__(self, cfg: Config, layout: Layout, *,
                 accept: Callable[[Config, Layout, list[list[dict[str, Any]]]],
                                  list[list[str] | Exception]] | None = None) -> None:
        self.cfg = cfg
        self.layout = layout
        ids = QueueIds(layout.wal_dir)
        self._accept = accept or (lambda c, lay, groups: accept_many(c, lay, groups,
                                                                      queue_ids=ids))
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="submit", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[dict[str, Any]]) -> Future[list[str]]:
        """Queue checked jobs (one submission); the Future gives their ids, or raises
        Refused (an id in use by another job), JobError (a dependency that does not
        exist), Unreadable, DiskLow or OSError (every submission of that write's), or
        whatever went wrong with this submission alone (never another's)."""
        fut: Future[list[str]] = Future()
        self._queue.put((jobs, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5.0)

    def _take(self, first: _Item) -> tuple[list[_Item], bool]:
        items, count, closing = [first], len(first[0]), False
        while count < MAX_GROUP_JOBS:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                closing = True
                break
            items.append(item)
            count += len(item[0])
        return items, closing

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items, closing = self._take(first)
            try:
                results = self._accept(self.cfg, self.layout, [jobs for jobs, _ in items])
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
                for _, fut in items:
                    fut.set_exception(exc)
            else:
                for (_, fut), result in zip(items, results, strict=True):
                    if isinstance(result, Exception):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
            if closing:
                return
