"""The callbacks worker: the webhook outbox and its deliveries (at-least-once, any crash).

Recovery reads the live outbox (an in_flight record goes back to pending, due now); then
one loop on the main thread takes the inbox and hands due tries to sending threads (at
most `callbacks.concurrency` at once, 4 per receiver; a full receiver's next tries wait
in its lane for the next thread whose POST to it is over), each of which owns its record
until its POST is over; the outcomes of tries over together are then written as one
group (`Outcomes`) and handed back. A new event waits for its first try as the request
the scheduler wrote (its record is made by that try's in_flight write).
docs/CALLBACKS.md has the files, the threads and the crash argument.
"""

from __future__ import annotations

import heapq
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor import log as _log
from supervisor.callbacks.outbox import DirOutbox, GroupFS, Outbox
from supervisor.callbacks.settle import BatchCheck, Verdict, wal_check
from supervisor.callbacks.transport import HttpTransport, Transport, attempt
from supervisor.config import CallbacksConfig, Config
from supervisor.runtime import (
    EXIT_OK,
    EXIT_RECOVERY_FAILED,
    BadRequest,
    Log,
    NotYet,
    Waiter,
    Watcher,
    WriteRetry,
    inbox_requests,
    report_ready,
    stop_requested,
    until_written,
)
from supervisor.state.atomic import quarantine, remove
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.layout import Layout
from supervisor.state.webhook import (
    SETTLED_STATES,
    InvalidTransition,
    Result,
    begin,
    due_at,
    finish,
    held,
    host_of,
    interrupted,
    new_delivery,
    operator_retry,
    postponed,
    valid_event_id,
    valid_url,
)

__all__ = [
    "HANDLERS",
    "NAME",
    "PER_HOST",
    "RECHECK",
    "WRITERS",
    "Callbacks",
    "DirOutbox",
    "Done",
    "Outbox",
    "Outcomes",
    "Posted",
    "handle_deliver",
    "handle_prune",
    "handle_retry",
    "main",
    "recover",
    "serve",
    "take_inbox",
]

NAME = "callbacks"
#: At most this many tries in flight to one receiver (scheme://host:port) at once.
PER_HOST = 4
#: At most this many threads write outcomes at once (each a group, one folder fsync per
#: group): a new file's fsync waits for the disk, so one writer alone would hold
#: deliveries to the disk's latency, not its rate.
WRITERS = 2
#: A held batch event whose batch is not terminal in the queue yet is checked again after
#: this many seconds (at most `batch_settle`).
RECHECK = 0.5


@dataclass
class Done:
    """What a thread hands back: each record it owned as it is now on disk (None:
    removed), the tries' results (none for a settle check), or the error that stopped
    it. `task`: it ends a task (a settle check, a try that never POSTed); the outcomes
    of tries written together (`Outcomes`) end none: their threads ended at Posted."""

    records: list[tuple[str, dict[str, Any] | None]]
    results: list[Result] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)     # held events the check released
    error: BaseException | None = None
    task: bool = True


@dataclass(frozen=True)
class Posted:
    """What a sending thread says once its POST is over (answered, failed or timed out):
    the record (the outcome's durable write still to come) stays owned, by `Outcomes`,
    until its Done. `next`: the try the thread took from its receiver's lane, which
    inherits the receiver's slot and the thread; None: the slot and the thread are free."""

    event_id: str
    next: str | None = None


#: One try's outcome waiting to be written: the record, the request of a new event, the result.
Outcome = tuple[dict[str, Any], Path | None, Result]


class Outcomes:
    """The outcomes of tries whose POSTs are over, written together (group commit).

    A thread whose POST is over adds its record's outcome; if fewer than `writers` threads
    are writing, one becomes a writer (the adding thread itself when it has no next try, else a pool
    thread): it takes every outcome added so far, writes them all durably with one folder
    fsync (Outbox.put_many), drops the requests of new events, hands them back in one
    Done, and goes on while outcomes came meanwhile. So outcomes that finish together
    share their fsyncs and one wake-up of the main loop, and at most `writers` threads at
    a time write them (fewer threads taking turns at the interpreter than one each)."""

    def __init__(self, writers: int = 1) -> None:
        self._lock = threading.Lock()
        self._todo: list[Outcome] = []
        self.most = writers
        self._writers = 0

    def add(self, item: Outcome) -> bool:
        """Queue one outcome; True: fewer than `most` writers run, the caller must start
        one (`take` until it gives nothing)."""
        with self._lock:
            self._todo.append(item)
            if self._writers >= self.most:
                return False
            self._writers += 1
            return True

    def take(self) -> list[Outcome]:
        """A writer's next group: every outcome queued; [] (the writer ends) if none."""
        with self._lock:
            group, self._todo = self._todo, []
            if not group:
                self._writers -= 1
            return group


def _no_check(recs: Sequence[dict[str, Any]]) -> dict[str, Verdict]:
    return {}


@dataclass
class Callbacks:
    """What the worker holds, all rebuilt from the outbox at each start (law 4).

    `pending` is the schedule: the pending records no thread owns, ordered by `_heap`
    (due, created_at, generation, id); a record handed to a thread (`busy`: id -> host
    while its POST is in flight, "" once it is over (Posted) or for a settle check) is
    owned by it until its Done comes back through `_done`.
    Only the main thread touches these fields; threads touch only the records they own.
    """

    log: Log
    outbox: Outbox
    transport: Transport
    settings: CallbacksConfig
    clock: Clock = SYSTEM_CLOCK
    check: BatchCheck = _no_check
    #: Runs the tries; a ThreadPoolExecutor of concurrency + 1 threads is made at first use.
    executor: Executor | None = None
    #: Wakes the main loop when a thread is done (the Watcher's wake in production).
    wake: Callable[[], None] = lambda: None
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    busy: dict[str, str] = field(default_factory=dict)
    cleared: set[str] = field(default_factory=set)       # held events the check released
    deferred: set[str] = field(default_factory=set)      # retries waiting for a busy record
    retry_now: bool = False          # a record a deferred retry waits for was handed back
    progress: bool = False           # a write succeeded (the write backoff starts again)
    #: New events with no record yet: event id -> their request in the inbox, which stays
    #: there (the durable form of the event) until the first try's in_flight write.
    requests: dict[str, Path] = field(default_factory=dict)
    tasks: int = 0                  # tries (until their POST is over) and checks out
    writing: int = 0                # tries whose POST is over, their outcome not back yet
    #: The outcomes of tries written together (shared by a rebuilt worker, as the pool).
    outcomes: Outcomes = field(default_factory=lambda: Outcomes(WRITERS))
    _heap: list[tuple[float, str, int, str]] = field(default_factory=list)
    _gen: dict[str, int] = field(default_factory=dict)
    #: Due tries whose receiver is at its limit, a heap per receiver: one goes back to
    #: the schedule each time a try to that receiver ends.
    _parked: dict[str, list[tuple[float, str, int, str]]] = field(default_factory=dict)
    _hosts: Counter[str] = field(default_factory=Counter)
    _host_of: dict[str, str] = field(default_factory=dict)      # event id -> receiver
    _done: queue.SimpleQueue[Done | Posted] = field(default_factory=queue.SimpleQueue)
    #: Tries handed to a receiver whose PER_HOST slots are taken, at most PER_HOST per
    #: receiver (more are parked): the next thread whose POST to it is over takes one at
    #: once, with its slot, without a trip through the main loop. The threads take from
    #: them under _lane_lock; `_queued` and `_lane_n` are the main thread's account.
    _lanes: dict[str, deque[tuple[dict[str, Any], Path | None]]] = field(
        default_factory=dict)
    _lane_lock: threading.Lock = field(default_factory=threading.Lock)
    _queued: dict[str, str] = field(default_factory=dict)        # event id -> receiver
    _lane_n: Counter[str] = field(default_factory=Counter)

    # -- the schedule (main thread) ---------------------------------------------------------
    def schedule(self, rec: dict[str, Any]) -> None:
        """Keep `rec` (as on disk): pending ones join the schedule, others leave it."""
        event_id = rec["id"]
        if rec["state"] != "pending":
            self.pending.pop(event_id, None)
            self._gen.pop(event_id, None)
            self._host_of.pop(event_id, None)
            self.cleared.discard(event_id)
            return
        self.pending[event_id] = rec
        if event_id not in self._host_of:
            self._host_of[event_id] = host_of(rec["url"])
        gen = self._gen.get(event_id, 0) + 1
        self._gen[event_id] = gen
        heapq.heappush(self._heap, (due_at(rec), str(rec["created_at"]), gen, event_id))

    def store(self, rec: dict[str, Any], *, moved: bool = False) -> None:
        """Write `rec` durably (the main thread owns it), then keep it in the schedule."""
        self.outbox.put(rec, moved=moved)
        self.schedule(rec)

    def known(self, event_id: str) -> bool:
        """Whether the event has a record (in memory, in flight, or on disk)."""
        return event_id in self.pending or event_id in self.busy or self.outbox.exists(
            event_id)

    def _valid(self, item: tuple[float, str, int, str]) -> bool:
        return self._gen.get(item[3]) == item[2] and item[3] in self.pending

    def _limit(self) -> int:
        return max(1, self.settings.concurrency)

    def sleep_for(self) -> float | None:
        """Seconds until the next try may start (0: now); None: nothing until a hint or a
        thread is done (nothing pends, or every slot is taken)."""
        if self.tasks >= self._limit():
            return None
        heap = self._heap
        while heap and not self._valid(heap[0]):
            heapq.heappop(heap)
        if not heap:
            return None
        return max(0.0, heap[0][0] - self.clock.time())

    # -- handing out (main thread) ------------------------------------------------------------
    def _pool(self) -> Executor:
        if self.executor is None:
            # + 1: a settle check; + WRITERS: threads writing outcomes after their Posted
            self.executor = ThreadPoolExecutor(max_workers=self._limit() + 1 + WRITERS,
                                               thread_name_prefix="deliver")
        return self.executor

    def dispatch(self) -> int:
        """Hand every due try to a thread while slots are free (at most PER_HOST per
        receiver; a try whose receiver is full goes to its lane, taken by the next thread
        whose POST to it is over, or, the lane full too, waits for one of its tries to
        end); due held batch events go, together, to one settle check. How many tries
        started."""
        now = self.clock.time()
        heap, started, checks = self._heap, 0, []
        per_host = min(PER_HOST, self._limit())
        while heap and heap[0][0] <= now and self.tasks < self._limit():
            item = heapq.heappop(heap)
            if not self._valid(item):
                continue
            event_id = item[3]
            rec = self.pending[event_id]
            if held(rec) and event_id not in self.cleared:
                checks.append(rec)
                continue
            host = self._host_of[event_id]
            if self._hosts[host] >= per_host:
                if self._lane_n[host] < per_host:
                    del self.pending[event_id]
                    self.busy[event_id] = host
                    self._queued[event_id] = host
                    self._lane_n[host] += 1
                    with self._lane_lock:
                        self._lanes.setdefault(host, deque()).append(
                            (rec, self.requests.get(event_id)))
                else:
                    heapq.heappush(self._parked.setdefault(host, []), item)
                continue
            del self.pending[event_id]
            self.busy[event_id] = host
            self._hosts[host] += 1
            self.tasks += 1
            self._pool().submit(self._send, rec, self.requests.get(event_id), host)
            started += 1
        if checks:
            for rec in checks:
                del self.pending[rec["id"]]
                self.busy[rec["id"]] = ""
            self.tasks += 1
            self._pool().submit(self._settle, checks)
        return started

    def reap(self) -> None:
        """Take back what threads are done with (`retry_now` is set when a deferred retry
        can go now). A thread's error (its record could not be written) is raised here:
        an OSError makes `serve` rebuild the worker from the files (_reopen)."""
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                return
            if isinstance(done, Posted):
                host = self.busy.get(done.event_id, "")
                if host:
                    self.busy[done.event_id] = ""     # the record is not free yet
                self.writing += 1
                if done.next is not None:             # the slot and the thread go on
                    if self._queued.pop(done.next, None) is not None:
                        self._lane_n[host] -= 1
                    continue
                if host:
                    self._free(host)                  # the slot is free
                self.tasks -= 1                       # and the thread
                continue
            if done.task:
                self.tasks -= 1
            else:
                self.writing -= len(done.records)
            for event_id, rec in done.records:
                host = self.busy.pop(event_id, "")
                self.requests.pop(event_id, None)
                if host:
                    self._free(host)
                self.retry_now = self.retry_now or event_id in self.deferred
                if rec is not None:
                    self.schedule(rec)
            self.cleared.update(done.cleared)
            if done.error is not None:
                raise done.error
            self.progress = self.progress or bool(done.records)
            for (_, rec), result in zip(done.records, done.results, strict=False):
                if rec is not None:
                    self.log.info("delivery try", event_id=rec["id"], url=rec["url"],
                                  attempts=rec["attempts"], outcome=result.outcome,
                                  error=result.error, state=rec["state"],
                                  next_attempt_at=rec["next_attempt_at"])

    def _free(self, host: str) -> None:
        """A try to `host` is no longer in flight: one slot less; the tries in its lane
        (a thread found it empty just before main added them) go back to the schedule,
        due now, and a parked try is due."""
        self._hosts[host] -= 1
        if not self._hosts[host]:
            del self._hosts[host]
        for rec, _ in self._unqueue(host):
            self.schedule(rec)
        self._unpark(host)

    def _unqueue(self, host: str | None = None) -> list[tuple[dict[str, Any], Path | None]]:
        """Take back the tries no thread took from `host`'s lane (every lane: None); they
        are the main thread's again (not busy, not scheduled)."""
        with self._lane_lock:
            lanes = [self._lanes.pop(host, deque())] if host is not None else \
                list(self._lanes.values())
            if host is None:
                self._lanes.clear()
            items = [item for lane in lanes for item in lane]
        for rec, _ in items:
            event_id = rec["id"]
            self.busy.pop(event_id, None)
            self.retry_now = self.retry_now or event_id in self.deferred
            got = self._queued.pop(event_id, None)
            if got is not None:
                self._lane_n[got] -= 1
        return items

    def _take_next(self, host: str) -> tuple[dict[str, Any], Path | None] | None:
        """On a sending thread: the next try in `host`'s lane, or None."""
        with self._lane_lock:
            lane = self._lanes.get(host)
            return lane.popleft() if lane else None

    def _unpark(self, host: str) -> None:
        """A try to `host` ended: its earliest parked try (still valid) is due again."""
        parked = self._parked.get(host)
        while parked:
            item = heapq.heappop(parked)
            if self._valid(item):
                heapq.heappush(self._heap, item)
                break
        if not parked:
            self._parked.pop(host, None)

    def drain(self, grace: float) -> None:
        """At stop: wait up to `grace` seconds for the tries in flight to end (their
        records settle; any still in flight after it are tried again at the next start)."""
        deadline = time.monotonic() + grace
        self._unqueue()                 # not tried now: their files say what they are
        while (self.tasks or self.writing) and time.monotonic() < deadline:
            try:
                done = self._done.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self._done.put(done)
            try:
                self.reap()
            except Exception as exc:  # noqa: BLE001 - stopping anyway; the files are the truth
                self.log.error("a delivery could not be recorded", error=str(exc))
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    # -- on a sending thread (each owns the records it was handed) -------------------------
    def _hand_back(self, done: Done | Posted, *, wake: bool = True) -> None:
        self._done.put(done)
        if wake:
            self.wake()

    def _send(self, rec: dict[str, Any], request: Path | None, host: str) -> None:
        """Tries to `host`, one after another: in_flight BEFORE the POST, the outcome
        durable after it. Once a POST is over (Posted) the thread takes the next try from
        the receiver's lane, if any, with the slot (so a busy receiver's next POST does not
        wait for a trip through the main loop), or gives the slot and itself back; the
        outcome is written together with the others over by then (`Outcomes`), never
        holding up the next POST. A retry's in_flight write is durable; a new event's
        first try writes its record in_flight without fsync, because its request, durable
        in the inbox, stands for it until the outcome is durable, and only then is
        dropped (a request that comes back at a power cut finds the record: a no-op). So
        a first try costs two fsyncs, not four, and the folder's fsync is shared by the
        outcomes written together."""
        while True:
            event_id = rec["id"]
            try:
                rec = begin(rec, self.clock.time())
                self.outbox.put(rec, durable=request is None)
                result = attempt(self.transport, rec, secret=self.settings.secret,
                                 timeout=self.settings.timeout, now=self.clock.time)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
                self._hand_back(Done([(event_id, None)], error=exc))
                return
            nxt = self._take_next(host)
            # the main loop need not wake for a slot handed on: the outcome's Done wakes it
            self._hand_back(Posted(event_id, None if nxt is None else nxt[0]["id"]),
                            wake=nxt is None)
            try:
                rec = finish(rec, result, self.clock.time(), self.settings.retry_schedule)
                if self.outcomes.add((rec, request, result)):
                    if nxt is None:
                        self._write_loop()              # this thread's task is over
                    else:
                        self._write_elsewhere()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
                self._hand_back(Done([(event_id, None)], error=exc, task=False))
            if nxt is None:
                return
            rec, request = nxt

    def _write_elsewhere(self) -> None:
        """Start the writer on a pool thread (this one has a next try); on this one if
        the pool is shut down (stopping)."""
        try:
            self._pool().submit(self._write_loop)
        except RuntimeError:
            self._write_loop()

    def _write_loop(self) -> None:
        """The writer of `Outcomes`: groups until none is left."""
        while group := self.outcomes.take():
            self._write_outcomes(group)

    def _write_outcomes(self, group: list[Outcome]) -> None:
        """Write the outcomes of `group` durably (one fsync per folder), then drop the
        requests of new events; one Done for all. On a failed write none is handed back
        as written: the files are the truth (_reopen)."""
        try:
            self.outbox.put_many([rec for rec, _, _ in group],
                                 [request for _, request, _ in group if request is not None])
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            self._hand_back(Done([(rec["id"], None) for rec, _, _ in group], error=exc,
                                 task=False))
            return
        self._hand_back(Done([(rec["id"], rec) for rec, _, _ in group],
                             [result for _, _, result in group], task=False))

    def _settle(self, recs: list[dict[str, Any]]) -> None:
        """The settle check of due held batch events, and what it decides, made durable."""
        out: list[tuple[str, dict[str, Any] | None]] = []
        cleared: list[str] = []
        try:
            verdicts = self.check(recs)
            now = self.clock.time()
            for rec in recs:
                verdict = verdicts.get(rec["id"], Verdict.WAIT)
                if verdict is Verdict.SEND:
                    cleared.append(rec["id"])
                    out.append((rec["id"], rec))
                elif verdict is Verdict.SUPERSEDED:
                    self.outbox.delete(rec["id"])
                    out.append((rec["id"], None))
                    self.log.info("batch event superseded: its batch gained jobs",
                                  event_id=rec["id"], batch=rec["batch"], url=rec["url"])
                else:
                    wait = max(0.05, min(RECHECK, self.settings.batch_settle))
                    later = postponed(rec, now + wait, now)
                    self.outbox.put(later)
                    out.append((rec["id"], later))
            self._hand_back(Done(out, cleared=cleared))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            done = {event_id for event_id, _ in out}
            out += [(rec["id"], rec) for rec in recs if rec["id"] not in done]
            self._hand_back(Done(out, cleared=cleared, error=exc))


def recover(state: Callbacks) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Load the live outbox into `state`; in_flight -> pending. (found, did, degraded);
    OSError if the outbox cannot be used."""
    scan = state.outbox.scan()
    finished = state.outbox.finish_prune()       # a removal past retention a crash cut
    found = {"pending": 0, "in_flight": 0, "held": 0, "corrupt": len(scan.notes)}
    requeued = 0
    for rec in scan.records:
        found[rec["state"]] += 1
        if rec["state"] == "in_flight":
            state.store(interrupted(rec, state.clock.time()))     # durable before ready
            state.log.warning("delivery interrupted by a crash: it will be sent again",
                              event_id=rec["id"], url=rec["url"], attempts=rec["attempts"])
            requeued += 1
        else:
            found["held"] += held(rec)
            state.schedule(rec)
    return found, {"requeued": requeued, "quarantined": len(scan.notes),
                   "settled_moved": scan.moved, "duplicates_removed": scan.duplicates,
                   "pruned_finished": finished}, \
        scan.notes


# -- handlers (main thread) --------------------------------------------------------------------

def _event_id(req: dict[str, Any]) -> str:
    event_id = req.get("event_id")
    if not valid_event_id(event_id):
        raise BadRequest(f"'event_id' {event_id!r} is not an event id")
    return event_id


def _check_batch(req: dict[str, Any]) -> None:
    batch = req.get("batch")
    if batch is None:
        return
    jobs = (req["payload"].get("batch") or {}).get("jobs") \
        if isinstance(req["payload"].get("batch"), dict) else None
    if not isinstance(batch, str) or not batch:
        raise BadRequest("'batch' must be a batch name")
    if not (isinstance(jobs, list) and jobs and all(isinstance(j, str) for j in jobs)):
        raise BadRequest("a batch event's payload must list its jobs (batch.jobs)")


def handle_deliver(state: Callbacks, req: dict[str, Any], path: Path) -> bool:
    """A new event to deliver (True: its request stays in the inbox until the first try).

    A replay (the event has a record) changes nothing. A batch event is held for
    `batch_settle`: its record is written now, due when the window ends. Any other event
    joins the schedule, due now, as its request: the first try writes its record."""
    event_id = _event_id(req)
    if not valid_url(req.get("url")):
        raise BadRequest(f"'url' {req.get('url')!r} is not an http(s) URL")
    if not isinstance(req.get("payload"), dict):
        raise BadRequest("'payload' must be a JSON object")
    if not isinstance(req.get("job"), (str, type(None))):
        raise BadRequest("'job' must be a job id or null")
    _check_batch(req)
    if state.known(event_id):
        state.log.info("delivery request replayed: already in the outbox", event_id=event_id)
        return False
    rec = new_delivery(req, state.clock.time(), settle=state.settings.batch_settle)
    if held(rec):
        state.store(rec)
        state.log.info("batch event held for the settle window", event_id=event_id,
                       batch=rec["batch"], url=rec["url"], until=rec["next_attempt_at"])
        return False
    state.requests[event_id] = path
    state.schedule(rec)
    state.log.info("delivery queued", event_id=event_id, job=req.get("job"), url=req["url"])
    state.reap()
    state.dispatch()        # a long inbox does not hold back the first tries
    return True


def handle_retry(state: Callbacks, req: dict[str, Any], path: Path) -> bool:
    """The operator's retry: a failed or pending delivery is due now, on a fresh schedule.
    One a thread holds (a try in flight) is retried once that try is over (NotYet)."""
    event_id = _event_id(req)
    if event_id in state.busy:
        state.deferred.add(event_id)
        raise NotYet(f"delivery {event_id} has a try in flight")
    state.deferred.discard(event_id)
    if event_id in state.requests:
        state.log.info("retry of a delivery not tried yet: it is due now", event_id=event_id)
        return False
    rec = state.pending.get(event_id) or state.outbox.get(event_id)
    if rec is None:
        state.log.warning("retry of an unknown delivery ignored", event_id=event_id)
        return False
    try:
        new = operator_retry(rec, state.clock.time())
    except InvalidTransition as exc:
        state.log.warning("retry ignored", event_id=event_id, reason=str(exc))
        return False
    state.store(new, moved=rec["state"] in SETTLED_STATES)
    state.log.info("delivery retry requested", event_id=event_id, attempts=new["attempts"])
    return False


def handle_prune(state: Callbacks, req: dict[str, Any], path: Path) -> bool:
    """The reaper's ask (retention.callbacks): remove the settled records it names that
    are still settled and `older_than` past their last change (checked here, by their
    owner: a record an operator retried meanwhile stays), counted in callbacks/pruned.json."""
    ids, older = req.get("event_ids"), req.get("older_than")
    if not isinstance(ids, list) or not all(valid_event_id(i) for i in ids):
        raise BadRequest("'event_ids' must be a list of event ids")
    if not isinstance(older, int | float) or isinstance(older, bool) or older < 0:
        raise BadRequest("'older_than' must be seconds >= 0")
    live = [i for i in ids if i not in state.pending and i not in state.busy
            and i not in state.requests]
    for event_id, outcome in state.outbox.prune(live, float(older), state.clock.time()):
        state.log.info("delivery record removed past retention.callbacks",
                       event_id=event_id, state=outcome, request=req["id"])
    return False


#: request kind -> handler (in this order: a retry never overtakes the event it names);
#: True from a handler: the request stays in the inbox, taken (not read again).
HANDLERS: dict[str, Callable[[Callbacks, dict[str, Any], Path], bool]] = {
    "deliver": handle_deliver,
    "retry": handle_retry,
    "prune": handle_prune,
}


def _reject(path: Path, why: str, log: Log) -> None:
    log.warning("malformed request quarantined", path=str(path), moved_to=quarantine(path),
                reason=why)


def take_inbox(state: Callbacks, inbox: Path) -> int:
    """Handle the requests in the inbox not taken yet; how many were handled.

    Kind by kind in HANDLERS order, oldest first within a kind (the runtime's one inbox
    reader lists them, skipping the taken ones). A request is removed (durably) once its
    effect is durable, except a new event's, which stays until its first try; a malformed
    one is quarantined; one a handler cannot take yet (NotYet) stays for a later pass."""
    taken = {path.name for path in state.requests.values()}
    rank = {kind: i for i, kind in enumerate(HANDLERS)}
    todo = inbox_requests(inbox, state.log, skip=taken.__contains__)
    todo.sort(key=lambda item: rank.get(item[1]["kind"], len(rank)))
    done = 0
    for path, req in todo:
        if stop_requested():
            break
        handler = HANDLERS.get(req["kind"])
        if handler is None:
            _reject(path, f"unknown request kind {req['kind']!r}", state.log)
            continue
        try:
            keep = handler(state, req, path)
        except BadRequest as exc:
            _reject(path, str(exc), state.log)
            continue
        except NotYet:
            continue
        if not keep:
            remove(path)
        done += 1
    return done


# -- the loop (main thread) --------------------------------------------------------------------

def serve(state: Callbacks, waiter: Waiter, inbox: Path, *,
          stop: Callable[[], bool] = stop_requested, grace: float | None = None,
          retry: WriteRetry | None = None) -> Callbacks:
    """Until `stop()`: sleep until the next due try, a hint, or a thread handing a record
    back; take the inbox on a hint (or rescan); hand out what is due. A write that fails
    (ENOSPC, EIO) rebuilds the worker from its files after a backoff (see _reopen), never
    an exit. At stop, wait up to `grace` (default: the POST timeout) for the tries in
    flight. The state in use at the end is returned."""
    retry = retry if retry is not None else WriteRetry(state.clock)
    try:
        while not stop():
            try:
                _serve_once(state, waiter, inbox, stop)
            except OSError as exc:
                fresh = _reopen(state, exc, retry, stop)
                if fresh is None:
                    break
                state = fresh
                continue
            if state.progress:
                state.progress = False
                retry.ok()
    finally:
        state.drain(state.settings.timeout if grace is None else grace)
    return state


def _serve_once(state: Callbacks, waiter: Waiter, inbox: Path,
                stop: Callable[[], bool]) -> None:
    state.reap()
    before = getattr(waiter, "looks", None)
    woken = waiter.wait(0.0 if state.retry_now else state.sleep_for())
    # a Watcher counts hints and rescans: a wake by a sending thread alone is no reason
    # to list the inbox (the other waiters: every wake is)
    looked = woken if before is None else getattr(waiter, "looks", None) != before
    state.reap()
    if (looked or state.retry_now) and not stop():
        state.retry_now = False
        if take_inbox(state, inbox):
            state.progress = True
    if not stop():
        state.dispatch()


def _quiesce(state: Callbacks, stop: Callable[[], bool]) -> None:
    """Wait for every try in flight to hand its records back (each thread owns its
    records until then: a rebuilt worker must not hand them out twice); their errors
    are logged, the files are the truth. The threads (idle now) serve the rebuilt one."""
    while (state.tasks or state.writing) and not stop():
        try:
            done = state._done.get(timeout=0.5)
        except queue.Empty:
            continue
        state._done.put(done)
        try:
            state.reap()
        except OSError as exc:
            state.log.error("a delivery could not be recorded", error=str(exc))


def _reopen(state: Callbacks, exc: OSError, retry: WriteRetry, stop: Callable[[], bool]
            ) -> Callbacks | None:
    """After a write failed (a full or failing disk): what is in memory may be ahead of
    the outbox, so once the tries in flight are back, wait (1, 2, 4 .. 30 s) and rebuild
    everything from the files as a restart would (law 4) — without exiting, so a full
    disk never makes a crash loop. A record whose write failed is as its file says (a
    try whose outcome was not recorded is sent again: at-least-once); a request whose
    effect was not durable is still in the inbox and is taken again. None at a stop."""
    state.log.error("a write failed: the outbox is read again from disk",
                    error=str(exc), errno=exc.errno, retry_in_s=retry.delay)
    state._unqueue()                  # the rebuilt worker hands them out again
    _quiesce(state, stop)
    if state.tasks or state.writing:
        return None                       # stopping with tries in flight: drain them
    while retry.wait(stop):
        fresh = Callbacks(log=state.log, outbox=state.outbox, transport=state.transport,
                          settings=state.settings, clock=state.clock, check=state.check,
                          executor=state.executor, wake=state.wake,
                          outcomes=state.outcomes,
                          retry_now=True)     # the inbox: taken at once
        try:
            recover(fresh)
        except OSError as again:
            state.log.error("reading the outbox again failed; tried again",
                            error=str(again), errno=again.errno, retry_in_s=retry.delay)
            continue
        state.log.info("outbox read again after a failed write", pending=len(fresh.pending))
        return fresh
    return None


def main(cfg: Config) -> int:
    """Recover the outbox, report ready, then deliver and serve the inbox until SIGTERM."""
    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get(NAME)
    # the sending threads share their folder fsyncs (GroupFS): fewer when tries come together
    state = Callbacks(log=log, outbox=DirOutbox(layout.callbacks_outbox, log,
                                                done=layout.callbacks_done,
                                                requests=layout.inbox(NAME),
                                                pruned=layout.callbacks_pruned, fs=GroupFS()),
                      transport=HttpTransport(), settings=cfg.callbacks,
                      check=wal_check(layout.wal_dir, log))
    try:
        got = until_written("recovery", lambda: recover(state), log)
    except OSError as exc:
        log.error("recovery failed", error=str(exc))
        return EXIT_RECOVERY_FAILED
    if got is None:
        return EXIT_OK                        # stopped while the disk was full
    found, did, degraded = got
    inbox = layout.inbox(NAME)
    # a request arrives by rename (or creation); the worker's own removals are no hint,
    # and the inotify descriptor is read by this thread's wait itself (no watchdog threads)
    with Watcher([inbox], log=log, direct=True) as watcher:
        state.wake = watcher.wake
        report_ready(layout, NAME, found=found, did=did, degraded=degraded,
                     started_monotonic=started, started_at=started_at)
        log.info("ready", pid=os.getpid(), **found)
        serve(state, watcher, inbox)
    return EXIT_OK
