"""Tests for supervisor.runtime: the Watcher (real inotify), run_loop, inboxes, readiness."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import log as _log
from supervisor import runtime as _runtime
from supervisor.runtime import BadRequest, Watcher, handle_inbox, inbox_requests, run_loop
from supervisor.state.atomic import CORRUPT_MARK, write_bytes
from supervisor.state.clock import MockClock, iso_now
from supervisor.state.layout import READY, REQUEST, Layout, read_record, write_record
from supervisor.state.proc import start_time
from tests.helpers import BadDisk

WAKE = 30.0  # generous: a hint must arrive long before this under any load


@pytest.fixture(autouse=True)
def _no_stop() -> Iterator[None]:
    """Each test starts and ends without a pending stop request."""
    _runtime._state.stop = False
    yield
    _runtime._state.stop = False


def request(folder: Path, name: str, kind: str = "submit", **extra: Any) -> Path:
    path = folder / f"{name}.json"
    write_record(REQUEST, path, {"id": name, "kind": kind, "created_at": iso_now(), **extra})
    return path


def set_mtime_ns(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns))


def quarantined(folder: Path) -> list[str]:
    return sorted(n.split(CORRUPT_MARK)[0] for n in os.listdir(folder) if CORRUPT_MARK in n)


# -- Watcher -------------------------------------------------------------------------------

def test_first_wait_is_the_start_rescan(tmp_path: Path) -> None:
    """A pass is due at once after start (nothing was seen while the worker was down)."""
    with Watcher([tmp_path / "inbox"], rescan_interval=3600) as w:
        assert w.wait(0) is True
        assert w.wait(0) is False


def test_start_creates_missing_folders(tmp_path: Path) -> None:
    """Watching a folder that does not exist yet creates it."""
    with Watcher([tmp_path / "a" / "inbox"], rescan_interval=3600):
        assert (tmp_path / "a" / "inbox").is_dir()


def test_atomic_write_wakes_wait(tmp_path: Path) -> None:
    """A write-then-rename (an atomic write) into the folder wakes wait() as a hint."""
    folder = tmp_path / "inbox"
    with Watcher([folder], rescan_interval=3600) as w:
        assert w.wait(0) is True
        write_bytes(folder / "r1.json", b"{}")
        assert w.wait(WAKE) is True


def test_rename_from_outside_wakes_wait(tmp_path: Path) -> None:
    """A file moved in from another folder (a moved event's destination) is a hint."""
    folder = tmp_path / "inbox"
    outside = tmp_path / "r2.json"
    outside.write_bytes(b"{}")
    with Watcher([folder], rescan_interval=3600) as w:
        w.wait(0)
        os.rename(outside, folder / "r2.json")
        assert w.wait(WAKE) is True


def test_delete_wakes_wait(tmp_path: Path) -> None:
    """Deleting a file in a watched folder is a hint."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "r3.json").write_bytes(b"{}")
    with Watcher([folder], rescan_interval=3600) as w:
        w.wait(0)
        os.unlink(folder / "r3.json")
        assert w.wait(WAKE) is True


def test_every_folder_is_watched(tmp_path: Path) -> None:
    """A Watcher over several folders wakes for a write in any of them."""
    a, b = tmp_path / "a", tmp_path / "b"
    with Watcher([a, b], rescan_interval=3600) as w:
        w.wait(0)
        write_bytes(b / "x.json", b"{}")
        assert w.wait(WAKE) is True


def test_temp_files_are_not_hints(tmp_path: Path) -> None:
    """Creating and writing a temp file (a write in progress) does not wake wait()."""
    folder = tmp_path / "inbox"
    with Watcher([folder], rescan_interval=3600) as w:
        w.wait(0)
        (folder / ".tmp.r.json.1.ab").write_bytes(b"partial")
        assert w.wait(0.5) is False


def test_no_hint_returns_false_after_the_timeout(tmp_path: Path) -> None:
    """With nothing happening, wait(timeout) returns False once the timeout ran out."""
    with Watcher([tmp_path], rescan_interval=3600) as w:
        w.wait(0)
        assert w.wait(0.05) is False


def test_rescan_reports_with_the_observer_stopped(tmp_path: Path) -> None:
    """With no events at all (observer stopped), the periodic rescan still makes wait() True."""
    clock = MockClock(monotonic_start=1000.0)
    w = Watcher([tmp_path], rescan_interval=5.0, clock=clock)
    w.start()
    w.stop()
    try:
        assert w.wait(0) is True
        write_bytes(tmp_path / "lost.json", b"{}")
        clock.advance(4.9)
        assert w.wait(0) is False
        clock.advance(0.2)
        assert w.wait(0) is True
        assert w.wait(0) is False
    finally:
        w.close()


def test_a_hint_pushes_the_next_rescan_back(tmp_path: Path) -> None:
    """A pass run for a hint counts as a rescan: the next one is due an interval later."""
    clock = MockClock(monotonic_start=1000.0)
    with Watcher([tmp_path], rescan_interval=5.0, clock=clock) as w:
        w.wait(0)
        clock.advance(3.0)
        (tmp_path / "request.json").write_text("{}")
        assert w.wait(WAKE) is True
        clock.advance(3.0)
        assert w.wait(0) is False


def test_a_wake_is_not_a_look(tmp_path: Path) -> None:
    """wake() makes wait() return True but is not counted in `looks` and does not put the
    rescan off; a hint and a rescan each count one look."""
    clock = MockClock(monotonic_start=1000.0)
    with Watcher([tmp_path], rescan_interval=5.0, clock=clock) as w:
        w.wait(0)
        first = w.looks
        clock.advance(3.0)
        w.wake()
        assert (True, first) == (w.wait(0), w.looks)
        clock.advance(2.0)
        assert (True, first + 1) == (w.wait(0), w.looks)       # the rescan, on time
        (tmp_path / "request.json").write_text("{}")
        assert (True, True) == (w.wait(WAKE), w.looks >= first + 2)   # created (+ modified)


def test_events_choose_what_is_a_hint(tmp_path: Path) -> None:
    """With events=[created, moved] a removal is no hint (a worker's own removals)."""
    from watchdog.events import FileCreatedEvent, FileMovedEvent

    (tmp_path / "old.json").write_text("{}")
    with Watcher([tmp_path], rescan_interval=3600,
                 events=[FileCreatedEvent, FileMovedEvent]) as w:
        w.wait(0)
        (tmp_path / "old.json").unlink()
        assert w.wait(0.3) is False
        (tmp_path / ".tmp.new.json.1.ab").write_text("{}")
        (tmp_path / ".tmp.new.json.1.ab").rename(tmp_path / "new.json")
        assert w.wait(WAKE) is True


def test_folder_events_give_one_folder_kinds_of_its_own(tmp_path: Path) -> None:
    """folder_events: an append in the log folder is a hint (modified), while the same
    in the inbox folder, watched for renames only, is not (the scheduler's inbox and the
    api's submission log)."""
    from watchdog.events import FileModifiedEvent, FileMovedEvent

    inbox, log = tmp_path / "inbox", tmp_path / "log"
    inbox.mkdir()
    log.mkdir()
    (inbox / "a.json").write_text("{}")
    (log / "000000000001.wal").write_bytes(b"x")
    with Watcher([inbox, log], rescan_interval=3600, events=[FileMovedEvent],
                 folder_events={log: [FileModifiedEvent]}) as w:
        w.wait(0)
        with open(inbox / "a.json", "a") as f:
            f.write(" ")
        assert w.wait(0.3) is False
        with open(log / "000000000001.wal", "ab") as f:
            f.write(b"y")
        assert w.wait(WAKE) is True


def test_a_direct_watcher_hints_new_files_only(tmp_path: Path) -> None:
    """direct=True (its own inotify descriptor, read by wait): a file renamed in or created
    is a hint (counted in `looks`); a temp file alone, a removal or a rewrite in place is
    not, and wait() keeps waiting through them until its timeout."""
    (tmp_path / "old.json").write_text("{}")
    with Watcher([tmp_path], rescan_interval=3600, direct=True) as w:
        w.wait(0)
        looks = w.looks
        (tmp_path / "old.json").unlink()
        (tmp_path / ".tmp.new.json.1.ab").write_text("{}")
        quiet = (w.wait(0.3), w.looks - looks)
        (tmp_path / ".tmp.new.json.1.ab").rename(tmp_path / "new.json")
        renamed = (w.wait(WAKE), w.looks - looks)
        (tmp_path / "made.json").write_text("{}")
        created = (w.wait(WAKE), w.looks - looks)
        w.wake()
        woken = (w.wait(WAKE), w.looks - looks)
    assert ((False, 0), (True, 1), (True, 2), (True, 2)) == (quiet, renamed, created, woken)


def test_a_direct_watcher_takes_a_burst_as_one_pass(tmp_path: Path) -> None:
    """A thousand renames in a row: the next wait() returns at once, and everything the
    burst hinted is counted by then (no thread between the kernel and the count)."""
    with Watcher([tmp_path], rescan_interval=3600, direct=True) as w:
        w.wait(0)
        looks = w.looks
        for i in range(1000):
            (tmp_path / f".tmp.r{i}.json.1.ab").write_text("{}")
            (tmp_path / f".tmp.r{i}.json.1.ab").rename(tmp_path / f"r{i}.json")
        assert (True, 1000) == (w.wait(WAKE), w.looks - looks)
        assert w.wait(0.05) is False


def test_a_direct_watcher_without_inotify_still_rescans(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify_init1 failing (its limit reached): start() logs and carries on; wait()
    reports the rescans."""
    def no_inotify(folders: object) -> None:
        raise OSError(24, "inotify instance limit reached")

    monkeypatch.setattr(_runtime, "_Inotify", no_inotify)
    clock = MockClock(monotonic_start=1000.0)
    with Watcher([tmp_path / "inbox"], rescan_interval=5.0, clock=clock, direct=True) as w:
        assert (True, False) == (w.wait(0), w.wait(0))
        clock.advance(5.0)
        assert w.wait(0) is True


def test_request_stop_wakes_every_watcher(tmp_path: Path) -> None:
    """request_stop() (what SIGTERM calls) sets the flag and wakes a waiting watcher."""
    with Watcher([tmp_path], rescan_interval=3600) as w:
        w.wait(0)
        _runtime.request_stop()
        assert _runtime.stop_requested() is True
        assert w.wait(WAKE) is True


def test_fileno_becomes_readable_on_a_hint(tmp_path: Path) -> None:
    """The wake-up pipe is exposed for select()-based loops."""
    import select

    with Watcher([tmp_path], rescan_interval=3600) as w:
        w.wait(0)
        write_bytes(tmp_path / "x.json", b"{}")
        assert [w.fileno()] == select.select([w.fileno()], [], [], WAKE)[0]
        assert w.wait(0) is True


# -- run_loop ------------------------------------------------------------------------------

class Done(Exception):
    """The scripted waiter ran out of answers: the test's way out of run_loop."""


class ScriptedWaiter:
    """A Waiter that replays answers and advances a fake clock by each timeout it is given."""

    def __init__(self, clock: MockClock, answers: list[bool]) -> None:
        self.clock, self.answers = clock, answers
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        if not self.answers:
            raise Done
        self.timeouts.append(timeout)
        if timeout is not None and not self.answers[0]:
            self.clock.advance(timeout)
        return self.answers.pop(0)


def test_run_loop_runs_a_pass_per_hint() -> None:
    """Each True from the waiter runs one pass, each False none."""
    clock = MockClock(monotonic_start=1000.0)
    passes: list[int] = []
    with pytest.raises(Done):
        run_loop(ScriptedWaiter(clock, [True, False, True, True]), lambda: passes.append(1),
                 clock=clock)
    assert 3 == len(passes)


def test_run_loop_runs_the_periodic_job_on_schedule() -> None:
    """periodic=(interval, fn) runs fn every interval, woken by the waiter's timeout."""
    clock = MockClock(monotonic_start=1000.0)
    ticks: list[float] = []
    waiter = ScriptedWaiter(clock, [False, False, False])
    with pytest.raises(Done):
        run_loop(waiter, lambda: None, periodic=(60.0, lambda: ticks.append(clock.monotonic())),
                 clock=clock)
    assert [1060.0, 1120.0, 1180.0] == ticks
    assert [60.0, 60.0, 60.0] == waiter.timeouts


def test_run_loop_keeps_the_period_across_hints() -> None:
    """Passes run for hints between periodic runs do not shift the periodic schedule."""
    clock = MockClock(monotonic_start=1000.0)
    ticks: list[float] = []

    class HintAt10s:
        calls = 0

        def wait(self, timeout: float | None = None) -> bool:
            self.calls += 1
            if self.calls > 2:
                raise Done
            assert timeout is not None
            step = min(10.0, timeout)
            clock.advance(step)
            return step == 10.0

    with pytest.raises(Done):
        run_loop(HintAt10s(), lambda: None,
                 periodic=(15.0, lambda: ticks.append(clock.monotonic())), clock=clock)
    assert [1015.0] == ticks


def test_run_loop_skips_the_pass_once_stop_is_requested() -> None:
    """A stop that arrives while waiting ends the loop without another pass."""
    clock = MockClock(monotonic_start=1000.0)
    passes: list[int] = []

    class StopWhileWaiting:
        def wait(self, timeout: float | None = None) -> bool:
            _runtime.request_stop()
            return True

    run_loop(StopWhileWaiting(), lambda: passes.append(1), clock=clock)
    assert [] == passes


# -- inboxes -------------------------------------------------------------------------------

def test_inbox_requests_come_in_creation_order(tmp_path: Path) -> None:
    """Requests are ordered by mtime_ns, ties broken by name; temp files are skipped."""
    for name, ns in (("c", 3), ("a", 2), ("b", 2), ("d", 1)):
        set_mtime_ns(request(tmp_path, name), ns * 10**9)
    (tmp_path / ".tmp.e.json.1.aa").write_bytes(b"{")
    assert ["d", "a", "b", "c"] == [req["id"] for _, req in inbox_requests(tmp_path)]
    assert [] == quarantined(tmp_path)


@pytest.mark.parametrize(("raw", "why"), [
    (b"", "empty"),
    (b"{not json", "unparseable"),
    (b'{"schema": "batchd.control", "v": 1, "id": "x", "kind": "submit"}', "wrong schema"),
    (b'{"schema": "batchd.request", "v": 1, "kind": "submit"}', "no id"),
    (b'{"schema": "batchd.request", "v": 1, "id": 7, "kind": "submit"}', "id not a string"),
    (b'{"schema": "batchd.request", "v": 1, "id": "x", "kind": ["submit"]}', "bad kind"),
    (b"[1, 2]", "not an object"),
])
def test_malformed_requests_are_quarantined(tmp_path: Path, raw: bytes, why: str) -> None:
    """A malformed request file is moved aside as NAME.corrupted.<ts>; the good ones remain."""
    (tmp_path / "bad.json").write_bytes(raw)
    request(tmp_path, "good")
    assert ["good"] == [req["id"] for _, req in inbox_requests(tmp_path)], why
    assert ["bad.json"] == quarantined(tmp_path)
    assert ["good"] == [req["id"] for _, req in inbox_requests(tmp_path)]


def test_a_torn_hint_is_dropped_not_quarantined(tmp_path: Path) -> None:
    """A hint (written without fsyncs) that a power cut left empty or torn is removed, not
    moved aside: its truth is in another file; a torn request of any other name still is
    quarantined."""
    (tmp_path / "granted-j.json").write_bytes(b"")
    (tmp_path / "torn.json").write_bytes(b'{"schema": "batchd.req')
    request(tmp_path, "good")

    def hint(name: str) -> bool:
        return name.startswith("granted-")

    ids = [req["id"] for _, req in inbox_requests(tmp_path, hint=hint)]
    assert (["good"], False, ["torn.json"]) == (
        ids, (tmp_path / "granted-j.json").exists(), quarantined(tmp_path))


def test_handle_inbox_removes_a_hint_without_an_fsync(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A file `hint` names is removed with no fsync of the folder (its return after a
    power cut only hands the handler the same hint again); any other request's removal
    is made durable."""
    from supervisor.state import atomic
    synced: list[str] = []
    real = atomic.REAL.fsync_dir
    monkeypatch.setattr(atomic.REAL, "fsync_dir",
                        lambda path: (synced.append(path), real(path))[1])
    log = _runtime._log.get("test")
    set_mtime_ns(request(tmp_path, "h", "double", n=1), 10**9)
    synced.clear()
    out: list[int] = []
    assert 1 == handle_inbox(tmp_path, HANDLERS, out, log, hint=lambda n: n == "h.json")
    assert ([2], [], []) == (out, os.listdir(tmp_path), synced)
    request(tmp_path, "d", "double", n=2)
    synced.clear()
    assert 1 == handle_inbox(tmp_path, HANDLERS, out, log)
    assert ([2, 4], [str(tmp_path)]) == (out, synced)


def test_a_folder_in_the_inbox_is_quarantined(tmp_path: Path) -> None:
    """Something that is not a regular file is no request: moved aside, not crashed on."""
    (tmp_path / "odd.json").mkdir()
    assert [] == inbox_requests(tmp_path)
    assert ["odd.json"] == quarantined(tmp_path)


def test_missing_inbox_has_no_requests(tmp_path: Path) -> None:
    """An inbox folder that does not exist simply holds nothing."""
    assert [] == inbox_requests(tmp_path / "nope")


def _double(ctx: list[int], req: dict[str, Any]) -> None:
    if not isinstance(req.get("n"), int):
        raise BadRequest("'n' must be an integer")
    ctx.append(2 * req["n"])


def _disk_full(ctx: list[int], req: dict[str, Any]) -> None:
    raise OSError(28, "No space left on device")


HANDLERS = {"double": _double, "fail": _disk_full}


def test_handle_inbox_runs_handlers_and_removes_requests(tmp_path: Path) -> None:
    """A handled request's effect happens, then its file is removed."""
    log = _runtime._log.get("test")
    set_mtime_ns(request(tmp_path, "one", "double", n=1), 10**9)
    set_mtime_ns(request(tmp_path, "two", "double", n=5), 2 * 10**9)
    out: list[int] = []
    assert 2 == handle_inbox(tmp_path, HANDLERS, out, log)
    assert [2, 10] == out
    assert [] == os.listdir(tmp_path)


def test_handle_inbox_quarantines_unknown_kinds_and_bad_requests(tmp_path: Path) -> None:
    """Unknown kinds and requests a handler refuses are quarantined; the rest go on."""
    log = _runtime._log.get("test")
    request(tmp_path, "what", "frobnicate")
    request(tmp_path, "bad", "double", n="x")
    request(tmp_path, "ok", "double", n=3)
    out: list[int] = []
    assert 1 == handle_inbox(tmp_path, HANDLERS, out, log)
    assert [6] == out
    assert ["bad.json", "what.json"] == quarantined(tmp_path)


def test_a_failing_handler_leaves_its_request_for_the_replay(tmp_path: Path) -> None:
    """An error that is not the request's fault propagates and the request stays in place."""
    log = _runtime._log.get("test")
    request(tmp_path, "later", "fail")
    with pytest.raises(OSError):
        handle_inbox(tmp_path, HANDLERS, [], log)
    assert ["later.json"] == os.listdir(tmp_path)


def test_handle_inbox_stops_between_requests_when_asked(tmp_path: Path) -> None:
    """After a stop request no further request is taken; they stay for the next start."""
    log = _runtime._log.get("test")
    request(tmp_path, "a", "double", n=1)
    _runtime.request_stop()
    assert 0 == handle_inbox(tmp_path, HANDLERS, [], log)
    assert ["a.json"] == os.listdir(tmp_path)


# -- readiness -----------------------------------------------------------------------------

def test_report_ready_writes_the_ready_record(tmp_path: Path) -> None:
    """The READY record names the worker, this process (pid + start) and what recovery did."""
    layout = Layout(tmp_path)
    _runtime.report_ready(layout, "locks", found={"held": 2}, did={"state": "read"},
                          degraded=["x"], started_monotonic=0.0, started_at="2026-01-01T00:00Z")
    rec = read_record(READY, layout.ready_file("locks"), owner=False)
    assert isinstance(rec, dict)
    assert {"worker": "locks", "pid": os.getpid(), "start": start_time(os.getpid()),
            "started_at": "2026-01-01T00:00Z", "found": {"held": 2}, "did": {"state": "read"},
            "degraded": ["x"]} == {k: rec[k] for k in
                                   ("worker", "pid", "start", "started_at", "found", "did",
                                    "degraded")}
    assert isinstance(rec["duration_ms"], float) and isinstance(rec["ready_at"], str)


def test_die_with_parent_keeps_a_process_whose_parent_lives() -> None:
    """Arming the death signal in a process whose parent is alive returns normally."""
    pid = os.fork()
    if pid == 0:
        try:
            _runtime.die_with_parent()
            os._exit(0)
        finally:
            os._exit(9)
    _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status)


def test_a_fork_child_knows_the_pid_that_forked_it() -> None:
    """The at-fork hook gives the child its forker's pid (what die_with_parent compares)."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if parent == _runtime._state.parent else 1)
    _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status)


def test_die_with_parent_exits_when_the_parent_is_already_gone() -> None:
    """A child whose forker is no longer its parent (it died before prctl) exits with code 4."""
    pid = os.fork()
    if pid == 0:
        try:
            _runtime._state.parent = 1 if os.getppid() != 1 else 2  # as if re-parented
            _runtime.die_with_parent()
            os._exit(0)
        finally:
            os._exit(9)
    _, status = os.waitpid(pid, 0)
    assert _runtime.EXIT_ORPHANED == os.waitstatus_to_exitcode(status)


def test_without_inotify_the_watcher_still_rescans(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify at its limit (EMFILE): start() still works and wait() reports the rescans."""
    def no_inotify() -> None:
        raise OSError(24, "inotify instance limit reached")

    monkeypatch.setattr(_runtime, "Observer", no_inotify)
    clock = MockClock(monotonic_start=1000.0)
    with Watcher([tmp_path / "inbox"], rescan_interval=5.0, clock=clock) as w:
        assert (tmp_path / "inbox").is_dir()
        assert w.wait(0) is True
        clock.advance(5.0)
        assert w.wait(0) is True


# -- a full or failing disk ------------------------------------------------------------------------

def test_write_retry_waits_1_2_4_up_to_30_s_and_starts_again_after_a_success() -> None:
    """Each wait sleeps the current delay on the clock and doubles it up to 30 s; ok()
    makes the next one 1 s again."""
    clock = MockClock()
    retry = _runtime.WriteRetry(clock)
    t0, waited = clock.monotonic(), []
    for _ in range(7):
        before = clock.monotonic()
        assert retry.wait(lambda: False)
        waited.append(clock.monotonic() - before)
    retry.ok()
    assert ([1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0], 91.0, 1.0) == (
        waited, clock.monotonic() - t0, retry.delay)


def test_write_retry_hears_a_stop_while_it_waits() -> None:
    """A stop during the wait ends it (False) within one 0.5 s slice."""
    clock = MockClock()
    retry = _runtime.WriteRetry(clock, first=30.0)
    t0 = clock.monotonic()
    assert (False, 1.0) == (retry.wait(lambda: clock.monotonic() - t0 >= 1.0),
                            clock.monotonic() - t0)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_until_written_calls_again_while_the_disk_is_full_or_failing(error: int) -> None:
    """A call failing for a full or failing disk is made again after 1 s, 2 s...; its
    result is returned once it works."""
    clock = MockClock()
    calls: list[float] = []

    def fn() -> str:
        calls.append(clock.monotonic())
        if len(calls) < 3:
            raise OSError(error, os.strerror(error))
        return "done"

    got = _runtime.until_written("a test", fn, _log.get("test"),
                                 retry=_runtime.WriteRetry(clock))
    assert ("done", [0.0, 1.0, 3.0]) == (got, [t - calls[0] for t in calls])


def test_until_written_raises_other_errors_and_gives_none_at_a_stop() -> None:
    """Not a disk error (a permission): raised at once. A stop while waiting: None."""
    def denied() -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(PermissionError):
        _runtime.until_written("a test", denied, _log.get("test"),
                               retry=_runtime.WriteRetry(MockClock()))
    assert _runtime.until_written("a test", full, _log.get("test"), stop=lambda: True,
                                  retry=_runtime.WriteRetry(MockClock())) is None


def test_a_ready_record_that_cannot_be_written_is_written_once_the_disk_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """report_ready on a full disk does not raise (the worker would crash-loop): it writes
    again after 1 s, and the record is there."""
    disk = BadDisk(monkeypatch, errno.ENOSPC)
    disk.failures = 1
    layout = Layout(tmp_path)
    _runtime.report_ready(layout, "locks", found={}, did={}, degraded=[],
                          started_monotonic=0.0, started_at=iso_now())
    rec = read_record(READY, layout.ready_file("locks"), owner=False)
    assert (1, True) == (disk.refused, isinstance(rec, dict) and rec["pid"] == os.getpid())


def test_handle_inbox_hands_a_together_kind_all_at_once(tmp_path: Path) -> None:
    """A kind in `together` gets every waiting request of it in one call, oldest first:
    those it answers None are removed, a BadRequest is quarantined alone, a NotYet stays
    for a later pass; the other kinds go one by one after it, in handler order."""
    log = _runtime._log.get("test")
    calls: list[list[str]] = []

    def many(ctx: list[int], reqs: list[dict[str, Any]]) -> list[Exception | None]:
        calls.append([r["id"] for r in reqs])
        out: list[Exception | None] = []
        for r in reqs:
            if r["id"] == "bad":
                out.append(BadRequest("not this one"))
            elif r["id"] == "wait":
                out.append(_runtime.NotYet("its job is not here yet"))
            else:
                ctx.append(r["n"])
                out.append(None)
        return out

    for name, ns, n in (("s2", 2, 2), ("bad", 3, 0), ("s1", 1, 1), ("wait", 4, 0)):
        set_mtime_ns(request(tmp_path, name, "double", n=n), ns * 10**9)
    set_mtime_ns(request(tmp_path, "d", "later", n=5), 10**8)
    out: list[int] = []
    handlers = {"double": _double, "later": _double}
    assert 3 == handle_inbox(tmp_path, handlers, out, log, together={"double": many})
    assert ([["s1", "s2", "bad", "wait"]], [1, 2, 10]) == (calls, out)
    assert ["bad.json"] == quarantined(tmp_path)
    assert ["wait.json"] == sorted(n for n in os.listdir(tmp_path) if CORRUPT_MARK not in n)


def test_handle_inbox_runs_an_always_kind_first_even_with_none_waiting(tmp_path: Path) -> None:
    """A kind in `always` has its together-call even when none of it waits (with no
    requests), before the other kinds: the scheduler's submits take the api's log there,
    so a cancel of the same pass finds the job. With one waiting it is called once."""
    log = _runtime._log.get("test")
    order: list[str] = []

    def many(ctx: list[int], reqs: list[dict[str, Any]]) -> list[Exception | None]:
        order.append(f"many{len(reqs)}")
        return [None] * len(reqs)

    def later(ctx: list[int], req: dict[str, Any]) -> None:
        order.append("later")

    request(tmp_path, "d", "later", n=5)
    handlers = {"double": _double, "later": later}
    assert 1 == handle_inbox(tmp_path, handlers, [], log, together={"double": many},
                             always=("double",))
    request(tmp_path, "s1", "double", n=1)
    request(tmp_path, "d2", "later", n=5)
    assert 2 == handle_inbox(tmp_path, handlers, [], log, together={"double": many},
                             always=("double",))
    assert ["many0", "later", "many1", "later"] == order
