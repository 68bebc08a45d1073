"""Tests for supervisor.callbacks: the recovery scan of callbacks/outbox/."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor import _log, callbacks
from supervisor._atomic import CORRUPT_MARK
from supervisor._layout import DELIVERY, Layout, write_record


def delivery(layout: Layout, event_id: str) -> None:
    write_record(DELIVERY, layout.callbacks_outbox / f"{event_id}.json",
                 {"id": event_id, "job": "j1", "url": "http://127.0.0.1:9/hook",
                  "state": "pending", "attempts": 0})


def test_empty_outbox(tmp_path: Path) -> None:
    """No outbox yet: it is created, nothing pending, nothing degraded."""
    layout = Layout(tmp_path)
    state, found, degraded = callbacks.recover(layout, _log.get("test"))
    assert ({"pending": 0, "corrupt": 0}, [], []) == (found, degraded, state.pending)
    assert layout.callbacks_outbox.is_dir()


def test_pending_deliveries_are_found_and_corrupt_ones_quarantined(tmp_path: Path) -> None:
    """Good records are pending; a corrupt one is moved aside, counted and named; a temp
    file (a write in progress) is neither."""
    layout = Layout(tmp_path)
    os.makedirs(layout.callbacks_outbox)
    delivery(layout, "e1")
    delivery(layout, "e2")
    (layout.callbacks_outbox / "e3.json").write_bytes(b'{"id": "e3", "url"')
    (layout.callbacks_outbox / ".tmp.e4.json.1.ab").write_bytes(b"{")
    state, found, degraded = callbacks.recover(layout, _log.get("test"))
    assert {"pending": 2, "corrupt": 1} == found
    assert ["e1", "e2"] == [d["id"] for d in state.pending]
    moved = [n for n in os.listdir(layout.callbacks_outbox) if CORRUPT_MARK in n]
    assert [f"callback delivery e3.json was corrupt: moved to "
            f"{layout.callbacks_outbox / moved[0]}"] == degraded
    assert (layout.callbacks_outbox / ".tmp.e4.json.1.ab").exists()


def test_a_quarantined_delivery_is_not_counted_again(tmp_path: Path) -> None:
    """The next start does not count (or move again) what was already quarantined."""
    layout = Layout(tmp_path)
    os.makedirs(layout.callbacks_outbox)
    (layout.callbacks_outbox / "e1.json").write_bytes(b"")
    callbacks.recover(layout, _log.get("test"))
    _, found, degraded = callbacks.recover(layout, _log.get("test"))
    assert ({"pending": 0, "corrupt": 0}, []) == (found, degraded)
    assert 1 == len(os.listdir(layout.callbacks_outbox))
