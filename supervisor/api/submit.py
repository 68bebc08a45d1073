"""The api's submissions: concurrent POSTs gathered into records of the submission log.

Every POST /v1/jobs is checked by the one validator (state.submission.Checker, as
`batchctl submit`) before it gets here. One thread, `submit`, then takes every submission
waiting at that moment and decides them together as state.submission.accept_many does
(the submit lock held, the ids in use read once: ids_in_use, take_many), and hands the
jobs it took to a pool of WRITERS threads, each appending ONE record to the api's
submission log (state.sublog.SubmissionLog, a WAL: write_taken(log=)). It does not wait
for that write: it goes on deciding the next submissions while earlier writes are in
flight, and the appends in flight share one fdatasync (the WAL's group commit). It
decides only when a writer is free, and beside a write in flight only once OVERLAP_MIN
submissions wait (what comes meanwhile joins the next record). Each POST is answered
only after ITS record is durable, and each stays all or nothing. The scheduler enqueues
the log's records (docs/API.md "Submissions").

What keeps the ids right with writes in flight (docs/API.md "Submissions"):
- The submit lock (the flock every submitter takes) is held from the decision of a group
  until its record is durable: the api takes it when it has work and gives it back when
  no write is in flight, and at least every SESSION seconds (it then lets its writes
  finish, gives the lock back and waits a moment), so `batchctl submit` always gets its
  turn.
- Within the api, the ids of the writes in flight count as in use, and so do those of the
  log's records the scheduler has not enqueued yet (SubmissionLog.pending_ids): the
  first read, under a mutex, BEFORE the second and the inbox, so an id is seen in one.
- A submission naming an id of a write in flight (a client's retry racing its own first
  try) waits until no write is in flight (nothing new is decided meanwhile, so it never
  waits long), then is decided as usual: a replay of a durable job is accepted without a
  second write, anything else refused.

One submission's failure is its own (state.submission.take_many, write_taken): only what
fails a whole write (the disk: OSError, answered 503 storage) fails every waiter of it,
and a failed free-space check or unreadable ids every submission of that decision. A
crash of the api at any moment loses only unanswered POSTs (a record is whole or absent;
its clients retry, and a retry with the same ids is then a replay, answered as accepted
and written once); the kernel drops the flock with the process.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, Union

from supervisor.config import Config
from supervisor.state import disk
from supervisor.state.layout import Layout
from supervisor.state.queuefollow import QueueIds
from supervisor.state.sublog import SubmissionLog
from supervisor.state.submission import (
    DiskLow,
    SubmitLock,
    Taken,
    ids_in_use,
    take_many,
    write_taken,
)
from supervisor.state.view import PendingIds

__all__ = ["MAX_GROUP_JOBS", "OVERLAP_MIN", "SESSION", "WRITERS", "Batcher"]

#: A decision takes whole submissions until it holds at least this many jobs.
MAX_GROUP_JOBS = 10_000
#: Request writes in flight at once (threads of the writer pool).
WRITERS = 2
#: Submissions waiting that start a write while another is in flight (fewer wait for it:
#: a request file per POST would cost the scheduler and the disk more than it saves).
OVERLAP_MIN = 2
#: Seconds the api may hold the submit lock before it lets other submitters in.
SESSION = 0.1
#: Seconds it then waits, lock given back, before it takes it again.
YIELD = 0.002

_Fut = Union["Future[list[str]]", "asyncio.Future[list[str]]"]
_Item = tuple[list[dict[str, Any]], _Fut]


def _settle(fut: _Fut, got: list[str] | BaseException) -> None:
    if fut.done():                      # an answer nobody waits for (the client is gone)
        return
    if isinstance(got, BaseException):
        fut.set_exception(got)
    else:
        fut.set_result(got)


def _settle_all(answers: list[tuple[_Fut, list[str] | BaseException]]) -> None:
    for fut, got in answers:
        _settle(fut, got)


class _Wake:
    """Put in the queue when a write ended: the decider looks again."""


_WAKE = _Wake()


class Batcher:
    """The api's submit writer; `submit(jobs)` is a Future of their ids."""

    def __init__(self, cfg: Config, layout: Layout, *, writers: int = WRITERS,
                 write: Callable[[Layout, Taken], list[list[str] | Exception]] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.cfg = cfg
        self.layout = layout
        self._loop = loop
        self._queue_ids = QueueIds(layout.wal_dir)
        self._pending_ids = PendingIds(layout)
        self._queue_ids.refresh()               # where the scheduler is in the log
        self.sublog = SubmissionLog(layout.sublog_dir, consumed=self._queue_ids.consumed,
                                    queue_dir=layout.wal_dir)
        self._write_taken = write or functools.partial(write_taken, log=self.sublog)
        self._lock = SubmitLock(layout)
        self._since = 0.0                       # when the lock was taken
        self._cond = threading.Condition()      # guards _flight and _writing
        self._flight: set[str] = set()          # ids of the writes in flight
        self._writing = 0                       # writes in flight
        self._writes: queue.SimpleQueue[tuple[list[_Item], Taken, set[str]] | None] = \
            queue.SimpleQueue()
        self._writer_count = writers
        self._writers = [threading.Thread(target=self._writer, name=f"submit-w{n}",
                                          daemon=True) for n in range(writers)]
        for writer in self._writers:
            writer.start()
        self._queue: queue.SimpleQueue[_Item | _Wake | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="submit", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[dict[str, Any]]) -> Future[list[str]]:
        """Queue checked jobs (one submission); the Future gives their ids once they are
        durable, or raises Refused (an id in use by another job), JobError (a dependency
        that does not exist), Unreadable, DiskLow or OSError (every submission of that
        decision or write), or whatever went wrong with this submission alone."""
        fut: Future[list[str]] = Future()
        self._queue.put((jobs, fut))
        return fut

    def submit_async(self, jobs: list[dict[str, Any]]) -> Awaitable[list[str]]:
        """submit() for a coroutine on the event loop: an asyncio Future settled on the
        loop when the Batcher was given it (`loop`), else the concurrent one wrapped."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            return asyncio.wrap_future(self.submit(jobs))
        fut: asyncio.Future[list[str]] = loop.create_future()
        self._queue.put((jobs, fut))
        return fut

    def close(self) -> None:
        """Decide what is queued, let every write finish, give the lock back."""
        self._queue.put(None)
        self._thread.join(timeout=5.0)

    @property
    def in_flight(self) -> int:
        """Request writes in flight now."""
        with self._cond:
            return self._writing

    # -- the decider ------------------------------------------------------------------------

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
            if isinstance(item, _Wake):
                continue
            items.append(item)
            count += len(item[0])
        return items, closing

    def _run(self) -> None:
        deferred: list[_Item] = []              # an id of theirs is being written
        held: list[_Item] = []                  # waiting for a writer
        try:
            while True:
                got = self._queue.get()
                closing = got is None
                if isinstance(got, tuple):
                    items, closing = self._take(got)
                    held += items
                if closing:
                    self._drain()
                    left = self._decide(deferred + held)
                    self._drain()
                    self._decide(left)          # nothing in flight now: none is left
                    self._drain()
                    return
                flying = self.in_flight
                if deferred:                    # nothing new until the writes are done,
                    if flying == 0:             # then what waited goes first
                        deferred = self._decide(deferred + held)
                        held = []
                elif held and (flying == 0 or (flying < self._writer_count and
                                               len(held) >= OVERLAP_MIN)):
                    deferred = self._decide(held)
                    held = []
                elif not held and self._lock.held and flying == 0:
                    self._lock.release()        # idle: other submitters' turn
        finally:
            self._lock.release()
            for _ in self._writers:
                self._writes.put(None)
            for writer in self._writers:
                writer.join(timeout=5.0)
            self.sublog.close()

    def _drain(self) -> None:
        """Wait until no write is in flight."""
        with self._cond:
            while self._writing:
                self._cond.wait()

    def _decide(self, items: list[_Item]) -> list[_Item]:
        """Decide `items` (as accept_many) and send what was taken to a writer; the items
        that must wait for the writes in flight (an id of theirs is being written)."""
        if not items:
            return []
        if self._lock.held and time.monotonic() - self._since > SESSION:
            self._drain()                       # other submitters' turn
            self._lock.release()
            time.sleep(YIELD)
        with self._cond:
            flight = set(self._flight)          # before the inbox is listed (ids_in_use)
        now: list[_Item] = []
        later: list[_Item] = []
        for item in items:
            clash = any(j["id"] is not None and j["id"] in flight for j in item[0])
            (later if clash else now).append(item)
        if not now:
            return later
        groups = [jobs for jobs, _ in now]
        try:
            why = disk.low(self.cfg)
            if why is not None:
                raise DiskLow(f"submission refused: {why}")
            if not self._lock.held:
                self._lock.acquire()
                self._since = time.monotonic()
            given = {j["id"] for g in groups for j in g if j["id"] is not None}
            in_use, existing = ids_in_use(self.cfg, self.layout, given,
                                          queue_ids=self._queue_ids,
                                          pending_ids=self._pending_ids, also=flight,
                                          logged=self.sublog.pending_ids())
            taken = take_many(self.cfg, self.layout, groups, in_use, existing)
            self.sublog.prune(self._queue_ids.consumed)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
            self._answer([(fut, exc) for _, fut in now])
            self._queue.put(_WAKE)              # no write to wake the decider: look again
            return later
        ids = {str(j["id"]) for j in taken.jobs}
        with self._cond:
            self._flight |= ids
            self._writing += 1
        self._writes.put((now, taken, ids))
        return later

    # -- a writer ---------------------------------------------------------------------------

    def _writer(self) -> None:
        while (work := self._writes.get()) is not None:
            self._write(*work)

    def _write(self, items: list[_Item], taken: Taken, ids: set[str]) -> None:
        """Write one decision's request; then answer each of its submissions."""
        results: list[list[str] | Exception] | BaseException
        try:
            results = self._write_taken(self.layout, taken)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
            results = exc
        with self._cond:
            self._flight -= ids
            self._writing -= 1
            if self._writing == 0:
                self._cond.notify_all()
        self._queue.put(_WAKE)                  # a writer is free: the decider looks again
        if isinstance(results, BaseException):
            self._answer([(fut, results) for _, fut in items])
        else:
            self._answer([(fut, result) for (_, fut), result in zip(items, results,
                                                                    strict=True)])

    def _answer(self, answers: list[tuple[_Fut, list[str] | BaseException]]) -> None:
        """Settle each Future with its ids or its exception: a concurrent one here, the
        event loop's all in ONE callback on the loop (one wake-up of it per request
        written, not one per POST)."""
        on_loop: list[tuple[_Fut, list[str] | BaseException]] = [
            (fut, got) for fut, got in answers if isinstance(fut, asyncio.Future)]
        for fut, got in answers:
            if not isinstance(fut, asyncio.Future):
                _settle(fut, got)
        if on_loop and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_settle_all, on_loop)
            except RuntimeError:            # the loop is closed: nobody waits any more
                pass
