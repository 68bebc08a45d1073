"""The lock table's files (state.lockfiles): pages of waiting jobs, what readers see, and a
power cut between a grant's two writes (tests.crashfs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supervisor.state.atomic import CORRUPT_MARK, Missing
from supervisor.state.layout import LOCK_WANTS, WORKER_STATE, Layout, write_record
from supervisor.state.lockfiles import Pages, page_numbers, read_held, read_pages, read_table
from supervisor.state.locktable import (
    Lock,
    Table,
    Want,
    acquire,
    grant,
    held_record,
    page_record,
    release,
)
from tests.crashfs import CrashFS, explore

T0 = "2026-01-01T00:00:00.000Z"


def want(*repos: str, seq: int) -> Want:
    return Want(tuple(repos), True, seq, T0)


def waiting_table(*jobs: str) -> Table:
    t = Table()
    for seq, job in enumerate(jobs, start=1):
        acquire(t, job, want("app", seq=seq))
    return t


def stamps(layout: Layout) -> dict[int, int]:
    """Each page file's inode (a rewrite replaces it)."""
    return {n: os.stat(layout.lock_page(n)).st_ino for n in page_numbers(layout)}


def test_pages_fill_up_then_a_new_one_starts(tmp_path: Path) -> None:
    """New waiting jobs go to the newest page until it holds `size`; then a new page."""
    layout = Layout(tmp_path)
    layout.lock_pages.mkdir(parents=True)
    t = waiting_table("a", "b", "c", "d", "e")
    pages = Pages(layout, size=2)
    pages.sync(t, ["a", "b", "c", "d", "e"])
    assert 3 == pages.flush(t)
    got, problems = read_pages(layout, owner=False)
    assert ({1: ["a", "b"], 2: ["c", "d"], 3: ["e"]}, []) == (
        {n: sorted(w) for n, w in got.items()}, problems)


def test_a_change_rewrites_only_its_page_and_an_empty_page_goes(tmp_path: Path) -> None:
    """Granting the first job rewrites its page only; when a page empties it is removed;
    a pass that touches nothing writes nothing."""
    layout = Layout(tmp_path)
    layout.lock_pages.mkdir(parents=True)
    t = waiting_table("a", "b", "c", "d")
    pages = Pages(layout, size=2)
    pages.sync(t, list(t.wants))
    pages.flush(t)
    before = stamps(layout)
    assert ["a"] == grant(t, T0)
    pages.sync(t, ["a"])
    assert 1 == pages.flush(t)
    after = stamps(layout)
    assert (before[2], True) == (after[2], before[1] != after[1])
    release(t, "a")
    assert ["b"] == grant(t, T0)
    pages.sync(t, ["a", "b"])
    pages.flush(t)
    assert ([2], 0) == (page_numbers(layout), pages.flush(t))


def test_load_then_leave_a_holder_and_a_duplicate_behind(tmp_path: Path) -> None:
    """Pages read at start: a job found holding (its grant came before its page was
    rewritten) or found twice is dropped from the page at the next flush."""
    layout = Layout(tmp_path)
    layout.lock_pages.mkdir(parents=True)
    t = waiting_table("b", "c")
    t.held["app"] = Lock("a", T0, True)
    read = {1: {"a": want("app", seq=0), "b": want("app", seq=1)},
            2: {"b": want("app", seq=1), "c": want("app", seq=2)}}
    pages = Pages(layout)
    pages.load(read, t)
    pages.flush(t)
    got, _ = read_pages(layout, owner=False)
    assert {1: ["b"], 2: ["c"]} == {n: sorted(w) for n, w in got.items()}


def _write(layout: Layout, t: Table, pages: dict[int, list[str]], **blocked: list[str]) -> None:
    layout.lock_pages.mkdir(parents=True, exist_ok=True)
    for n, jobs in pages.items():
        write_record(LOCK_WANTS, layout.lock_page(n), page_record({j: t.wants[j] for j in jobs}))
    write_record(WORKER_STATE, layout.worker_state("locks"), held_record(t, blocked))


def test_read_table_puts_state_and_pages_together(tmp_path: Path) -> None:
    """The whole table: held from state.json, queues from every page; no state.json yet:
    Missing; a damaged page: a sentence naming it, nothing moved (a reader)."""
    layout = Layout(tmp_path)
    assert isinstance(read_table(layout), Missing)
    t = waiting_table("b", "c", "d")
    t.held["lib"] = Lock("a", T0, False)
    _write(layout, t, {1: ["b"], 7: ["c", "d"]})
    got = read_table(layout)
    assert isinstance(got, Table)
    assert (t.held, {"app": ["b", "c", "d"]}) == (got.held, got.waiting)
    layout.lock_page(7).write_bytes(b"{")
    problem = read_table(layout)
    assert isinstance(problem, str) and "00000007.json" in problem
    assert not any(CORRUPT_MARK in n for n in os.listdir(layout.lock_pages))


def test_read_held_reads_state_json_alone(tmp_path: Path) -> None:
    """What the scheduler reads each pass: held, and the jobs blocked on a gone repository
    as that repository's queue; no pages; None when there is no table."""
    layout = Layout(tmp_path)
    assert read_held(layout) is None
    t = waiting_table("b")
    t.held["app"] = Lock("a", T0, True)
    _write(layout, t, {1: ["b"]}, gone=["x"])
    got = read_held(layout)
    assert isinstance(got, Table)
    assert (t.held, {"gone": ["x"]}, {}) == (got.held, got.waiting, got.wants)
    layout.worker_state("locks").write_bytes(b"")
    assert isinstance(read_held(layout), str)


def _picture(root: str) -> Any:
    got = read_table(Layout(root))
    assert isinstance(got, Table), got
    return (got.holder("app"), got.waiting.get("app", []))


def test_a_power_cut_between_a_grants_two_writes(tmp_path: Path) -> None:
    """a releases app, b (first in line) gets it: state.json says b holds, then b's page
    drops it. A cut anywhere leaves a holding with b, c waiting, or b holding with c
    waiting (b is on its page still, and holds: it holds): never b lost from both."""
    def setup(root: str) -> None:
        layout = Layout(root)
        t = waiting_table("b", "c")
        t.held["app"] = Lock("a", T0, True)
        _write(layout, t, {1: ["b", "c"]})

    def workload(root: str, fs: CrashFS) -> Iterator[None]:
        layout = Layout(root)
        t = waiting_table("b", "c")
        pages = Pages(layout, fs=fs)
        pages.load({1: dict(t.wants)}, t)
        assert ["b"] == grant(t, T0)
        write_record(WORKER_STATE, layout.worker_state("locks"), held_record(t), fs=fs)
        pages.sync(t, ["b"])
        pages.flush(t)
        yield

    report = explore(tmp_path, setup=setup, workload=workload, recover=_picture,
                     expected=[("a", ["b", "c"]), ("b", ["c"])])
    assert {0, 1} == set(report.recovered_to)
