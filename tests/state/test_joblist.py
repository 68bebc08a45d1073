"""Job listings: filters over the view, cursor pages in both orders, bad cursors refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import Config
from supervisor.state.joblist import (
    CursorError,
    decode_cursor,
    encode_cursor,
    filter_text,
    page,
    parse_label,
    parse_since,
)
from supervisor.state.layout import Layout
from supervisor.state.queue import JobQueue
from supervisor.state.submission import write_submission
from supervisor.state.view import JobFilter, open_view


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    cfg = Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws")
    with JobQueue.open(Layout(cfg.state_dir).wal_dir) as q:
        for i in range(10):
            q.enqueue(f"j{i}", {"agent": "shell" if i % 2 else "claude", "prompt": "p",
                                "batch": "b" if i < 5 else None,
                                "created_at": f"2027-01-0{1 + i % 9}T00:00:00.000Z",
                                "labels": {"team": "x"} if i == 3 else None,
                                "state": "completed" if i < 4 else "queued"})
    write_submission(Layout(cfg.state_dir), [{"id": "p1", "agent": "shell", "prompt": "p",
                                              "batch": "b"}])
    return cfg


def _ids(cfg: Config, f: JobFilter) -> list[str]:
    with open_view(cfg, Layout(cfg.state_dir)) as view:
        return [e["id"] for e in view.select(f)]


def test_candidates_then_select_apply_every_filter_in_listing_order(cfg: Config) -> None:
    """state, batch, agent, label and since, each alone; pending submissions count (the
    view's candidates, from the columns or the raw bodies, then the decoded check)."""
    assert ["j0", "j1", "j2", "j3"] == _ids(cfg, JobFilter(state="completed"))
    assert [*(f"j{i}" for i in range(4, 10)), "p1"] == _ids(cfg, JobFilter(state="queued"))
    assert ["j0", "j1", "j2", "j3", "j4", "p1"] == _ids(cfg, JobFilter(batch="b"))
    assert ["j1", "j3", "j5", "j7", "j9", "p1"] == _ids(cfg, JobFilter(agent="shell"))
    assert ["j3"] == _ids(cfg, JobFilter(labels={"team": "x"}))
    assert [] == _ids(cfg, JobFilter(labels={"team": "y"}))
    assert ["j7", "j8"] == _ids(cfg, JobFilter(since=parse_since("2027-01-08T00:00:00Z"),
                                               agent=None, batch=None, state="queued"))


def _walk(cfg: Config, f: JobFilter, limit: int, newest_first: bool) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        with open_view(cfg, Layout(cfg.state_dir)) as view:
            got = page(view, f, limit=limit, cursor=cursor, newest_first=newest_first)
        pages.append([e["id"] for e in got.entries])
        cursor = got.next_cursor
        if cursor is None:
            return pages


def test_pages_cover_everything_once_in_both_orders(cfg: Config) -> None:
    """Cursor pages of 4: every job once, oldest first or newest first; the last page has
    no next cursor."""
    every = [f"j{i}" for i in range(10)] + ["p1"]
    assert [every[0:4], every[4:8], every[8:11]] == _walk(cfg, JobFilter(), 4, False)
    assert [every[::-1][0:4], every[::-1][4:8], every[::-1][8:11]] == _walk(
        cfg, JobFilter(), 4, True)
    assert [["j1", "j3"], ["j5", "j7"], ["j9", "p1"]] == _walk(cfg, JobFilter(agent="shell"),
                                                              2, False)


def test_a_cursor_whose_job_vanished_carries_on_from_its_position(cfg: Config) -> None:
    """The cursor names the last id and its position: a missing id falls back on it."""
    with open_view(cfg, Layout(cfg.state_dir)) as view:
        got = page(view, JobFilter(), limit=3, cursor=encode_cursor("gone", 2))
    assert ["j2", "j3", "j4"] == [e["id"] for e in got.entries]


@pytest.mark.parametrize("cursor", ["", "!!!", "eyJ4IjoxfQ", encode_cursor("ok", 1)[:-3]])
def test_bad_cursors_are_refused(cursor: str) -> None:
    """Anything this module did not make: CursorError."""
    with pytest.raises(CursorError):
        decode_cursor(cursor)


def test_labels_and_since_parse_or_say_why() -> None:
    """K=V (V may be empty or hold '='); since: ISO-8601 or a duration ago."""
    assert ("k", "v=w") == parse_label("k=v=w")
    assert ("k", "") == parse_label("k=")
    for bad in ("k", "=v"):
        with pytest.raises(ValueError, match="expected K=V"):
            parse_label(bad)
    assert 1_800_000_000.0 - 7200 == parse_since("2h", now=1_800_000_000.0)
    assert 1_800_000_000.0 == parse_since("2027-01-15T08:00:00Z")
    with pytest.raises(ValueError, match="neither"):
        parse_since("yesterday")


def test_filter_text_no_job_can_hold_is_refused() -> None:
    """A filter value with a lone surrogate (a non-UTF-8 argv byte) or a NUL is a ValueError
    naming the flag, not a UnicodeEncodeError from the byte search of the bodies."""
    assert "bätch" == filter_text("--batch", "bätch")
    with pytest.raises(ValueError) as info:
        filter_text("--batch", "b\udcff")
    assert "--batch: 'b\\udcff' is not valid UTF-8 text" == str(info.value)
    with pytest.raises(ValueError) as info:
        filter_text("--agent", "a\x00")
    assert "--agent: 'a\\x00' contains a NUL character" == str(info.value)
    with pytest.raises(ValueError) as info:
        parse_label("k=\udcff")
    assert "--label: 'k=\\udcff' is not valid UTF-8 text" == str(info.value)
