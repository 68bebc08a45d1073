"""Tests for supervisor.callbacks: recovery of callbacks/outbox/, the inbox handlers, one try
at a time, the serving loop (real tmp outbox, MockTransport, fake clock), and power cuts
during a try (tests.crashfs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import callbacks
from supervisor import log as _log
from supervisor.callbacks.transport import MockTransport, Sent, TransportError
from supervisor.config import CallbacksConfig
from supervisor.runtime import handle_inbox
from supervisor.state.atomic import CORRUPT_MARK
from supervisor.state.clock import MockClock
from supervisor.state.layout import DELIVERY, REQUEST, Layout, read_record, write_record
from supervisor.state.webhook import (
    begin,
    delivery_request,
    drop_request,
    due_at,
    job_event_id,
    new_delivery,
    retry_request,
)
from tests.crashfs import CrashFS, explore

T0 = 1_800_000_000.0
URL = "http://127.0.0.1:9/hook"


class Receiver:
    """A MockTransport handler answering from a script (the last status forever)."""

    def __init__(self, *statuses: int | str) -> None:
        self.script = list(statuses)

    def __call__(self, sent: Sent) -> int:
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, str):
            raise TransportError(answer)
        return answer


def make(tmp_path: Path, *statuses: int | str, schedule: tuple[float, ...] = (10.0, 20.0),
         secret: str | None = None) -> callbacks.Callbacks:
    layout = Layout(tmp_path)
    log = _log.get("test")
    return callbacks.Callbacks(
        log=log, outbox=callbacks.DirOutbox(layout.callbacks_outbox, log),
        transport=MockTransport(Receiver(*statuses or (200,))),
        settings=CallbacksConfig(retry_schedule=schedule, timeout=3.0, secret=secret),
        clock=MockClock(T0))


def sent(state: callbacks.Callbacks) -> list[Sent]:
    assert isinstance(state.transport, MockTransport)
    return state.transport.sent


def clock(state: callbacks.Callbacks) -> MockClock:
    assert isinstance(state.clock, MockClock)
    return state.clock


def on_disk(tmp_path: Path, event_id: str) -> dict[str, Any]:
    rec = read_record(DELIVERY, Layout(tmp_path).callbacks_outbox / f"{event_id}.json",
                      owner=False)
    assert isinstance(rec, dict)
    return rec


def hand_over(tmp_path: Path, event_id: str, job: str = "j1") -> dict[str, Any]:
    """Drop a deliver request as the scheduler does."""
    req = delivery_request(event_id, URL, {"event_id": event_id, "job": {"id": job}}, job=job)
    drop_request(Layout(tmp_path), req)
    return req


def take_inbox(tmp_path: Path, state: callbacks.Callbacks) -> int:
    return handle_inbox(Layout(tmp_path).inbox("callbacks"), callbacks.HANDLERS, state,
                        state.log)


def inbox_names(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(Layout(tmp_path).inbox("callbacks")))


def stored(tmp_path: Path, rec: dict[str, Any]) -> None:
    outbox = Layout(tmp_path).callbacks_outbox
    outbox.mkdir(parents=True, exist_ok=True)
    write_record(DELIVERY, outbox / f"{rec['id']}.json", rec)


def fresh(event_id: str, now: float = T0) -> dict[str, Any]:
    return new_delivery(delivery_request(event_id, URL, {"event_id": event_id}, job="j1"), now)


# -- recovery ---------------------------------------------------------------------------------

def test_empty_outbox(tmp_path: Path) -> None:
    """No outbox yet: it is created, nothing found, nothing degraded."""
    state = make(tmp_path)
    found, did, degraded = callbacks.recover(state)
    assert ({"pending": 0, "in_flight": 0, "delivered": 0, "failed": 0, "corrupt": 0},
            {"requeued": 0, "quarantined": 0}, [], {}) == (found, did, degraded, state.pending)
    assert Layout(tmp_path).callbacks_outbox.is_dir()


def test_recovery_counts_states_and_quarantines_corrupt_records(tmp_path: Path) -> None:
    """Pending records are loaded; unparseable, nonsensical and misnamed records are moved
    aside and named; a temp file (a write in progress) is left alone."""
    outbox = Layout(tmp_path).callbacks_outbox
    stored(tmp_path, fresh("e1"))
    stored(tmp_path, {**fresh("e2"), "state": "delivered", "next_attempt_at": None})
    (outbox / "e3.json").write_bytes(b'{"id": "e3", "url"')
    write_record(DELIVERY, outbox / "e4.json", {**fresh("e4"), "attempts": "many"})
    write_record(DELIVERY, outbox / "e5.json", fresh("other"))
    (outbox / ".tmp.e6.json.1.ab").write_bytes(b"{")
    state = make(tmp_path)
    found, did, degraded = callbacks.recover(state)
    assert ({"pending": 1, "in_flight": 0, "delivered": 1, "failed": 0, "corrupt": 3},
            {"requeued": 0, "quarantined": 3}, ["e1"]) == (found, did, list(state.pending))
    moved = sorted(n for n in os.listdir(outbox) if CORRUPT_MARK in n)
    assert [n.split(CORRUPT_MARK)[0] for n in moved] == ["e3.json", "e4.json", "e5.json"]
    assert [f"callback delivery {n.split(CORRUPT_MARK)[0]} was corrupt: moved to "
            f"{outbox / n}" for n in moved] == degraded
    assert (outbox / ".tmp.e6.json.1.ab").exists()


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
    assert callbacks.deliver_next(state)
    rec = on_disk(tmp_path, "e1")
    assert ("delivered", 2, 1) == (rec["state"], rec["attempts"], len(sent(state)))


# -- the deliver request ------------------------------------------------------------------------

def test_deliver_request_becomes_a_pending_record(tmp_path: Path) -> None:
    """The request turns into a pending record due now, then the request is removed."""
    state = make(tmp_path)
    callbacks.recover(state)
    eid = job_event_id("j1")
    hand_over(tmp_path, eid)
    assert 1 == take_inbox(tmp_path, state)
    rec = on_disk(tmp_path, eid)
    assert ((eid, "j1", URL, "pending", 0, T0, None), [], [eid]) == (
        (rec["id"], rec["job"], rec["url"], rec["state"], rec["attempts"],
         due_at(rec), rec["last_error"]), inbox_names(tmp_path), list(state.pending))
    assert {"event_id": eid, "job": {"id": "j1"}} == rec["payload"]


def test_replayed_deliver_request_is_a_no_op(tmp_path: Path) -> None:
    """The scheduler replays its request after a crash: the delivered record stays as it
    is and nothing is POSTed again; the request is removed."""
    state = make(tmp_path, 200)
    callbacks.recover(state)
    req = hand_over(tmp_path, "e1")
    take_inbox(tmp_path, state)
    assert callbacks.deliver_next(state)
    before = on_disk(tmp_path, "e1")
    drop_request(Layout(tmp_path), req)
    restarted = make(tmp_path, 200)
    callbacks.recover(restarted)
    assert 1 == take_inbox(tmp_path, restarted)
    assert (before, [], {}, False) == (on_disk(tmp_path, "e1"), inbox_names(tmp_path),
                                       restarted.pending, callbacks.deliver_next(restarted))


@pytest.mark.parametrize("change", [
    {"url": "ftp://h/x"}, {"event_id": "../etc"}, {"payload": "text"}, {"job": 3}])
def test_a_malformed_deliver_request_is_quarantined(tmp_path: Path,
                                                    change: dict[str, Any]) -> None:
    """Bad URL, id, payload or job: the request is moved aside, the outbox untouched."""
    state = make(tmp_path)
    callbacks.recover(state)
    drop_request(Layout(tmp_path), {**delivery_request("e1", URL, {}, job="j1"), **change})
    take_inbox(tmp_path, state)
    assert ([], True) == (os.listdir(Layout(tmp_path).callbacks_outbox),
                          all(CORRUPT_MARK in n for n in inbox_names(tmp_path)))


# -- tries ------------------------------------------------------------------------------------

def test_one_try_posts_the_documented_request(tmp_path: Path) -> None:
    """Body = the payload's canonical bytes; key = event id; signed; timeout from config."""
    state = make(tmp_path, 200, secret="k")
    callbacks.recover(state)
    hand_over(tmp_path, "e1")
    take_inbox(tmp_path, state)
    assert callbacks.deliver_next(state)
    (post,) = sent(state)
    assert (URL, "e1", "application/json", 3.0, True) == (
        post.url, post.headers["Idempotency-Key"], post.headers["Content-Type"], post.timeout,
        post.headers["X-Batchd-Signature"].startswith("sha256="))
    assert ("delivered", 1, {}) == (on_disk(tmp_path, "e1")["state"],
                                    on_disk(tmp_path, "e1")["attempts"], state.pending)


def test_the_try_is_durably_in_flight_while_it_is_posted(tmp_path: Path) -> None:
    """At the moment of the POST the record on disk already says in_flight, attempts 1."""
    seen: list[tuple[str, int]] = []

    def receiver(post: Sent) -> int:
        rec = on_disk(tmp_path, "e1")
        seen.append((rec["state"], rec["attempts"]))
        return 200

    state = make(tmp_path)
    state.transport = MockTransport(receiver)
    callbacks.recover(state)
    hand_over(tmp_path, "e1")
    take_inbox(tmp_path, state)
    callbacks.deliver_next(state)
    assert [("in_flight", 1)] == seen


def test_retries_follow_the_schedule_then_fail(tmp_path: Path) -> None:
    """503, then a connection error: retried at +10s and +20s, then failed; nothing is tried
    before its time."""
    state = make(tmp_path, 503, "connection failed: refused", schedule=(10.0, 20.0))
    callbacks.recover(state)
    hand_over(tmp_path, "e1")
    take_inbox(tmp_path, state)
    assert callbacks.deliver_next(state)
    assert (False, 10.0) == (callbacks.deliver_next(state), callbacks.sleep_for(state))
    clock(state).advance(10)
    assert callbacks.deliver_next(state)
    assert 20.0 == callbacks.sleep_for(state)
    clock(state).advance(20)
    assert callbacks.deliver_next(state)
    rec = on_disk(tmp_path, "e1")
    assert ("failed", 3, "connection failed: refused", None, None) == (
        rec["state"], rec["attempts"], rec["last_error"], rec["next_attempt_at"],
        callbacks.sleep_for(state))


def test_the_earliest_due_delivery_goes_first(tmp_path: Path) -> None:
    """Two pending: the one due earlier is tried first, one try per call."""
    stored(tmp_path, fresh("late", T0 - 1))
    stored(tmp_path, fresh("early", T0 - 5))
    state = make(tmp_path, 200)
    callbacks.recover(state)
    callbacks.deliver_next(state)
    assert (["early"], ["late"]) == ([s.headers["Idempotency-Key"] for s in sent(state)],
                                     list(state.pending))


# -- the retry request ----------------------------------------------------------------------------

def failed_delivery(tmp_path: Path) -> callbacks.Callbacks:
    state = make(tmp_path, 400, 200)
    callbacks.recover(state)
    hand_over(tmp_path, "e1")
    take_inbox(tmp_path, state)
    callbacks.deliver_next(state)
    assert "failed" == on_disk(tmp_path, "e1")["state"]
    return state


def test_retry_request_makes_a_failed_delivery_pending_now(tmp_path: Path) -> None:
    """A failed delivery is due at once after the operator's retry, then delivered; its
    attempts keep counting."""
    state = failed_delivery(tmp_path)
    clock(state).advance(100)
    drop_request(Layout(tmp_path), retry_request("e1"))
    assert 1 == take_inbox(tmp_path, state)
    rec = on_disk(tmp_path, "e1")
    assert ("pending", T0 + 100, 1, []) == (rec["state"], due_at(rec),
                                            rec["retry_base"], inbox_names(tmp_path))
    assert callbacks.deliver_next(state)
    rec = on_disk(tmp_path, "e1")
    assert ("delivered", 2, "HTTP 400") == (rec["state"], rec["attempts"], rec["last_error"])


def test_retry_of_a_delivered_or_unknown_delivery_changes_nothing(tmp_path: Path) -> None:
    """Delivered stays delivered, an unknown id is ignored; both requests are removed."""
    state = failed_delivery(tmp_path)
    drop_request(Layout(tmp_path), retry_request("e1"))
    take_inbox(tmp_path, state)
    callbacks.deliver_next(state)
    before = on_disk(tmp_path, "e1")
    drop_request(Layout(tmp_path), retry_request("e1"))
    drop_request(Layout(tmp_path), retry_request("nope"))
    assert 2 == take_inbox(tmp_path, state)
    assert (before, [], {}) == (on_disk(tmp_path, "e1"), inbox_names(tmp_path), state.pending)
    assert ["e1"] == [n.removesuffix(".json")
                      for n in os.listdir(Layout(tmp_path).callbacks_outbox)]


# -- the loop ---------------------------------------------------------------------------------

class MemOutbox:
    """The outbox's in-memory twin."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []

    def scan(self) -> tuple[list[dict[str, Any]], list[str]]:
        return list(self.records.values()), []

    def get(self, event_id: str) -> dict[str, Any] | None:
        return self.records.get(event_id)

    def put(self, rec: dict[str, Any]) -> None:
        self.records[rec["id"]] = dict(rec)
        self.writes.append((rec["id"], rec["state"]))


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


def test_serve_sleeps_until_the_next_try_and_writes_in_flight_first(tmp_path: Path) -> None:
    """The loop takes the inbox at the rescan, then sleeps exactly until each next try;
    each try is written in_flight before its POST and settled after it."""
    state = make(tmp_path, 503, 503, 200, schedule=(10.0, 20.0))
    outbox = MemOutbox()
    state.outbox = outbox
    hand_over(tmp_path, "e1")
    waiter = ScriptedWaiter(clock(state), turns=4)
    callbacks.serve(state, waiter, Layout(tmp_path).inbox("callbacks"),
                    stop=lambda: waiter.turns <= 0)
    assert ([None, 10.0, 20.0, None], 3) == (waiter.asked, len(sent(state)))
    assert [("e1", "pending"), ("e1", "in_flight"), ("e1", "pending"), ("e1", "in_flight"),
            ("e1", "pending"), ("e1", "in_flight"), ("e1", "delivered")] == outbox.writes


# -- power cuts -------------------------------------------------------------------------------

def _picture(root: str) -> Any:
    """Recover the outbox at `root`; what is there: (state, attempts) of e1, or missing."""
    state = make(Path(root))
    state.outbox = callbacks.DirOutbox(Path(root), state.log)
    callbacks.recover(state)
    rec = read_record(DELIVERY, Path(root) / "e1.json", owner=False)
    return (rec["state"], rec["attempts"]) if isinstance(rec, dict) else "missing"


def test_a_power_cut_during_a_try_never_loses_the_delivery(tmp_path: Path) -> None:
    """Queue, in_flight, delivered, each durable: a cut anywhere recovers to nothing yet
    (before the first write was acknowledged), pending, pending again after an interrupted
    try (it is sent again), or delivered."""
    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        outbox = callbacks.DirOutbox(Path(root), _log.get("test"), fs=fs)
        rec = fresh("e1")
        outbox.put(rec)
        yield
        rec = begin(rec, T0)
        outbox.put(rec)
        yield
        outbox.put({**rec, "state": "delivered", "next_attempt_at": None})
        yield

    report = explore(tmp_path, setup=lambda root: None, workload=workload, recover=_picture,
                     expected=["missing", ("pending", 0), ("pending", 1), ("delivered", 1)])
    assert {0, 1, 2, 3} == set(report.recovered_to)


def test_request_file_name_is_the_event_id(tmp_path: Path) -> None:
    """A replayed hand-over overwrites the same inbox file instead of adding a second."""
    hand_over(tmp_path, "e1")
    hand_over(tmp_path, "e1")
    rec = read_record(REQUEST, Layout(tmp_path).inbox("callbacks") / "e1.json", owner=False)
    assert (["e1.json"], "deliver") == (inbox_names(tmp_path),
                                        rec["kind"] if isinstance(rec, dict) else None)
