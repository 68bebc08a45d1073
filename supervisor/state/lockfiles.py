"""The lock table's files: locks/state.json (what is held) and locks/wants/ (who waits).

Written only by the locks worker (`Pages` keeps which waiting job is on which page and
rewrites only the pages a pass changed); read by anyone (`read_table`: all of it;
`read_held`: state.json alone, what the scheduler needs on every pass, small whatever
the number of waiting jobs). docs/LOCKS.md has the layout, the write order and the crash
argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.state.atomic import CORRUPT_MARK, Corrupt, Missing, is_tmp_name, remove
from supervisor.state.fs import FS, REAL
from supervisor.state.layout import LOCK_WANTS, WORKER_STATE, Layout, read_record, write_record
from supervisor.state.locktable import (
    Table,
    Want,
    from_parts,
    from_record,
    page_record,
    wants_from_record,
)

__all__ = ["PAGE_SIZE", "Pages", "page_numbers", "read_held", "read_pages", "read_table"]

#: At most this many waiting jobs per page: a pass rewrites the pages it changed, each
#: of them small, whatever the number of jobs waiting.
PAGE_SIZE = 512


def page_numbers(layout: Layout, *, fs: FS = REAL) -> list[int]:
    """The numbers of the page files there are, in order ([] without the folder)."""
    try:
        names = fs.listdir(str(layout.lock_pages))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        stem = name.removesuffix(".json")
        if (name.endswith(".json") and stem.isdigit() and not is_tmp_name(name)
                and CORRUPT_MARK not in name):
            out.append(int(stem))
    return sorted(out)


def read_pages(layout: Layout, *, owner: bool, fs: FS = REAL
               ) -> tuple[dict[int, dict[str, Want]], list[str]]:
    """Every page: number -> its wants; and one sentence per page that cannot be used
    (moved aside when `owner`). A page gone meanwhile is skipped."""
    pages: dict[int, dict[str, Want]] = {}
    problems: list[str] = []
    for number in page_numbers(layout, fs=fs):
        path = layout.lock_page(number)
        rec = read_record(LOCK_WANTS, path, owner=owner, fs=fs)
        if isinstance(rec, Missing):
            continue
        if isinstance(rec, Corrupt):
            problems.append(f"{path}: {rec.reason}" + (
                f" (moved to {rec.moved_to})" if rec.moved_to else ""))
            continue
        wants = wants_from_record(rec)
        if isinstance(wants, str):
            problems.append(f"{path}: {wants}")
            continue
        pages[number] = wants
    return pages, problems


def read_table(layout: Layout, *, fs: FS = REAL) -> Table | Missing | str:
    """The whole table as the locks worker last wrote it (a reader's view: nothing is
    moved), or Missing (never written), or what makes it unreadable.

    The pages are read before state.json: the worker writes a grant into state.json
    before it takes the job off its page, so a job read on a page and then found holding
    holds, and no job slips between the two reads."""
    pages, problems = read_pages(layout, owner=False, fs=fs)
    rec = read_record(WORKER_STATE, layout.worker_state("locks"), owner=False, fs=fs)
    if isinstance(rec, Missing):
        return rec
    if isinstance(rec, Corrupt):
        return f"{layout.worker_state('locks')}: {rec.reason}"
    if problems:
        return problems[0]
    table = from_parts(rec, pages.values())
    return table if isinstance(table, Table) else f"{layout.worker_state('locks')}: {table}"


def read_held(layout: Layout) -> Table | str | None:
    """What is held, from locks/state.json alone, with the jobs `blocked` on repositories
    no longer known as their queues; None when there is none yet, a sentence when it
    cannot be read. What the scheduler reads on every pass while jobs wait: the file is
    small whatever the number of waiting jobs (they are on the pages, which it does not
    read), so reading it costs what is held."""
    rec = read_record(WORKER_STATE, layout.worker_state("locks"), owner=False)
    if isinstance(rec, Missing):
        return None
    if isinstance(rec, Corrupt):
        return rec.reason
    table = from_record({"held": rec.get("held")})
    stuck = rec.get("blocked") or {}
    if isinstance(table, Table) and isinstance(stuck, dict):
        table.waiting = {str(repo): [str(j) for j in jobs]
                         for repo, jobs in stuck.items() if isinstance(jobs, list)}
    return table


@dataclass
class Pages:
    """The locks worker's map of the pages: which waiting job is on which page, and which
    pages a pass changed. New waiting jobs go to the newest page until it is full; FIFO
    grants empty the oldest pages first, which are then removed."""

    layout: Layout
    size: int = PAGE_SIZE
    fs: FS = REAL
    page_of: dict[str, int] = field(default_factory=dict)
    members: dict[int, set[str]] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)
    newest: int = 0

    def load(self, pages: dict[int, dict[str, Want]], table: Table) -> None:
        """Take the pages as read at start; a job the table does not have waiting (it
        holds, or was on an earlier page too) leaves its page at the next flush."""
        self.page_of.clear()
        self.members.clear()
        self.dirty.clear()
        for number in sorted(pages):
            self.members[number] = set()
            for job in pages[number]:
                if job in table.wants and job not in self.page_of:
                    self.page_of[job] = number
                    self.members[number].add(job)
                else:
                    self.dirty.add(number)
        self.newest = max(pages, default=0)

    def abandon(self, numbers: Iterable[int]) -> None:
        """Forget the page files `numbers` (a table rebuilt without them): each is
        removed at the next flush, its jobs put on new pages by `sync`."""
        for number in numbers:
            self.members.setdefault(number, set())
            self.dirty.add(number)
            self.newest = max(self.newest, number)

    def sync(self, table: Table, jobs: Iterable[str]) -> None:
        """Follow the table for `jobs` (those a pass acquired, granted, released or
        dropped): a job now waiting gets a place, a job no longer waiting leaves its page."""
        for job in jobs:
            number = self.page_of.get(job)
            if job in table.wants and number is None:
                members = self.members.get(self.newest)
                if members is None or len(members) >= self.size:
                    self.newest += 1
                    members = self.members[self.newest] = set()
                members.add(job)
                self.page_of[job] = self.newest
                self.dirty.add(self.newest)
            elif job not in table.wants and number is not None:
                del self.page_of[job]
                self.members[number].discard(job)
                self.dirty.add(number)

    def flush(self, table: Table) -> int:
        """Write every changed page (atomically, durably); remove the emptied ones. How
        many files were written or removed."""
        done = 0
        for number in sorted(self.dirty):
            members = self.members.get(number, set())
            path = self.layout.lock_page(number)
            if members:
                write_record(LOCK_WANTS, path, page_record(
                    {job: table.wants[job] for job in sorted(members)}), fs=self.fs)
            else:
                remove(path, fs=self.fs)
                self.members.pop(number, None)
            done += 1
        self.dirty.clear()
        return done

    @property
    def folder(self) -> Path:
        return self.layout.lock_pages
