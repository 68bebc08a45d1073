"""Single instance per state dir (supervisor.state.instance): a real POSIX lock across processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from supervisor.state.instance import Instance, acquire, probe
from supervisor.state.layout import PID, Layout, read_record
from supervisor.state.proc import start_time

_HOLD = """
import sys, time
from supervisor.state.instance import acquire
from supervisor.state.layout import Layout
got = acquire(Layout(sys.argv[1]))
print("held" if not isinstance(got, int) else f"busy {got}", flush=True)
time.sleep(60)
"""

_ASK = """
import json, sys
from supervisor.state.instance import acquire, probe
from supervisor.state.layout import Layout
layout = Layout(sys.argv[1])
p = probe(layout)
got = acquire(layout)
print(json.dumps([p, got if isinstance(got, int) else "acquired"]))
"""


def _ask(state: Path) -> list[object]:
    out = subprocess.run([sys.executable, "-c", _ASK, str(state)], capture_output=True,
                         text=True, timeout=60, check=True)
    result: list[object] = json.loads(out.stdout)
    return result


def test_acquire_writes_the_pid_record(tmp_path: Path) -> None:
    """The pid record names this process with its start time, state dir and config."""
    layout = Layout(tmp_path / "state")
    inst = acquire(layout, config="/etc/x.yaml")
    assert isinstance(inst, Instance)
    try:
        rec = read_record(PID, layout.pid_file, owner=False)
        assert isinstance(rec, dict)
        assert inst.pid == rec["pid"]
        assert start_time(inst.pid) == rec["start"]
        assert str(layout.root) == rec["state_dir"]
        assert "/etc/x.yaml" == rec["config"]
    finally:
        inst.release()
    assert not layout.pid_file.exists()


def test_a_second_process_is_refused_with_the_holder_pid(tmp_path: Path) -> None:
    """Another process's probe and acquire both name the holder."""
    layout = Layout(tmp_path)
    inst = acquire(layout)
    assert isinstance(inst, Instance)
    try:
        assert [inst.pid, inst.pid] == _ask(tmp_path)
    finally:
        inst.release()
    assert [None, "acquired"] == _ask(tmp_path)


def test_probe_neither_creates_nor_takes_the_lock(tmp_path: Path) -> None:
    """probe on a fresh dir returns None and leaves no file behind."""
    layout = Layout(tmp_path)
    assert probe(layout) is None
    assert [] == list(tmp_path.iterdir())


def test_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    """SIGKILL of the holder releases the lock: no stale-pid guessing needed."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert "held" == holder.stdout.readline().strip()
        assert holder.pid == probe(Layout(tmp_path))
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 30
        while probe(Layout(tmp_path)) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        inst = acquire(Layout(tmp_path))
        assert isinstance(inst, Instance)
        inst.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_folder_in_place_of_the_lock_file_does_not_stop_batchd(tmp_path: Path) -> None:
    """Found by the chaos suite: a folder where batchd.lock belongs made every start exit 1
    (a crash loop under systemd). It cannot be locked, so no batchd holds it: moved aside
    as batchd.lock.corrupted.<ts>, and the lock taken on a fresh file."""
    layout = Layout(tmp_path / "state")
    layout.lock_file.mkdir(parents=True)
    inst = acquire(layout)
    assert isinstance(inst, Instance)
    try:
        assert True is layout.lock_file.is_file()
        assert 1 == len([p for p in layout.root.iterdir()
                         if p.name.startswith("batchd.lock.corrupted.")])
    finally:
        inst.release()
