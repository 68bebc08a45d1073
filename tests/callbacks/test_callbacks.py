"""Tests for supervisor.callbacks: recovery of the live outbox, the inbox handlers, handing
tries to threads (inline for determinism, real threads where concurrency is the point),
the per-receiver limit, Retry-After, held batch events, the serving loop (fake clock), and
power cuts during a try (tests.crashfs)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from supervisor import callbacks
from supervisor import log as _log
from supervisor.callbacks.settle import Verdict
from supervisor.callbacks.transport import MockTransport, Reply, Sent, TransportError
from supervisor.config import CallbacksConfig
from supervisor.runtime import WriteRetry
from supervisor.state.atomic import CORRUPT_MARK, discard
from supervisor.state.clock import MockClock, iso_now
from supervisor.state.layout import DELIVERY, REQUEST, Layout, read_record, write_record
from supervisor.state.webhook import (
    batch_payload,
    begin,
    delivery_request,
    drop_request,
    due_at,
    job_event_id,
    new_delivery,
    prune_request,
    read_pruned,
    retry_request,
)
from tests.crashfs import CrashFS, explore
from tests.helpers import BadDisk, until

T0 = 1_800_000_000.0
URL = "http://127.0.0.1:9/hook"
OTHER = "http://127.0.0.1:10/hook"


class Inline(Executor):
    """Runs each submitted call at once, on the caller's thread: tries become deterministic."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


class Receiver:
    """A MockTransport handler answering from a script (the last answer forever); a str
    answer is a transport error."""

    def __init__(self, *answers: int | str | Reply) -> None:
        self.script = list(answers)

    def __call__(self, sent: Sent) -> int | Reply:
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, str):
            raise TransportError(answer)
        return answer


def make(tmp_path: Path, *answers: int | str | Reply,
         schedule: tuple[float, ...] = (10.0, 20.0), secret: str | None = None,
         settle: float = 0.0, concurrency: int = 16,
         executor: Executor | None = None) -> callbacks.Callbacks:
    layout = Layout(tmp_path)
    log = _log.get("test")
    return callbacks.Callbacks(
        log=log, outbox=callbacks.DirOutbox(layout.callbacks_outbox, log,
                                            done=layout.callbacks_done,
                                            pruned=layout.callbacks_pruned),
        transport=MockTransport(Receiver(*answers or (200,))),
        settings=CallbacksConfig(retry_schedule=schedule, timeout=3.0, secret=secret,
                                 concurrency=concurrency, batch_settle=settle),
        clock=MockClock(T0), executor=executor or Inline())


def sent(state: callbacks.Callbacks) -> list[Sent]:
    assert isinstance(state.transport, MockTransport)
    return state.transport.sent


def clock(state: callbacks.Callbacks) -> MockClock:
    assert isinstance(state.clock, MockClock)
    return state.clock


def step(state: callbacks.Callbacks) -> int:
    """Hand out what is due and take the outcomes back (inline: the tries are over)."""
    started = state.dispatch()
    state.reap()
    return started


def on_disk(tmp_path: Path, event_id: str) -> dict[str, Any]:
    """The record, wherever it is (live or settled)."""
    layout = Layout(tmp_path)
    for folder in (layout.callbacks_outbox, layout.callbacks_done):
        rec = read_record(DELIVERY, folder / f"{event_id}.json", owner=False)
        if isinstance(rec, dict):
            return rec
    raise AssertionError(f"no record of {event_id}")


def where(tmp_path: Path, event_id: str) -> list[str]:
    """The folders holding a record of `event_id`."""
    layout = Layout(tmp_path)
    return [name for name, folder in (("outbox", layout.callbacks_outbox),
                                      ("done", layout.callbacks_done))
            if (folder / f"{event_id}.json").exists()]


def hand_over(tmp_path: Path, event_id: str, job: str = "j1", url: str = URL) -> dict[str, Any]:
    """Drop a deliver request as the scheduler does."""
    req = delivery_request(event_id, url, {"event_id": event_id, "job": {"id": job}}, job=job)
    drop_request(Layout(tmp_path), req)
    return req


def take_inbox(tmp_path: Path, state: callbacks.Callbacks) -> int:
    return callbacks.take_inbox(state, Layout(tmp_path).inbox("callbacks"))


def inbox_names(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(Layout(tmp_path).inbox("callbacks")))


def stored(tmp_path: Path, rec: dict[str, Any], folder: str = "outbox") -> None:
    layout = Layout(tmp_path)
    path = layout.callbacks_outbox if folder == "outbox" else layout.callbacks_done
    path.mkdir(parents=True, exist_ok=True)
    write_record(DELIVERY, path / f"{rec['id']}.json", rec)


def fresh(event_id: str, now: float = T0, url: str = URL) -> dict[str, Any]:
    return new_delivery(delivery_request(event_id, url, {"event_id": event_id}, job="j1"),
                        now)


def settled(event_id: str, state: str = "delivered") -> dict[str, Any]:
    return {**begin(fresh(event_id), T0), "state": state, "next_attempt_at": None}


# -- recovery ---------------------------------------------------------------------------------

def test_empty_outbox(tmp_path: Path) -> None:
    """No outbox yet: both folders are created, nothing found, nothing degraded."""
    state = make(tmp_path)
    found, did, degraded = callbacks.recover(state)
    assert ({"pending": 0, "in_flight": 0, "held": 0, "corrupt": 0},
            {"requeued": 0, "quarantined": 0, "settled_moved": 0, "duplicates_removed": 0,
             "pruned_finished": 0},
            [], {}) == (found, did, degraded, state.pending)
    assert (True, True) == (Layout(tmp_path).callbacks_outbox.is_dir(),
                            Layout(tmp_path).callbacks_done.is_dir())


def test_recovery_reads_live_records_and_quarantines_corrupt_ones(tmp_path: Path) -> None:
    """Pending records are loaded; unparseable, nonsensical and misnamed records are moved
    aside and named; a temp file (a write in progress) is left alone; settled records in
    done/ are not read at all (a corrupt one there is not even noticed)."""
    outbox = Layout(tmp_path).callbacks_outbox
    stored(tmp_path, fresh("e1"))
    stored(tmp_path, settled("e2"), "done")
    (Layout(tmp_path).callbacks_done / "e9.json").write_bytes(b"{")
    (outbox / "e3.json").write_bytes(b'{"id": "e3", "url"')
    write_record(DELIVERY, outbox / "e4.json", {**fresh("e4"), "attempts": "many"})
    write_record(DELIVERY, outbox / "e5.json", fresh("other"))
    (outbox / ".tmp.e6.json.1.ab").write_bytes(b"{")
    state = make(tmp_path)
    found, did, degraded = callbacks.recover(state)
    assert ({"pending": 1, "in_flight": 0, "held": 0, "corrupt": 3}, 3, ["e1"]) == (
        found, did["quarantined"], list(state.pending))
    moved = sorted(n for n in os.listdir(outbox) if CORRUPT_MARK in n)
    assert [n.split(CORRUPT_MARK)[0] for n in moved] == ["e3.json", "e4.json", "e5.json"]
    assert [f"callback delivery {n.split(CORRUPT_MARK)[0]} was corrupt: moved to "
            f"{outbox / n}" for n in moved] == degraded
    assert (outbox / ".tmp.e6.json.1.ab").exists()
    assert (Layout(tmp_path).callbacks_done / "e9.json").exists()


def test_a_quarantined_record_is_not_counted_again(tmp_path: Path) -> None:
    """The next start does not count (or move again) what was already moved aside."""
    stored(tmp_path, fresh("e1"))
    (Layout(tmp_path).callbacks_outbox / "e1.json").write_bytes(b"")
    callbacks.recover(make(tmp_path))
    found, _, degraded = callbacks.recover(make(tmp_path))
    assert (0, []) == (found["corrupt"], degraded)
    assert 1 == len(os.listdir(Layout(tmp_path).callbacks_outbox))


def test_in_flight_at_recovery_goes_back_to_pending_and_is_sent_again(tmp_path: Path) -> None:
    """A try the last incarnation died in: pending on disk, due now, then POSTed again."""
    stored(tmp_path, begin(fresh("e1"), T0 - 60))
    state = make(tmp_path, 200)
    found, did, _ = callbacks.recover(state)
    rec = on_disk(tmp_path, "e1")
    assert (1, 1, "pending", T0, 1) == (found["in_flight"], did["requeued"], rec["state"],
                                        due_at(rec), rec["attempts"])
    assert 1 == step(state)
    rec = on_disk(tmp_path, "e1")
    assert ("delivered", 2, 1, ["done"]) == (rec["state"], rec["attempts"], len(sent(state)),
                                             where(tmp_path, "e1"))


def test_a_settled_record_left_in_the_outbox_is_moved_to_done(tmp_path: Path) -> None:
    """A delivered record in outbox/ (the layout before done/ existed) is moved to done/
    at start, not loaded."""
    stored(tmp_path, settled("e1"))
    state = make(tmp_path)
    _, did, _ = callbacks.recover(state)
    assert (1, ["done"], {}) == (did["settled_moved"], where(tmp_path, "e1"), state.pending)
    assert "delivered" == on_disk(tmp_path, "e1")["state"]


def test_a_record_in_both_folders_keeps_the_settled_copy(tmp_path: Path) -> None:
    """A crash between writing done/ and removing outbox/: the settled copy wins."""
    stored(tmp_path, begin(fresh("e1"), T0))
    stored(tmp_path, settled("e1"), "done")
    state = make(tmp_path)
    found, did, _ = callbacks.recover(state)
    assert ((0, 1), ["done"], {}) == ((found["in_flight"], did["duplicates_removed"]),
                                      where(tmp_path, "e1"), state.pending)


# -- the deliver request ------------------------------------------------------------------------

def test_deliver_request_is_tried_at_once_and_its_try_makes_the_record(
        tmp_path: Path) -> None:
    """The try is handed out in the same pass; its in_flight write creates the record
    (durable before the POST), and only then is the request dropped."""
    seen: list[tuple[str, int]] = []

    def receiver(post: Sent) -> int:
        rec = on_disk(tmp_path, eid)
        seen.append((rec["state"], rec["attempts"]))
        return 200

    state = make(tmp_path)
    state.transport = MockTransport(receiver)
    callbacks.recover(state)
    eid = job_event_id("j1")
    hand_over(tmp_path, eid)
    assert 1 == take_inbox(tmp_path, state)
    state.reap()
    rec = on_disk(tmp_path, eid)
    assert ((eid, "j1", URL, "delivered", 1, None), [], [("in_flight", 1)]) == (
        (rec["id"], rec["job"], rec["url"], rec["state"], rec["attempts"], rec["last_error"]),
        inbox_names(tmp_path), seen)
    assert {"event_id": eid, "job": {"id": "j1"}} == rec["payload"]


def test_replayed_deliver_request_is_a_no_op(tmp_path: Path) -> None:
    """The scheduler replays its request after a crash: the delivered record stays as it
    is (in done/) and nothing is POSTed again; the request is removed."""
    state = make(tmp_path, 200)
    callbacks.recover(state)
    req = hand_over(tmp_path, "e1")
    take_inbox(tmp_path, state)
    state.reap()
    before = on_disk(tmp_path, "e1")
    drop_request(Layout(tmp_path), req)
    restarted = make(tmp_path, 200)
    callbacks.recover(restarted)
    assert 1 == take_inbox(tmp_path, restarted)
    assert (before, [], {}, 0, []) == (on_disk(tmp_path, "e1"), inbox_names(tmp_path),
                                       restarted.pending, step(restarted), sent(restarted))


@pytest.mark.parametrize("change", [
    {"url": "ftp://h/x"}, {"event_id": "../etc"}, {"payload": "text"}, {"job": 3},
    {"batch": 7}, {"batch": "B"}])
def test_a_malformed_deliver_request_is_quarantined(tmp_path: Path,
                                                    change: dict[str, Any]) -> None:
    """Bad URL, id, payload, job or batch (a batch event must list its jobs): the request
    is moved aside, the outbox untouched."""
    state = make(tmp_path)
    callbacks.recover(state)
    drop_request(Layout(tmp_path), {**delivery_request("e1", URL, {}, job="j1"), **change})
    take_inbox(tmp_path, state)
    assert ([], True) == (os.listdir(Layout(tmp_path).callbacks_outbox),
                          all(CORRUPT_MARK in n for n in inbox_names(tmp_path)))


def test_a_new_event_waits_for_its_first_try_as_its_request(tmp_path: Path,
                                                              pool: ThreadPoolExecutor) -> None:
    """No slot free: the event is scheduled from its request, which stays in the inbox
    (no record is written; a later pass does not read it again); a restarted worker reads
    it again; once a slot frees, its try writes the record and drops the request."""
    gate = Gate("http://127.0.0.1:9/")
    state = make(tmp_path, executor=pool, concurrency=1)
    state.transport = MockTransport(gate)
    stored(tmp_path, fresh("first"))
    callbacks.recover(state)
    state.dispatch()
    until("the first try held", lambda: gate.holding == 1)
    hand_over(tmp_path, "e2")
    try:
        assert (1, 0, ["e2.json"], []) == (take_inbox(tmp_path, state),
                                           take_inbox(tmp_path, state),
                                           inbox_names(tmp_path), where(tmp_path, "e2"))
        restarted = make(tmp_path)
        restarted.dispatch = lambda: 0      # type: ignore[method-assign]
        callbacks.recover(restarted)
        assert (1, ["e2"]) == (take_inbox(tmp_path, restarted), list(restarted.requests))
    finally:
        gate.release.set()
    until("e2 delivered", lambda: (state.reap(), state.dispatch(),
                                   where(tmp_path, "e2") == ["done"])[-1])
    assert ([], {}) == (inbox_names(tmp_path), state.requests)


def test_a_request_left_beside_its_record_is_a_replay(tmp_path: Path) -> None:
    """A power cut after the first try's in_flight write may bring the dropped request
    back: the restarted worker finds the record (tried again, as any in_flight one) and
    removes the request without a second record or try."""
    req = hand_over(tmp_path, "e1")
    stored(tmp_path, begin(new_delivery(req, T0), T0))
    state = make(tmp_path, 200)
    callbacks.recover(state)
    assert 1 == take_inbox(tmp_path, state)
    step(state)
    assert ([], "delivered", 2, 1) == (inbox_names(tmp_path), on_disk(tmp_path, "e1")["state"],
                                       on_disk(tmp_path, "e1")["attempts"], len(sent(state)))


# -- tries ------------------------------------------------------------------------------------

def test_one_try_posts_the_documented_request(tmp_path: Path) -> None:
    """Body = the payload's canonical bytes; key = event id; signed; timeout from config;
    a delivered record moves from outbox/ to done/."""
    state = make(tmp_path, 200, secret="k")
    callbacks.recover(state)
    stored(tmp_path, fresh("e1"))
    callbacks.recover(state)
    assert 1 == step(state)
    (post,) = sent(state)
    assert (URL, "e1", "application/json", 3.0, True) == (
        post.url, post.headers["Idempotency-Key"], post.headers["Content-Type"], post.timeout,
        post.headers["X-Batchd-Signature"].startswith("sha256="))
    assert ("delivered", 1, {}, ["done"]) == (on_disk(tmp_path, "e1")["state"],
                                              on_disk(tmp_path, "e1")["attempts"],
                                              state.pending, where(tmp_path, "e1"))


def test_retries_follow_the_schedule_then_fail(tmp_path: Path) -> None:
    """503, then a connection error: retried at +10s and +20s, then failed (in done/);
    nothing is tried before its time."""
    state = make(tmp_path, 503, "connection failed: refused", schedule=(10.0, 20.0))
    stored(tmp_path, fresh("e1"))
    callbacks.recover(state)
    assert 1 == step(state)
    assert (0, 10.0) == (step(state), state.sleep_for())
    clock(state).advance(10)
    assert 1 == step(state)
    assert 20.0 == state.sleep_for()
    clock(state).advance(20)
    assert 1 == step(state)
    rec = on_disk(tmp_path, "e1")
    assert ("failed", 3, "connection failed: refused", None, None, ["done"]) == (
        rec["state"], rec["attempts"], rec["last_error"], rec["next_attempt_at"],
        state.sleep_for(), where(tmp_path, "e1"))


def test_the_earliest_due_delivery_goes_first(tmp_path: Path) -> None:
    """Two due: the one due earlier is tried first."""
    stored(tmp_path, fresh("late", T0 - 1))
    stored(tmp_path, fresh("early", T0 - 5))
    state = make(tmp_path, 200)
    callbacks.recover(state)
    step(state)
    assert ["early", "late"] == [s.headers["Idempotency-Key"] for s in sent(state)]


# -- Retry-After ------------------------------------------------------------------------------

def _after(tmp_path: Path, reply: Reply, schedule: tuple[float, ...] = (10.0, 20.0)
           ) -> tuple[float, str | None]:
    state = make(tmp_path, reply, schedule=schedule)
    stored(tmp_path, fresh("e1"))
    callbacks.recover(state)
    step(state)
    rec = on_disk(tmp_path, "e1")
    return due_at(rec) - T0, rec["last_error"]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_replaces_the_next_delay(tmp_path: Path, status: int) -> None:
    """A 429 or 503 with `Retry-After: 120` is tried again in 120 s, not the schedule's 10."""
    assert (120.0, f"HTTP {status}") == _after(
        tmp_path, Reply.of(status, {"Retry-After": "120"}))


def test_retry_after_as_an_http_date(tmp_path: Path) -> None:
    """`Retry-After: <HTTP date>` 45 s after now: tried again then."""
    date = format_datetime(datetime.fromtimestamp(T0 + 45, tz=UTC), usegmt=True)
    assert (45.0, "HTTP 503") == _after(tmp_path, Reply.of(503, {"Retry-After": date}))


@pytest.mark.parametrize(("reply", "delay"), [
    (Reply.of(503, {"Retry-After": "100000"}), 200.0),     # capped: last step (20 s) x 10
    (Reply.of(503, {"Retry-After": "0"}), 0.0),            # at once
    (Reply.of(503, {"Retry-After": "soon"}), 10.0),        # unreadable: the schedule
    (Reply.of(500, {"Retry-After": "120"}), 10.0),         # only 429 and 503 are heeded
    (Reply.of(503, {"Retry-After": format_datetime(
        datetime.fromtimestamp(T0 - 60, tz=UTC), usegmt=True)}), 0.0),   # a past date
])
def test_retry_after_limits(tmp_path: Path, reply: Reply, delay: float) -> None:
    """Capped at the schedule's last step x 10; 0 and past dates: due now; unreadable or
    on another status: the schedule's delay."""
    assert delay == _after(tmp_path, reply)[0]


def test_retry_after_does_not_add_retries(tmp_path: Path) -> None:
    """With the schedule used up a 503 fails whatever Retry-After says."""
    state = make(tmp_path, Reply.of(503, {"Retry-After": "5"}), schedule=(1.0,))
    stored(tmp_path, fresh("e1"))
    callbacks.recover(state)
    step(state)
    clock(state).advance(5)
    step(state)
    assert ("failed", 2) == (on_disk(tmp_path, "e1")["state"], on_disk(tmp_path, "e1")["attempts"])


# -- concurrency --------------------------------------------------------------------------------

class Gate:
    """A transport handler that holds every POST to `slow` until released; others answer
    200 at once. `holding` counts the POSTs held right now."""

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.holding = self.most = 0

    def __call__(self, post: Sent) -> int:
        if not post.url.startswith(self.slow):
            return 200
        with self.lock:
            self.holding += 1
            self.most = max(self.most, self.holding)
        self.release.wait(30)
        with self.lock:
            self.holding -= 1
        return 200


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(max_workers=17)
    yield ex
    ex.shutdown(wait=True)


def test_a_hanging_receiver_does_not_hold_back_another(tmp_path: Path,
                                                       pool: ThreadPoolExecutor) -> None:
    """Real threads: five events to a receiver that hangs, then one to a fast receiver;
    the fast one is delivered while the slow ones are still held, and only 4 tries to the
    slow receiver are in flight at once (the per-host limit): the fifth waits in the
    receiver's lane and goes when one of the four is over."""
    gate = Gate("http://127.0.0.1:9/")
    state = make(tmp_path, executor=pool)
    state.transport = MockTransport(gate)
    for i in range(5):
        stored(tmp_path, fresh(f"slow{i}", T0 - 10 + i))
    stored(tmp_path, fresh("fast", T0, url=OTHER))
    callbacks.recover(state)
    try:
        assert 5 == state.dispatch()
        until("the fast delivery", lambda: where(tmp_path, "fast") == ["done"])
        until("4 slow tries held", lambda: gate.holding == 4)
        assert ("in_flight", [], ["slow4"], 4) == (
            on_disk(tmp_path, "slow0")["state"], list(state.pending), list(state._queued),
            sum(n for host, n in state._hosts.items() if host.endswith(":9")))
    finally:
        gate.release.set()
    until("every delivery", lambda: (state.reap(), state.dispatch(),
                                     all(where(tmp_path, f"slow{i}") == ["done"]
                                         for i in range(5)))[-1])
    assert 4 == gate.most


def test_concurrency_bounds_the_tries_in_flight(tmp_path: Path,
                                                pool: ThreadPoolExecutor) -> None:
    """With concurrency 2, two receivers that hang: 2 tries in flight, no more."""
    gate = Gate("http://127.0.0.1:")
    state = make(tmp_path, executor=pool, concurrency=2)
    state.transport = MockTransport(gate)
    for i in range(3):
        stored(tmp_path, fresh(f"e{i}", T0 - 3 + i, url=f"http://127.0.0.1:{9 + i}/"))
    callbacks.recover(state)
    try:
        assert (2, None) == (state.dispatch(), state.sleep_for())
        until("2 held", lambda: gate.holding == 2)
    finally:
        gate.release.set()
    until("every delivery", lambda: (state.reap(), state.dispatch(),
                                     not state.pending and not state.busy)[-1])
    assert 2 == gate.most


class Held(Executor):
    """Keeps each submitted call without running it: what was handed out, and in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls.append(args)
        return Future()


def test_a_full_receiver_lane_goes_back_to_the_schedule_when_a_slot_frees(
        tmp_path: Path) -> None:
    """Six due events to one receiver: 4 tries go to threads, the other 2 wait in the
    receiver's lane (owned: busy). A thread whose POST is over finds the lane empty (it
    looked just before they were added) and frees its slot: the lane's tries go back to
    the schedule, and the next hand-out starts one on the free slot and queues the other
    again, so no try is left in a lane with no POST to that receiver in flight; a retry
    that waited for one of them may go now."""
    held = Held()
    state = make(tmp_path, executor=held)
    for i in range(6):
        stored(tmp_path, fresh(f"e{i}", T0 - 10 + i))
    callbacks.recover(state)
    state.dispatch()
    assert (["e0", "e1", "e2", "e3"], ["e4", "e5"], 6) == (
        [args[0]["id"] for args in held.calls], list(state._queued), len(state.busy))
    state.deferred.add("e4")            # an operator retry of e4 waited (NotYet)
    state._done.put(callbacks.Posted("e0"))
    state.reap()
    assert ([], ["e4", "e5"], 3, True) == (list(state._queued), sorted(state.pending),
                                           sum(state._hosts.values()), state.retry_now)
    state.dispatch()
    assert (["e0", "e1", "e2", "e3", "e4"], ["e5"], 4, 1) == (
        [args[0]["id"] for args in held.calls], list(state._queued),
        sum(state._hosts.values()), state.writing)


class SlowSettle(callbacks.DirOutbox):
    """A DirOutbox whose outcome writes (settled records) wait until released."""

    release = threading.Event()
    waiting = 0

    def put_many(self, recs: Sequence[dict[str, Any]], drop: Sequence[Path] = ()) -> None:
        type(self).waiting += sum(rec["state"] in ("delivered", "failed") for rec in recs)
        self.release.wait(30)
        super().put_many(recs, drop)


def test_a_receiver_slot_frees_when_the_post_is_over(tmp_path: Path,
                                                     pool: ThreadPoolExecutor) -> None:
    """Six events to one receiver whose outcome writes are slow: the slot of each try is
    given back once its POST is answered (Posted), so all six POSTs go while the first
    outcome is still being written (the others wait to be written with it, by that one
    writer: no thread is held for them); never more than 4 POSTs in flight to the
    receiver, and each record stays owned (busy) until its outcome is on disk."""
    gate = Gate("http://127.0.0.1:9/")
    gate.release.set()                           # POSTs answer at once, counted
    state = make(tmp_path, executor=pool)
    layout = Layout(tmp_path)
    SlowSettle.release = threading.Event()
    SlowSettle.waiting = 0
    state.outbox = SlowSettle(layout.callbacks_outbox, state.log, done=layout.callbacks_done,
                              pruned=layout.callbacks_pruned)
    state.transport = MockTransport(gate)
    for i in range(6):
        stored(tmp_path, fresh(f"e{i}", T0 - 10 + i))
    callbacks.recover(state)
    try:
        state.dispatch()
        until("six POSTs", lambda: (state.reap(), state.dispatch(),
                                    len(sent(state)) == 6 and state.writing == 6
                                    and SlowSettle.waiting >= 1)[-1])
        assert (6, 0, 0) == (len(state.busy), sum(state._hosts.values()), state.tasks)
    finally:
        SlowSettle.release.set()
    until("every delivery handed back", lambda: (state.reap(), state.dispatch(),
                                                 not state.busy and all(
                                                     where(tmp_path, f"e{i}") == ["done"]
                                                     for i in range(6)))[-1])
    assert ({}, {}, True) == (state.busy, dict(state._hosts), gate.most <= 4)


def test_a_retry_of_a_try_in_flight_waits_for_it(tmp_path: Path,
                                                 pool: ThreadPoolExecutor) -> None:
    """An operator retry arriving while a try is in flight stays in the inbox (NotYet);
    once that try failed, the retry makes the record pending, due now: one record is
    never written by two threads, and each event's tries follow one another."""
    gate = Gate("http://127.0.0.1:9/")
    state = make(tmp_path, executor=pool)
    state.transport = MockTransport(lambda post: (gate(post), 400)[1])
    stored(tmp_path, fresh("e1"))
    callbacks.recover(state)
    state.dispatch()
    until("the try held", lambda: gate.holding == 1)
    drop_request(Layout(tmp_path), retry_request("e1"))
    assert (0, 1) == (take_inbox(tmp_path, state), len(inbox_names(tmp_path)))
    gate.release.set()
    until("the try over", lambda: (state.reap(), "e1" not in state.busy)[-1])
    assert (True, "failed") == (state.retry_now, on_disk(tmp_path, "e1")["state"])
    assert 1 == take_inbox(tmp_path, state)
    rec = on_disk(tmp_path, "e1")
    assert ("pending", ["outbox"], 1) == (rec["state"], where(tmp_path, "e1"), rec["retry_base"])


class UntilDelivered:
    """A waiter for serve: every wait returns a hint (the inbox is looked at), advancing
    the clock by its timeout; the loop stops one turn after `event_id` is settled on disk
    (or after `turns` waits)."""

    def __init__(self, tmp_path: Path, now: MockClock, event_id: str, turns: int = 50) -> None:
        self.tmp_path, self.now, self.event_id, self.turns = tmp_path, now, event_id, turns
        self.asked: list[float | None] = []
        self.settled_at: int | None = None

    def wait(self, timeout: float | None = None) -> bool:
        self.asked.append(timeout)
        self.turns -= 1
        if timeout is not None:
            self.now.advance(timeout)
        return True

    def stop(self) -> bool:
        if self.settled_at is None and isinstance(read_record(
                DELIVERY, Layout(self.tmp_path).callbacks_done / f"{self.event_id}.json",
                owner=False), dict):
            self.settled_at = len(self.asked)
        return self.turns <= 0 or (self.settled_at is not None
                                   and len(self.asked) > self.settled_at)


def serve_until_delivered(tmp_path: Path, state: callbacks.Callbacks, event_id: str
                          ) -> tuple[callbacks.Callbacks, UntilDelivered]:
    waiter = UntilDelivered(tmp_path, clock(state), event_id)
    state = callbacks.serve(state, waiter, Layout(tmp_path).inbox("callbacks"),
                            stop=waiter.stop, grace=0)
    return state, waiter


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_record_that_cannot_be_written_is_retried_with_a_backoff(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """A try whose in_flight write fails (full or failing disk) sends nothing; the worker
    does not exit: it reads the outbox again after 1 s, 2 s, 4 s while writes keep
    failing, and once they work the delivery is sent once and recorded delivered."""
    state = make(tmp_path)
    stored(tmp_path, fresh("e1"))
    callbacks.recover(state)
    disk = BadDisk(monkeypatch, error)
    disk.failures = 3
    t0 = clock(state).time()
    state, _ = serve_until_delivered(tmp_path, state, "e1")
    assert (3, 1, "delivered", 1, 7.0) == (
        disk.refused, len(sent(state)), on_disk(tmp_path, "e1")["state"],
        on_disk(tmp_path, "e1")["attempts"], clock(state).time() - t0)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_an_outcome_that_cannot_be_written_is_sent_again_never_taken_as_delivered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """The receiver answers 200 but the delivered record cannot be written, nor (the disk
    still failing) the in_flight record reset at the rebuild: the delivery is not taken
    as delivered; once writes work it is sent again (at-least-once) and recorded."""
    disk = BadDisk(monkeypatch, error)

    def receive(sent: Sent) -> int:
        if not state.transport.sent[:-1]:        # the first POST: then writes fail twice
            disk.failures = 2
        return 200

    state = make(tmp_path)
    state.transport = MockTransport(receive)
    stored(tmp_path, fresh("e1"))
    callbacks.recover(state)
    state, _ = serve_until_delivered(tmp_path, state, "e1")
    assert (2, 2, "delivered", ["done"]) == (
        disk.refused, len(sent(state)), on_disk(tmp_path, "e1")["state"],
        where(tmp_path, "e1"))


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_new_event_whose_first_record_fails_stays_in_the_inbox_until_delivered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """A new event's first try cannot write its record: its request stays in the inbox
    (the durable form of the event), is taken again after the backoff, and the event is
    delivered once; the inbox is empty at the end."""
    state = make(tmp_path)
    callbacks.recover(state)
    hand_over(tmp_path, "e2")
    disk = BadDisk(monkeypatch, error)
    disk.failures = 1
    state, _ = serve_until_delivered(tmp_path, state, "e2")
    assert (1, 1, "delivered", []) == (
        disk.refused, len(sent(state)), on_disk(tmp_path, "e2")["state"],
        inbox_names(tmp_path))


def test_the_write_backoff_doubles_to_30_s_and_starts_again_after_a_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While writes keep failing the waits are 1, 2, 4, 8, 16, 30, 30 s; a delivery that
    is recorded makes the next failure wait 1 s again."""
    state = make(tmp_path)
    stored(tmp_path, fresh("e1"))
    callbacks.recover(state)
    disk = BadDisk(monkeypatch, errno.ENOSPC)
    disk.failures = 7
    retry = WriteRetry(clock(state))
    waits: list[float] = []
    real_wait = retry.wait

    def wait(stop: Callable[[], bool] = lambda: False) -> bool:
        waits.append(retry.delay)
        return real_wait(stop)

    retry.wait = wait                          # type: ignore[method-assign]
    waiter = UntilDelivered(tmp_path, clock(state), "e1")
    callbacks.serve(state, waiter, Layout(tmp_path).inbox("callbacks"), stop=waiter.stop,
                    grace=0, retry=retry)
    assert ([1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0], 1.0) == (waits, retry.delay)


# -- the retry request ----------------------------------------------------------------------------

def failed_delivery(tmp_path: Path) -> callbacks.Callbacks:
    state = make(tmp_path, 400, 200)
    stored(tmp_path, fresh("e1"))
    callbacks.recover(state)
    step(state)
    assert "failed" == on_disk(tmp_path, "e1")["state"]
    return state


def test_retry_request_makes_a_failed_delivery_pending_now(tmp_path: Path) -> None:
    """A failed delivery moves back to outbox/, due at once after the operator's retry,
    then is delivered; its attempts keep counting."""
    state = failed_delivery(tmp_path)
    clock(state).advance(100)
    drop_request(Layout(tmp_path), retry_request("e1"))
    state.dispatch = lambda: 0          # type: ignore[method-assign]  # look before the try
    assert 1 == take_inbox(tmp_path, state)
    rec = on_disk(tmp_path, "e1")
    assert ("pending", T0 + 100, 1, [], ["outbox"]) == (
        rec["state"], due_at(rec), rec["retry_base"], inbox_names(tmp_path),
        where(tmp_path, "e1"))
    del state.dispatch
    assert 1 == step(state)
    rec = on_disk(tmp_path, "e1")
    assert ("delivered", 2, "HTTP 400") == (rec["state"], rec["attempts"], rec["last_error"])


def test_retry_of_a_delivered_or_unknown_delivery_changes_nothing(tmp_path: Path) -> None:
    """Delivered stays delivered, an unknown id is ignored; both requests are removed."""
    state = failed_delivery(tmp_path)
    drop_request(Layout(tmp_path), retry_request("e1"))
    take_inbox(tmp_path, state)
    step(state)
    before = on_disk(tmp_path, "e1")
    assert "delivered" == before["state"]
    drop_request(Layout(tmp_path), retry_request("e1"))
    drop_request(Layout(tmp_path), retry_request("nope"))
    assert 2 == take_inbox(tmp_path, state)
    assert (before, [], {}) == (on_disk(tmp_path, "e1"), inbox_names(tmp_path), state.pending)


# -- held batch events ---------------------------------------------------------------------

def batch_request(event_id: str, jobs: list[str], now: float, url: str = URL
                  ) -> dict[str, Any]:
    record = {"batch": "B", "counts": {"completed": len(jobs)}, "done": True, "jobs": jobs}
    return delivery_request(event_id, url, batch_payload(event_id, record), batch="B",
                            now=now)


class Checks:
    """A settle check answering from a script (event id -> verdicts in turn)."""

    def __init__(self, **verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        self.asked: list[list[str]] = []

    def __call__(self, recs: Any) -> dict[str, Verdict]:
        self.asked.append([r["id"] for r in recs])
        return {r["id"]: self.verdicts[r["id"]].pop(0) for r in recs
                if self.verdicts.get(r["id"])}


def held_state(tmp_path: Path, check: Checks) -> callbacks.Callbacks:
    state = make(tmp_path, 200, settle=2.0)
    state.check = check
    callbacks.recover(state)
    return state


def test_a_batch_event_is_held_for_the_settle_window(tmp_path: Path) -> None:
    """The record is due batch_settle after the request was made (the batch's last job
    ended), not at once; nothing is posted or checked before."""
    check = Checks(b1=[Verdict.SEND])
    state = held_state(tmp_path, check)
    drop_request(Layout(tmp_path), batch_request("b1", ["a", "b"], T0 - 0.5))
    take_inbox(tmp_path, state)
    rec = on_disk(tmp_path, "b1")
    assert ("B", T0 + 1.5, [], []) == (rec["batch"], due_at(rec), sent(state), check.asked)
    clock(state).advance(1.5)
    step(state)
    step(state)
    assert ([["b1"]], "delivered") == (check.asked, on_disk(tmp_path, "b1")["state"])


def test_a_superseded_batch_event_is_removed_unsent(tmp_path: Path) -> None:
    """The check says the batch gained jobs: the record is removed, nothing is posted."""
    state = held_state(tmp_path, Checks(b1=[Verdict.SUPERSEDED]))
    stored(tmp_path, new_delivery(batch_request("b1", ["a"], T0 - 5), T0 - 5, settle=2.0))
    callbacks.recover(state)
    step(state)
    step(state)
    assert ([], [], {}) == (where(tmp_path, "b1"), sent(state), state.pending)


def test_a_batch_not_yet_terminal_is_checked_again(tmp_path: Path) -> None:
    """WAIT: the record stays pending, due again RECHECK later; then it is sent."""
    check = Checks(b1=[Verdict.WAIT, Verdict.SEND])
    state = held_state(tmp_path, check)
    stored(tmp_path, new_delivery(batch_request("b1", ["a"], T0 - 5), T0 - 5, settle=2.0))
    callbacks.recover(state)
    step(state)
    rec = on_disk(tmp_path, "b1")
    assert ("pending", T0 + callbacks.RECHECK, 0) == (rec["state"], due_at(rec),
                                                      rec["attempts"])
    clock(state).advance(callbacks.RECHECK)
    step(state)
    step(state)
    assert (2, "delivered") == (len(check.asked), on_disk(tmp_path, "b1")["state"])


def test_without_a_settle_window_a_batch_event_goes_at_once(tmp_path: Path) -> None:
    """batch_settle 0: the batch event is an ordinary delivery (no hold, no check)."""
    check = Checks()
    state = make(tmp_path, 200, settle=0.0)
    state.check = check
    callbacks.recover(state)
    drop_request(Layout(tmp_path), batch_request("b1", ["a"], T0))
    take_inbox(tmp_path, state)
    state.reap()
    assert ("delivered", None, []) == (on_disk(tmp_path, "b1")["state"],
                                       on_disk(tmp_path, "b1")["batch"], check.asked)


# -- the loop ---------------------------------------------------------------------------------

class ScriptedWaiter:
    """A Waiter that advances the fake clock by what it is asked to sleep, and stops the
    loop after `turns` waits; it notes each timeout asked for."""

    def __init__(self, now: MockClock, turns: int) -> None:
        self.now, self.turns = now, turns
        self.asked: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.asked.append(timeout)
        self.turns -= 1
        if timeout is not None:
            self.now.advance(timeout)
        return len(self.asked) == 1        # the first wait: the start-up rescan


def test_serve_sleeps_until_the_next_try(tmp_path: Path) -> None:
    """The loop takes the inbox at the rescan (the first try goes at once), then sleeps
    exactly until each next try."""
    state = make(tmp_path, 503, 503, 200, schedule=(10.0, 20.0))
    callbacks.recover(state)
    hand_over(tmp_path, "e1")
    waiter = ScriptedWaiter(clock(state), turns=4)
    callbacks.serve(state, waiter, Layout(tmp_path).inbox("callbacks"),
                    stop=lambda: waiter.turns <= 0, grace=0)
    assert ([None, 10.0, 20.0, None], 3, "delivered") == (
        waiter.asked, len(sent(state)), on_disk(tmp_path, "e1")["state"])


# -- power cuts -------------------------------------------------------------------------------

def _picture(root: str) -> Any:
    """Recover the outbox at `root`; what is there: (state, attempts) of e1, or missing."""
    state = make(Path(root))
    callbacks.recover(state)
    rec = state.outbox.get("e1")
    live = os.path.exists(Layout(root).callbacks_outbox / "e1.json")
    return "missing" if rec is None else (rec["state"], rec["attempts"], live)


def test_a_power_cut_during_a_try_never_loses_the_delivery(tmp_path: Path) -> None:
    """Queue, in_flight, delivered (written to done/, then removed from outbox/), each
    durable: a cut anywhere recovers to nothing yet, pending, pending again after an
    interrupted try (it is sent again), or delivered and in done/ only."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        layout = Layout(root)
        outbox = callbacks.DirOutbox(layout.callbacks_outbox, _log.get("test"),
                                     done=layout.callbacks_done, fs=fs)
        outbox.scan()
        rec = fresh("e1")
        outbox.put(rec)
        yield
        rec = begin(rec, T0)
        outbox.put(rec)
        yield
        outbox.put({**rec, "state": "delivered", "next_attempt_at": None}, moved=True)
        yield

    report = explore(tmp_path, setup=lambda root: None, workload=workload, recover=_picture,
                     expected=["missing", ("pending", 0, True), ("pending", 1, True),
                               ("delivered", 1, False)])
    assert {0, 1, 2, 3} == set(report.recovered_to)


def test_request_file_name_is_the_event_id(tmp_path: Path) -> None:
    """A replayed hand-over overwrites the same inbox file instead of adding a second."""
    hand_over(tmp_path, "e1")
    hand_over(tmp_path, "e1")
    rec = read_record(REQUEST, Layout(tmp_path).inbox("callbacks") / "e1.json", owner=False)
    assert (["e1.json"], "deliver") == (inbox_names(tmp_path),
                                        rec["kind"] if isinstance(rec, dict) else None)


def test_iso_of_a_held_event_is_the_window_end(tmp_path: Path) -> None:
    """The window is counted from the request's created_at, even when the worker takes
    the request later (it was down): a late start does not lengthen the window."""
    state = make(tmp_path, settle=2.0)
    callbacks.recover(state)
    drop_request(Layout(tmp_path), batch_request("b1", ["a"], T0 - 60))
    state.dispatch = lambda: 0          # type: ignore[method-assign]
    take_inbox(tmp_path, state)
    assert iso_now(T0 - 58) == on_disk(tmp_path, "b1")["next_attempt_at"]


def _fate(root: str) -> Any:
    """Restart on `root`: what becomes of e1 (to be sent, delivered, or lost), and how
    many records were reported corrupt."""
    state = make(Path(root))
    state.dispatch = lambda: 0          # type: ignore[method-assign]  # look, do not send
    _, _, degraded = callbacks.recover(state)
    take_inbox(Path(root), state)
    if "e1" in state.requests or "e1" in state.pending:
        return ("to send", len(degraded))
    rec = state.outbox.get("e1")
    return ("lost" if rec is None else str(rec["state"]), len(degraded))


def test_a_power_cut_during_a_first_try_loses_nothing_and_reports_nothing(
        tmp_path: Path) -> None:
    """A first try writes its in_flight record WITHOUT fsync (its request stands for it),
    the outcome durably, then drops the request: a cut anywhere leaves the event to be
    sent (again) or delivered, never lost, and a torn in_flight record is no corruption."""
    def setup(root: str) -> None:
        hand_over(Path(root), "e1")

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        layout = Layout(root)
        outbox = callbacks.DirOutbox(layout.callbacks_outbox, _log.get("test"),
                                     done=layout.callbacks_done, fs=fs)
        req = read_record(REQUEST, layout.inbox("callbacks") / "e1.json", owner=False, fs=fs)
        assert isinstance(req, dict)
        outbox.scan()
        rec = begin(new_delivery(req, T0), T0)
        outbox.put(rec, durable=False)
        yield
        outbox.put({**rec, "state": "delivered", "next_attempt_at": None}, moved=True)
        yield
        discard(layout.inbox("callbacks") / "e1.json", fs=fs)
        yield

    report = explore(tmp_path, setup=setup, workload=workload, recover=_fate,
                     expected=[("to send", 0), ("to send", 0), ("delivered", 0),
                               ("delivered", 0)],
                     ignore=lambda rel: rel.startswith("callbacks/inbox/.tmp"))
    assert {1, 2, 3} <= set(report.recovered_to)     # (pictures 0 and 1 are the same)


def _fates(root: str) -> Any:
    """Restart on `root`: the fate of e1, e2 and e3 (as _fate) and the corrupt count."""
    state = make(Path(root))
    state.dispatch = lambda: 0          # type: ignore[method-assign]  # look, do not send
    _, _, degraded = callbacks.recover(state)
    take_inbox(Path(root), state)
    fates = []
    for event_id in ("e1", "e2", "e3"):
        rec = state.outbox.get(event_id)
        fates.append("to send" if event_id in state.requests or event_id in state.pending
                     else "lost" if rec is None else str(rec["state"]))
    return (*fates, len(degraded))


def test_a_power_cut_during_outcomes_written_together_loses_nothing(
        tmp_path: Path) -> None:
    """Three first tries (in_flight records without fsync) whose outcomes are written as
    one group (Outbox.put_many: every record, then one fsync per folder, then the live
    copies and the requests removed): e1 and e2 delivered, e3 to be retried (back in
    outbox/). A cut anywhere leaves each event to be sent (again) or delivered — any
    mix of them while the group is being written — never lost, never corrupt, and no
    event is taken as delivered whose record is not."""
    def setup(root: str) -> None:
        for event_id in ("e1", "e2", "e3"):
            hand_over(Path(root), event_id)

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        layout = Layout(root)
        outbox = callbacks.DirOutbox(layout.callbacks_outbox, _log.get("test"),
                                     done=layout.callbacks_done, fs=fs)
        outbox.scan()
        recs = []
        for event_id in ("e1", "e2", "e3"):
            req = read_record(REQUEST, layout.inbox("callbacks") / f"{event_id}.json",
                              owner=False, fs=fs)
            assert isinstance(req, dict)
            recs.append(begin(new_delivery(req, T0), T0))
            outbox.put(recs[-1], durable=False)
            yield
        outcomes = [{**recs[0], "state": "delivered", "next_attempt_at": None},
                    {**recs[1], "state": "delivered", "next_attempt_at": None},
                    {**recs[2], "state": "pending", "next_attempt_at": iso_now(T0 + 10),
                     "last_error": "HTTP 503"}]
        outbox.put_many(outcomes, [layout.inbox("callbacks") / f"{event_id}.json"
                                   for event_id in ("e1", "e2", "e3")])
        yield

    sent = ("to send", "to send", "to send", 0)
    report = explore(tmp_path, setup=setup, workload=workload, recover=_fates,
                     expected=[sent, sent, sent, sent,
                               ("delivered", "delivered", "to send", 0)],
                     partial={4: [("delivered", "to send", "to send", 0),
                                  ("to send", "delivered", "to send", 0)]},
                     ignore=lambda rel: rel.startswith("callbacks/inbox/.tmp"))
    assert 4 in set(report.recovered_to)


# -- retention.callbacks: the reaper's prune request ---------------------------------------------

def test_a_prune_request_removes_the_named_settled_records(tmp_path: Path) -> None:
    """`prune` (the reaper's ask) removes the named records that are settled and old
    enough, counted in callbacks/pruned.json; a pending one it names stays and is still
    delivered; a malformed prune request is quarantined."""
    state = make(tmp_path)
    callbacks.recover(state)
    stored(tmp_path, settled("old"), "done")
    stored(tmp_path, settled("bad", "failed"), "done")
    hand_over(tmp_path, "new")
    drop_request(Layout(tmp_path), prune_request(["old", "bad", "new"], 60.0))
    drop_request(Layout(tmp_path), {"id": "prune-x", "kind": "prune", "event_ids": [1],
                                    "older_than": 60})
    clock(state).advance(120)
    take_inbox(tmp_path, state)
    step(state)
    assert ([], [], ["done"]) == (where(tmp_path, "old"), where(tmp_path, "bad"),
                                  where(tmp_path, "new"))
    pruned, _ = read_pruned(Layout(tmp_path).callbacks_pruned, owner=False)
    assert (1, 1) == (pruned["delivered"], pruned["failed"])
    assert ["prune-x.json"] == [n.split(".corrupted.")[0] for n in inbox_names(tmp_path)]
