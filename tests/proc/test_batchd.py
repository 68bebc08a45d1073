"""batchd as a real process: real forks, real SIGKILL/SIGTERM/SIGHUP, a real notify socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.state.clock import iso_now
from supervisor.state.layout import (
    CONTROL,
    REPLY,
    STARTUP_LOG,
    WORKERS,
    Layout,
    read_record,
    write_record,
)
from supervisor.state.proc import alive
from tests.helpers import until

DEADLINE = 60.0
NAMES = ("scheduler", "locks", "reaper", "callbacks")
_FAST = "{startsecs: 0.2, startretries: 1, stopwaitsecs: 3}"


def config_text(state: Path, **workers: str) -> str:
    lines = [f"state_dir: {state}", "log: {level: info, format: json}", "workers:"]
    lines += [f"  {n}: {workers.get(n, _FAST)}" for n in NAMES]
    return "\n".join(lines) + "\n"


class Daemon:
    """One batchd subprocess on its own state dir, its log in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp_path
        self.cfg = tmp_path / "batchd.yaml"
        if not self.cfg.exists():
            self.cfg.write_text(config_text(tmp_path / "state"))
        self.layout = Layout(tmp_path / "state")
        self.logfile = tmp_path / "batchd.log"
        self.env = env
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.logfile, "ab") as out:
            self.p = subprocess.Popen(
                [sys.executable, "-m", "supervisor.batchd", "-c", str(self.cfg)],
                stdout=out, stderr=out, env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def workers(self) -> dict[str, dict[str, Any]]:
        rec = read_record(WORKERS, self.layout.workers_file, owner=False)
        if not isinstance(rec, dict) or rec.get("batchd_pid") != self.pid:
            return {}
        return {w["name"]: w for w in rec["workers"]}

    def running(self, *names: str) -> dict[str, dict[str, Any]]:
        """workers.json once every one of `names` (default: all) is RUNNING."""
        want = names or NAMES

        def check() -> dict[str, dict[str, Any]] | None:
            assert self.p is not None and self.p.poll() is None, \
                f"batchd exited {self.p and self.p.returncode}:\n{self.log_text()[-3000:]}"
            w = self.workers()
            return w if w and all(w[n]["state"] == "RUNNING" for n in want) else None

        result: dict[str, dict[str, Any]] = until(f"{want} RUNNING", check)
        return result

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def wait(self, timeout: float = DEADLINE) -> int:
        assert self.p is not None
        return self.p.wait(timeout=timeout)

    def control(self, op: str, worker: str | None = None) -> dict[str, Any]:
        """Write a CONTROL request as batchctl does and wait for batchd's reply."""
        rid = uuid.uuid4().hex
        write_record(CONTROL, self.layout.control_inbox / f"{rid}.json", {
            "id": rid, "op": op, "worker": worker,
            "created_at": iso_now()})

        def reply() -> dict[str, Any] | None:
            rec = read_record(REPLY, self.layout.reply_file(rid), owner=False)
            return rec if isinstance(rec, dict) else None

        result: dict[str, Any] = until(f"reply to {op} {worker}", reply)
        return result

    def kill(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        pids = [w["pid"] for w in d.workers().values() if w["pid"]]
        d.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue


def launch(tmp_path: Path, daemons: list[Daemon], env: dict[str, str] | None = None) -> Daemon:
    d = Daemon(tmp_path, env).start()
    daemons.append(d)
    return d


def _kill_loop(d: Daemon, name: str, times: int) -> None:
    for i in range(times):
        old = d.running()[name]["pid"]
        os.kill(old, signal.SIGKILL)

        def replaced(old: int = old) -> dict[str, Any] | None:
            w: dict[str, Any] = d.running()[name]
            return w if w["pid"] != old else None

        after = until(f"{name} back after kill {i + 1}", replaced)
        assert alive(after["pid"], after["start"])
    assert times == d.workers()[name]["restarts"]


def _job_ids(d: Daemon) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "supervisor.ctl", "-c", str(d.cfg), "jobs", "--json"],
        capture_output=True, text=True, timeout=60, check=True)
    return sorted(j["id"] for j in json.loads(out.stdout))


def _submit(d: Daemon, ids: list[str]) -> None:
    for job in ids:
        subprocess.run(
            [sys.executable, "-m", "supervisor.ctl", "-c", str(d.cfg), "submit",
             "--agent", "shell", "--prompt", "exit 0", "--id", job],
            capture_output=True, text=True, timeout=60, check=True)


def _sigkill_each_worker(tmp_path: Path, daemons: list[Daemon], times: int) -> None:
    d = launch(tmp_path, daemons)
    d.running()
    ids = [f"keep-{i}" for i in range(3)]
    _submit(d, ids)
    until("the scheduler to take the jobs", lambda: _job_ids(d) == ids)
    for name in NAMES:
        _kill_loop(d, name, times)
    assert ids == _job_ids(d)
    assert {n: times for n in NAMES} == {n: w["restarts"] for n, w in d.workers().items()}
    assert d.p is not None and d.p.poll() is None


def test_sigkilled_workers_come_back_running_with_state_intact(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    """SIGKILL each worker 3 times: back RUNNING with a new pid, jobs kept, restarts counted."""
    _sigkill_each_worker(tmp_path, daemons, 3)


@pytest.mark.chaos
def test_sigkilled_workers_20_times_each(tmp_path: Path, daemons: list[Daemon]) -> None:
    """SIGKILL each worker 20 times: back RUNNING with a new pid, jobs kept, restarts counted."""
    _sigkill_each_worker(tmp_path, daemons, 20)


def test_worker_crashing_at_start_goes_backoff_then_fatal_and_start_revives_it(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    """A file where locks/ should be: BACKOFF, FATAL after startretries; `start` revives it."""
    d = launch(tmp_path, daemons)
    pid = d.running()["locks"]["pid"]
    folder = d.layout.worker_dir("locks")
    shutil.move(folder, tmp_path / "locks.saved")
    folder.write_text("not a folder\n")
    os.kill(pid, signal.SIGKILL)
    seen: set[str] = set()

    def fatal() -> bool:
        state = str(d.workers().get("locks", {}).get("state", ""))
        seen.add(state)
        return state == "FATAL"

    until("locks FATAL", fatal)
    assert "BACKOFF" in seen
    assert {"RUNNING"} == {d.workers()[n]["state"] for n in ("scheduler", "reaper", "callbacks")}
    folder.unlink()
    shutil.move(tmp_path / "locks.saved", folder)
    reply = d.control("start", "locks")
    assert reply["ok"], reply
    assert "RUNNING" == d.running("locks")["locks"]["state"]


def test_sigkill_of_batchd_leaves_no_worker_and_the_next_one_recovers(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    """SIGKILL batchd: every worker dies with it; a new batchd recovers and logs startup #2."""
    d = launch(tmp_path, daemons)
    workers = d.running()
    d.kill()
    until("every worker to die with batchd",
          lambda: not any(alive(w["pid"], w["start"]) for w in workers.values()), 10.0)
    d2 = launch(tmp_path, daemons)
    d2.running()
    log = read_record(STARTUP_LOG, d2.layout.startup_log, owner=False)
    assert isinstance(log, dict)
    assert ["ok", "ok"] == [s["outcome"] for s in log["startups"]]
    assert NAMES == tuple(p["worker"] for p in log["startups"][-1]["phases"])


@pytest.mark.parametrize("worker", ["locks", "reaper"])
def test_a_corrupt_state_file_of_one_worker_leaves_the_others_running(
        tmp_path: Path, daemons: list[Daemon], worker: str) -> None:
    """Garbage in <worker>/state.json: the others still reach RUNNING, batchd keeps going."""
    layout = Layout(tmp_path / "state")
    layout.worker_dir(worker).mkdir(parents=True)
    layout.worker_state(worker).write_bytes(b"\x00{garbage")
    d = launch(tmp_path, daemons)
    d.running(*(n for n in NAMES if n != worker))
    until(f"{worker} settles", lambda: d.workers()[worker]["state"] in ("RUNNING", "FATAL"))
    assert d.p is not None and d.p.poll() is None


def test_second_instance_exits_1_naming_the_holder(tmp_path: Path,
                                                   daemons: list[Daemon]) -> None:
    """A second batchd on the same state dir prints the holder's pid and exits 1."""
    d = launch(tmp_path, daemons)
    d.running()
    out = subprocess.run([sys.executable, "-m", "supervisor.batchd", "-c", str(d.cfg)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert 1 == out.returncode
    assert f"pid {d.pid}" in out.stderr


def test_check_exit_codes(tmp_path: Path) -> None:
    """--check: 0 for a valid file, 2 for a bad one; bad usage 2; no state dir created."""
    good = tmp_path / "good.yaml"
    good.write_text(config_text(tmp_path / "state"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text(tmp_path / "state") + "nonsense: [\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisor.batchd", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    ok = run("-c", str(good), "--check")
    assert (0, True) == (ok.returncode, "configuration OK" in ok.stdout)
    ko = run("-c", str(bad), "--check")
    assert (2, True) == (ko.returncode, "bad.yaml" in ko.stderr)
    assert 2 == run("-c", str(bad)).returncode
    assert 2 == run("--no-such-option").returncode
    assert not (tmp_path / "state").exists()


def test_sigterm_stops_workers_in_reverse_order_and_exits_0(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    """SIGTERM: callbacks, reaper, locks, scheduler stopped in turn; all gone; exit 0."""
    d = launch(tmp_path, daemons)
    workers = d.running()
    assert d.p is not None
    d.p.send_signal(signal.SIGTERM)
    assert 0 == d.wait()
    order = [e["worker"] for e in d.log_events()
             if e.get("event") == "worker state" and e.get("new") == "STOPPING"]
    assert ["callbacks", "reaper", "locks", "scheduler"] == order
    assert not any(alive(w["pid"], w["start"]) for w in workers.values())
    assert {"STOPPED"} == {w["state"] for w in workers_file(d).values()}


def _catches_sigterm(pid: int) -> bool:
    """True once the process has a handler for SIGTERM (SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.1])
def test_sigterm_during_startup_still_exits_0(
        tmp_path: Path, daemons: list[Daemon], delay: float) -> None:
    """SIGTERM from the moment batchd's code runs (config load, lock, recovery): exit 0.

    Only the interpreter's own start-up, before batchd's first line, takes the default
    action; the test waits for the handler to be installed, then for `delay`."""
    d = launch(tmp_path, daemons)
    until("batchd to install its signal handlers", lambda: _catches_sigterm(d.pid))
    time.sleep(delay)
    assert d.p is not None
    d.p.send_signal(signal.SIGTERM)
    assert 0 == d.wait()


def test_restart_totals_survive_a_restart_of_batchd(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    """`restarts` is per batchd life (supervisord's); `restarts_total` carries on across it."""
    d = launch(tmp_path, daemons)
    _kill_loop(d, "locks", 2)
    assert d.p is not None
    d.p.send_signal(signal.SIGTERM)
    assert 0 == d.wait()
    d2 = launch(tmp_path, daemons)
    d2.running()
    _kill_loop(d2, "locks", 1)
    locks = d2.workers()["locks"]
    assert (1, 3) == (locks["restarts"], locks["restarts_total"])


def test_corrupt_workers_json_is_quarantined_and_logged(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    """Garbage in workers.json at start: moved aside as .corrupted.<ts>, a warning logged."""
    layout = Layout(tmp_path / "state")
    layout.root.mkdir(parents=True)
    layout.workers_file.write_bytes(b"{garbage")
    d = launch(tmp_path, daemons)
    d.running()
    assert 1 == len(list(layout.root.glob("workers.json.corrupted.*")))
    assert any("workers.json was corrupt" in str(e.get("event")) for e in d.log_events())


def workers_file(d: Daemon) -> dict[str, dict[str, Any]]:
    rec = read_record(WORKERS, d.layout.workers_file, owner=False)
    assert isinstance(rec, dict)
    return {w["name"]: w for w in rec["workers"]}


def test_sighup_restarts_only_the_worker_whose_setting_changed(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    """A changed workers.reaper entry: SIGHUP restarts the reaper, the others keep their pids."""
    d = launch(tmp_path, daemons)
    before = d.running()
    d.cfg.write_text(config_text(tmp_path / "state", reaper="{startsecs: 0.3, stopwaitsecs: 3}"))
    assert d.p is not None
    d.p.send_signal(signal.SIGHUP)
    def restarted() -> dict[str, dict[str, Any]] | None:
        w = d.running()
        return w if w["reaper"]["pid"] != before["reaper"]["pid"] else None

    after = until("the reaper restarted", restarted)
    assert {n: before[n]["pid"] for n in NAMES if n != "reaper"} == \
        {n: after[n]["pid"] for n in NAMES if n != "reaper"}
    assert 0 == after["reaper"]["restarts"]


def test_sighup_with_a_bad_config_keeps_running(tmp_path: Path, daemons: list[Daemon]) -> None:
    """A broken file on SIGHUP is refused and logged; batchd and its workers carry on."""
    d = launch(tmp_path, daemons)
    before = d.running()
    d.cfg.write_text(config_text(tmp_path / "state") + "workers: 12\n")
    assert d.p is not None
    d.p.send_signal(signal.SIGHUP)
    until("the refusal in the log", lambda: any(e.get("event", "").startswith("reload refused")
                         for e in d.log_events()))
    assert {n: w["pid"] for n, w in before.items()} == \
        {n: w["pid"] for n, w in d.running().items()}
    reply = d.control("reload")
    assert not reply["ok"]
    assert "workers" in reply["message"]


def test_sd_notify_ready_status_watchdog_stopping(tmp_path: Path,
                                                  daemons: list[Daemon]) -> None:
    """Under a fake systemd: READY=1 after recovery, STATUS=, WATCHDOG=1, STOPPING=1."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(DEADLINE)
    try:
        env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
        d = launch(tmp_path, daemons, env)
        got: list[str] = []

        def until(key: str) -> None:
            while not any(line.startswith(key) for line in got):
                got.extend(sock.recv(4096).decode().split("\n"))

        until("READY=1")
        assert any(line.startswith("STATUS=recovering") for line in got)
        got.clear()
        until("WATCHDOG=1")
        assert d.p is not None
        d.p.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert 0 == d.wait()
    finally:
        sock.close()
