"""Tests for supervisor.ctl.control: control requests and replies, workers, status, startup-log.

"batchd runs" is a real POSIX lock held by a helper process (a lock held by the test
process itself would be invisible to its own probe); the parent's side of the control
protocol is a thread answering requests the way SUPERVISOR.md says.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config, DiskConfig, FreeSpace, WorkerConfig
from supervisor.ctl.control import (
    cmd_control,
    cmd_startup_log,
    cmd_status_summary,
    cmd_workers,
    reply_timeout,
    send_control,
)
from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, CtlError, Ctx
from supervisor.state.atomic import ensure_dir, remove
from supervisor.state.clock import MockClock, parse_iso
from supervisor.state.control import NoReply, wait_reply
from supervisor.state.documents import WORKER_KEYS, status_doc
from supervisor.state.layout import (
    CONTROL,
    REPLY,
    STARTUP_LOG,
    WORKERS,
    Layout,
    read_record,
    write_record,
)
from supervisor.state.submission import write_submission
from supervisor.state.view import Unreadable

ROOT = Path(__file__).resolve().parents[2]

_HOLD = ("import sys\n"
         "from supervisor.state.instance import acquire\n"
         "from supervisor.state.layout import Layout\n"
         "held = acquire(Layout(sys.argv[1]))\n"
         "print('locked', flush=True)\n"
         "sys.stdin.read()\n")


class Holder:
    """A process holding batchd's lock on a state dir, as a running batchd does."""

    def __init__(self, state: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(state)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert "locked" == self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


class FakeParent:
    """Answers control requests like batchd's parent: reply file, then remove the request."""

    def __init__(self, layout: Layout, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.layout = layout
        self.answer = answer
        self.seen: list[dict[str, Any]] = []
        self.done = threading.Event()
        ensure_dir(layout.control_inbox)
        ensure_dir(layout.control_replies)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            for name in sorted(os.listdir(self.layout.control_inbox)):
                path = self.layout.control_inbox / name
                req = read_record(CONTROL, path, owner=False)
                if not isinstance(req, dict):
                    continue
                self.seen.append(req)
                reply = {"id": req["id"], "message": "", "result": None, **self.answer(req)}
                write_record(REPLY, self.layout.reply_file(req["id"]), reply)
                remove(path)
            time.sleep(0.01)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


@pytest.fixture
def ctx(tmp_path: Path) -> Ctx:
    state = tmp_path / "state"
    ensure_dir(state)
    cfg = Config(state_dir=state, workspace_dir=state / "ws")
    return Ctx(cfg=cfg, layout=Layout(state), out=io.StringIO(), err=io.StringIO())


@pytest.fixture
def holder(ctx: Ctx) -> Iterator[Holder]:
    h = Holder(ctx.layout.root)
    yield h
    h.stop()


def _out(ctx: Ctx) -> str:
    assert isinstance(ctx.out, io.StringIO)
    return ctx.out.getvalue()


def _err(ctx: Ctx) -> str:
    assert isinstance(ctx.err, io.StringIO)
    return ctx.err.getvalue()


def _workers(layout: Layout, *entries: dict[str, Any]) -> None:
    write_record(WORKERS, layout.workers_file, {"batchd_pid": 1, "updated_at": "x",
                                                "workers": list(entries)})


def _worker(name: str, state: str = "RUNNING", **extra: Any) -> dict[str, Any]:
    return {"name": name, "state": state, "pid": 4242, "start": 1,
            "since": "2026-11-28T11:00:00.000Z", "restarts": 0, "critical": name == "scheduler",
            "exitstatus": None, "message": None, **extra}


def test_send_control_when_down_exits_1_and_writes_nothing(ctx: Ctx) -> None:
    """Not running: the documented message, exit 1, no request on disk."""
    with pytest.raises(CtlError) as info:
        send_control(ctx, "restart", "scheduler")
    assert (EXIT_FAILED, f"batchd is not running (state dir {ctx.layout.root})") == (
        info.value.code, str(info.value))
    assert not ctx.layout.control_inbox.exists()


def test_control_round_trip_writes_request_and_prints_reply(ctx: Ctx, holder: Holder) -> None:
    """A CONTROL request with every key; the reply's message is printed, exit 0."""
    parent = FakeParent(ctx.layout, lambda req: {"ok": True, "message": "restarted"})
    try:
        assert EXIT_OK == cmd_control(ctx, "restart", "scheduler")
    finally:
        parent.stop()
    [req] = parent.seen
    assert ("restart", "scheduler", 32) == (req["op"], req["worker"], len(req["id"]))
    assert abs(time.time() - (parse_iso(req["created_at"]) or 0)) < 60
    assert "scheduler: restarted\n" == _out(ctx)


def test_control_refused_exits_1_with_message(ctx: Ctx, holder: Holder) -> None:
    """ok:false from the parent: its message on stderr, exit 1."""
    parent = FakeParent(ctx.layout, lambda req: {"ok": False, "message": "no such worker"})
    try:
        assert EXIT_FAILED == cmd_control(ctx, "start", "locks")
    finally:
        parent.stop()
    assert ("", "batchctl: locks: no such worker\n") == (_out(ctx), _err(ctx))


def test_control_json_prints_the_reply(ctx: Ctx, holder: Holder) -> None:
    """--json: one object {id, ok, message, result}."""
    ctx.json = True
    parent = FakeParent(ctx.layout, lambda req: {"ok": True, "message": "reloaded",
                                                 "result": {"restarted": []}})
    try:
        assert EXIT_OK == cmd_control(ctx, "reload", None)
    finally:
        parent.stop()
    doc = json.loads(_out(ctx))
    assert (["id", "ok", "message", "result"], True, {"restarted": []}) == (
        list(doc), doc["ok"], doc["result"])


def test_shutdown_waits_until_the_lock_is_released(ctx: Ctx, holder: Holder) -> None:
    """After the ok reply, shutdown returns once batchd has let go of its lock."""
    def answer(req: dict[str, Any]) -> dict[str, Any]:
        threading.Timer(0.3, holder.stop).start()
        return {"ok": True, "message": "shutting down"}

    parent = FakeParent(ctx.layout, answer)
    try:
        assert EXIT_OK == cmd_control(ctx, "shutdown", None)
    finally:
        parent.stop()
    assert holder.proc.poll() is not None


def test_wait_reply_times_out(ctx: Ctx, holder: Holder) -> None:
    """No reply within the timeout: exit 1 naming the request."""
    with pytest.raises(NoReply) as info:
        wait_reply(ctx.layout, "abc", 5.0, clock=MockClock())
    assert str(info.value).startswith("no reply from batchd within 5s (request abc")


def test_wait_reply_gives_up_when_batchd_is_gone(ctx: Ctx) -> None:
    """batchd not holding its lock any more and no reply: exit 1 at once."""
    with pytest.raises(NoReply) as info:
        wait_reply(ctx.layout, "abc", 5.0, clock=MockClock())
    assert "batchd stopped before answering request abc" == str(info.value)


def test_wait_reply_returns_an_existing_reply(ctx: Ctx) -> None:
    """A reply already there is returned even if batchd has exited since."""
    ensure_dir(ctx.layout.control_replies)
    write_record(REPLY, ctx.layout.reply_file("r1"), {"id": "r1", "ok": True, "message": "m"})
    assert "m" == wait_reply(ctx.layout, "r1", 1.0)["message"]


def test_reply_timeout_follows_stopwaitsecs(ctx: Ctx) -> None:
    """stop/restart wait stopwaitsecs + 10 s; everything else 10 s."""
    cfg = Config(state_dir=ctx.cfg.state_dir, workspace_dir=ctx.cfg.workspace_dir,
                 workers={"locks": WorkerConfig(stopwaitsecs=3.0)})
    ctx = Ctx(cfg=cfg, layout=ctx.layout)
    assert [13.0, 13.0, 10.0, 10.0, 10.0] == [
        reply_timeout(ctx.cfg, "stop", "locks"), reply_timeout(ctx.cfg, "restart", "locks"),
        reply_timeout(ctx.cfg, "start", "locks"), reply_timeout(ctx.cfg, "shutdown", None),
        reply_timeout(ctx.cfg, "reload", None)]


def test_status_summary_while_down(ctx: Ctx) -> None:
    """No lock held: running false, pid null, no workers, exit 0."""
    _workers(ctx.layout, _worker("scheduler"))      # stale file of a dead batchd: ignored
    ctx.json = True
    assert EXIT_OK == cmd_status_summary(ctx)
    assert {"batchd": {"running": False, "pid": None}, "workers": [], "jobs": {},
            "degraded": [], "paused": False} == json.loads(_out(ctx))


def test_status_summary_names_a_disk_below_min_free_as_degraded(ctx: Ctx) -> None:
    """Below disk.min_free, `degraded` has one `disk: ...` note naming the free space."""
    ctx.cfg = replace(ctx.cfg, disk=DiskConfig(min_free=FreeSpace(100.0, percent=True)))
    [note] = status_doc(ctx.cfg, ctx.layout)["degraded"]
    assert (True, True) == (note.startswith("disk: "), note.endswith("below min_free 100%"))


def test_status_summary_names_a_corrupt_repository_registry_as_degraded(ctx: Ctx) -> None:
    """Found by the chaos suite: a corrupt repos.json read as an empty registry everywhere
    but the next `repo add`, and `status` said nothing while the registered repositories'
    jobs failed. Now `degraded` names it (and no reader moves it)."""
    ctx.layout.root.mkdir(parents=True, exist_ok=True)
    ctx.layout.repos_file.write_text('{"schema": "repos", "v"')
    [note] = status_doc(ctx.cfg, ctx.layout)["degraded"]
    assert (True, True) == (note.startswith(f"repositories: {ctx.layout.repos_file} is "
                                            "corrupt (not valid JSON"),
                            ctx.layout.repos_file.exists())


def test_status_summary_counts_pending_submissions_as_queued(ctx: Ctx) -> None:
    """Jobs waiting in the scheduler's inbox are counted as queued."""
    write_submission(ctx.layout, [{"id": "a"}, {"id": "b"}])
    assert {"queued": 2} == status_doc(ctx.cfg, ctx.layout)["jobs"]


def test_status_summary_while_running_lists_workers_and_degraded(ctx: Ctx,
                                                                holder: Holder) -> None:
    """Running: the holder's pid, workers.json's workers, FATAL/BACKOFF and startup notes."""
    _workers(ctx.layout, _worker("scheduler"), _worker("locks"),
             _worker("reaper", "FATAL", pid=None, message="exited too quickly"),
             _worker("callbacks", "BACKOFF", pid=None))
    write_record(STARTUP_LOG, ctx.layout.startup_log, {"startups": [
        {"id": "s1", "outcome": "degraded", "phases": [
            {"worker": "scheduler", "ok": True, "degraded": ["wal: 1 torn record dropped"]},
            {"worker": "reaper", "ok": False, "error": "exit 3", "degraded": []}]}]})
    doc = status_doc(ctx.cfg, ctx.layout)
    assert ({"running": True, "pid": holder.proc.pid},
            ["scheduler", "locks", "reaper", "callbacks"]) == (
        doc["batchd"], [w["name"] for w in doc["workers"]])
    assert ["reaper: FATAL (exited too quickly)", "callbacks: BACKOFF",
            "scheduler: wal: 1 torn record dropped", "reaper: recovery failed: exit 3"] == (
        doc["degraded"])


def test_workers_when_down_exits_1(ctx: Ctx) -> None:
    """`workers` needs a running batchd."""
    with pytest.raises(CtlError) as info:
        cmd_workers(ctx)
    assert EXIT_FAILED == info.value.code


def test_workers_json_has_every_key(ctx: Ctx, holder: Holder) -> None:
    """Each worker object has name, state, pid, since, restarts (and keeps the rest)."""
    _workers(ctx.layout, _worker("scheduler", restarts=2), {"name": "locks", "state": "STARTING"})
    ctx.json = True
    assert EXIT_OK == cmd_workers(ctx)
    doc = json.loads(_out(ctx))
    assert all(set(WORKER_KEYS) <= set(w) for w in doc)
    assert [("scheduler", 2, 4242), ("locks", 0, None)] == [
        (w["name"], w["restarts"], w["pid"]) for w in doc]


def test_workers_human_table(ctx: Ctx, holder: Holder) -> None:
    """One aligned line per worker, supervisorctl style."""
    _workers(ctx.layout, _worker("scheduler"), _worker("callbacks", "FATAL", pid=None))
    assert EXIT_OK == cmd_workers(ctx)
    lines = _out(ctx).splitlines()
    assert ["scheduler", "callbacks"] == [line.split()[0] for line in lines]
    assert lines[0].index("RUNNING") == lines[1].index("FATAL")
    assert "pid 4242, uptime" in lines[0]


def test_startup_log_json_is_the_list_of_startups(ctx: Ctx) -> None:
    """--json prints the startups array (oldest first); human output shows phases."""
    startups = [{"id": f"s{i}", "started_at": "t", "outcome": "ok", "duration_ms": 5,
                 "phases": [{"worker": "scheduler", "ok": True, "duration_ms": 3,
                             "found": {"jobs": 2}, "did": {}, "degraded": []}]}
                for i in range(2)]
    write_record(STARTUP_LOG, ctx.layout.startup_log, {"startups": startups})
    ctx.json = True
    assert EXIT_OK == cmd_startup_log(ctx)
    assert startups == json.loads(_out(ctx))
    human = Ctx(cfg=ctx.cfg, layout=ctx.layout, out=io.StringIO(), err=io.StringIO())
    cmd_startup_log(human)
    assert "scheduler  ok  3 ms  found jobs=2" in _out(human)


def test_startup_log_corrupt_is_exit_1_and_not_moved(ctx: Ctx) -> None:
    """A corrupt startup log is an error naming it; batchctl (not the owner) leaves it."""
    ctx.layout.startup_log.write_text("{garbage")
    with pytest.raises(Unreadable) as info:
        cmd_startup_log(ctx)
    message = str(info.value)
    assert (True, True, ["startup-log.json"]) == (
        message.startswith("startup-log.json is corrupt (not valid JSON: "),
        message.endswith("); batchd moves it aside at its next start"),
        os.listdir(ctx.layout.root))


def test_startup_log_of_another_schema_is_corrupt(ctx: Ctx) -> None:
    """Valid JSON that is no startup log (wrong schema, startups not a list) is corrupt too."""
    ctx.layout.startup_log.write_text('{"startups": []}')
    with pytest.raises(Unreadable) as info:
        cmd_startup_log(ctx)
    assert "startup-log.json is corrupt (schema is None, expected 'batchd.startup_log'); " \
        "batchd moves it aside at its next start" == str(info.value)
    write_record(STARTUP_LOG, ctx.layout.startup_log, {"startups": {"a": 1}})
    with pytest.raises(Unreadable) as info:
        cmd_startup_log(ctx)
    assert str(info.value).startswith("startup-log.json is corrupt (startups is not a list)")


def test_status_summary_reports_a_corrupt_startup_log_as_degraded(ctx: Ctx,
                                                                  holder: Holder) -> None:
    """status still answers while batchd runs; the corrupt startup log is a degraded note."""
    ctx.layout.startup_log.write_text("{garbage")
    [note] = status_doc(ctx.cfg, ctx.layout)["degraded"]
    assert (True, True) == (note.startswith("startup-log.json is corrupt ("),
                            ctx.layout.startup_log.exists())
