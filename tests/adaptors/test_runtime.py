"""The shared adaptor runtime: spec checks, the stop table, users, groups, and real runs."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adaptors._runtime import Action, Event, Phase, RunAs, resolve_binary, resolve_user, step

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
import fakekit

from supervisor.state.layout import JOB_ENDED, REQUEST, Layout, read_record, write_record
from tests.helpers import fill, until


@pytest.fixture
def start() -> Iterator[Callable[[Path], subprocess.Popen[bytes]]]:
    """Start adaptors for a test; whatever is left of their groups is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def run(job: Path) -> subprocess.Popen[bytes]:
        started.append(fakekit.start_adaptor(job))
        return started[-1]

    yield run
    for proc in started:
        fakekit.kill_group(proc.pid)
        proc.wait()


# -- the stop table ---------------------------------------------------------------------------

@pytest.mark.parametrize(("phase", "event", "expected"), [
    (Phase.RUNNING, Event.TERM,
     (Phase.STOPPING, (Action.NOTE_TERMINATED, Action.TERM_GROUP))),
    (Phase.RUNNING, Event.DEADLINE,
     (Phase.STOPPING, (Action.NOTE_TIMED_OUT, Action.TERM_GROUP))),
    (Phase.RUNNING, Event.IDLE, (Phase.STOPPING, (Action.NOTE_IDLE, Action.TERM_GROUP))),
    (Phase.STOPPING, Event.IDLE, (Phase.STOPPING, ())),
    (Phase.STOPPING, Event.GRACE_OVER, (Phase.KILLING, (Action.KILL_GROUP,))),
    (Phase.STOPPING, Event.TERM, (Phase.STOPPING, ())),
    (Phase.STOPPING, Event.DEADLINE, (Phase.STOPPING, ())),
    (Phase.KILLING, Event.TERM, (Phase.KILLING, ())),
])
def test_stop_table(phase: Phase, event: Event,
                    expected: tuple[Phase, tuple[Action, ...]]) -> None:
    """SIGTERM/timeout/idleness start a graceful stop once (naming why); grace over
    escalates to SIGKILL; later signals change nothing."""
    assert expected == step(phase, event)


# -- binaries, users, groups ------------------------------------------------------------------

def test_resolve_binary(tmp_path: Path) -> None:
    """Names are looked up on PATH; relative paths against the workspace; missing is None."""
    exe = tmp_path / "bin" / "tool"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert str(exe) == resolve_binary("tool", path=str(exe.parent), cwd="/")
    assert str(exe) == resolve_binary("bin/tool", path="", cwd=str(tmp_path))
    assert None is resolve_binary("nope", path=str(exe.parent), cwd="/")
    assert None is resolve_binary("/no/such/tool", path=None, cwd="/")


def test_resolve_user_refusals() -> None:
    """Unknown user, or a switch without root: a reason, never a fallback to our account."""
    assert "user_switch_failed: no such user 'no-such-user-x'" \
        == resolve_user("no-such-user-x", euid=0)
    refused = resolve_user("nobody", euid=1000)
    assert isinstance(refused, str)
    assert refused.startswith("user_switch_failed: cannot run as 'nobody': this adaptor runs "
                              "as uid 1000, and only root can switch users")


def test_resolve_user_as_root_and_as_oneself() -> None:
    """Root switching to nobody gets its uid/gid/groups; one's own account needs no switch."""
    target = resolve_user("nobody", euid=0)
    assert isinstance(target, RunAs)
    assert (65534, True) == (target.uid, target.switch)
    assert target.gid in target.groups
    assert False is resolve_user("root", euid=0).switch  # type: ignore[union-attr]


# -- real runs --------------------------------------------------------------------------------

def test_missing_spec_is_a_bad_spec_result(tmp_path: Path) -> None:
    """No spec.json: result reason bad_spec naming the file, exit 2, a sentinel was written."""
    job = tmp_path / "state" / "jobs" / "nospec"
    job.mkdir(parents=True)
    assert 2 == fakekit.run_adaptor(job).returncode
    result = fakekit.result(job)
    assert f"bad_spec: {job / 'spec.json'}: missing" == result["reason"]
    assert 2 == result["exit_code"]
    assert fakekit.sentinel(job) is not None


def test_unknown_adaptor_is_a_bad_spec_result(tmp_path: Path) -> None:
    """An adaptor name not in the table is refused, listing the known ones."""
    job = fakekit.make_job(tmp_path / "state", "ua", adaptor="cursor", prompt="x")
    fakekit.run_adaptor(job)
    assert ("bad_spec: adaptor: unknown 'cursor' (known: aider, claude, codex, command, "
            "gemini, opencode, q)") == fakekit.result(job)["reason"]


def test_exit_drops_a_job_exited_hint_into_the_scheduler_inbox(tmp_path: Path) -> None:
    """After result.json, the adaptor drops a `job_exited` request so the scheduler wakes."""
    state = tmp_path / "state"
    inbox = Layout(state).inbox("scheduler")
    inbox.mkdir(parents=True)
    job = fakekit.make_job(state, "hinted", adaptor="command", prompt="true")
    assert 0 == fakekit.run_adaptor(job).returncode
    hint = read_record(REQUEST, inbox / "exited-hinted.json", owner=False)
    assert isinstance(hint, dict)
    assert ("job_exited", "hinted") == (hint["kind"], hint["job"])


def test_exit_without_a_scheduler_inbox_still_writes_the_result(tmp_path: Path) -> None:
    """The inbox cannot be made (a file where the scheduler's folder goes): the hint is
    not dropped, said in adaptor.log, and the result is written all the same."""
    state = tmp_path / "state"
    job = fakekit.make_job(state, "nohint", adaptor="command", prompt="true")
    (state / "scheduler").write_text("in the way")
    done = fakekit.run_adaptor(job)
    assert 0 == done.returncode
    assert 0 == fakekit.result(job)["exit_code"]
    assert b"could not drop the job_exited hint" in done.stderr


def test_finished_job_is_never_run_again(tmp_path: Path) -> None:
    """result.json exists: exit 3, the agent does not run, no file changes."""
    marker = tmp_path / "ran"
    job = fakekit.make_job(tmp_path / "state", "done", adaptor="command",
                           prompt=f"touch {marker}")
    assert 0 == fakekit.run_adaptor(job).returncode
    marker.unlink()
    before = {p.name: p.read_bytes() for p in job.iterdir()}
    done = fakekit.run_adaptor(job)
    assert 3 == done.returncode
    assert b"the job has finished; refusing to run it again" in done.stderr
    assert not marker.exists()
    assert before == {p.name: p.read_bytes() for p in job.iterdir()}


def test_a_job_batchd_ended_is_never_run(tmp_path: Path) -> None:
    """ended.json exists (batchd ended the Slurm job without a result; Slurm started a copy
    after all): exit 3, the agent does not run, only adaptor.lock appears."""
    marker = tmp_path / "ran"
    job = fakekit.make_job(tmp_path / "state", "gone", adaptor="command",
                           prompt=f"touch {marker}")
    write_record(JOB_ENDED, job / "ended.json",
                 {"id": "gone", "state": "cancelled", "ended_at": "2027-01-15T08:00:00.000Z"})
    before = {p.name: p.read_bytes() for p in job.iterdir()}
    done = fakekit.run_adaptor(job)
    assert 3 == done.returncode
    assert b"batchd ended this job before it ran" in done.stderr
    assert not marker.exists()
    assert {**before, "adaptor.lock": b""} == {p.name: p.read_bytes() for p in job.iterdir()}


def test_second_adaptor_refuses_while_the_job_lock_is_held(tmp_path: Path) -> None:
    """adaptor.lock flocked by someone (the first adaptor): exit 3, no other file touched."""
    job = fakekit.make_job(tmp_path / "state", "twice", adaptor="command", prompt="true")
    with open(job / "adaptor.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = fakekit.run_adaptor(job)
    assert 3 == done.returncode
    assert b"another adaptor holds the job's lock" in done.stderr
    assert ["adaptor.lock", "spec.json"] == sorted(p.name for p in job.iterdir())


def test_adaptor_holds_the_job_lock_while_it_runs(
        tmp_path: Path, start: Callable[[Path], subprocess.Popen[bytes]]) -> None:
    """While the job runs its adaptor.lock cannot be taken; after the exit it can."""
    job = fakekit.make_job(tmp_path / "state", "locked", adaptor="command",
                           prompt="echo up; sleep 30")
    proc = start(job)
    fakekit.wait_for(lambda: fakekit.output(job) == b"up\n", what="the job to start")
    with open(job / "adaptor.lock") as probe:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_missing_binary_is_agent_not_found(tmp_path: Path) -> None:
    """A command that does not exist: reason agent_not_found: <path>, exit 127."""
    job = fakekit.make_job(tmp_path / "state", "nf", adaptor="claude", prompt="x",
                           command="/opt/none/claude")
    assert 127 == fakekit.run_adaptor(job).returncode
    assert ("agent_not_found: /opt/none/claude", 127) \
        == (fakekit.result(job)["reason"], fakekit.result(job)["exit_code"])


def test_missing_workspace_is_spawn_failed(tmp_path: Path) -> None:
    """The workspace folder is gone: spawn_failed naming it."""
    job = fakekit.make_job(tmp_path / "state", "nows", adaptor="command", prompt="true",
                           workspace=tmp_path / "ws")
    (tmp_path / "ws").rmdir()
    assert 126 == fakekit.run_adaptor(job).returncode
    assert f"spawn_failed: workspace {tmp_path / 'ws'} is not a folder" \
        == fakekit.result(job)["reason"]


def test_agent_runs_as_configured_user(tmp_path: Path) -> None:
    """user: nobody -> the agent's uid/gid are nobody's and HOME/USER follow (we are root)."""
    job = fakekit.make_job(tmp_path / "state", "asnobody", adaptor="command", user="nobody",
                           prompt='echo "$(id -u) $(id -g) $USER $HOME"')
    assert 0 == fakekit.run_adaptor(job).returncode
    assert b"65534 65534 nobody /nonexistent\n" == fakekit.output(job)


def test_workspace_is_handed_to_the_configured_user(tmp_path: Path) -> None:
    """user: nobody -> the workspace and what is in it belong to nobody; the agent can write."""
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "f").write_text("x")
    ws.chmod(0o755)
    job = fakekit.make_job(tmp_path / "state", "wsown", adaptor="command", user="nobody",
                           workspace=ws, prompt="echo made > new && echo ok")
    assert 0 == fakekit.run_adaptor(job).returncode
    assert b"ok\n" == fakekit.output(job)
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in (ws, ws / "sub", ws / "sub" / "f",
                                                            ws / "new")}
    assert {(65534, 65534)} == owners


def test_hard_linked_files_in_the_workspace_keep_their_owner(tmp_path: Path) -> None:
    """A file shared by hard link with another tree (a mirror's git object) is not handed
    over: the other tree keeps owning it."""
    ws, mirror = tmp_path / "ws", tmp_path / "mirror"
    ws.mkdir()
    mirror.mkdir()
    (mirror / "obj").write_text("object")
    os.link(mirror / "obj", ws / "obj")
    job = fakekit.make_job(tmp_path / "state", "wslink", adaptor="command", user="nobody",
                           workspace=ws, prompt="true")
    assert 0 == fakekit.run_adaptor(job).returncode
    assert (0, 65534) == ((mirror / "obj").stat().st_uid, ws.stat().st_uid)


def test_unknown_user_fails_without_running(tmp_path: Path) -> None:
    """user names no account: user_switch_failed and the agent never ran."""
    marker = tmp_path / "ran"
    job = fakekit.make_job(tmp_path / "state", "nouser", adaptor="command",
                           user="no-such-user-x", prompt=f"touch {marker}")
    assert 126 == fakekit.run_adaptor(job).returncode
    assert "user_switch_failed: no such user 'no-such-user-x'" == fakekit.result(job)["reason"]
    assert not marker.exists()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder under /tmp that an unprivileged account can enter (tmp_path's parents cannot)."""
    folder = Path(tempfile.mkdtemp(prefix="batchd-adaptor-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


def _python_nobody_can_run() -> str:
    """An interpreter the nobody account can execute (the venv may live under /root)."""
    for candidate in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info >= (3, 11)"],
                user=65534, group=65534, extra_groups=[], capture_output=True, check=False)
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    raise AssertionError("no Python >= 3.11 that the nobody account can run")


def test_non_root_adaptor_refuses_to_switch_user(open_dir: Path) -> None:
    """An adaptor running as nobody asked to run the agent as daemon: refused, never run.
    (The code runs from a copy in a folder nobody may read: the checkout's own folder may
    be private, as a clone under `mktemp -d` is.)"""
    code = open_dir / "code"
    for package in ("adaptors", "supervisor"):
        shutil.copytree(fakekit.REPO / package, code / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    marker = open_dir / "ran"
    job = fakekit.make_job(open_dir / "state", "nr", adaptor="command", user="daemon",
                           prompt=f"touch {marker}")
    for path in [open_dir, *open_dir.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    python = _python_nobody_can_run()
    done = subprocess.run([python, "-m", "adaptors.run", str(job)], user=65534, group=65534,
                          extra_groups=[], capture_output=True, timeout=60, cwd="/", check=False,
                          env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"})
    assert 126 == done.returncode, done.stderr
    assert fakekit.result(job)["reason"].startswith(
        "user_switch_failed: cannot run as 'daemon': this adaptor runs as uid 65534")
    assert not marker.exists()


def test_heartbeat_refreshes_sentinel_while_running(
        tmp_path: Path, start: Callable[[Path], subprocess.Popen[bytes]]) -> None:
    """The sentinel names adaptor and agent (pid + start) and its heartbeat advances."""
    job = fakekit.make_job(tmp_path / "state", "hb", adaptor="command",
                           prompt="echo started; sleep 30", heartbeat_interval=0.1)
    proc = start(job)
    try:
        first = fakekit.wait_for(lambda: (s := fakekit.sentinel(job)) and s["agent_pid"] and s,
                                 what="a sentinel with the agent")
        later = fakekit.wait_for(
            lambda: (s := fakekit.sentinel(job)) and s["heartbeat_at"] > first["heartbeat_at"]
            and s, what="a newer heartbeat")
        assert (proc.pid, 8) == (later["pid"], later["output_bytes"])
        assert later["agent_start"] is not None and later["start"] is not None
        assert os.getpgid(later["agent_pid"]) == proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (skipped where mounting is not allowed)."""
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(path: Path) -> None:
    """Write zeros to `path` until its file system is full."""
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * (1 << 16)
        while chunk:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]


def test_a_job_ending_on_a_full_disk_waits_for_space_to_write_its_result(
        small_fs: Path, tmp_path: Path, start: Callable[[Path], subprocess.Popen[bytes]]) -> None:
    """Found by the chaos suite: an adaptor whose disk was full when its agent ended died
    on its last heartbeat's write, leaving no result, so its finished job was taken for
    lost. Now a failed heartbeat is skipped, and the result is written again and again
    (the adaptor alive, its lock held) until space returns."""
    go = tmp_path / "go"
    job = fakekit.make_job(small_fs / "state", "full", adaptor="command",
                           prompt=f"echo started; while [ ! -e {go} ]; do sleep 0.05; done")
    proc = start(job)
    beat = fakekit.wait_for(lambda: (s := fakekit.sentinel(job)) and s["agent_pid"] and s,
                            what="a sentinel with the agent")
    _fill(small_fs / "filler")
    go.touch()
    fakekit.wait_for(lambda: not fakekit.pid_alive(beat["agent_pid"]), what="the agent's end")
    time.sleep(1.0)
    assert (None, False) == (proc.poll(), (job / "result.json").exists())
    (small_fs / "filler").unlink()
    assert 0 == proc.wait(30)
    res = fakekit.result(job)
    assert (0, None, b"started\n") == (res["exit_code"], res["reason"], fakekit.output(job))


def test_output_written_on_a_full_disk_is_kept_whole_past_the_agents_end(
        small_fs: Path, tmp_path: Path, start: Callable[[Path], subprocess.Popen[bytes]]) -> None:
    """Found by the chaos suite: a line the agent printed while the disk was full was lost
    (marked at best), and the job still ended `completed`. Now the output waits for space,
    the adaptor waits for its output past the drain timeout, and the result follows it."""
    from adaptors._runtime import _DRAIN_TIMEOUT_S

    go = tmp_path / "go"
    job = fakekit.make_job(small_fs / "state", "fullout", adaptor="command",
                           prompt=f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; "
                                  "head -c 20000 /dev/zero | tr '\\0' x; echo")
    proc = start(job)
    fakekit.wait_for(lambda: fakekit.output(job) == b"started\n", what="the first line")
    _fill(small_fs / "filler")
    go.touch()
    time.sleep(_DRAIN_TIMEOUT_S + 1.0)       # the agent is gone; its 20 kB line still waits
    assert (None, False) == (proc.poll(), (job / "result.json").exists())
    (small_fs / "filler").unlink()
    assert 0 == proc.wait(30)
    assert (0, b"started\n" + b"x" * 20000 + b"\n") == (fakekit.result(job)["exit_code"],
                                                       fakekit.output(job))


def test_leftover_background_processes_are_killed_before_the_result(tmp_path: Path) -> None:
    """The agent exits leaving `sleep 60 &` in its group: killed and reaped before result."""
    pidfile = tmp_path / "bg.pid"
    job = fakekit.make_job(tmp_path / "state", "bg", adaptor="command",
                           prompt=f"sleep 60 & echo $! > {pidfile}; echo done")
    assert 0 == fakekit.run_adaptor(job).returncode
    assert 0 == fakekit.result(job)["exit_code"]
    assert False is fakekit.pid_alive(int(pidfile.read_text()))


def test_processes_that_left_the_group_are_killed_before_the_result(tmp_path: Path) -> None:
    """`setsid sleep 60 &` escapes the process group, not BATCHD_JOB_ID: killed all the same."""
    pidfile = tmp_path / "escaped.pid"
    job = fakekit.make_job(tmp_path / "state", "esc", adaptor="command",
                           prompt=f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & "
                                  f"while [ ! -s {pidfile} ]; do sleep 0.01; done; echo done")
    assert 0 == fakekit.run_adaptor(job).returncode
    escaped = int(pidfile.read_text())
    assert False is fakekit.pid_alive(escaped)


def test_sigterm_to_adaptor_alone_is_forwarded_to_the_agent(
        tmp_path: Path, start: Callable[[Path], subprocess.Popen[bytes]]) -> None:
    """SIGTERM to the adaptor pid only: the agent's group gets it, result 'terminated'."""
    job = fakekit.make_job(tmp_path / "state", "term", adaptor="command",
                           prompt="echo up; sleep 30")
    proc = start(job)
    fakekit.wait_for(lambda: fakekit.output(job) == b"up\n", what="the job to start")
    os.kill(proc.pid, signal.SIGTERM)
    assert 128 + signal.SIGTERM == proc.wait(timeout=30)
    result = fakekit.result(job)
    assert ("terminated", None, signal.SIGTERM, False) \
        == (result["reason"], result["exit_code"], result["signal"], result["timed_out"])
    assert [] == fakekit.process_group(proc.pid)


def test_agent_ignoring_sigterm_is_killed_after_grace(
        tmp_path: Path, start: Callable[[Path], subprocess.Popen[bytes]]) -> None:
    """An agent that traps SIGTERM gets SIGKILL kill_grace later: signal 9, 'terminated'."""
    job = fakekit.make_job(tmp_path / "state", "stubborn", adaptor="command", kill_grace=0.3,
                           prompt="trap '' TERM; echo up; while :; do sleep 0.05; done")
    proc = start(job)
    fakekit.wait_for(lambda: fakekit.output(job) == b"up\n", what="the job to start")
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    result = fakekit.result(job)
    assert ("terminated", signal.SIGKILL) == (result["reason"], result["signal"])
    assert [] == fakekit.process_group(proc.pid)


def test_structured_timeout_keeps_output_and_events(tmp_path: Path) -> None:
    """A hanging claude fake times out: reason timed_out, the init event is in both files."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    job = fakekit.make_job(tmp_path / "state", "to", adaptor="claude", prompt="x",
                           command=str(cli), timeout=1.0, kill_grace=0.5,
                           env={"FAKE_HANG": "30", "ANTHROPIC_API_KEY": "k"})
    done = fakekit.run_adaptor(job)
    result = fakekit.result(job)
    assert ("timed_out", True, signal.SIGTERM) \
        == (result["reason"], result["timed_out"], result["signal"])
    assert 128 + signal.SIGTERM == done.returncode
    assert fakekit.output(job).startswith(f"[session] {result['session_id']} ".encode())
    assert 1 == len(fakekit.events(job))
    assert (result["duration_s"] >= 1.0, None) == (True, result["usage"])


def test_idle_agent_is_stopped_as_idle(tmp_path: Path) -> None:
    """A script that writes once and then nothing for longer than idle_timeout: SIGTERM,
    reason idle, timed_out true (its overall timeout was far away)."""
    job = fakekit.make_job(tmp_path / "state", "idle", adaptor="command", idle_timeout=0.5,
                           timeout=60.0, kill_grace=0.5, prompt="echo started; sleep 30")
    fakekit.run_adaptor(job)
    result = fakekit.result(job)
    assert ("idle", True, signal.SIGTERM) \
        == (result["reason"], result["timed_out"], result["signal"])
    assert b"started\n" == fakekit.output(job)
    assert result["duration_s"] < 20


def test_steady_output_is_not_idle(tmp_path: Path) -> None:
    """Output every 0.1 s for 1.5 s with idle_timeout 0.6 s: the job runs to its end."""
    job = fakekit.make_job(tmp_path / "state", "busy", adaptor="command", idle_timeout=0.6,
                           prompt="for i in $(seq 15); do echo $i; sleep 0.1; done")
    assert 0 == fakekit.run_adaptor(job).returncode
    assert (None, False) == (fakekit.result(job)["reason"], fakekit.result(job)["timed_out"])


def test_idle_structured_agent_stopped_output_kept(tmp_path: Path) -> None:
    """A structured CLI (the claude fake) silent after its first event: stopped as idle;
    what it wrote is in the output and events."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    job = fakekit.make_job(tmp_path / "state", "sidle", adaptor="claude", prompt="x",
                           command=str(cli), idle_timeout=0.5, kill_grace=0.5,
                           env={"FAKE_HANG": "30", "ANTHROPIC_API_KEY": "k"})
    fakekit.run_adaptor(job)
    assert "idle" == fakekit.result(job)["reason"]
    assert 1 == len(fakekit.events(job))


@pytest.mark.parametrize("adaptor", ["claude", "gemini", "codex", "opencode", "aider", "q"])
def test_a_100kb_prompt_reaches_every_agent_byte_for_byte(tmp_path: Path, adaptor: str) -> None:
    """The prompt file (stdin, or aider's --message-file) carries 100 KB of quotes, dashes,
    $ and non-ASCII to each strict fake exactly (q trims its input, as the real one)."""
    prompt = fakekit.TRICKY_PROMPT + fakekit.big_prompt()
    cli = fakekit.install_cli(tmp_path / "bin", adaptor)
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "big", adaptor=adaptor, prompt=prompt,
                           command=str(cli), model="openai/gpt-4o" if adaptor == "aider" else None,
                           env={"FAKE_RECORD": str(record), "ANTHROPIC_API_KEY": "k",
                                "GEMINI_API_KEY": "k", "OPENAI_API_KEY": "k"})
    assert 0 == fakekit.run_adaptor(job).returncode
    expected = prompt.encode().strip() if adaptor == "q" else prompt.encode()
    assert expected == fakekit.recorded_prompt(record)
    assert prompt.encode() == (job / "prompt").read_bytes()
    assert 0o600 == (job / "prompt").stat().st_mode & 0o777


def test_the_command_adaptor_writes_no_prompt_file(tmp_path: Path) -> None:
    """The shell's prompt is its script, in argv (CONTRACT): no prompt file, stdin null."""
    job = fakekit.make_job(tmp_path / "state", "sh", adaptor="command",
                           prompt="test -t 0 || read -r x || echo eof")
    assert 0 == fakekit.run_adaptor(job).returncode
    assert (b"eof\n", False) == (fakekit.output(job), (job / "prompt").exists())


def test_prompt_file_belongs_to_the_agents_user(tmp_path: Path) -> None:
    """user: nobody -> the prompt file is nobody's (aider reads it by path)."""
    cli = fakekit.install_cli(tmp_path / "bin", "opencode")
    job = fakekit.make_job(tmp_path / "state", "pu", adaptor="opencode", prompt="hi",
                           command=str(cli), user="nobody",
                           env={"FAKE_HOME": str(tmp_path / "home")})
    (tmp_path / "home").mkdir(mode=0o777)
    fakekit.run_adaptor(job)
    assert 65534 == (job / "prompt").stat().st_uid


def test_adaptor_defaults_fill_only_unset_variables(tmp_path: Path) -> None:
    """A variable already in the adaptor's environment, or in the agent's env, is kept;
    the adaptor's defaults fill the others."""
    cli = fakekit.install_cli(tmp_path / "bin", "claude")
    record = tmp_path / "rec.json"
    job = fakekit.make_job(tmp_path / "state", "envd", adaptor="claude", prompt="p",
                           command=str(cli), env={"FAKE_RECORD": str(record),
                                                  "ANTHROPIC_API_KEY": "k",
                                                  "DISABLE_TELEMETRY": "0"})
    assert 0 == fakekit.run_adaptor(job, env={**os.environ,
                                               "CLAUDE_CODE_MAX_RETRIES": "7"}).returncode
    env = fakekit.recorded(record)["env"]
    assert ("7", "0", "1") == (env["CLAUDE_CODE_MAX_RETRIES"], env["DISABLE_TELEMETRY"],
                               env["DISABLE_AUTOUPDATER"])


def _script(folder: Path, body: str) -> Path:
    """An executable /bin/sh script standing in for a plain agent CLI (any argv)."""
    path = folder / "agent.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_a_stop_reason_wins_over_the_agents_error(tmp_path: Path) -> None:
    """An agent cancelled (SIGTERM) while it reports an error is `terminated`."""
    job = fakekit.make_job(tmp_path / "state", "prec", adaptor="q", prompt="x",
                           command=str(_script(tmp_path, "echo 'error: boom'; sleep 30")))
    proc = fakekit.start_adaptor(job)
    try:
        fakekit.wait_for(lambda: b"boom" in fakekit.output(job), what="the error line")
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        fakekit.kill_group(proc.pid)
    assert "terminated" == fakekit.result(job)["reason"]


def test_plain_agent_error_found_after_exit(tmp_path: Path) -> None:
    """A plain CLI's error line (q's `error:`) and non-zero exit: the reason names it."""
    job = fakekit.make_job(tmp_path / "state", "perr", adaptor="q", prompt="x",
                           command=str(_script(tmp_path, "echo 'error: boom' >&2; exit 1")))
    assert 1 == fakekit.run_adaptor(job).returncode
    assert ("agent error: boom", "boom") == (fakekit.result(job)["reason"],
                                             fakekit.result(job)["agent_error"])


def test_output_is_duplexed_to_a_terminal_stdout(tmp_path: Path) -> None:
    """Run by hand on a terminal, the adaptor also shows the output there."""
    job = fakekit.make_job(tmp_path / "state", "tty", adaptor="command",
                           prompt="echo to-the-file-and-the-tty")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(fakekit.adaptor_cmd(job), stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                cwd=fakekit.REPO)
        os.close(slave)
        assert 0 == proc.wait(timeout=60)
        seen = b""
        while select.select([master], [], [], 1)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert b"to-the-file-and-the-tty" in seen
    assert b"to-the-file-and-the-tty\n" == fakekit.output(job)


# -- the output: its cap, a full disk ---------------------------------------------------------

def test_output_past_the_cap_keeps_the_head_marks_the_cut_once_and_the_job_goes_on(
        tmp_path: Path) -> None:
    """output_max_bytes 2048 and 10,000 bytes written: the first 2,048 are kept, one mark
    says where it was cut, the job runs to its end (exit 0, its last command ran)."""
    done = tmp_path / "done"
    job = fakekit.make_job(tmp_path / "state", "cap", adaptor="command",
                           prompt=f"head -c 10000 /dev/zero | tr '\\0' x; echo; "
                                  f"echo tail-line; touch {done}", output_max_bytes=2048)
    assert 0 == fakekit.run_adaptor(job).returncode
    out = (job / "output").read_bytes()
    mark = b"\n[batchd: output cut at 2048 bytes (jobs.output_max_bytes); the job goes on]\n"
    assert (b"x" * 2048 + mark, 0, True) == (out, fakekit.result(job)["exit_code"],
                                             done.exists())


def test_a_full_disk_no_longer_cuts_a_completed_jobs_output() -> None:
    """Found by the chaos suite: output written while the disk was full was dropped (and
    marked), so a job could end `completed` with its output cut. Now the write waits for
    space (`waiting` meanwhile, the pumps reading no more, the agent blocked on its pipe)
    and every byte goes in, in order, once space is back."""
    from adaptors._runtime import _Output

    full = os.open("/dev/full", os.O_WRONLY)          # every write: ENOSPC
    try:
        out = _Output(full, 1 << 20, "j")
        writer = threading.Thread(target=out.write, args=(b"every byte\n",))
        writer.start()
        until("the write waiting for space", lambda: out.waiting)
        with tempfile.TemporaryFile() as f:
            out.fd = f.fileno()                         # space is back
            writer.join(10)
            f.seek(0)
            assert (b"every byte\n", False, 0, False) == (f.read(), out.waiting, out.lost,
                                                          writer.is_alive())
    finally:
        os.close(full)


def test_the_drain_waits_for_what_follows_a_write_that_waited_for_space() -> None:
    """Found by the chaos suite (seed 648818462: a failed job's last line cut after 34
    bytes): after the agent's end, a pump whose write waited for space still had the rest
    of the line in the pipe, and the adaptor went on to its result (and its exit) the
    moment that write went through. Now the drain's timeout runs afresh after every wait
    for space: the pump gets to write it all, even when the disk fills again."""
    from adaptors._runtime import _drain, _Output

    with tempfile.TemporaryFile() as f:
        out = _Output(f.fileno(), 1 << 20, "j")
        done: list[str] = []

        def pump() -> None:
            for chunk in (b"sh: 1: cannot create ", b"chaos-pushed-j.txt: ", b"No space\n"):
                out.waiting = True             # the disk is full: this write waits
                time.sleep(0.3)
                out.waiting = False
                out.write(chunk)
                time.sleep(0.2)                # reading the next chunk from the pipe
            done.append("all")
        t = threading.Thread(target=pump, name="output", daemon=True)
        t.start()
        _drain([t], out, "j", timeout=0.5)
        f.seek(0)
        assert (["all"], b"sh: 1: cannot create chaos-pushed-j.txt: No space\n") == (
            done, f.read())


def test_the_drain_leaves_a_pipe_an_escaped_writer_keeps_open() -> None:
    """A pipe that stays open with nothing to write after the group died (a writer that
    left the group) is left after the drain's timeout: the result is not held up."""
    from adaptors._runtime import _drain, _Output

    with tempfile.TemporaryFile() as f:
        out = _Output(f.fileno(), 1 << 20, "j")
        stop = threading.Event()
        t = threading.Thread(target=stop.wait, args=(30,), name="output", daemon=True)
        t.start()
        t0 = time.monotonic()
        try:
            _drain([t], out, "j", timeout=0.3)
            assert (True, True) == (t.is_alive(), time.monotonic() - t0 < 5)
        finally:
            stop.set()


def test_a_failed_output_write_is_counted_and_marked_with_the_next_one() -> None:
    """A write that fails for good (here EPIPE, as EIO would) never raises: its bytes are
    counted, and the next write that succeeds starts with a mark saying how many were lost
    and why."""
    from adaptors._runtime import _Output

    r, w = os.pipe()
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        out = _Output(w, 1 << 20)
        os.close(r)                          # every write to the pipe now fails
        out.write(b"lost bytes")
        why = out.lost_why
        assert (10, "Broken pipe") == (out.lost, why)
        with tempfile.TemporaryFile() as f:
            out.fd = f.fileno()
            out.write(b"back\n")
            f.seek(0)
            assert (b"\n[batchd: 10 bytes of output lost: Broken pipe]\nback\n", 0) == (
                f.read(), out.lost)
    finally:
        signal.signal(signal.SIGPIPE, old)
        os.close(w)


def test_an_agent_that_ends_while_the_disk_is_full_gets_its_result_once_space_returns(
        small_fs: Path, start: Callable[[Path], subprocess.Popen[bytes]]) -> None:
    """The agent exits while the job's file system is full (a real tmpfs): the adaptor
    neither crashes (its last heartbeat fails ENOSPC) nor gives up; it keeps trying its
    result, which is written once space returns, with the agent's exit code."""
    job = fakekit.make_job(small_fs / "state", "full", adaptor="command",
                           prompt="sleep 1.5; exit 3")
    proc = start(job)
    fakekit.wait_for(lambda: fakekit.sentinel(job), what="the first heartbeat")
    fill(small_fs / "filler")
    time.sleep(3)                                # the agent ended meanwhile
    assert (None, False) == (proc.poll(), (job / "result.json").exists())
    (small_fs / "filler").unlink()
    result = fakekit.wait_result(job)
    assert (3, 3) == (result["exit_code"], proc.wait(30))
