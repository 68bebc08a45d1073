"""batchd's supervisor logic (supervisor.batchd), driven without forking: fake spawn/kill/clock."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from supervisor.batchd import (
    EXIT_FAILURE,
    EXIT_OK,
    Batchd,
    Timers,
    append_startup,
    changed_workers,
    describe_exit,
    main,
)
from supervisor.batchd.control import REPLY_TTL
from supervisor.config import Config, WorkerConfig, load
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import MockClock, iso_now
from supervisor.state.layout import (
    CONTROL,
    READY,
    REPLY,
    STARTUP_LOG,
    WORKERS,
    Layout,
    read_record,
    write_record,
)
from tests.helpers import BadDisk

_YAML = """\
state_dir: {state}
workers:
  scheduler: {{startsecs: 0.5, startretries: 1, stopwaitsecs: 2}}
  locks: {{startsecs: 0.5, startretries: 1, stopwaitsecs: 2}}
  reaper: {{startsecs: 0.5, startretries: 1, stopwaitsecs: 2}}
  callbacks: {{startsecs: 0.5, startretries: 1, stopwaitsecs: 2}}
"""


class Harness:
    """A Batchd whose processes are fake: spawn hands out pids, kill records signals."""

    def __init__(self, tmp_path: Path, extra: str = "") -> None:
        self.cfgfile = tmp_path / "batchd.yaml"
        self.cfgfile.write_text(_YAML.format(state=tmp_path / "state") + extra)
        cfg = load(str(self.cfgfile))
        self.layout = Layout(cfg.state_dir)
        for d in self.layout.all_dirs():
            ensure_dir(d)
        self.clock = MockClock(time.time(), monotonic_start=1000.0)
        self.next_pid = 500
        self.spawned: list[tuple[str, int]] = []
        self.killed: list[tuple[int, int]] = []
        self.d = Batchd(cfg, config_path=str(self.cfgfile), spawn=self.spawn, kill=self.kill,
                        proc_start=lambda pid: pid * 7, clock=self.clock)

    def spawn(self, name: str, cfg: Config) -> int:
        self.next_pid += 1
        self.spawned.append((name, self.next_pid))
        return self.next_pid

    def kill(self, pid: int, sig: int) -> None:
        self.killed.append((pid, sig))

    def ready(self, name: str, **extra: Any) -> None:
        """The worker writes its ready record; inotify hints; the parent scans."""
        pid = self.d.procs[name].pid
        assert pid is not None
        write_record(READY, self.layout.ready_file(name), {
            "worker": name, "pid": pid, "start": pid * 7, "ready_at": "x",
            "found": extra.get("found", {}), "did": extra.get("did", {}),
            "degraded": extra.get("degraded", [])})
        self.d.scan()

    def tick(self, dt: float) -> None:
        self.clock.advance(dt)
        for key in self.d.timers.pop_due(self.clock.monotonic()):
            self.d.timer_fired(key)
        self.d.publish()

    def exit(self, name: str, status: int) -> None:
        pid = self.d.procs[name].pid
        assert pid is not None
        self.d.reaped(pid, status)
        self.d.publish()

    def up(self, *names: str) -> None:
        for n in names:
            self.ready(n)
        self.tick(1.0)

    def startup(self) -> None:
        self.d.begin()
        self.up("scheduler")
        self.up("locks")
        self.up("reaper", "callbacks")
        assert not self.d.starting_up

    def control(self, op: str, worker: str | None = None, *, ts: float | None = None) -> str:
        rid = uuid.uuid4().hex
        write_record(CONTROL, self.layout.control_inbox / f"{rid}.json", {
            "id": rid, "op": op, "worker": worker,
            "created_at": iso_now(time.time() if ts is None else ts)})
        self.d.scan()
        return rid

    def reply(self, rid: str) -> dict[str, Any] | None:
        rec = read_record(REPLY, self.layout.reply_file(rid), owner=False)
        return rec if isinstance(rec, dict) else None

    def states(self) -> dict[str, str]:
        return {p.name: p.state.value for p in self.d.workers.ordered()}


KILLED = signal.SIGKILL          # a waitpid status for "killed by SIGKILL"
EXIT3 = 3 << 8                   # a waitpid status for "exited with status 3"


def test_startup_runs_in_dependency_order(tmp_path: Path) -> None:
    """locks waits for the scheduler's ready record; reaper and callbacks start together."""
    h = Harness(tmp_path)
    h.d.begin()
    assert ["scheduler"] == [n for n, _ in h.spawned]
    h.tick(1.0)                       # startsecs passes, but no ready record yet
    assert ["scheduler"] == [n for n, _ in h.spawned]
    h.ready("scheduler", found={"jobs": 2}, did={"reattached": 1})
    assert ["scheduler", "locks"] == [n for n, _ in h.spawned]
    h.ready("locks")
    assert ["scheduler", "locks", "reaper", "callbacks"] == [n for n, _ in h.spawned]
    h.ready("reaper")
    h.ready("callbacks")
    h.tick(1.0)
    assert {"scheduler": "RUNNING", "locks": "RUNNING", "reaper": "RUNNING",
            "callbacks": "RUNNING"} == h.states()
    log = read_record(STARTUP_LOG, h.layout.startup_log, owner=False)
    assert isinstance(log, dict)
    entry = log["startups"][-1]
    assert "ok" == entry["outcome"]
    assert ["scheduler", "locks", "reaper", "callbacks"] == [p["worker"] for p in entry["phases"]]
    assert {"jobs": 2} == entry["phases"][0]["found"]
    assert {"reattached": 1} == entry["phases"][0]["did"]


def test_a_stale_ready_record_is_ignored(tmp_path: Path) -> None:
    """A ready file of another pid/start (a previous incarnation) does not count."""
    h = Harness(tmp_path)
    h.d.begin()
    write_record(READY, h.layout.ready_file("scheduler"),
                 {"worker": "scheduler", "pid": 1, "start": 2, "ready_at": "x"})
    h.d.scan()
    h.tick(1.0)
    assert "STARTING" == h.states()["scheduler"]
    assert ["scheduler"] == [n for n, _ in h.spawned]


def test_critical_worker_failing_recovery_aborts_startup(tmp_path: Path) -> None:
    """The scheduler going FATAL at startup: log 'failed', stop, exit 1, nothing else started."""
    h = Harness(tmp_path)
    h.d.begin()
    h.exit("scheduler", EXIT3)
    assert "BACKOFF" == h.states()["scheduler"]
    h.tick(1.0)
    h.exit("scheduler", EXIT3)
    assert "FATAL" == h.states()["scheduler"]
    assert h.d.done
    assert EXIT_FAILURE == h.d.exit_code
    assert ["scheduler", "scheduler"] == [n for n, _ in h.spawned]
    log = read_record(STARTUP_LOG, h.layout.startup_log, owner=False)
    assert isinstance(log, dict)
    assert "failed" == log["startups"][-1]["outcome"]
    assert "recovery failed" in log["startups"][-1]["phases"][0]["error"]


def test_failing_non_critical_worker_leaves_batchd_degraded(tmp_path: Path) -> None:
    """locks FATAL at startup: the rest start, outcome 'degraded', STATUS says so."""
    h = Harness(tmp_path)
    h.d.begin()
    h.up("scheduler")
    h.exit("locks", EXIT3)
    h.tick(1.0)
    h.exit("locks", EXIT3)
    assert ["scheduler", "locks", "locks", "reaper", "callbacks"] == [n for n, _ in h.spawned]
    h.up("reaper", "callbacks")
    assert not h.d.done
    log = read_record(STARTUP_LOG, h.layout.startup_log, owner=False)
    assert isinstance(log, dict)
    assert "degraded" == log["startups"][-1]["outcome"]
    assert h.d.status_text().startswith("degraded: locks FATAL")


def test_crash_in_running_restarts_and_is_counted_in_workers_json(tmp_path: Path) -> None:
    """SIGKILL of a RUNNING worker: a new pid at once, restarts=1 in workers.json."""
    h = Harness(tmp_path)
    h.startup()
    old = h.d.procs["reaper"].pid
    h.exit("reaper", KILLED)
    assert ("reaper", h.d.procs["reaper"].pid) == h.spawned[-1]
    assert old != h.d.procs["reaper"].pid
    rec = read_record(WORKERS, h.layout.workers_file, owner=False)
    assert isinstance(rec, dict)
    reaper = next(w for w in rec["workers"] if w["name"] == "reaper")
    assert ("STARTING", 1, -9, "killed by SIGKILL") == (
        reaper["state"], reaper["restarts"], reaper["exitstatus"], reaper["message"])


def published(h: Harness) -> list[tuple[str, str, int | None]]:
    """(name, state, pid) of each worker as workers.json says."""
    rec = read_record(WORKERS, h.layout.workers_file, owner=False)
    assert isinstance(rec, dict)
    return [(w["name"], w["state"], w["pid"]) for w in rec["workers"]]


def actual(h: Harness) -> list[tuple[str, str, int | None]]:
    return [(p.name, p.state.value, p.pid) for p in h.d.workers.ordered()]


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_workers_json_that_cannot_be_written_is_written_once_the_disk_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """A worker restarts while workers.json cannot be written (full or failing disk): the
    file keeps the old pid; batchd tries again 1 s, then 2 s later (no other change
    needed), and once a write works the file is true again."""
    h = Harness(tmp_path)
    h.startup()
    before = published(h)
    disk = BadDisk(monkeypatch, error)
    disk.broken = True
    h.exit("callbacks", KILLED)
    assert (before, 1) == (published(h), disk.refused)
    h.tick(0.9)
    assert 1 == disk.refused                   # not before 1 s
    h.tick(0.1)
    assert 2 == disk.refused                   # then 2 s later
    h.tick(1.9)
    assert 2 == disk.refused
    disk.broken = False
    h.tick(0.1)
    assert (2, actual(h), True) == (disk.refused, published(h), before != published(h))


def test_critical_restart_intensity_exceeded_takes_batchd_down(tmp_path: Path) -> None:
    """More than max_restarts scheduler crashes in the window: others stopped, exit 1."""
    h = Harness(tmp_path)
    cfg = h.d.cfg
    workers = dict(cfg.workers)
    workers["scheduler"] = WorkerConfig(startsecs=0.5, max_restarts=2, restart_window=60)
    h.d.cfg = dataclasses.replace(cfg, workers=workers)
    h.d.procs["scheduler"].config = workers["scheduler"]
    h.startup()
    for _ in range(2):
        h.exit("scheduler", KILLED)
        h.up("scheduler")
    h.exit("scheduler", KILLED)
    assert "FATAL" == h.states()["scheduler"]
    assert h.d.stopping and EXIT_FAILURE == h.d.exit_code
    assert (h.d.procs["callbacks"].pid, signal.SIGTERM) == h.killed[0]


def test_shutdown_stops_in_reverse_order_one_at_a_time(tmp_path: Path) -> None:
    """SIGTERM: callbacks, reaper, locks, scheduler; each SIGKILLed after stopwaitsecs."""
    h = Harness(tmp_path)
    h.startup()
    pids = {n: p.pid for n, p in h.d.procs.items()}
    h.d.handle_signal(signal.SIGTERM)
    order = []
    for name in ("callbacks", "reaper", "locks", "scheduler"):
        assert (pids[name], signal.SIGTERM) == h.killed[-1]
        order.append(name)
        if name == "reaper":
            h.tick(2.5)                # ignores SIGTERM: SIGKILL after stopwaitsecs
            assert (pids[name], signal.SIGKILL) == h.killed[-1]
        h.exit(name, 0 if name != "reaper" else KILLED)
    assert h.d.done and EXIT_OK == h.d.exit_code
    assert {"STOPPED"} == set(h.states().values())


def test_control_stop_and_start_a_worker(tmp_path: Path) -> None:
    """stop W replies once STOPPED; start W replies once RUNNING; requests are removed."""
    h = Harness(tmp_path)
    h.startup()
    rid = h.control("stop", "callbacks")
    assert h.reply(rid) is None
    h.exit("callbacks", 0)
    rep = h.reply(rid)
    assert rep is not None and rep["ok"]
    assert not (h.layout.control_inbox / f"{rid}.json").exists()
    rid = h.control("start", "callbacks")
    h.up("callbacks")
    rep = h.reply(rid)
    assert rep is not None and rep["ok"]
    assert "RUNNING" == h.states()["callbacks"]


def test_control_restart_replies_when_running_again(tmp_path: Path) -> None:
    """restart W: SIGTERM, STOPPED, a new process, reply when RUNNING."""
    h = Harness(tmp_path)
    h.startup()
    old = h.d.procs["locks"].pid
    rid = h.control("restart", "locks")
    assert (old, signal.SIGTERM) == h.killed[-1]
    h.exit("locks", 0)
    assert old != h.d.procs["locks"].pid
    assert h.reply(rid) is None
    h.up("locks")
    rep = h.reply(rid)
    assert rep is not None and rep["ok"]
    assert 0 == h.d.procs["locks"].restarts


def test_control_refuses_unknown_ops_workers_and_expired_requests(tmp_path: Path) -> None:
    """Bad requests get ok:false naming the problem; nothing changes."""
    h = Harness(tmp_path)
    h.startup()
    r1 = h.control("dance", "locks")
    r2 = h.control("stop", "nobody")
    r3 = h.control("stop", "locks", ts=h.d.started_wall - 60)
    msgs = [h.reply(r) for r in (r1, r2, r3)]
    assert [False, False, False] == [m["ok"] for m in msgs if m is not None]
    assert "'dance'" in msgs[0]["message"]    # type: ignore[index]
    assert "'nobody'" in msgs[1]["message"]   # type: ignore[index]
    assert msgs[2]["message"].startswith("expired")  # type: ignore[index]
    assert "RUNNING" == h.states()["locks"]


def test_an_answered_request_is_only_removed_on_replay(tmp_path: Path) -> None:
    """Crash between reply and removal: the next scan removes the request, acts on nothing."""
    h = Harness(tmp_path)
    h.startup()
    rid = uuid.uuid4().hex
    write_record(REPLY, h.layout.reply_file(rid), {"id": rid, "ok": True, "message": "done"})
    write_record(CONTROL, h.layout.control_inbox / f"{rid}.json",
                 {"id": rid, "op": "stop", "worker": "locks", "created_at": iso_now()})
    h.d.scan()
    assert not (h.layout.control_inbox / f"{rid}.json").exists()
    assert "RUNNING" == h.states()["locks"]


def test_control_requests_wait_for_startup_to_finish(tmp_path: Path) -> None:
    """A stop written during recovery is answered after it, not lost nor acted on early."""
    h = Harness(tmp_path)
    h.d.begin()
    rid = h.control("stop", "scheduler")
    assert h.reply(rid) is None
    h.up("scheduler")
    h.up("locks")
    h.up("reaper", "callbacks")
    assert "STOPPING" == h.states()["scheduler"]


def test_reload_restarts_only_the_changed_worker(tmp_path: Path) -> None:
    """SIGHUP with a changed workers.reaper entry restarts the reaper alone."""
    h = Harness(tmp_path)
    h.startup()
    pids = {n: p.pid for n, p in h.d.procs.items()}
    h.cfgfile.write_text(h.cfgfile.read_text().replace(
        "reaper: {startsecs: 0.5", "reaper: {startsecs: 0.25"))
    h.d.handle_signal(signal.SIGHUP)
    assert [(pids["reaper"], signal.SIGTERM)] == h.killed
    h.exit("reaper", 0)
    h.up("reaper")
    assert all(pids[n] == h.d.procs[n].pid for n in ("scheduler", "locks", "callbacks"))
    assert 0.25 == h.d.procs["reaper"].config.startsecs


def test_reload_with_a_bad_config_keeps_the_old_one(tmp_path: Path) -> None:
    """A broken file on reload: refused with the error in the reply; nothing restarted."""
    h = Harness(tmp_path)
    h.startup()
    h.cfgfile.write_text(h.cfgfile.read_text() + "bogus_key: 1\n")
    rid = h.control("reload")
    rep = h.reply(rid)
    assert rep is not None and not rep["ok"]
    assert "bogus_key" in rep["message"]
    assert [] == h.killed
    assert h.d.publisher.last_status.startswith("reload refused")


def test_reload_refuses_a_changed_state_dir(tmp_path: Path) -> None:
    """state_dir cannot move under a running batchd."""
    h = Harness(tmp_path)
    h.startup()
    h.cfgfile.write_text(_YAML.format(state=tmp_path / "elsewhere"))
    rid = h.control("reload")
    rep = h.reply(rid)
    assert rep is not None and not rep["ok"]
    assert "state_dir cannot change" in rep["message"]


def test_changed_workers_follows_the_sections_each_reads(tmp_path: Path) -> None:
    """repositories -> scheduler, locks and reaper; callbacks -> callbacks; log -> all four
    (the api only when configured)."""
    base = Config(state_dir=tmp_path, workspace_dir=tmp_path / "ws")
    from supervisor.config import CallbacksConfig, LogConfig, RepoConfig
    assert ["scheduler", "locks", "reaper"] == changed_workers(
        base, dataclasses.replace(base, repositories={"a": RepoConfig(url="/x")}))
    assert ["callbacks"] == changed_workers(
        base, dataclasses.replace(base, callbacks=CallbacksConfig(timeout=5.0)))
    assert ["scheduler", "locks", "reaper", "callbacks"] == changed_workers(
        base, dataclasses.replace(base, log=LogConfig(level="debug")))
    assert [] == changed_workers(base, dataclasses.replace(base))


def test_describe_exit() -> None:
    """waitpid statuses become (exitstatus, message)."""
    assert (-9, "killed by SIGKILL") == describe_exit(signal.SIGKILL)
    assert (3, "exited with status 3 (recovery failed)") == describe_exit(3 << 8)
    assert (0, "exited with status 0") == describe_exit(0)


def test_startup_log_keeps_the_last_ten(tmp_path: Path) -> None:
    """Newest last, at most 10; a corrupt log is quarantined, logged, and a new one begun."""
    layout = Layout(tmp_path)
    layout.startup_log.write_text("{not json")
    with structlog.testing.capture_logs() as logs:
        for i in range(12):
            startups = append_startup(layout, {"id": str(i)}, log=structlog.get_logger())
    assert ["startup-log.json was corrupt: moved aside, a new log begins"] == [
        e["event"] for e in logs]
    assert [str(i) for i in range(2, 12)] == [s["id"] for s in startups]
    assert 1 == len(list(tmp_path.glob("startup-log.json.corrupted.*")))


def test_timers_replace_and_cancel() -> None:
    """Setting a key again replaces it; cancelled timers never fire; earliest first."""
    t = Timers()
    t.set("a", 5.0)
    t.set("b", 3.0)
    t.set("a", 1.0)
    t.set("c", 2.0)
    t.cancel("c")
    assert 1.0 == t.next_due()
    assert ["a", "b"] == list(t.pop_due(10.0))
    assert t.next_due() is None


def test_check_exit_codes_and_no_state_written(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """--check: 0 and a summary for a good file; 2 and the error for a bad one; bad usage 2."""
    good = tmp_path / "good.yaml"
    good.write_text(f"state_dir: {tmp_path / 'state'}\n")
    assert 0 == main(["-c", str(good), "--check"])
    assert "configuration OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"state_dir: {tmp_path / 'state'}\nworkers: {{locks: {{startsecs: x}}}}\n")
    assert 2 == main(["-c", str(bad), "--check"])
    err = capsys.readouterr().err
    assert "bad.yaml:2" in err and "startsecs" in err
    assert 2 == main(["-c", str(bad)])
    assert 2 == main(["--frobnicate"])
    assert not (tmp_path / "state").exists()


def test_check_refuses_a_metrics_textfile_in_a_missing_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--check (and a start) refuses `metrics.textfile` whose folder does not exist, naming
    the key and line, exit 2, nothing written: the reaper could never write it."""
    config = tmp_path / "batchd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n"
                      f"metrics: {{textfile: {tmp_path / 'no' / 'batchd.prom'}}}\n")
    assert 2 == main(["-c", str(config), "--check"])
    assert (f"batchd: {config}:2: metrics.textfile: the folder {tmp_path / 'no'} of "
            f"{tmp_path / 'no' / 'batchd.prom'} does not exist (or is not a folder)\n"
            ) == capsys.readouterr().err
    assert 2 == main(["-c", str(config)])
    assert not (tmp_path / "state").exists()
    (tmp_path / "no").mkdir()
    assert 0 == main(["-c", str(config), "--check"])


def test_check_warns_about_configured_agents_it_cannot_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--check: exit 0 (the file is valid) with a warning on stderr for each agent the file
    names whose binary is missing, and for an aider agent without a model; the built-in
    agents the file does not name, and agents whose binary is there, are not warned about."""
    here = tmp_path / "bin"
    here.mkdir()
    (here / "claude").write_text("#!/bin/sh\n")
    (here / "claude").chmod(0o755)
    monkeypatch.setenv("PATH", f"{here}:/usr/bin:/bin")
    config = tmp_path / "batchd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nagents:\n  claude: {{}}\n"
                      "  review: {adaptor: gemini, command: /opt/none/gemini}\n"
                      "  cheap: {adaptor: aider, model: openai/gpt-4o-mini, "
                      "env: {PATH: /nowhere}}\n"
                      "  lazy: {adaptor: aider, command: /bin/true}\n")
    assert 0 == main(["-c", str(config), "--check"])
    err = capsys.readouterr().err.splitlines()
    assert ["batchd: warning: agent 'cheap': its binary 'aider' was not found on PATH "
            "(/nowhere); its jobs will fail (agent_not_found)",
            "batchd: warning: agent 'lazy' has no model: aider without one starts an "
            "interactive OpenRouter login; set `model` (e.g. openai/gpt-4o) for this agent in "
            "the configuration; its jobs are refused",
            "batchd: warning: agent 'review': its binary '/opt/none/gemini' was not found; its "
            "jobs will fail (agent_not_found)"] == err
    assert not (tmp_path / "state").exists()


def test_replies_older_than_ten_minutes_are_removed(tmp_path: Path) -> None:
    """gc_replies drops replies past REPLY_TTL, keeps newer ones, and re-arms its timer."""
    h = Harness(tmp_path)
    old, new = h.layout.reply_file("old"), h.layout.reply_file("new")
    for path in (old, new):
        write_record(REPLY, path, {"id": path.stem, "ok": True, "message": "x"})
    stale = time.time() - REPLY_TTL - 5
    os.utime(old, (stale, stale))
    h.d.gc_replies()
    assert (False, True) == (old.exists(), new.exists())
    assert h.d.timers.pending("reply-gc")


def test_critical_worker_dying_after_its_phase_still_aborts_startup(tmp_path: Path) -> None:
    """The scheduler ready, then FATAL while locks recovers: startup fails, exit 1."""
    h = Harness(tmp_path)
    h.d.begin()
    h.ready("scheduler")              # ready, but not yet up startsecs: still STARTING
    h.exit("scheduler", KILLED)
    h.tick(1.0)
    h.exit("scheduler", KILLED)
    assert "FATAL" == h.states()["scheduler"]
    assert h.d.stopping and EXIT_FAILURE == h.d.exit_code
    log = read_record(STARTUP_LOG, h.layout.startup_log, owner=False)
    assert isinstance(log, dict)
    assert "failed" == log["startups"][-1]["outcome"]


def test_reloads_asked_for_during_startup_are_all_answered_once_it_is_done(
        tmp_path: Path) -> None:
    """A SIGHUP and two `reload` requests during recovery: once batchd runs the first
    reload restarts the changed worker, the next one, applied after it, finds nothing
    more to change; every request is answered."""
    h = Harness(tmp_path)
    h.d.begin()
    h.cfgfile.write_text(h.cfgfile.read_text().replace(
        "callbacks: {startsecs: 0.5", "callbacks: {startsecs: 0.25"))
    h.d.handle_signal(signal.SIGHUP)
    first, second = h.control("reload"), h.control("reload")
    h.up("scheduler")
    h.up("locks")
    h.up("reaper", "callbacks")
    assert "reloading" == h.d.life.value
    assert (None, None) == (h.reply(first), h.reply(second))
    h.exit("callbacks", 0)
    h.up("callbacks")
    replies = [h.reply(first), h.reply(second)]
    assert [(True, ["callbacks"]), (True, [])] == [
        (r["ok"], r["result"]["restarted"]) for r in replies if r is not None]
    assert "running" == h.d.life.value


def test_a_restart_during_shutdown_does_not_bring_the_worker_back(tmp_path: Path) -> None:
    """restart marks a stopping worker to start again; a shutdown then drops the mark, so
    every worker ends STOPPED and batchd leaves its loop."""
    h = Harness(tmp_path)
    h.startup()
    h.control("restart", "callbacks")
    assert "STOPPING" == h.states()["callbacks"]
    h.d.handle_signal(signal.SIGTERM)
    for name in ("callbacks", "reaper", "locks", "scheduler"):
        h.exit(name, 0)
    assert (["STOPPED"] * 4, True) == (list(h.states().values()), h.d.done)


# -- the optional api worker ----------------------------------------------------------------------

def test_phases_keep_only_the_enabled_workers() -> None:
    """The api joins the last phase when configured; without it the phases are the four."""
    from supervisor.batchd.startup import phases_for

    assert (("scheduler",), ("locks",), ("reaper", "callbacks")) == phases_for(
        ("scheduler", "locks", "reaper", "callbacks"))
    assert ("reaper", "callbacks", "api") == phases_for(
        ("scheduler", "locks", "reaper", "callbacks", "api"))[-1]


def test_the_api_starts_last_and_is_listed_only_when_configured(tmp_path: Path) -> None:
    """Configured: forked in the last phase and listed; its failure leaves batchd running,
    degraded. Not configured: never forked, never listed, `start api` refused."""
    h = Harness(tmp_path, "api: {listen: '127.0.0.1:0'}\n")
    h.d.begin()
    h.up("scheduler")
    h.up("locks")
    assert ["scheduler", "locks", "reaper", "callbacks", "api"] == [n for n, _ in h.spawned]
    h.up("reaper", "callbacks")
    for _ in range(10):               # each start fails until startretries are used up
        if h.states()["api"] == "FATAL":
            break
        if h.states()["api"] == "STARTING":
            h.exit("api", EXIT3)
        h.tick(5.0)
    assert "FATAL" == h.states()["api"]
    assert not h.d.starting_up and not h.d.stopping
    log = read_record(STARTUP_LOG, h.layout.startup_log, owner=False)
    assert isinstance(log, dict) and "degraded" == log["startups"][-1]["outcome"]

    (tmp_path / "off").mkdir()
    off = Harness(tmp_path / "off")
    off.startup()
    assert "api" not in off.states()
    assert "api" not in [n for n, _ in off.spawned]
    rep = off.reply(off.control("start", "api"))
    assert rep is not None and not rep["ok"] and "not configured" in rep["message"]
