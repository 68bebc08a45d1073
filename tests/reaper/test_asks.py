"""Tests for supervisor.reaper.asks: which locks and which settled webhook records the
reaper asks their owners to remove, asked once while a request is pending, counted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from supervisor import locks
from supervisor import log as _log
from supervisor.config import Config, RepoConfig
from supervisor.reaper import asks
from supervisor.state.clock import MockClock, iso_now
from supervisor.state.layout import (
    DELIVERY,
    REQUEST,
    Layout,
    read_record,
    send_request,
    write_record,
)
from supervisor.state.locktable import acquire_request
from supervisor.state.retention import Known
from tests.reaper.conftest import GRACE, aged

NOW = 1_800_000_000.0
OLD = NOW - 2 * GRACE
DAY = 86400.0


def noted() -> tuple[list[tuple[str, str, str]], asks.Removed]:
    seen: list[tuple[str, str, str]] = []
    return seen, lambda kind, what, why: seen.append((kind, what, why))


def lock_table(tmp_path: Path, granted_at: float, *jobs: tuple[str, str, float]) -> Layout:
    """A lock table made by the real locks worker: each (job, repo, submitted at) asks in
    turn; the grants are stamped `granted_at`."""
    cfg = Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws",
                 repositories={"app": RepoConfig(url="/x.git", exclusive=True),
                               "lib": RepoConfig(url="/y.git")})
    layout = Layout(cfg.state_dir)
    lk, _, _, _ = locks.recover(cfg, layout, _log.get("test"), clock=MockClock(granted_at))
    for seq, (job, repo, at) in enumerate(jobs, 1):
        send_request(layout, "locks", acquire_request(job, [repo], exclusive=True, seq=seq,
                                                      created_at=iso_now(at)))
    locks.one_pass(lk)
    return layout


def requests(layout: Layout, worker: str) -> list[dict[str, Any]]:
    folder = layout.inbox(worker)
    out = []
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        rec = read_record(REQUEST, folder / name, owner=False)
        assert isinstance(rec, dict)
        if rec["kind"] in ("reap", "prune"):
            out.append(rec)
    return out


def test_asks_for_finished_and_unknown_holders_and_waiters_only(tmp_path: Path) -> None:
    """A finished holder and an unknown waiter, both older than the grace, are named in one
    `reap` request to the locks worker and counted with their reasons; a live holder, a
    live waiter and a finished job younger than the grace are not."""
    layout = lock_table(tmp_path, OLD, ("done", "app", OLD), ("ghost", "app", OLD),
                        ("live", "lib", OLD), ("wait", "lib", OLD), ("young", "lib", NOW - 5))
    known = Known.of([{"id": "done", "state": "completed"}, {"id": "live", "state": "running"},
                      {"id": "wait", "state": "waiting"}, {"id": "young", "state": "failed"}])
    seen, removed = noted()
    assert 2 == asks.ask_locks(layout, known, NOW, GRACE, removed)
    assert [("locks", "done", "job completed holds app"),
            ("locks", "ghost", "job unknown waits for app")] == seen
    assert [["done", "ghost"]] == [r["jobs"] for r in requests(layout, "locks")]


def test_a_pending_reap_request_is_not_asked_again(tmp_path: Path) -> None:
    """While the locks worker has not taken the reaper's request, the next pass neither
    writes another nor counts the jobs again."""
    layout = lock_table(tmp_path, OLD, ("done", "app", OLD))
    known = Known.of([{"id": "done", "state": "cancelled"}])
    seen, removed = noted()
    asks.ask_locks(layout, known, NOW, GRACE, removed)
    assert 0 == asks.ask_locks(layout, known, NOW + 60, GRACE, removed)
    assert (1, 1) == (len(seen), len(requests(layout, "locks")))


def test_a_holder_granted_within_the_grace_is_not_asked(tmp_path: Path) -> None:
    """A lock granted less than reaper.grace ago is left even when the pass's view does
    not know its job (a job newer than the view)."""
    layout = lock_table(tmp_path, NOW - 5, ("new", "app", OLD))
    seen, removed = noted()
    assert (0, []) == (asks.ask_locks(layout, Known.of([]), NOW, GRACE, removed), seen)


def settled(layout: Layout, event_id: str, state: str, changed: float) -> Path:
    path = layout.callbacks_done / f"{event_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_record(DELIVERY, path, {
        "id": event_id, "url": "http://127.0.0.1:9/", "state": state, "attempts": 1,
        "next_attempt_at": None, "last_error": None, "created_at": iso_now(changed),
        "updated_at": iso_now(changed), "payload": {}, "job": "j", "batch": None,
        "retry_base": 0})
    return aged(path, 0, changed)


def test_asks_for_settled_records_past_retention(tmp_path: Path) -> None:
    """Delivered and failed records last changed more than retention.callbacks ago are
    named in a `prune` request to the callbacks worker; recent ones stay; a second pass
    with the request still pending asks nothing more; retention.callbacks null: never."""
    layout = Layout(tmp_path / "state")
    settled(layout, "a", "delivered", NOW - 8 * DAY)
    settled(layout, "b", "failed", NOW - 8 * DAY)
    settled(layout, "c", "delivered", NOW - 6 * DAY)
    seen, removed = noted()
    assert 0 == asks.ask_callbacks(layout, NOW, None, GRACE, removed)
    assert 2 == asks.ask_callbacks(layout, NOW, 7 * DAY, GRACE, removed)
    assert 0 == asks.ask_callbacks(layout, NOW, 7 * DAY, GRACE, removed)
    assert [("callbacks", "a", "settled past retention.callbacks"),
            ("callbacks", "b", "settled past retention.callbacks")] == seen
    [req] = requests(layout, "callbacks")
    assert (["a", "b"], 7 * DAY) == (req["event_ids"], req["older_than"])


def test_retention_callbacks_is_never_shorter_than_the_grace(tmp_path: Path) -> None:
    """retention.callbacks: 0 still keeps a record reaper.grace."""
    layout = Layout(tmp_path / "state")
    settled(layout, "a", "delivered", NOW - GRACE / 2)
    seen, removed = noted()
    assert (0, []) == (asks.ask_callbacks(layout, NOW, 0.0, GRACE, removed), seen)
