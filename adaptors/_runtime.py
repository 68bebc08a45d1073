"""The shared adaptor runtime: runs one job's agent CLI and writes its output, heartbeat and
result (the files, their writer and their crash behaviour: docs/JOBFILES.md)."""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import math
import os
import pwd
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from adaptors._changes import Collected, collect, write_changes
from adaptors._render import ParseState
from adaptors._report import Report
from adaptors._spec import JobSpec, SpecError, parse_spec
from supervisor.config import ADAPTOR_COMMANDS
from supervisor.state.agentbin import resolve_binary
from supervisor.state.atomic import Corrupt, Missing, write_bytes
from supervisor.state.clock import iso_now
from supervisor.state.git import Account
from supervisor.state.layout import (
    JOB_SPEC,
    RESULT,
    SENTINEL,
    JobPaths,
    Layout,
    read_record,
    send_request,
    write_record,
)
from supervisor.state.machine import Row, Table
from supervisor.state.proc import kill_job, start_time

__all__ = [
    "EXIT_BAD_SPEC",
    "EXIT_NOT_FOUND",
    "EXIT_REFUSED",
    "EXIT_SPAWN_FAILED",
    "Action",
    "Adaptor",
    "Event",
    "Phase",
    "RunAs",
    "resolve_binary",
    "resolve_user",
    "run_job",
    "step",
]

EXIT_BAD_SPEC = 2
EXIT_REFUSED = 3
EXIT_SPAWN_FAILED = 126
EXIT_NOT_FOUND = 127

REASON_TERMINATED = "terminated"
REASON_TIMED_OUT = "timed_out"
REASON_IDLE = "idle"

_READ_CHUNK = 65536
_MAX_LINE = 64 * 1024 * 1024   # a "line" longer than this is cut and handled as one
_DRAIN_TIMEOUT_S = 5.0          # pipe readers after the group is gone (an escaped writer)
_CLEANUP_TIMEOUT_S = 10.0       # SIGKILL + reap loop over the group
_RESULT_RETRY_S = 0.05          # first wait before writing result.json again (then doubled)
_SPACE_RETRY_S = 0.05           # first wait before writing output again on a full disk
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_PR_SET_CHILD_SUBREAPER = 36
_IDLE_CHECKS = 10               # output activity is looked at this often per idle_timeout
_SCAN_LINE = 64 * 1024          # raw output scanned after the exit: longer lines are cut


# --------------------------------------------------------------------------------------------
# The spec and the adaptor interface
# --------------------------------------------------------------------------------------------

def _session_report(state: ParseState, spec: JobSpec, exit_code: int | None,
                    base: Mapping[str, Any] | None) -> Report:
    return Report(session_id=state.session_id)


def _no_env(spec: JobSpec, uid: int) -> dict[str, str]:
    return {}


def _no_refusal(spec: JobSpec) -> str | None:
    return None


@dataclass(frozen=True)
class Adaptor:
    """One agent CLI: how to call it and how to read what it prints.

    `build_argv(spec, binary)` returns the full argv (binary first). `parse_line(line, state)`
    turns one raw stdout line (no trailing newline) into text to append to the output (each
    string is appended as is, so it carries its own newlines); None means the CLI prints plain
    text, which then goes straight to the output file with no pipe. `note_line(line, state)`
    sees every stderr line of a structured CLI as it comes, or every line of a plain CLI's
    output after it exited (errors, usage lines). `report(state, spec, exit_code, base)` is
    the agent's own account once it exited (`base`: the usage_totals of the job whose
    session this one resumes, None if unknown). `env(spec, uid)` are the quiet defaults for
    the CLI (set only where the variable is unset); `forced_env(spec, uid)` the variables
    that must have that exact value unless the agent's `env` sets them (an inherited value
    the CLI would not accept is replaced). `stdin`: "prompt" (the prompt file is
    the agent's stdin) or "null"; `prompt_file`: whether the prompt file is written.
    `refuse(spec)`: why this spec cannot run (the door refuses it first). The binaries
    tried when the spec names no `command` are config.ADAPTOR_COMMANDS[name].
    """

    name: str
    build_argv: Callable[[JobSpec, str], list[str]]
    parse_line: Callable[[bytes, ParseState], list[str]] | None = None
    note_line: Callable[[bytes, ParseState], None] | None = None
    report: Callable[[ParseState, JobSpec, int | None, Mapping[str, Any] | None],
                     Report] = _session_report
    env: Callable[[JobSpec, int], dict[str, str]] = _no_env
    forced_env: Callable[[JobSpec, int], dict[str, str]] = _no_env
    stdin: str = "prompt"
    prompt_file: bool = True
    refuse: Callable[[JobSpec], str | None] = _no_refusal

    @property
    def binaries(self) -> tuple[str, ...]:
        """The binaries a spec without `command` runs: the first found on the PATH."""
        return ADAPTOR_COMMANDS.get(self.name, (self.name,))


# --------------------------------------------------------------------------------------------
# Binaries, users, process groups
# --------------------------------------------------------------------------------------------

def _find_binary(spec: JobSpec, adaptor: Adaptor, path: str | None) -> tuple[str, str | None]:
    """(the command looked for, the executable it names or None)."""
    if spec.command:
        return spec.command, resolve_binary(spec.command, path=path, cwd=spec.workspace)
    for name in adaptor.binaries:
        found = resolve_binary(name, path=path, cwd=spec.workspace)
        if found is not None:
            return name, found
    return adaptor.binaries[0], None


@dataclass(frozen=True)
class RunAs:
    """The account an agent runs as (`user` in the agent's config)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    switch: bool   # False: it is the adaptor's own account, nothing to change


def resolve_user(name: str, *, euid: int) -> RunAs | str:
    """The account `name`, or why the agent cannot be run as it (never falls back to ours)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return f"user_switch_failed: no such user {name!r}"
    if entry.pw_uid == euid:
        return RunAs(name, entry.pw_uid, entry.pw_gid, (), entry.pw_dir, switch=False)
    if euid != 0:
        return (f"user_switch_failed: cannot run as {name!r}: this adaptor runs as uid {euid}, "
                "and only root can switch users (run batchd as root, or drop `user`)")
    groups = tuple(os.getgrouplist(name, entry.pw_gid))
    return RunAs(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, switch=True)


def _hand_over_workspace(workspace: str, run_as: RunAs) -> str | None:
    """Make the workspace (and everything in it) owned by the account the agent runs as;
    None when done, else the reason the job cannot run (CONTRACT: with `user` set, the job
    runs as that account, its workspace owned by it). Symlinks are not followed.

    A file with more than one link is left as it is: a clone from a local mirror shares
    git's (read-only, immutable) object files with the mirror by hard links, and handing
    those inodes over would give the mirror's objects to the agent. The agent owns every
    folder, so it can still replace or remove them."""
    try:
        os.chown(workspace, run_as.uid, run_as.gid, follow_symlinks=False)
        for root, dirs, files in os.walk(workspace):
            for name in dirs + files:
                path = os.path.join(root, name)
                st = os.lstat(path)
                if not os.path.isdir(path) and st.st_nlink > 1:
                    continue
                os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)
    except OSError as exc:
        return f"user_switch_failed: cannot give the workspace to {run_as.name!r}: {exc}"
    return None


def _reap_children() -> None:
    """Collect every exited child (orphans re-parented to us as subreaper included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_rest_of_job(pgid: int, me: int, job_dir: str) -> list[int]:
    """SIGKILL every process of the job but us (its process group, and any that escaped it
    but carry its BATCHD_JOB_DIR) and reap them; return any that would not die."""
    _, left = kill_job(pgid, job_dir, exclude=frozenset({me}), wait=_CLEANUP_TIMEOUT_S,
                       between=_reap_children)
    return left


def _become_group_leader() -> None:
    """Make our pid the process-group id (the launcher already did; a manual run may not)."""
    if os.getpgrp() == os.getpid():
        return
    try:
        os.setsid()
    except OSError:
        os.setpgid(0, 0)


def _become_subreaper() -> bool:
    """Ask the kernel to re-parent our orphaned descendants to us, so we can reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------------------
# Stopping: a table of phase x event -> (next phase, action, reason)
# --------------------------------------------------------------------------------------------

class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"   # SIGTERM sent to the group, waiting kill_grace
    KILLING = "killing"     # SIGKILL sent to the group


class Event(enum.Enum):
    TERM = "term"               # SIGTERM/SIGINT reached the adaptor
    DEADLINE = "deadline"       # the job's timeout elapsed
    IDLE = "idle"               # the agent wrote nothing for the job's idle_timeout
    GRACE_OVER = "grace_over"   # kill_grace elapsed since SIGTERM


class Action(enum.Enum):
    TERM_GROUP = "term_group"   # SIGTERM the job's group, start the grace
    KILL_GROUP = "kill_group"   # SIGKILL every process of the job but the adaptor
    NOTE_TERMINATED = "note_terminated"    # the job ends as "terminated" (a cancel)
    NOTE_TIMED_OUT = "note_timed_out"      # the job ends as "timed_out"
    NOTE_IDLE = "note_idle"                # the job ends as "timed_out", reason "idle"


#: (phase, event) -> Row(next phase, actions); other pairs change nothing.
TABLE: Table[Phase, Event, Action] = Table({
    (Phase.RUNNING, Event.TERM): Row(Phase.STOPPING,
                                     (Action.NOTE_TERMINATED, Action.TERM_GROUP)),
    (Phase.RUNNING, Event.DEADLINE): Row(Phase.STOPPING,
                                         (Action.NOTE_TIMED_OUT, Action.TERM_GROUP)),
    (Phase.RUNNING, Event.IDLE): Row(Phase.STOPPING, (Action.NOTE_IDLE, Action.TERM_GROUP)),
    (Phase.STOPPING, Event.TERM): Row(None),
    (Phase.STOPPING, Event.GRACE_OVER): Row(Phase.KILLING, (Action.KILL_GROUP,)),
    (Phase.KILLING, Event.TERM): Row(None),
})


def step(phase: Phase, event: Event) -> tuple[Phase, tuple[Action, ...]]:
    """The next phase and the actions for `event` in `phase` (unlisted: no change)."""
    row = TABLE.get(phase, event)
    if row is None:
        return phase, ()
    return (row.next if row.next is not None else phase), row.actions


# --------------------------------------------------------------------------------------------
# Files of one job
# --------------------------------------------------------------------------------------------

def _hint_exited(spec: JobSpec) -> None:
    """Drop a `job_exited` request into the scheduler's inbox so it finalizes the job now.

    Only a hint (law 1: the inbox is the scheduler's door, state.layout.send_request the
    one way in): result.json is the truth, and the scheduler's periodic tick finds it if
    this request never arrives (batchd down, disk full, a spec without its state_dir). The
    name is fixed per job, so a replay rewrites the same request.
    """
    if spec.state_dir is None:
        return
    try:
        send_request(Layout(spec.state_dir), "scheduler", {
            "id": f"exited-{spec.id}", "kind": "job_exited", "job": spec.id,
            "created_at": iso_now(time.time())})
    except OSError as exc:
        _say(spec.id, f"could not drop the job_exited hint: {exc}")


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _Output:
    """The job's output file as the pumps write it: never more than `cap` bytes of the
    agent's (the head is kept and the cut marked once; the job goes on, what follows is
    counted). A full disk (ENOSPC, EDQUOT) is waited out: the write is tried again (50 ms,
    doubling to 1 s) while the pumps stop reading, so the agent blocks on its full pipe and
    no byte is lost (`waiting` says so; the job's timeout still applies). Any other failed
    write (EIO, a closed pipe) never stops the job: the bytes not written are counted as
    lost and a mark saying how many goes in with the next write that succeeds.
    Thread-safe: stdout's and stderr's pumps share it."""

    def __init__(self, fd: int, cap: int, job_id: str = "") -> None:
        self.fd = fd
        self.job_id = job_id
        self.waiting = False        # a write is waiting for disk space
        self.cap = cap
        self.size = os.fstat(fd).st_size
        self.cut = self.size >= cap
        self.dropped = 0            # bytes past the cap
        self.lost = 0               # bytes a failed write could not keep, not yet marked
        self.lost_why = ""
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.cut:
                self.dropped += len(data)
                return
            room = self.cap - self.size
            if len(data) > room:
                self.dropped += len(data) - room
                self.cut = True
                data = data[:room] + (f"\n[batchd: output cut at {self.cap} bytes "
                                      "(jobs.output_max_bytes); the job goes on]\n").encode()
            if self.lost:
                data = (f"\n[batchd: {self.lost} bytes of output lost: {self.lost_why}]\n"
                        .encode() + data)
            view = memoryview(data)
            delay, said = _SPACE_RETRY_S, -math.inf
            while view:
                try:
                    n = os.write(self.fd, view)
                except OSError as exc:
                    if exc.errno not in _NO_SPACE:
                        self.waiting = False
                        self.lost += len(view)
                        self.lost_why = exc.strerror or str(exc)
                        self.size = os.fstat(self.fd).st_size
                        return
                    self.waiting = True
                    if time.monotonic() - said >= 60.0:
                        said = time.monotonic()
                        _say(self.job_id, f"output not written, waiting for space: {exc}")
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                self.size += n
                view = view[n:]
            self.waiting = False
            self.lost = 0


def _say(job_id: str, message: str) -> None:
    """A diagnostic line on the adaptor's stderr (the launcher points it at adaptor.log).

    Best effort: a closed or full stderr (a reader that went away, a full disk) must never
    stop the job, so the line is then dropped."""
    line = f"{iso_now(time.time())} batchd-adaptor[{job_id}] pid={os.getpid()}: {message}\n"
    try:
        _append(2, line.encode(errors="replace"))
    except OSError:
        return


class _Heartbeat:
    """Writes the sentinel now and then every interval from a thread, syncing output first."""

    def __init__(self, files: JobPaths, pid: int, start: int | None, sync_fds: Sequence[int]):
        self._files = files
        self._base: dict[str, Any] = {"id": files.id, "pid": pid, "start": start,
                                      "agent_pid": None, "agent_start": None}
        self._sync_fds = list(sync_fds)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_sync_fd(self, fd: int) -> None:
        with self._lock:
            self._sync_fds.append(fd)

    def set_agent(self, pid: int, start: int | None) -> None:
        with self._lock:
            self._base.update(agent_pid=pid, agent_start=start)

    def output_bytes(self) -> int:
        return os.fstat(self._sync_fds[0]).st_size

    def beat(self) -> bool:
        """Sync the output, write the sentinel. A write that fails (a full disk) is said in
        adaptor.log and skipped (False): the job goes on and the next beat tries again;
        while the adaptor lives it holds adaptor.lock, so its job is never taken for lost."""
        try:
            with self._lock:
                for fd in self._sync_fds:
                    os.fdatasync(fd)
                now = time.time()
                record = dict(self._base, heartbeat_at=iso_now(now),
                              output_bytes=os.fstat(self._sync_fds[0]).st_size)
                write_record(SENTINEL, self._files.sentinel, record)
        except OSError as exc:
            _say(self._files.id, f"heartbeat not written: {exc}")
            return False
        return True

    def start(self, interval: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                self.beat()
        self._thread = threading.Thread(target=loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class _Terminal:
    """Copies what reaches the output file to our stdout when that is a terminal."""

    def __init__(self, output: Path) -> None:
        self._fd = os.open(output, os.O_RDONLY | os.O_CLOEXEC)
        os.lseek(self._fd, 0, os.SEEK_END)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tty", daemon=True)
        self._thread.start()

    def _copy(self) -> bool:
        while True:
            chunk = os.read(self._fd, _READ_CHUNK)
            if not chunk:
                return True
            try:
                _append(sys.stdout.fileno(), chunk)
            except OSError:
                return False

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            if not self._copy():
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._copy()
        os.close(self._fd)


# --------------------------------------------------------------------------------------------
# Pumps: pipe -> files
# --------------------------------------------------------------------------------------------

def _render(adaptor: Adaptor, line: bytes, state: ParseState) -> list[str]:
    assert adaptor.parse_line is not None
    try:
        return adaptor.parse_line(line, state)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        return [f"[adaptor] an event could not be rendered ({type(exc).__name__}: {exc}); "
                "its raw line is in events.jsonl\n"]


class _Activity:
    """How many bytes the pumps have read from the agent (the idle timer watches it)."""

    def __init__(self) -> None:
        self.bytes = 0


def _note(adaptor: Adaptor, line: bytes, state: ParseState) -> None:
    """Let the adaptor note a line (stderr of a structured CLI, output of a plain one);
    a line it cannot read is skipped (lines are untrusted input)."""
    if adaptor.note_line is None:
        return
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError, IndexError):
        adaptor.note_line(line.rstrip(b"\r"), state)


def _pump_lines(read_fd: int, handle: Callable[[bytes], None],
                activity: _Activity | None = None) -> None:
    """Call `handle` with each line read from `read_fd` (without its newline) until EOF."""
    pending = b""
    with contextlib.closing(_FdCloser(read_fd)):
        while chunk := os.read(read_fd, _READ_CHUNK):
            if activity is not None:
                activity.bytes += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                handle(line)
            if len(pending) > _MAX_LINE:
                handle(pending)
                pending = b""
        if pending:
            handle(pending)


def _pump_events(read_fd: int, adaptor: Adaptor, state: ParseState, output: _Output,  # noqa: PLR0917
                 events_fd: int, activity: _Activity) -> None:
    """stdout of a structured CLI: raw lines to events.jsonl, rendered text to the output."""
    def handle(line: bytes) -> None:
        try:
            _append(events_fd, line + b"\n")
        except OSError:
            pass                     # a full disk: the rendered text is what matters
        texts = _render(adaptor, line.rstrip(b"\r"), state)
        if texts:
            output.write("".join(texts).encode("utf-8", errors="replace"))

    _pump_lines(read_fd, handle, activity)


def _pump_stderr(read_fd: int, output: _Output, adaptor: Adaptor, state: ParseState,
                 activity: _Activity) -> None:
    """stderr of a structured CLI: copied to the output verbatim, whole lines at a time (so a
    partial line never runs into a rendered event written by the stdout pump), each line
    noted by the adaptor (the CLI's error messages)."""
    def handle(line: bytes) -> None:
        output.write(line + b"\n")
        _note(adaptor, line, state)

    _pump_lines(read_fd, handle, activity)


def _pump_raw(read_fd: int, output: _Output, activity: _Activity) -> None:
    """stdout and stderr of a plain CLI (one pipe, so their order is the agent's): copied
    to the output as they come."""
    with contextlib.closing(_FdCloser(read_fd)):
        while chunk := os.read(read_fd, _READ_CHUNK):
            activity.bytes += len(chunk)
            output.write(chunk)


def _scan_output(path: Path, start: int, adaptor: Adaptor, state: ParseState) -> None:
    """A plain CLI's output, from byte `start` (where this run began), line by line to the
    adaptor's note_line once the agent exited: its errors and usage lines are in there."""
    if adaptor.note_line is None:
        return
    try:
        with open(path, "rb") as f:
            f.seek(start)
            while line := f.readline(_SCAN_LINE):
                _note(adaptor, line.rstrip(b"\n"), state)
    except OSError as exc:
        _say(path.parent.name, f"could not read the output back for the verdict: {exc}")


class _FdCloser:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------

@dataclass
class _Outcome:
    exit_code: int | None
    signal: int | None = None
    reason: str | None = None
    agent_pid: int | None = None

    @property
    def adaptor_exit(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code is not None else 1


class _Signals:
    """SIGTERM/SIGINT set a flag and wake the main loop through a pipe (set_wakeup_fd)."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received.set()

    def pending(self) -> bool:
        """Whether SIGTERM/SIGINT arrived since the last call. The wakeup bytes (written by
        the C-level handler) count too, so a signal that raced the agent's exit is not missed
        even if its Python-level handler has not run yet."""
        got = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.wake_r, 512):
                got += chunk
        seen = self.received.is_set() or any(b in (signal.SIGTERM, signal.SIGINT) for b in got)
        self.received.clear()
        return seen


def _take_job_lock(files: JobPaths) -> int | str:
    """The fd holding the job's exclusive flock, or why this adaptor must not run the job
    (another adaptor holds the lock, the job has a result already, or batchd ended it)."""
    try:
        fd = os.open(files.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        return f"cannot open {files.lock}: {exc}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return "another adaptor holds the job's lock (it runs this job); refusing a second one"
        return f"cannot lock {files.lock}: {exc}"
    if files.result.exists():
        os.close(fd)
        return f"{files.result} exists: the job has finished; refusing to run it again"
    if files.ended.exists():
        os.close(fd)
        return (f"{files.ended} exists: batchd ended this job before it ran (a copy Slurm "
                "started after all); refusing to run it")
    return fd


def _agent_uid(run_as: RunAs | None) -> int:
    return run_as.uid if run_as is not None and run_as.switch else os.geteuid()


def _child_env(spec: JobSpec, run_as: RunAs | None,
               adaptor: Adaptor | None = None) -> dict[str, str]:
    """The agent's environment: ours, the adaptor's defaults where unset, the agent's
    `env`, then the BATCHD_* variables (see the module docstring)."""
    env = dict(os.environ)
    if run_as is not None and run_as.switch:
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
    if adaptor is not None:
        uid = _agent_uid(run_as)
        for key, value in adaptor.env(spec, uid).items():
            if key not in env and key not in spec.env:
                env[key] = value
        env.update({k: v for k, v in adaptor.forced_env(spec, uid).items()
                    if k not in spec.env})
    env.update(spec.env)
    env.update(BATCHD_JOB_ID=spec.id, BATCHD_JOB_DIR=spec.job_dir,
               BATCHD_WORKSPACE=spec.workspace)
    return env


def _write_prompt(spec: JobSpec, files: JobPaths, run_as: RunAs | None) -> str | None:
    """Write the prompt file (atomically, 0600, owned by the agent's account); None when
    done, else why the agent cannot start."""
    def attempt() -> str | None:
        try:
            write_bytes(files.prompt, spec.prompt.encode("utf-8"), mode=0o600)
            if run_as is not None and run_as.switch:
                os.chown(files.prompt, run_as.uid, run_as.gid)
            return None
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise _NoRoom(str(exc)) from None
            return f"spawn_failed: cannot write the prompt file {files.prompt}: {exc}"
        except UnicodeEncodeError as exc:
            return f"spawn_failed: cannot write the prompt file {files.prompt}: {exc}"
    return _until_room(spec.id, "prompt file not written", attempt)


class _Stop:
    """The stop table's state for one run and the carrying out of its actions."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.pgid = os.getpgrp()
        self.phase = Phase.RUNNING
        self.reason: str | None = None
        self.grace_end = 0.0

    def feed(self, event: Event) -> None:
        self.phase, actions = step(self.phase, event)
        for action in actions:
            self._ACTIONS[action](self)

    def _note_terminated(self) -> None:
        self.reason = self.reason or REASON_TERMINATED

    def _note_timed_out(self) -> None:
        self.reason = self.reason or REASON_TIMED_OUT

    def _note_idle(self) -> None:
        self.reason = self.reason or REASON_IDLE

    def _term_group(self) -> None:
        self.grace_end = time.monotonic() + self.spec.kill_grace
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)   # our own handler only notes it

    def _kill_group(self) -> None:
        kill_job(self.pgid, self.spec.job_dir, exclude=frozenset({os.getpid()}), wait=0.0)

    _ACTIONS: dict[Action, Callable[[_Stop], None]] = {
        Action.NOTE_TERMINATED: _note_terminated,
        Action.NOTE_TIMED_OUT: _note_timed_out,
        Action.NOTE_IDLE: _note_idle,
        Action.TERM_GROUP: _term_group,
        Action.KILL_GROUP: _kill_group,
    }


class _Idle:
    """The idle timer: when the agent last wrote anything (any change of `activity()`)."""

    def __init__(self, limit: float | None, activity: Callable[[], int]) -> None:
        self.limit = limit
        self._activity = activity
        self._seen = activity()
        self.last = time.monotonic()

    def over(self, now: float) -> bool:
        """Whether the agent has been silent for the limit (looking at its output now)."""
        if self.limit is None:
            return False
        seen = self._activity()
        if seen != self._seen:
            self._seen, self.last = seen, now
            return False
        return now - self.last >= self.limit

    def next_check(self, now: float) -> float | None:
        """When to look again: a tenth of the limit from now, at the latest at the limit."""
        if self.limit is None:
            return None
        return min(now + self.limit / _IDLE_CHECKS, self.last + self.limit)


def _wait_agent(proc: subprocess.Popen[bytes], spec: JobSpec, signals: _Signals,
                started_mono: float, activity: Callable[[], int]) -> str | None:
    """Wait for the agent to exit, applying the stop table; return the stop reason if any."""
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):
        pidfd = None
    deadline = None if spec.timeout is None else started_mono + spec.timeout
    idle = _Idle(spec.idle_timeout, activity)
    stop = _Stop(spec)
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if signals.pending():
                stop.feed(Event.TERM)
            if stop.phase is Phase.RUNNING and deadline is not None and now >= deadline:
                stop.feed(Event.DEADLINE)
            if stop.phase is Phase.RUNNING and idle.over(now):
                _say(spec.id, f"no output for {idle.limit:g}s (idle_timeout): stopping the "
                              "agent")
                stop.feed(Event.IDLE)
            if stop.phase is Phase.STOPPING and time.monotonic() >= stop.grace_end:
                stop.feed(Event.GRACE_OVER)
            running = stop.phase is Phase.RUNNING
            wake_at = [t for t in (deadline if running else None,
                                   idle.next_check(now) if running else None,
                                   stop.grace_end if stop.phase is Phase.STOPPING else None)
                       if t is not None]
            timeout = max(0.0, min(wake_at) - time.monotonic()) if wake_at else None
            if pidfd is None:
                timeout = 0.1 if timeout is None else min(timeout, 0.1)
            fds = [signals.wake_r] + ([pidfd] if pidfd is not None else [])
            select.select(fds, [], [], timeout)
        if stop.phase is Phase.RUNNING and signals.pending():
            stop.reason = REASON_TERMINATED   # the cancel and the agent's death crossed
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return stop.reason


def _open_stdin(adaptor: Adaptor, files: JobPaths) -> int:
    """The agent's stdin: the prompt file (a regular file: the CLI reads it whole, at once,
    and sees its end) or /dev/null."""
    path = files.prompt if adaptor.stdin == "prompt" else Path(os.devnull)
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _spawn(spec: JobSpec, adaptor: Adaptor, binary: str,
           run_as: RunAs | None, files: JobPaths) -> subprocess.Popen[bytes] | _Outcome:
    """The agent, its stdout and stderr piped to the adaptor (one pipe for both when the
    CLI is plain: their order kept), so that the output cap and a full disk are the
    adaptor's to handle, never the agent's."""
    argv = adaptor.build_argv(spec, binary)
    raw = adaptor.parse_line is None
    user_kw: dict[str, Any] = {}
    if run_as is not None and run_as.switch:
        user_kw = {"user": run_as.uid, "group": run_as.gid, "extra_groups": list(run_as.groups)}
    stdin_fd: int | None = None
    try:
        stdin_fd = _open_stdin(adaptor, files)
        return subprocess.Popen(
            argv, cwd=spec.workspace, env=_child_env(spec, run_as, adaptor), stdin=stdin_fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if raw else subprocess.PIPE,
            close_fds=True, **user_kw)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        as_user = f" (as user {run_as.name})" if user_kw and run_as is not None else ""
        return _Outcome(EXIT_SPAWN_FAILED, reason=f"spawn_failed: {argv[0]}{as_user}: {exc}")
    finally:
        if stdin_fd is not None:
            os.close(stdin_fd)


def _resumed_totals(spec: JobSpec) -> Mapping[str, Any] | None:
    """The usage_totals of the job whose session this one resumes (its result.json, read
    as a reader); None when there is none or it is gone."""
    if spec.resume_of is None:
        return None
    path = JobPaths(Path(spec.job_dir).parent / spec.resume_of).result
    record = read_record(RESULT, path, owner=False)
    if not isinstance(record, dict):
        return None
    totals = record.get("usage_totals")
    return totals if isinstance(totals, dict) else None


def _report(adaptor: Adaptor, state: ParseState, spec: JobSpec,
            exit_code: int | None) -> Report:
    """The adaptor's report, or an empty one if the parser chokes on what it noted."""
    try:
        return adaptor.report(state, spec, exit_code, _resumed_totals(spec))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        _say(spec.id, f"the agent's report could not be read ({type(exc).__name__}: {exc})")
        return Report(session_id=state.session_id)


def _prepare(spec: JobSpec, adaptor: Adaptor,
             files: JobPaths) -> tuple[RunAs | None, str] | _Outcome:
    """Everything before the spawn: the workspace, the account, the binary, the prompt
    file; (the account, the binary) or the outcome of a job that cannot start."""
    if not os.path.isdir(spec.workspace):
        return _Outcome(EXIT_SPAWN_FAILED,
                        reason=f"spawn_failed: workspace {spec.workspace} is not a folder")
    refused = adaptor.refuse(spec)
    if refused is not None:
        return _Outcome(EXIT_BAD_SPEC, reason=f"bad_spec: {refused}")
    run_as: RunAs | None = None
    if spec.user is not None:
        resolved = resolve_user(spec.user, euid=os.geteuid())
        if isinstance(resolved, str):
            return _Outcome(EXIT_SPAWN_FAILED, reason=resolved)
        run_as = resolved
        if run_as.switch:
            failed = _hand_over_workspace(spec.workspace, run_as)
            if failed is not None:
                return _Outcome(EXIT_SPAWN_FAILED, reason=failed)
    command, binary = _find_binary(spec, adaptor, _child_env(spec, run_as).get("PATH"))
    if binary is None:
        return _Outcome(EXIT_NOT_FOUND, reason=f"agent_not_found: {command}")
    if adaptor.prompt_file:
        failed = _write_prompt(spec, files, run_as)
        if failed is not None:
            return _Outcome(EXIT_SPAWN_FAILED, reason=failed)
    return run_as, binary


def _run_agent(spec: JobSpec, adaptor: Adaptor, *, files: JobPaths, output_fd: int,
               beat: _Heartbeat, signals: _Signals,
               started_mono: float) -> tuple[_Outcome, Report]:
    """Spawn the agent, pump its output, stop it on signal/timeout/idleness, clean its
    group; then the agent's own report of the run."""
    if signals.pending():
        return _Outcome(None, reason=REASON_TERMINATED), Report()
    prepared = _prepare(spec, adaptor, files)
    if isinstance(prepared, _Outcome):
        return prepared, Report()
    run_as, binary = prepared
    start_offset = os.fstat(output_fd).st_size
    proc = _spawn(spec, adaptor, binary, run_as, files)
    if isinstance(proc, _Outcome):
        return proc, Report()
    output = _Output(output_fd, spec.output_max_bytes, spec.id)
    beat.set_agent(proc.pid, start_time(proc.pid))
    _say(spec.id, f"agent pid {proc.pid}: {binary}")
    state = ParseState()
    activity = _Activity()
    pumps: list[threading.Thread] = []
    if proc.stdout is not None and proc.stderr is not None:
        events_fd = _open_append(files.events)
        beat.add_sync_fd(events_fd)
        out_fd, err_fd = os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno())
        proc.stdout.close()
        proc.stderr.close()
        pumps = [
            threading.Thread(target=_pump_events, name="stdout", daemon=True,
                             args=(out_fd, adaptor, state, output, events_fd, activity)),
            threading.Thread(target=_pump_stderr, name="stderr", daemon=True,
                             args=(err_fd, output, adaptor, state, activity)),
        ]
    elif proc.stdout is not None:
        out_fd = os.dup(proc.stdout.fileno())
        proc.stdout.close()
        pumps = [threading.Thread(target=_pump_raw, name="output", daemon=True,
                                  args=(out_fd, output, activity))]
    for pump in pumps:
        pump.start()
    beat.beat()
    reason = _wait_agent(proc, spec, signals, started_mono, lambda: activity.bytes)
    left = _kill_rest_of_job(os.getpgrp(), os.getpid(), spec.job_dir)
    if left:
        _say(spec.id, f"processes of the group would not die: {left}")
    _drain(pumps, output, spec.id)
    if adaptor.parse_line is None:
        _scan_output(files.output, start_offset, adaptor, state)
    if output.dropped:
        _say(spec.id, f"output cut at {output.cap} bytes: {output.dropped} bytes not kept")
    if output.lost:
        _say(spec.id, f"{output.lost} bytes of output lost at the end: {output.lost_why}")
    rc = proc.returncode
    outcome = _Outcome(rc if rc >= 0 else None, -rc if rc < 0 else None, reason, proc.pid)
    return outcome, _report(adaptor, state, spec, outcome.exit_code)


def _drain(pumps: Sequence[threading.Thread], output: _Output, job_id: str,
           timeout: float = _DRAIN_TIMEOUT_S) -> None:
    """After the agent's group is gone: let the pumps write what its pipes still hold. A
    full disk is waited out however long it lasts (`output.waiting`), and `timeout` runs
    afresh from the end of each such wait: what the pipe holds behind a write that waited
    (more of the agent's last words; chaos seed 648818462 lost the end of a line so) is
    written before the result, even when the disk fills again. Only a pipe that stays
    open that long with nothing to write (a writer that escaped the group) is left."""
    deadline = time.monotonic() + timeout
    for pump in pumps:
        while pump.is_alive():
            if output.waiting:
                pump.join(0.1)
                deadline = time.monotonic() + timeout
            elif (left := deadline - time.monotonic()) > 0:
                pump.join(min(0.1, left))
            else:
                break
        if pump.is_alive():
            _say(job_id, f"{pump.name} still open after the group died (an escaped writer)")


def _git_account(spec: JobSpec) -> tuple[Account | None, str | None]:
    """Who runs git in the workspace, and their HOME: the agent's account when it ran as
    another user (its filters and config then run with its rights, never ours); else we."""
    if spec.user is None:
        return None, None
    run_as = resolve_user(spec.user, euid=os.geteuid())
    if isinstance(run_as, str) or not run_as.switch:
        return None, None
    return Account(run_as.uid, run_as.gid, run_as.groups), run_as.home


def _collect_changes(spec: JobSpec, files: JobPaths,
                     outcome: _Outcome) -> dict[str, dict[str, Any]]:
    """What the job changed (adaptors._changes), written to changes.patch and changes.json
    before the result; its summary for result.json. A job that ends completed and asked
    for it (`push`) has its changes pushed. A failure of git or of the push, or of writing
    the files, becomes the job's reason when it has none yet (it then fails)."""
    if not spec.repos:
        return {}
    completed = outcome.exit_code == 0 and outcome.signal is None and outcome.reason is None
    account, home = _git_account(spec)

    def attempt() -> Collected:
        try:
            got = collect(spec, files, push=completed and spec.push is not None,
                          account=account, home=home)
            if got.error is not None and _no_space(got.error):
                raise _NoRoom(got.error)
            write_changes(files, got)
            return got
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise _NoRoom(str(exc)) from None
            return Collected([], error=f"changes not saved: {exc}")
    got = _until_room(spec.id, "changes not collected for lack of space", attempt)
    if got.error is not None:
        _say(spec.id, got.error)
        if outcome.reason is None:
            outcome.reason = got.error
    _say(spec.id, _changes_line(got))
    return got.summary()


#: Errors of a disk that has no room: waited out, never the job's failure.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


_T = TypeVar("_T")


class _NoRoom(Exception):
    """An attempt of _until_room that the disk refused; str() is why."""


def _until_room(job_id: str, what: str, attempt: Callable[[], _T]) -> _T:
    """`attempt()` until it does not raise _NoRoom: the ONE way the adaptor waits out a
    full disk (prompt file, changes, result). Tried again after _RESULT_RETRY_S, doubling
    to 1 s (a collection is not re-run every 50 ms); said once a minute while it fails."""
    delay, said = _RESULT_RETRY_S, -math.inf
    while True:
        try:
            return attempt()
        except _NoRoom as exc:
            if time.monotonic() - said >= 60.0:
                said = time.monotonic()
                _say(job_id, f"{what}, trying again: {exc}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _no_space(text: str) -> bool:
    """Whether git's words (kept in a collection error) say the disk was full."""
    return "No space left on device" in text or "Disk quota exceeded" in text


def _changes_line(got: Collected) -> str:
    parts = [f"{r.name}: {r.files} files" + (f", pushed to {r.branch}" if r.branch else "")
             for r in got.repos]
    cut = f" (patch cut: {len(got.patch)} of {got.patch_bytes} bytes)" if got.cut else ""
    return "changes: " + "; ".join(parts) + cut


def _write_result(files: JobPaths, record: dict[str, Any]) -> None:
    """result.json, tried again until it is written: a finished job whose result cannot be
    written yet (a full disk) waits for space with its lock held, instead of leaving no
    result behind (which would make it `lost`); the scheduler keeps it running meanwhile.
    Tried again after 50 ms, doubling to 1 s; said once a minute while it fails."""
    def attempt() -> None:
        try:
            write_record(RESULT, files.result, record)
        except OSError as exc:               # any write error: the outcome is never dropped
            raise _NoRoom(str(exc)) from None
    _until_room(files.id, "result not written", attempt)


def run_job(job_dir: Path, adaptors: Mapping[str, Adaptor]) -> int:
    """Run the job in `job_dir` to its end; return the adaptor's exit code."""
    job_dir = job_dir.absolute()
    files = JobPaths(job_dir)
    if not job_dir.is_dir():
        _say(files.id, f"{job_dir} is not a job folder")
        return EXIT_REFUSED
    _become_group_leader()
    me = os.getpid()
    lock_fd = _take_job_lock(files)   # held (never closed) until this process exits
    if isinstance(lock_fd, str):
        _say(files.id, lock_fd)
        return EXIT_REFUSED
    started, started_mono = time.time(), time.monotonic()
    signals = _Signals()
    _become_subreaper()
    output_fd = _open_append(files.output)
    beat = _Heartbeat(files, me, start_time(me), [output_fd])
    beat.beat()
    terminal = _Terminal(files.output) if sys.stdout.isatty() else None
    report = Report()
    spec: JobSpec | None = None
    try:
        record = read_record(JOB_SPEC, files.spec, owner=False)
        if isinstance(record, (Missing, Corrupt)):
            why = "missing" if isinstance(record, Missing) else record.reason
            raise SpecError(f"{files.spec}: {why}")
        spec = parse_spec(record, job_dir)
        adaptor = adaptors.get(spec.adaptor)
        if adaptor is None:
            raise SpecError(f"adaptor: unknown {spec.adaptor!r} (known: "
                            f"{', '.join(sorted(adaptors))})")
    except SpecError as exc:
        outcome = _Outcome(EXIT_BAD_SPEC, reason=f"bad_spec: {exc}")
    else:
        beat.start(spec.heartbeat_interval)
        outcome, report = _run_agent(spec, adaptor, files=files, output_fd=output_fd,
                                     beat=beat, signals=signals, started_mono=started_mono)
    if outcome.reason is None and report.error is not None:
        outcome.reason = f"agent error: {report.error}"
    changes = None if spec is None else _collect_changes(spec, files, outcome)
    beat.stop()
    if terminal is not None:
        terminal.close()
    try:
        beat.beat()             # the output synced; a full disk: result.json is the truth
    except OSError as exc:
        _say(files.id, f"last heartbeat not written: {exc}")
    finished = time.time()
    _write_result(files, {
        "id": files.id,
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "duration_s": round(time.monotonic() - started_mono, 3),
        "started_at": iso_now(started),
        "finished_at": iso_now(finished),
        "session_id": report.session_id,
        "reason": outcome.reason,
        "timed_out": outcome.reason in (REASON_TIMED_OUT, REASON_IDLE),
        "pid": me,
        "agent_pid": outcome.agent_pid,
        "output_bytes": beat.output_bytes(),
        "agent_error": report.error,
        "usage": report.usage,
        "usage_totals": report.totals,
        "changes": changes,
    })
    if spec is not None:
        _hint_exited(spec)
    _say(files.id, f"finished: exit_code={outcome.exit_code} signal={outcome.signal} "
                       f"reason={outcome.reason}")
    os.close(output_fd)
    return outcome.adaptor_exit
