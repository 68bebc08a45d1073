"""Tests for supervisor.locks: recovering locks/state.json (missing, good, corrupt), the loop."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import _log, _runtime, locks
from supervisor._atomic import CORRUPT_MARK
from supervisor._config import Config
from supervisor._jobs import iso_now
from supervisor._layout import READY, REQUEST, WORKER_STATE, Layout, read_record, write_record

DEADLINE = 30.0


@pytest.fixture(autouse=True)
def _no_stop() -> Iterator[None]:
    """Each test starts and ends without a pending stop request."""
    _runtime._state.stop = False
    yield
    _runtime._state.stop = False


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "state")


def state_file(layout: Layout) -> Path:
    return layout.worker_state("locks")


def test_missing_state_starts_empty_and_writes_the_file(layout: Layout) -> None:
    """First start: an empty table, written at once; nothing degraded."""
    _, found, did, degraded = locks.recover(layout, _log.get("test"))
    assert ({"held": 0, "waiting": 0}, {"state": "created"}, []) == (found, did, degraded)
    rec = read_record(WORKER_STATE, state_file(layout), owner=False)
    assert isinstance(rec, dict)
    assert ("locks", [], {}) == (rec["worker"], rec["held"], rec["waiting"])


def test_good_state_is_read_back(layout: Layout) -> None:
    """The held locks and waiting queues come back exactly as saved."""
    held = [{"repo": "app", "job": "j1", "since": "2026-01-01T00:00:00.000Z"}]
    waiting = {"app": ["j2", "j3"], "lib": ["j4"]}
    os.makedirs(layout.worker_dir("locks"))
    write_record(WORKER_STATE, state_file(layout),
                 {"worker": "locks", "held": held, "waiting": waiting})
    table, found, did, degraded = locks.recover(layout, _log.get("test"))
    assert (held, waiting) == (table.held, table.waiting)
    assert ({"held": 1, "waiting": 3}, {"state": "read"}, []) == (found, did, degraded)


@pytest.mark.parametrize(("raw", "why"), [
    (b"{\"schema\": \"batchd.worker_state\", \"v\": 1, \"worker\": \"lo", "torn"),
    (b"", "empty"),
    (b'{"schema": "batchd.worker_state", "v": 1, "worker": "locks", "held": {}, "waiting": {}}',
     "held not a list"),
    (b'{"schema": "batchd.worker_state", "v": 1, "worker": "locks", "held": [{"repo": "a"}],'
     b' "waiting": {}}', "lock without job"),
    (b'{"schema": "batchd.worker_state", "v": 1, "worker": "locks", "held": [],'
     b' "waiting": {"a": "j1"}}', "queue not a list"),
])
def test_corrupt_state_is_quarantined_and_degraded(layout: Layout, raw: bytes, why: str) -> None:
    """A corrupt table is moved aside, the worker starts empty and says so in degraded."""
    os.makedirs(layout.worker_dir("locks"))
    state_file(layout).write_bytes(raw)
    table, _, did, degraded = locks.recover(layout, _log.get("test"))
    moved = [n for n in os.listdir(layout.worker_dir("locks")) if CORRUPT_MARK in n]
    assert 1 == len(moved), why
    assert raw == (layout.worker_dir("locks") / moved[0]).read_bytes()
    assert [f"locks state was corrupt: moved to {layout.worker_dir('locks') / moved[0]}"] \
        == degraded
    assert ([], {}, {"state": "reset"}) == (table.held, table.waiting, did)
    assert isinstance(read_record(WORKER_STATE, state_file(layout), owner=False), dict)


def test_recovery_touches_only_its_own_folder(layout: Layout) -> None:
    """Recovery writes under locks/ only (one writer per file; others stay unaffected)."""
    locks.recover(layout, _log.get("test"))
    assert ["locks"] == os.listdir(layout.root)


def test_main_reports_ready_and_quarantines_unknown_requests(tmp_path: Path) -> None:
    """The running worker reports ready, quarantines a request of a kind it has no handler
    for, and returns 0 once a stop is requested."""
    cfg = Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws")
    layout = Layout(cfg.state_dir)
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(locks.main(cfg)))
    worker.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while not layout.ready_file("locks").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        rec = read_record(READY, layout.ready_file("locks"), owner=False)
        assert isinstance(rec, dict)
        assert ("locks", {"held": 0, "waiting": 0}) == (rec["worker"], rec["found"])
        inbox = layout.inbox("locks")
        write_record(REQUEST, inbox / "r1.json",
                     {"id": "r1", "kind": "acquire", "created_at": iso_now()})
        while "r1.json" in os.listdir(inbox) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [True] == [n.startswith("r1.json" + CORRUPT_MARK) for n in os.listdir(inbox)]
    finally:
        _runtime.request_stop()
        worker.join(DEADLINE)
    assert [0] == result
