"""Tests for supervisor.locks: the worker on a real state dir — handlers, one pass, recovery
reconciled with a real (read-only) JobQueue, a corrupt state.json rebuilt from the WAL."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import locks
from supervisor import log as _log
from supervisor import runtime as _runtime
from supervisor.config import Config, RepoConfig
from supervisor.state.atomic import CORRUPT_MARK
from supervisor.state.clock import MockClock, iso_now, parse_iso
from supervisor.state.layout import READY, REQUEST, WORKER_STATE, Layout, read_record, write_record
from supervisor.state.lockfiles import read_table
from supervisor.state.locktable import (
    Table,
    acquire_request,
    reap_request,
    release_request,
    unavailable,
)
from supervisor.state.queue import JobQueue
from tests.helpers import BadDisk, until

DEADLINE = 30.0
T0 = "2026-01-01T00:00:00.000Z"


@pytest.fixture(autouse=True)
def _no_stop() -> Iterator[None]:
    """Each test starts and ends without a pending stop request."""
    _runtime._state.stop = False
    yield
    _runtime._state.stop = False


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(state_dir=tmp_path / "state", workspace_dir=tmp_path / "ws",
                  repositories={"app": RepoConfig(url="/srv/app.git", exclusive=True),
                                "lib": RepoConfig(url="/srv/lib.git"),
                                "doc": RepoConfig(url="/srv/doc.git")})


@pytest.fixture
def layout(cfg: Config) -> Layout:
    return Layout(cfg.state_dir)


def recover(cfg: Config) -> tuple[locks.Locks, dict[str, Any], dict[str, Any], list[str]]:
    clock = MockClock(parse_iso(T0) or 0.0)
    return locks.recover(cfg, Layout(cfg.state_dir), _log.get("test"), clock=clock)


def state(layout: Layout) -> dict[str, Any]:
    """locks/state.json, plus the wants on its pages and the FIFO queues they amount to."""
    rec = read_record(WORKER_STATE, layout.worker_state("locks"), owner=False)
    assert isinstance(rec, dict)
    table = read_table(layout)
    assert isinstance(table, Table), table
    return {**rec, "waiting": table.waiting,
            "wants": {job: {"seq": w.seq, "repos": list(w.repos)}
                      for job, w in table.wants.items()}}


def held(layout: Layout) -> list[tuple[str, str]]:
    return [(h["repo"], h["job"]) for h in state(layout)["held"]]


def ask(layout: Layout, job: str, *repos: str, seq: int, exclusive: bool = False) -> Path:
    """Drop an acquire into locks/inbox as the scheduler does."""
    return drop(layout, acquire_request(job, repos, exclusive=exclusive, seq=seq,
                                        created_at=iso_now()))


def drop(layout: Layout, body: dict[str, Any]) -> Path:
    inbox = layout.inbox("locks")
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / f"{body['id']}.json"
    write_record(REQUEST, path, body)
    return path


def hints(layout: Layout, prefix: str = "granted-") -> list[str]:
    """The locks worker's hints of one kind in the scheduler's inbox (grants by default)."""
    inbox = layout.inbox("scheduler")
    return sorted(n for n in os.listdir(inbox) if n.startswith(prefix)) if inbox.is_dir() else []


def inbox(layout: Layout) -> list[str]:
    return sorted(os.listdir(layout.inbox("locks")))


def jobs_in_wal(layout: Layout, *jobs: tuple[str, str, list[str], dict[str, Any]]) -> None:
    """Write jobs (id, state, repos, extra fields) into a real WAL, as the scheduler would."""
    queue = JobQueue.open(layout.wal_dir)
    try:
        for job_id, st, repos, extra in jobs:
            queue.enqueue(job_id, {"agent": "shell", "prompt": "true", "repos": repos,
                                   "created_at": T0, "exclusive": False})
            queue.update(job_id, state=st, **extra)
    finally:
        queue.close()


# -- first start, good and corrupt state -------------------------------------------------------

def test_missing_state_starts_empty_and_writes_the_file(cfg: Config, layout: Layout) -> None:
    """First start: an empty table, written at once; nothing degraded."""
    _, found, did, degraded = recover(cfg)
    assert ({"state": "missing", "held": 0, "waiting": 0}, []) == (found, degraded)
    assert ("rebuilt", [], []) == (did["state"], did["dropped"], did["granted"])
    rec = read_record(WORKER_STATE, layout.worker_state("locks"), owner=False)
    assert isinstance(rec, dict)
    assert (["blocked", "held", "schema", "v", "worker"], [], {}, []) == (
        sorted(rec), rec["held"], rec["blocked"], os.listdir(layout.lock_pages))


def test_good_state_is_read_back_and_reconciled_with_the_wal(cfg: Config, layout: Layout) -> None:
    """Locks and queues of live jobs come back exactly; the holder's waiting jobs stay."""
    jobs_in_wal(layout, ("a", "running", ["app"], {"lock_exclusive": True}),
                ("b", "waiting", ["app"], {}), ("c", "waiting", ["app"], {}))
    os.makedirs(layout.worker_dir("locks"))
    rec = {"worker": "locks",
           "held": [{"repo": "app", "job": "a", "since": T0, "exclusive": True}],
           "waiting": {"app": ["b", "c"]},
           "wants": {j: {"repos": ["app"], "exclusive": True, "seq": n, "created_at": T0}
                     for n, j in enumerate(["b", "c"])}}
    write_record(WORKER_STATE, layout.worker_state("locks"), rec)
    _, found, did, degraded = recover(cfg)
    assert ({"state": "read", "held": 1, "waiting": 2}, []) == (found, degraded)
    assert ("read", [], []) == (did["state"], did["dropped"], did["granted"])
    assert ([("app", "a")], {"app": ["b", "c"]}) == (held(layout), state(layout)["waiting"])


@pytest.mark.parametrize(("raw", "why"), [
    (b"{\"schema\": \"batchd.worker_state\", \"v\": 1, \"worker\": \"lo", "torn"),
    (b"", "empty"),
    (b'{"schema": "batchd.worker_state", "v": 1, "worker": "locks", "held": {}, "waiting": {}}',
     "held not a list"),
    (b'{"schema": "batchd.worker_state", "v": 1, "worker": "locks", "held": [{"repo": "a"}],'
     b' "waiting": {}}', "lock without job"),
    (b'{"schema": "batchd.worker_state", "v": 1, "worker": "locks", "held": [],'
     b' "wants": {"j1": {"repos": [], "exclusive": false, "seq": 1}}}', "want of nothing"),
])
def test_corrupt_state_is_quarantined_and_rebuilt_from_the_wal(cfg: Config, layout: Layout,
                                                                raw: bytes, why: str) -> None:
    """A corrupt table is moved aside and rebuilt from the WAL: starting jobs and running
    exclusive ones hold their repos, a running non-exclusive one does not, waiting jobs
    queue again in WAL FIFO order by their lock_seq; degraded says what happened."""
    jobs_in_wal(layout,
                ("s", "starting", ["lib"], {"lock_exclusive": False, "dispatched_at": T0}),
                ("r", "running", ["app"], {"lock_exclusive": True}),
                ("n", "running", ["doc"], {"lock_exclusive": False}),
                ("w1", "waiting", ["app", "doc"], {"lock_exclusive": True, "lock_seq": 10}),
                ("w2", "waiting", ["lib"], {"lock_exclusive": False, "lock_seq": 11}),
                ("q", "queued", ["doc"], {}),
                ("done", "completed", ["app"], {}))
    os.makedirs(layout.worker_dir("locks"))
    layout.worker_state("locks").write_bytes(raw)
    _, found, did, degraded = recover(cfg)
    moved = [n for n in os.listdir(layout.worker_dir("locks")) if CORRUPT_MARK in n]
    assert 1 == len(moved), why
    assert raw == (layout.worker_dir("locks") / moved[0]).read_bytes()
    assert [f"locks state was corrupt: moved to {layout.worker_dir('locks') / moved[0]}; "
            "rebuilt from the job queue"] == degraded
    assert ("corrupt", "rebuilt") == (found["state"], did["state"])
    assert [("lib", "s"), ("app", "r")] == held(layout)
    assert {"app": ["w1"], "doc": ["w1"], "lib": ["w2"]} == state(layout)["waiting"]
    assert [10, 11] == [state(layout)["wants"][j]["seq"] for j in ("w1", "w2")]


def test_recovery_drops_finished_and_unknown_jobs_then_grants(cfg: Config,
                                                              layout: Layout) -> None:
    """Locks and places of terminal/unknown jobs go, as do the non-exclusive locks of
    running jobs (cloned already); the freed repos go to the next in line, who is hinted."""
    jobs_in_wal(layout, ("a", "completed", ["app"], {}), ("n", "running", ["lib"], {}),
                ("x", "cancelled", ["doc"], {}), ("b", "waiting", ["app"], {}),
                ("c", "waiting", ["lib"], {}))
    os.makedirs(layout.worker_dir("locks"))
    write_record(WORKER_STATE, layout.worker_state("locks"), {
        "worker": "locks",
        "held": [{"repo": "app", "job": "a", "since": T0, "exclusive": True},
                 {"repo": "lib", "job": "n", "since": T0, "exclusive": False}],
        "waiting": {"app": ["b"], "doc": ["x", "ghost"], "lib": ["c"]},
        "wants": {"b": {"repos": ["app"], "exclusive": True, "seq": 1, "created_at": T0},
                  "x": {"repos": ["doc"], "exclusive": False, "seq": 2, "created_at": T0},
                  "ghost": {"repos": ["doc"], "exclusive": False, "seq": 3, "created_at": T0},
                  "c": {"repos": ["lib"], "exclusive": False, "seq": 4, "created_at": T0}}})
    _, _, did, degraded = recover(cfg)
    assert (["a", "ghost", "n", "x"], ["b", "c"], 2, []) == (
        did["dropped"], did["granted"], did["hinted"], degraded)
    assert ([("app", "b"), ("lib", "c")], {}) == (held(layout), state(layout)["waiting"])
    assert ["granted-b.json", "granted-c.json"] == hints(layout)


def test_recovery_hints_a_grant_whose_hint_was_lost(cfg: Config, layout: Layout) -> None:
    """Crash after the grant was saved, before its hint: recovery hints the holder still
    waiting in the WAL (and not a holder that is already running)."""
    jobs_in_wal(layout, ("w", "waiting", ["app"], {}), ("r", "running", ["lib"],
                                                        {"lock_exclusive": True}))
    os.makedirs(layout.worker_dir("locks"))
    write_record(WORKER_STATE, layout.worker_state("locks"), {
        "worker": "locks", "waiting": {},
        "held": [{"repo": "app", "job": "w", "since": T0, "exclusive": True},
                 {"repo": "lib", "job": "r", "since": T0, "exclusive": True}]})
    recover(cfg)
    assert ["granted-w.json"] == hints(layout)


def test_an_unreadable_wal_keeps_the_table_and_degrades(cfg: Config, layout: Layout) -> None:
    """The WAL cannot be opened: the table is kept as read, unreconciled, and says so."""
    layout.wal_dir.parent.mkdir(parents=True)
    layout.wal_dir.write_bytes(b"not a folder")
    os.makedirs(layout.worker_dir("locks"))
    write_record(WORKER_STATE, layout.worker_state("locks"), {
        "worker": "locks", "waiting": {},
        "held": [{"repo": "app", "job": "a", "since": T0, "exclusive": True}]})
    _, _, did, degraded = recover(cfg)
    assert ([], [("app", "a")]) == (did["dropped"], held(layout))
    assert 1 == len(degraded) and degraded[0].startswith("job queue unreadable")


def test_recovery_touches_only_its_own_folder(cfg: Config, layout: Layout) -> None:
    """With nothing to hint, recovery writes under locks/ only."""
    recover(cfg)
    assert ["locks"] == os.listdir(layout.root)


def test_a_table_of_the_previous_version_is_paged(cfg: Config, layout: Layout) -> None:
    """A state.json of the version that kept every want in it: the same table comes back;
    the wants are written to pages and state.json keeps what is held only."""
    jobs_in_wal(layout, ("a", "running", ["app"], {"lock_exclusive": True}),
                ("b", "waiting", ["app"], {}), ("c", "waiting", ["app"], {}))
    os.makedirs(layout.worker_dir("locks"))
    write_record(WORKER_STATE, layout.worker_state("locks"), {
        "worker": "locks",
        "held": [{"repo": "app", "job": "a", "since": T0, "exclusive": True}],
        "wants": {j: {"repos": ["app"], "exclusive": True, "seq": n, "created_at": T0}
                  for n, j in enumerate(["b", "c"])}})
    _, found, _, degraded = recover(cfg)
    rec = read_record(WORKER_STATE, layout.worker_state("locks"), owner=False)
    assert isinstance(rec, dict)
    assert (2, [], [("app", "a")], {"app": ["b", "c"]}, "wants" in rec, 1) == (
        found["waiting"], degraded, held(layout), state(layout)["waiting"], False,
        len(os.listdir(layout.lock_pages)))


def test_a_corrupt_page_is_quarantined_and_the_table_rebuilt(cfg: Config,
                                                             layout: Layout) -> None:
    """A page that cannot be read: moved aside; its waiting jobs are known only to the
    WAL, so the table is rebuilt from it, and degraded says so."""
    jobs_in_wal(layout, ("w1", "waiting", ["app"], {"lock_exclusive": True, "lock_seq": 1}),
                ("w2", "waiting", ["app"], {"lock_exclusive": True, "lock_seq": 2}))
    recover(cfg)
    assert ([("app", "w1")], {"app": ["w2"]}) == (held(layout), state(layout)["waiting"])
    (page,) = os.listdir(layout.lock_pages)
    (layout.lock_pages / page).write_bytes(b"{")
    _, found, did, degraded = recover(cfg)
    assert ("corrupt", "rebuilt", [("app", "w1")], {"app": ["w2"]}) == (
        found["state"], did["state"], held(layout), state(layout)["waiting"])
    assert 1 == len(degraded) and "page of waiting jobs was corrupt" in degraded[0]
    assert 1 == sum(CORRUPT_MARK in n for n in os.listdir(layout.lock_pages))


def test_a_pass_rewrites_only_the_pages_it_changed(cfg: Config, layout: Layout) -> None:
    """Many jobs waiting on several pages: a release and the grant that follows rewrite
    state.json and the first page only; the other pages stay as they were."""
    lk, _, _, _ = recover(cfg)
    assert lk.pages is not None
    lk.pages.size = 3
    for seq in range(1, 11):
        ask(layout, f"j{seq:02d}", "app", seq=seq)
    locks.one_pass(lk)
    before = {n: os.stat(layout.lock_page(n)).st_ino for n in lk.pages.members}
    drop(layout, release_request("j01", created_at=iso_now()))
    locks.one_pass(lk)
    after = {n: os.stat(layout.lock_page(n)).st_ino for n in lk.pages.members}
    changed = sorted(n for n in after if after[n] != before.get(n))
    assert ([("app", "j02")], [1], 8) == (held(layout), changed,
                                          len(state(layout)["waiting"]["app"]))


# -- one pass: the handlers ------------------------------------------------------------------------

def test_acquire_grants_saves_hints_and_removes_the_request(cfg: Config, layout: Layout) -> None:
    """An acquire of a free repo: held in state.json, granted-<job> hinted, request gone."""
    lk, _, _, _ = recover(cfg)
    ask(layout, "a", "app", seq=1, exclusive=True)
    assert 1 == locks.one_pass(lk)
    assert ([{"repo": "app", "job": "a", "since": T0, "exclusive": True}], [], []) == (
        state(layout)["held"], inbox(layout), [])
    assert ["granted-a.json"] == hints(layout)
    hint = read_record(REQUEST, layout.inbox("scheduler") / "granted-a.json", owner=False)
    assert isinstance(hint, dict)
    assert ("lock_granted", "a") == (hint["kind"], hint["job"])


def test_a_grant_hint_is_written_after_state_json_without_fsyncs(
        cfg: Config, layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint goes out only once state.json says the job holds, and without fsyncs: the
    scheduler dispatches from state.json, so a hint a power cut takes changes nothing."""
    lk, _, _, _ = recover(cfg)
    sent: list[tuple[str, bool, list[Any]]] = []
    real = locks.send_request

    def spy(lay: Layout, worker: str, req: dict[str, Any], **kw: Any) -> Any:
        held = state(layout)["held"]
        sent.append((req["id"], kw.get("durable", True), [h["job"] for h in held]))
        return real(lay, worker, req, **kw)

    monkeypatch.setattr(locks, "send_request", spy)
    ask(layout, "a", "app", seq=1, exclusive=True)
    assert 1 == locks.one_pass(lk)
    assert [("granted-a", False, ["a"])] == sent


def test_acquires_queue_by_seq_whatever_the_file_order(cfg: Config, layout: Layout) -> None:
    """Requests seen in one pass queue by their seq (files within one mtime tick come back
    in name order, not the scheduler's)."""
    lk, _, _, _ = recover(cfg)
    for job, seq in (("zz", 1), ("mm", 2), ("aa", 3)):
        ask(layout, job, "app", seq=seq)
    locks.one_pass(lk)
    assert ([("app", "zz")], {"app": ["mm", "aa"]}) == (held(layout), state(layout)["waiting"])


def test_release_hands_the_lock_to_the_next_in_line(cfg: Config, layout: Layout) -> None:
    """release-<holder> frees the repo; the next waiting job gets it and is hinted."""
    lk, _, _, _ = recover(cfg)
    ask(layout, "a", "app", seq=1)
    ask(layout, "b", "app", seq=2)
    locks.one_pass(lk)
    drop(layout, release_request("a", created_at=iso_now()))
    locks.one_pass(lk)
    assert ([("app", "b")], {}, []) == (held(layout), state(layout)["waiting"], inbox(layout))
    assert ["granted-a.json", "granted-b.json"] == hints(layout)


def test_the_reapers_request_frees_finished_and_unknown_jobs_only(cfg: Config,
                                                                  layout: Layout) -> None:
    """While the worker runs, a `reap` request (the reaper's) frees the locks and places of
    the jobs the WAL says are finished or does not know — the next in line is granted and
    hinted — and leaves those of a job the WAL says is live, whatever the reaper thought."""
    lk, _, _, _ = recover(cfg)
    ask(layout, "done", "app", seq=1, exclusive=True)
    ask(layout, "ghost", "app", seq=2)
    ask(layout, "next", "app", seq=3)
    ask(layout, "live", "lib", seq=4)
    locks.one_pass(lk)
    assert [("app", "done"), ("lib", "live")] == held(layout)
    # the job "done" died while the locks worker was down: the WAL has its end, and its
    # release was never seen (what the reaper's pass is the net for)
    jobs_in_wal(layout, ("done", "lost", ["app"], {}), ("live", "running", ["lib"], {}),
                ("next", "waiting", ["app"], {}))
    drop(layout, reap_request(["done", "ghost", "live"], created_at=iso_now()))
    locks.one_pass(lk)
    assert ([("app", "next"), ("lib", "live")], {}, []) == (
        sorted(held(layout)), state(layout)["waiting"], inbox(layout))
    assert "granted-next.json" in hints(layout)


def test_a_reap_request_of_jobs_not_in_the_table_writes_nothing(cfg: Config,
                                                                layout: Layout) -> None:
    """A replayed or late `reap` naming jobs no longer in the table changes nothing and
    is removed; a malformed one is quarantined."""
    lk, _, _, _ = recover(cfg)
    before = layout.worker_state("locks").stat().st_mtime_ns
    drop(layout, reap_request(["gone"], created_at=iso_now()))
    drop(layout, {"id": "reap-bad", "kind": "reap", "jobs": "x"})
    locks.one_pass(lk)
    assert (before, [n for n in inbox(layout) if CORRUPT_MARK not in n]) == (
        layout.worker_state("locks").stat().st_mtime_ns, [])
    assert 1 == sum(CORRUPT_MARK in n for n in inbox(layout))


def test_acquire_and_release_of_one_job_in_one_pass_leave_nothing(cfg: Config,
                                                                  layout: Layout) -> None:
    """Both of a job's requests in one pass: acquires are applied first, so nothing stays."""
    lk, _, _, _ = recover(cfg)
    drop(layout, release_request("a", created_at=iso_now()))
    ask(layout, "a", "app", seq=1)
    locks.one_pass(lk)
    assert ([], {}, []) == (held(layout), state(layout)["waiting"], inbox(layout))


def test_replayed_requests_change_nothing(cfg: Config, layout: Layout, tmp_path: Path) -> None:
    """Crash after state.json was saved but before the requests were removed: the restarted
    worker replays them and the table is the same (and the same as without the crash)."""
    lk, _, _, _ = recover(cfg)
    ask(layout, "a", "app", seq=1)
    ask(layout, "b", "app", "lib", seq=2)
    ask(layout, "c", "lib", seq=3)
    drop(layout, release_request("a", created_at=iso_now()))
    saved = tmp_path / "saved"
    shutil.copytree(layout.inbox("locks"), saved)
    locks.one_pass(lk)
    after = state(layout)
    for name in os.listdir(saved):          # as if the removals never happened
        shutil.copy2(saved / name, layout.inbox("locks") / name)
    lk, _, _, _ = recover(cfg)
    locks.one_pass(lk)
    assert (after["held"], after["waiting"], []) == (state(layout)["held"],
                                                     state(layout)["waiting"], inbox(layout))
    assert [("app", "b"), ("lib", "b")] == held(layout)


def test_a_pass_that_changes_nothing_writes_nothing(cfg: Config, layout: Layout) -> None:
    """A replayed acquire of a known job does not rewrite state.json."""
    lk, _, _, _ = recover(cfg)
    ask(layout, "a", "app", seq=1)
    locks.one_pass(lk)
    before = os.stat(layout.worker_state("locks")).st_ino
    ask(layout, "a", "app", seq=1)
    assert 1 == locks.one_pass(lk)
    assert before == os.stat(layout.worker_state("locks")).st_ino


@pytest.mark.parametrize(("body", "why"), [
    ({"id": "acquire-a", "kind": "acquire", "job": "a", "repos": [], "exclusive": False,
      "seq": 1}, "'repos' must be a non-empty list"),
    ({"id": "acquire-a", "kind": "acquire", "job": "a", "repos": ["app"], "exclusive": "no",
      "seq": 1}, "'exclusive' must be true or false"),
    ({"id": "acquire-a", "kind": "acquire", "job": "a", "repos": ["app"], "exclusive": False},
     "'seq' must be an integer"),
    ({"id": "release-x", "kind": "release", "job": "../x"}, "not a valid job id"),
    ({"id": "r1", "kind": "steal", "job": "a"}, "unknown request kind"),
])
def test_bad_requests_are_quarantined_without_effect(cfg: Config, layout: Layout,
                                                     body: dict[str, Any], why: str) -> None:
    """A malformed request or an unknown kind is moved aside; the table does not change."""
    lk, _, _, _ = recover(cfg)
    drop(layout, body)
    assert 0 == locks.one_pass(lk)
    names = inbox(layout)
    assert 1 == len(names) and CORRUPT_MARK in names[0], why
    assert ([], {}) == (held(layout), state(layout)["waiting"])


def test_a_repository_no_longer_known_is_unavailable_and_never_granted(
        cfg: Config, layout: Layout) -> None:
    """A job waiting on a repo that is neither configured nor registered waits, never
    granted; readers name the repo unavailable (it is not stored: they know better)."""
    lk, _, _, _ = recover(cfg)
    ask(layout, "a", "gone", "app", seq=1)
    locks.one_pass(lk)
    table = read_table(layout)
    assert isinstance(table, Table)
    assert ([], {"gone": ["a"], "app": ["a"]}, ["gone"], {"gone": ["a"]}) == (
        held(layout), state(layout)["waiting"], unavailable(table, lk.known()),
        state(layout)["blocked"])


# -- a full or failing disk ------------------------------------------------------------------------

class OneHint:
    """A waiter for serve: one hint, then the loop stops at the next wait."""

    def __init__(self) -> None:
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return self.waits == 1

    def stop(self) -> bool:
        return self.waits > 1


def holder_released_while_b_waits(cfg: Config, layout: Layout) -> locks.Locks:
    """a (running) holds app, b waits for it; a completed and its release is in the inbox."""
    jobs_in_wal(layout, ("a", "running", ["app"], {"lock_exclusive": True}),
                ("b", "waiting", ["app"], {}))
    lk, _, _, _ = recover(cfg)
    ask(layout, "b", "app", seq=1, exclusive=True)
    locks.one_pass(lk)
    assert ([("app", "a")], {"app": ["b"]}) == (held(layout), state(layout)["waiting"])
    queue = JobQueue.open(layout.wal_dir)
    try:
        queue.update("a", state="completed")
    finally:
        queue.close()
    drop(layout, release_request("a", created_at=iso_now()))
    return lk


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_pass_that_cannot_save_leaves_its_requests_and_the_saved_table(
        cfg: Config, layout: Layout, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """state.json cannot be written (full or failing disk): the pass fails before any
    hint and any request's removal; state.json and the pages are as before."""
    lk = holder_released_while_b_waits(cfg, layout)
    before = state(layout)
    BadDisk(monkeypatch, error).broken = True
    with pytest.raises(OSError):
        locks.one_pass(lk)
    assert (before, ["release-a.json"], []) == (state(layout), inbox(layout), hints(layout))


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_failed_save_is_retried_with_a_backoff_and_grants_once(
        cfg: Config, layout: Layout, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """The pass, then the rebuild after 1 s, cannot write; after 2 s more the worker
    rebuilds from its files and passes: b holds, hinted once, the release is gone; the
    worker never exits."""
    lk = holder_released_while_b_waits(cfg, layout)
    disk = BadDisk(monkeypatch, error)
    disk.failures = 2
    clock = lk.clock
    assert isinstance(clock, MockClock)
    t0 = clock.monotonic()
    waiter = OneHint()
    lk = locks.serve(lk, waiter, stop=waiter.stop)
    assert (2, [("app", "b")], {}, [], ["granted-b.json"], 3.0) == (
        disk.refused, held(layout), state(layout)["waiting"], inbox(layout), hints(layout),
        clock.monotonic() - t0)
    assert [("app", "b")] == [(repo, lock.job) for repo, lock in lk.table.held.items()]


# -- the running worker ------------------------------------------------------------------------

def test_main_reports_ready_and_serves_acquire_and_release(cfg: Config, layout: Layout) -> None:
    """The running worker reports ready, grants an acquire dropped into its inbox, hands
    the lock on at the release, and returns 0 once a stop is requested."""
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(locks.main(cfg)))
    worker.start()

    try:
        until("ready", layout.ready_file("locks").exists)
        rec = read_record(READY, layout.ready_file("locks"), owner=False)
        assert isinstance(rec, dict)
        assert ("locks", {"state": "missing", "held": 0, "waiting": 0}) == (rec["worker"],
                                                                            rec["found"])
        ask(layout, "a", "app", seq=1)
        ask(layout, "b", "app", seq=2)
        until("a granted", lambda: [("app", "a")] == held(layout) and not inbox(layout))
        drop(layout, release_request("a", created_at=iso_now()))
        until("b granted", lambda: [("app", "b")] == held(layout) and not inbox(layout))
    finally:
        _runtime.request_stop()
        worker.join(DEADLINE)
    assert [0] == result


def test_the_job_first_in_line_behind_a_whole_run_holder_is_told_once(
        cfg: Config, layout: Layout) -> None:
    """b waits behind a (exclusive, its whole run): the scheduler gets one next-b hint,
    not again on later passes; once a releases and b holds, c is told; a job behind a
    holder that only clones (lib) never is."""
    jobs_in_wal(layout, ("a", "starting", ["app"], {"lock_exclusive": True}),
                ("b", "waiting", ["app"], {}), ("c", "waiting", ["app"], {}),
                ("n", "starting", ["lib"], {}), ("m", "waiting", ["lib"], {}))
    lk, _, _, _ = recover(cfg)
    for job, repo, seq in (("a", "app", 1), ("b", "app", 2), ("c", "app", 3),
                           ("n", "lib", 4), ("m", "lib", 5)):
        ask(layout, job, repo, seq=seq, exclusive=repo == "app")
    locks.one_pass(lk)
    assert ["next-b.json"] == hints(layout, "next-")
    os.unlink(layout.inbox("scheduler") / "next-b.json")
    ask(layout, "d", "app", seq=6, exclusive=True)
    locks.one_pass(lk)
    assert [] == hints(layout, "next-")
    drop(layout, release_request("a", created_at=iso_now()))
    locks.one_pass(lk)
    assert ([("lib", "n"), ("app", "b")], ["next-c.json"]) == (
        held(layout), hints(layout, "next-"))


def test_a_restarted_locks_worker_tells_the_next_in_line_again(
        cfg: Config, layout: Layout) -> None:
    """What the worker told is memory only: its recovery tells it again (a hint is
    idempotent: the scheduler makes a workspace ahead at most once)."""
    jobs_in_wal(layout, ("a", "running", ["app"], {"lock_exclusive": True}),
                ("b", "waiting", ["app"], {"lock_seq": 1}))
    recover(cfg)
    assert ["next-b.json"] == hints(layout, "next-")
    os.unlink(layout.inbox("scheduler") / "next-b.json")
    recover(cfg)
    assert ["next-b.json"] == hints(layout, "next-")
