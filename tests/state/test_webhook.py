"""state.webhook: classification, event ids, the delivery record's state machine and retry
schedule (a mock clock and transport)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor.callbacks.transport import (
    MockTransport,
    Sent,
    attempt,
)
from supervisor.state.clock import MockClock, iso_now
from supervisor.state.layout import DELIVERY, REQUEST, Layout, read_record, write_record
from supervisor.state.webhook import (
    DELIVERED,
    FAILED,
    RETRY,
    TABLE,
    Delivery,
    Happening,
    InvalidTransition,
    Result,
    batch_event_id,
    batch_payload,
    begin,
    classify,
    delivery_problem,
    delivery_request,
    drop_request,
    due_at,
    earliest,
    finish,
    held,
    host_of,
    interrupted,
    job_event_id,
    job_payload,
    list_deliveries,
    new_delivery,
    next_delay,
    operator_retry,
    postponed,
    retry_after_delay,
    retry_request,
    transition,
    valid_event_id,
    valid_url,
)

T0 = 1_800_000_000.0
PAYLOAD = {"event_id": "e1", "job": {"id": "j1", "state": "completed", "note": "héllo"}}


def record(event_id: str = "e1", now: float = T0) -> dict[str, Any]:
    return new_delivery(delivery_request(event_id, "http://127.0.0.1:9/hook", PAYLOAD,
                                         job="j1", now=now), now)


def run_until_settled(rec: dict[str, Any], transport: MockTransport, clock: MockClock,
                      schedule: tuple[float, ...]) -> dict[str, Any]:
    """Drive one record as the worker does, jumping the clock to each next try."""
    while rec["state"] == "pending":
        clock.advance(due_at(rec) - clock.time())
        rec = begin(rec, clock.time())
        result = attempt(transport, rec, secret=None, timeout=5.0)
        rec = finish(rec, result, clock.time(), schedule)
    return rec


def answers(*statuses: int, clock: MockClock | None = None,
            times: list[float] | None = None) -> Callable[[Sent], int]:
    """A handler answering `statuses` in turn (the last one forever), noting the times."""
    queue = list(statuses)

    def handler(sent: Sent) -> int:
        if clock is not None and times is not None:
            times.append(clock.time())
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return handler


# -- classification ---------------------------------------------------------------------

@pytest.mark.parametrize(("status", "outcome"), [
    (200, DELIVERED), (201, DELIVERED), (202, DELIVERED), (204, DELIVERED), (299, DELIVERED),
    (300, FAILED), (301, FAILED), (302, FAILED), (303, FAILED), (307, FAILED), (308, FAILED),
    (400, FAILED), (401, FAILED), (403, FAILED), (404, FAILED), (405, FAILED), (409, FAILED),
    (410, FAILED), (413, FAILED), (422, FAILED), (499, FAILED),
    (408, RETRY), (429, RETRY),
    (500, RETRY), (502, RETRY), (503, RETRY), (504, RETRY), (599, RETRY),
    (100, RETRY), (101, RETRY), (600, RETRY), (0, RETRY),
])
def test_classify_every_status_class(status: int, outcome: str) -> None:
    """2xx delivered; 408, 429, 5xx retried; other 4xx and every 3xx failed; non-answers
    (1xx, outside 100-599) retried."""
    assert outcome == classify(status)


# -- event ids and requests -------------------------------------------------------------------

def test_event_ids_are_deterministic_and_distinct() -> None:
    """The same inputs give the same uuid (a replay dedupes); any different input differs."""
    ids = [job_event_id("j1"), job_event_id("j2"), job_event_id("j1", "2026-01-01T00:00Z"),
           batch_event_id("b", "http://a/"), batch_event_id("b", "http://b/"),
           batch_event_id("b", "http://a/", ["j2", "j1"]), batch_event_id("c", "http://a/")]
    assert len(ids) == len(set(ids))
    assert (job_event_id("j1"), batch_event_id("b", "http://a/", ["j1", "j2"])) == (
        ids[0], ids[5])
    assert all(valid_event_id(i) for i in ids)


@pytest.mark.parametrize(("value", "ok"), [
    ("e1", True), ("a" * 128, True), ("a" * 129, False), ("../x", False), ("", False),
    (".x", False), (None, False), (7, False)])
def test_valid_event_id(value: object, ok: bool) -> None:
    """Event ids are safe file names; nothing else passes."""
    assert ok == valid_event_id(value)


@pytest.mark.parametrize(("value", "ok"), [
    ("http://h/x", True), ("HTTPS://h", True), ("ftp://h", False), ("http://", False),
    ("h/x", False), (None, False)])
def test_valid_url(value: object, ok: bool) -> None:
    """Only http(s) URLs with a host part are deliverable."""
    assert ok == valid_url(value)


def test_requests_and_payloads(tmp_path: Path) -> None:
    """The deliver request is named by its event id; drop_request writes it as a REQUEST
    into callbacks/inbox; a retry request names the event."""
    eid = job_event_id("j1")
    req = delivery_request(eid, "http://h/x", job_payload(eid, {"id": "j1"}), job="j1")
    path = drop_request(Layout(tmp_path), req)
    got = read_record(REQUEST, path, owner=False)
    assert (Layout(tmp_path).inbox("callbacks") / f"{eid}.json", True) == (
        path, isinstance(got, dict))
    assert isinstance(got, dict)
    assert ({"id": eid, "kind": "deliver", "event_id": eid, "url": "http://h/x", "job": "j1",
             "payload": {"event_id": eid, "job": {"id": "j1"}}},
            ) == ({k: got[k] for k in ("id", "kind", "event_id", "url", "job", "payload")},)
    retry = retry_request(eid)
    assert ("retry", eid, True) == (retry["kind"], retry["event_id"],
                                    retry["id"].startswith(f"retry-{eid}-"))
    assert {"event_id": "x", "batch": {"batch": "b"}} == batch_payload("x", {"batch": "b"})


# -- the record's state machine and the retry schedule ---------------------------------------

@pytest.mark.parametrize(("attempts", "delay"), [
    (0, None), (1, 30.0), (2, 120.0), (3, 600.0), (4, None)])
def test_next_delay(attempts: int, delay: float | None) -> None:
    """Delay i follows try i; none once the schedule is used up."""
    assert delay == next_delay(attempts, (30.0, 120.0, 600.0))


def test_retry_schedule_with_a_fake_clock() -> None:
    """[30s, 2m, 10m] and a receiver always 503: tries at t0, +30, +150, +750, then failed
    with 4 attempts and last_error "HTTP 503"."""
    clock, times = MockClock(T0), list[float]()
    transport = MockTransport(answers(503, clock=clock, times=times))
    rec = run_until_settled(record(), transport, clock, (30.0, 120.0, 600.0))
    assert [T0, T0 + 30, T0 + 150, T0 + 750] == times
    assert ("failed", 4, "HTTP 503", None) == (
        rec["state"], rec["attempts"], rec["last_error"], rec["next_attempt_at"])


def test_retry_then_delivered_keeps_the_idempotency_key() -> None:
    """503, 503, 200: delivered after 3 tries, every try with the same key and body."""
    transport = MockTransport(answers(503, 503, 200))
    rec = run_until_settled(record(), transport, MockClock(T0), (1.0, 1.0))
    assert ("delivered", 3) == (rec["state"], rec["attempts"])
    assert (["e1"] * 3, 1) == ([s.headers["Idempotency-Key"] for s in transport.sent],
                               len({s.body for s in transport.sent}))


def test_an_empty_schedule_fails_at_the_first_retriable_answer() -> None:
    """retry_schedule [] means one try only."""
    rec = run_until_settled(record(), MockTransport(answers(500)), MockClock(T0), ())
    assert ("failed", 1, "HTTP 500") == (rec["state"], rec["attempts"], rec["last_error"])


def test_a_4xx_fails_at_once() -> None:
    """400: failed after one try, whatever the schedule."""
    rec = run_until_settled(record(), MockTransport(answers(400)), MockClock(T0), (1.0, 1.0))
    assert ("failed", 1, "HTTP 400") == (rec["state"], rec["attempts"], rec["last_error"])


def test_operator_retry_starts_a_fresh_round() -> None:
    """A failed delivery retried by the operator is due now and gets the whole schedule
    again; attempts keep counting."""
    clock = MockClock(T0)
    rec = run_until_settled(record(), MockTransport(answers(503)), clock, (10.0,))
    clock.advance(1000)
    rec = operator_retry(rec, clock.time())
    assert ("pending", clock.time(), 2) == (rec["state"], due_at(rec), rec["retry_base"])
    times: list[float] = []
    again = MockTransport(answers(503, clock=clock, times=times))
    rec = run_until_settled(rec, again, clock, (10.0,))
    assert ([T0 + 1010, T0 + 1020], "failed", 4) == (times, rec["state"], rec["attempts"])


def test_a_delivered_record_refuses_a_retry() -> None:
    """delivered is final."""
    rec = run_until_settled(record(), MockTransport(answers(200)), MockClock(T0), ())
    with pytest.raises(InvalidTransition):
        operator_retry(rec, T0)


def test_interrupted_try_is_pending_and_due_now() -> None:
    """An in_flight record found at recovery is due at once; its try stays counted."""
    rec = interrupted(begin(record(), T0), T0 + 5)
    assert ("pending", T0 + 5, 1) == (rec["state"], due_at(rec), rec["attempts"])
    assert rec["last_error"].startswith("interrupted")


def test_transitions_not_in_the_table_are_refused() -> None:
    """Every (state, event) pair outside the table raises; the listed ones do not."""
    states = ("pending", "in_flight", "delivered", "failed")
    events = {e for _, e in TABLE.rows}
    for state in states:
        for event in events:
            row = TABLE.rows.get((Delivery(state), Happening(event)))
            if row is not None:
                assert row.next == transition(state, event)
            else:
                with pytest.raises(InvalidTransition):
                    transition(state, event)


def test_earliest_is_the_first_pending_try() -> None:
    """The pending record due first (ties broken by age); in-flight ones do not count."""
    a, b, c = record("a", T0 + 2), record("b", T0 + 1), record("c", T0 + 1)
    b["created_at"] = "2020-01-01T00:00:00.000Z"
    flying = begin(record("d", T0), T0)
    firsts = [earliest([a, b, c, flying]), earliest([a, c]), earliest([flying])]
    assert ["b", "c", None] == [None if r is None else r["id"] for r in firsts]


@pytest.mark.parametrize(("change", "problem"), [
    ({}, None), ({"state": "sent"}, "state"), ({"attempts": True}, "attempts"),
    ({"url": "ftp://x"}, "url"), ({"id": "../x"}, "id"), ({"payload": []}, "payload"),
    ({"next_attempt_at": None}, "pending delivery without")])
def test_delivery_problem(change: dict[str, Any], problem: str | None) -> None:
    """A well-formed record passes; each kind of damage is named."""
    found = delivery_problem({**record(), **change})
    assert (problem is None, True) == (found is None, problem is None or problem in str(found))




# -- Retry-After ----------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "delay"), [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("Fri, 15 Jan 2027 08:01:00 GMT", 60.0),
    ("Fri, 15 Jan 2027 07:00:00 GMT", 0.0), ("soon", None), ("-5", None), ("1.5", None),
    ("Fri, 15 Jan 2027 08:01:00", None), (None, None), ("", None)])
def test_retry_after_delay(value: str | None, delay: float | None) -> None:
    """delay-seconds or an HTTP date (past: 0); anything else (negative, fractional, a
    date without its zone, nothing) is not a Retry-After."""
    assert delay == retry_after_delay(value, T0)


def test_retry_after_replaces_the_delay_up_to_ten_times_the_last_step() -> None:
    """finish() uses a Result's retry_after for the next delay, capped at last step x 10."""
    rec = begin(record(), T0)
    assert ([T0 + 45, T0 + 200, T0 + 10], ) == ([
        due_at(finish(rec, Result(RETRY, "HTTP 503", wait), T0, (10.0, 20.0)))
        for wait in (45.0, 9999.0, None)], )


# -- held batch events --------------------------------------------------------------------

def batch_req(now: float = T0 - 1) -> dict[str, Any]:
    rec = {"batch": "B", "counts": {"completed": 1}, "done": True, "jobs": ["a"]}
    return delivery_request("b1", "http://127.0.0.1:9/b", batch_payload("b1", rec),
                            batch="B", now=now)


def test_a_batch_event_is_held_until_the_window_ends() -> None:
    """With a settle window the record is due `settle` after the request was made and is
    held (pending, no try, naming its batch); without one it is an ordinary delivery."""
    rec = new_delivery(batch_req(), T0, settle=2.0)
    plain = new_delivery(batch_req(), T0)
    assert (T0 + 1, "B", True, T0, None, False) == (
        due_at(rec), rec["batch"], held(rec), due_at(plain), plain["batch"], held(plain))
    assert (False, False) == (held(begin(rec, T0)), held(record()))


def test_postponed_keeps_a_held_event_pending() -> None:
    """A check that came too early: still pending and held, due again later."""
    rec = postponed(new_delivery(batch_req(), T0, settle=2.0), T0 + 5, T0 + 1)
    assert ("pending", T0 + 5, True) == (rec["state"], due_at(rec), held(rec))


def test_a_batch_event_without_its_job_list_is_unusable() -> None:
    """A held batch event must list its batch's jobs (the check compares them)."""
    rec = new_delivery(batch_req(), T0, settle=2.0)
    rec["payload"] = {"event_id": "b1", "batch": {"batch": "B"}}
    assert "lists no jobs" in str(delivery_problem(rec))
    assert "batch is 3" == delivery_problem({**record(), "batch": 3})


@pytest.mark.parametrize(("url", "host"), [
    ("http://127.0.0.1:9/a", "http://127.0.0.1:9"), ("http://Hooks.Example.com/x",
                                                     "http://hooks.example.com:80"),
    ("https://h.example/x", "https://h.example:443"), ("HTTPS://h:8443", "https://h:8443"),
    ("http://[::1]:80/x", "http://::1:80"), ("http://h:bad/x", "http://h:80")])
def test_host_of(url: str, host: str) -> None:
    """The per-host limit's key: scheme, lowercased host, port (the default filled in)."""
    assert host == host_of(url)


# -- reading every delivery --------------------------------------------------------------

def test_list_deliveries_reads_inbox_outbox_and_done(tmp_path: Path) -> None:
    """Handed-over (inbox), live (outbox/) and settled (done/) deliveries, oldest first; an
    event in both folders shows its most recent copy; an unreadable record is noted."""
    layout = Layout(tmp_path)
    for folder in (layout.callbacks_outbox, layout.callbacks_done):
        folder.mkdir(parents=True)
    drop_request(layout, delivery_request("in", "http://127.0.0.1:9/h", {}, now=T0 + 3))
    live = record("live", T0 + 1)
    write_record(DELIVERY, layout.callbacks_outbox / "live.json", live)
    done = {**begin(record("done", T0), T0), "state": "delivered", "next_attempt_at": None}
    write_record(DELIVERY, layout.callbacks_done / "done.json", done)
    moving = begin(record("mid", T0 + 2), T0 + 2)
    write_record(DELIVERY, layout.callbacks_outbox / "mid.json", moving)
    write_record(DELIVERY, layout.callbacks_done / "mid.json",
                 {**moving, "state": "failed", "updated_at": iso_now(T0 + 3),
                  "next_attempt_at": None})
    (layout.callbacks_done / "bad.json").write_bytes(b"{")
    records, notes = list_deliveries(layout)
    assert [("done", "delivered"), ("live", "pending"), ("mid", "failed"),
            ("in", "pending")] == [(r["id"], r["state"]) for r in records]
    assert 1 == len(notes) and "bad.json" in notes[0]
