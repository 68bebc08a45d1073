"""The small worker runtime: the forked child's entry, signals, inbox watching, readiness.

Process entry (exit codes 0, 1, 3, 4), signals, the Watcher (inotify hints plus
rescans), the one inbox reader and readiness. docs/SUPERVISOR.md has the details.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import gc
import importlib
import os
import select
import signal
import struct
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

from structlog.typing import FilteringBoundLogger
from watchdog.events import (
    EVENT_TYPE_MOVED,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from supervisor import log as _log
from supervisor.config import WORKER_NAMES, Config, ConfigError, load
from supervisor.state.atomic import (
    CORRUPT_MARK,
    Corrupt,
    Missing,
    discard,
    ensure_dir,
    is_tmp_name,
    quarantine,
    remove,
    remove_many,
)
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now, parse_iso
from supervisor.state.jobs import valid_job_id
from supervisor.state.layout import (
    READY,
    REQUEST,
    Layout,
    RecordKind,
    read_record,
    write_record,
)
from supervisor.state.proc import start_time

__all__ = [
    "DISK_ERRNOS",
    "EXIT_CRASHED",
    "EXIT_OK",
    "EXIT_ORPHANED",
    "EXIT_RECOVERY_FAILED",
    "NOT_YET_KEEP",
    "WRITE_RETRY_FIRST",
    "WRITE_RETRY_MAX",
    "BadRequest",
    "Log",
    "NotYet",
    "Waiter",
    "Watcher",
    "WriteRetry",
    "die_with_parent",
    "disk_error",
    "handle_inbox",
    "inbox_requests",
    "job_of",
    "report_ready",
    "request_stop",
    "run_loop",
    "run_standalone",
    "stop_requested",
    "until_written",
    "worker_entry",
]

EXIT_OK = 0
EXIT_CRASHED = 1
EXIT_RECOVERY_FAILED = 3
EXIT_ORPHANED = 4

_PR_SET_PDEATHSIG = 1

#: The logger type workers pass around (what supervisor.log.get returns).
Log = FilteringBoundLogger
Ctx = TypeVar("Ctx")
T = TypeVar("T")


class BadRequest(Exception):
    """A request a handler refuses as malformed (raised before any effect); str() says why."""


def job_of(req: Mapping[str, Any]) -> str:
    """The request's "job": a valid job id, else BadRequest (the request is quarantined)."""
    job = req.get("job")
    if not isinstance(job, str) or not valid_job_id(job):
        raise BadRequest(f"'job' {job!r} is not a valid job id")
    return job


# -- process-wide state --------------------------------------------------------------------

@dataclass
class _State:
    """What the signal handler and the at-fork hooks share with the rest of this module.

    Only plain attribute stores happen in the signal handler (no locks: a handler runs on
    the main thread between bytecodes, and taking a lock the interrupted code holds would
    deadlock), plus non-blocking one-byte writes to the watchers' pipes.
    """

    stop: bool = False
    forking_pid: int = 0          # set in the parent just before each fork
    parent: int = 0               # in a fork child: the pid that forked it; 0 otherwise
    wake_fds: set[int] = field(default_factory=set)


_state = _State()


def _before_fork() -> None:
    _state.forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    _state.parent = _state.forking_pid
    _state.stop = False
    # The parent's watchers and their pipes are the parent's: never wake them from here.
    _state.wake_fds = set()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def stop_requested() -> bool:
    """True once SIGTERM (or request_stop) asked this worker to finish its pass and exit."""
    return _state.stop


#: After a failed write (a full or failing disk) a worker rebuilds itself from its files
#: after this many seconds, doubling up to WRITE_RETRY_MAX while writes keep failing.
WRITE_RETRY_FIRST = 1.0
WRITE_RETRY_MAX = 30.0


class WriteRetry:
    """The wait before a worker tries again after a failed write: 1, 2, 4 .. 30 s while
    writes keep failing, from 1 s again once one succeeded (docs/STATE.md, "A full or
    failing disk")."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, *, first: float = WRITE_RETRY_FIRST,
                 most: float = WRITE_RETRY_MAX) -> None:
        self.clock = clock
        self.first = first
        self.most = most
        self.delay = first
        self.failures = 0

    def wait(self, stop: Callable[[], bool] = stop_requested) -> bool:
        """Sleep the current delay (in slices, so a stop is heard within 0.5 s) and double
        it for next time; False if `stop()` came first."""
        deadline = self.clock.monotonic() + self.delay
        self.failures += 1
        self.delay = min(self.delay * 2, self.most)
        while not stop():
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return True
            self.clock.sleep(min(0.5, left))
        return False

    def ok(self) -> None:
        """A write succeeded: the next failure waits `first` again."""
        self.delay = self.first
        self.failures = 0


#: errno values of a full or failing disk: a worker's start that fails with one is tried
#: again after a backoff (until_written) instead of exiting into a crash loop.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def disk_error(exc: BaseException) -> bool:
    """Whether `exc` is a full or failing disk (ENOSPC, EDQUOT, EIO)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def until_written(what: str, fn: Callable[[], T], log: FilteringBoundLogger, *,
                  stop: Callable[[], bool] = stop_requested,
                  retry: WriteRetry | None = None) -> T | None:
    """`fn()`, called again after 1, 2, 4 .. 30 s while it fails for a full or failing
    disk (each failure logged, naming `what`); None if `stop()` came first. Any other
    error is raised."""
    retry = retry if retry is not None else WriteRetry()
    while True:
        try:
            return fn()
        except OSError as exc:
            if not disk_error(exc):
                raise
            log.error(f"{what} failed: the disk is full or failing; tried again",
                      error=str(exc), errno=exc.errno, retry_in_s=retry.delay)
        if not retry.wait(stop):
            return None


def request_stop() -> None:
    """Ask the loop to stop after the current pass and wake every watcher (signal-safe)."""
    _state.stop = True
    for fd in list(_state.wake_fds):
        _poke(fd)


def _on_stop_signal(signum: int, frame: types.FrameType | None) -> None:
    request_stop()


def _poke(fd: int, mark: bytes = b"!") -> None:
    try:
        os.write(fd, mark)
    except BlockingIOError:
        pass  # the pipe is full: a wake-up is already pending, which is all a poke means


# -- the child side of the fork ---------------------------------------------------------------

def die_with_parent() -> None:
    """Arm PR_SET_PDEATHSIG=SIGKILL; exit at once (code 4) if the parent is already gone.

    The race this closes: if the parent dies between fork() and prctl(), the child has
    already been re-parented (to init or a subreaper), so the death signal, armed too
    late, would never fire and the worker would live on unsupervised. An at-fork hook
    records the forking process's pid in the parent just before fork(); after arming,
    the child compares getppid() with it: different means the parent died in the window.
    If it dies after the check, the armed signal kills the child.

    The kernel ties the death signal to the parent THREAD that forked: batchd must fork
    its workers from a thread that lives as long as batchd (its main thread).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if _state.parent and os.getppid() != _state.parent:
        os.write(2, f"batchd worker {os.getpid()}: parent {_state.parent} is gone, exiting\n"
                 .encode())
        os._exit(EXIT_ORPHANED)


def _reset_signals(*, standalone: bool) -> None:
    """Give the process a worker's signal state, whatever the parent had set.

    Blocked signals and the wakeup fd survive fork: unblock everything and drop the
    parent's wakeup fd (its pipe). Any Python handler inherited from the parent would run
    the parent's code: back to default. Then: SIGTERM -> graceful stop; SIGINT and SIGHUP
    ignored (the terminal's ^C and batchd's reload are the parent's business; standalone,
    ^C stops like SIGTERM); SIGCHLD default; SIGPIPE stays ignored, as Python sets it: a
    log reader that died (batchd's stderr pipe) must cost a dropped log line, not kill the
    worker into a restart loop. The launcher resets every disposition to default in a job
    before its exec, so jobs never inherit the ignored SIGPIPE.
    """
    signal.set_wakeup_fd(-1)   # first: a signal arriving once unblocked must not reach
    signal.pthread_sigmask(signal.SIG_SETMASK, set())   # the parent's wakeup pipe
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            continue  # a signal Python cannot handle (e.g. a real-time one in use by libc)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal if standalone else signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def _close_inherited_fds(keep: set[int]) -> None:
    """Close every descriptor above stderr except `keep` (the fresh log file).

    Whatever the parent had open (its lock file, its watchers' inotify fds and pipes,
    sockets) is closed: the worker needs none of it. The parent's Python objects that own
    such descriptors must never be finalized here, or they would close a number the
    worker has since reused (or run the parent's cleanup code): the reachable ones stay
    referenced (the parent's frames and modules live on until os._exit), and gc.freeze()
    moves everything, including garbage not yet collected, out of the collector's reach.
    """
    gc.freeze()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                continue  # the descriptor listdir itself used, already closed


def _log_fds(cfg: Config) -> set[int]:
    """The descriptors open on the configured log file (after _log.setup opened it)."""
    if cfg.log.file is None:
        return set()
    try:
        st = os.stat(cfg.log.file)
    except OSError:
        return set()
    keep = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            fst = os.fstat(int(name))
        except OSError:
            continue
        if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
            keep.add(int(name))
    return keep


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            continue
    _log.shutdown()


def _run_main(name: str, cfg: Config, log: Log) -> int:
    """Import supervisor.<name> and run its main(cfg); an escaping error is a crash (code 1)."""
    try:
        module = importlib.import_module(f"supervisor.{name}")
        main: Callable[[Config], int] = module.main
        return int(main(cfg))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_CRASHED
    except Exception:
        log.exception("worker crashed")
        return EXIT_CRASHED


def worker_entry(name: str, cfg: Config) -> NoReturn:
    """The child's side of batchd's fork: become worker `name`, run it, os._exit its code."""
    code = EXIT_CRASHED
    try:
        die_with_parent()
        _reset_signals(standalone=False)
        if name not in WORKER_NAMES:
            os.write(2, f"batchd: no worker named {name!r}\n".encode())
        else:
            log = _log.setup(cfg.log, name=name)
            _close_inherited_fds(_log_fds(cfg))
            log.info("worker starting", ppid=os.getppid())
            code = _run_main(name, cfg, log)
            log.info("worker exiting", code=code)
    except BaseException as exc:  # noqa: BLE001 - nothing may unwind into the parent's code
        with contextlib.suppress(OSError):
            os.write(2, f"batchd worker {name}: {type(exc).__name__}: {exc}\n".encode())
    finally:
        _flush()
        os._exit(code)


def run_standalone(name: str, main: Callable[[Config], int],
                   argv: Sequence[str] | None = None) -> int:
    """`python -m supervisor.<name> [-c CONFIG]`: run one worker in the foreground (debugging).

    No parent to die with and no inherited descriptors; SIGTERM and ^C stop it gracefully.
    Exit 2 with the message on a bad configuration.
    """
    parser = argparse.ArgumentParser(prog=f"python -m supervisor.{name}",
                                     description=f"Run batchd's {name} worker alone.")
    parser.add_argument("-c", "--config", metavar="CONFIG", help="the batchd YAML file")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config)
        log = _log.setup(cfg.log, name=name)
    except ConfigError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    _reset_signals(standalone=True)
    log.info("worker starting (standalone)")
    try:
        return int(main(cfg))
    except Exception:
        log.exception("worker crashed")
        return EXIT_CRASHED


# -- readiness ------------------------------------------------------------------------------------

def report_ready(layout: Layout, worker: str, *, found: Mapping[str, Any],
                 did: Mapping[str, Any], degraded: Sequence[str], started_monotonic: float,
                 started_at: str) -> None:
    """Write `ready/<worker>.json` (kind READY): recovery is done, with what it found and did.

    `started_monotonic` is time.monotonic() and `started_at` the ISO time at recovery start.
    """
    pid = os.getpid()

    def write() -> None:
        ensure_dir(layout.ready_dir)
        write_record(READY, layout.ready_file(worker), body)

    body = {
        "worker": worker,
        "pid": pid,
        "start": start_time(pid),
        "started_at": started_at,
        "ready_at": iso_now(),
        "duration_ms": round((time.monotonic() - started_monotonic) * 1000.0, 1),
        "found": dict(found),
        "did": dict(did),
        "degraded": list(degraded),
    }
    # a full disk keeps the worker STARTING (batchd waits for this file), never a crash
    until_written("writing the ready record", write, _log.get(worker))


# -- watching -------------------------------------------------------------------------------------

#: What wake() writes into the pipe (hints and stops write b"!").
_WAKE = b"w"

_HINT_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent]


class _Hints(FileSystemEventHandler):
    """Runs on watchdog's thread: any event on a non-temporary file counts and pokes the
    pipe (the count only grows, and only on this thread)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.count = 0

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        path = event.dest_path if event.event_type == EVENT_TYPE_MOVED else event.src_path
        if is_tmp_name(os.path.basename(os.fsdecode(path))):
            return  # the write in progress; its rename to the real name is the hint
        self.count += 1
        _poke(self._fd)


_IN_CREATE = 0x100
_IN_MOVED_TO = 0x080
_IN_Q_OVERFLOW = 0x4000
_INOTIFY_EVENT = struct.Struct("iIII")


class _Inotify:
    """One inotify descriptor read by the waiting thread itself (no watchdog threads):
    new files (created, or renamed into) in the folders. A Watcher(direct=True) selects
    on it beside its wake pipe, so a hint costs no thread hand-off, and a burst of renames
    is not paired up by watchdog's move grouping (quadratic in a long burst)."""

    def __init__(self, folders: Sequence[Path]) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        for folder in folders:
            if libc.inotify_add_watch(fd, os.fsencode(folder), _IN_CREATE | _IN_MOVED_TO) < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, f"inotify_add_watch {folder} failed")

    def read(self) -> int:
        """Read what is queued; how many events name a file that is not a temp file (an
        overflowed queue counts as one: something may have been missed)."""
        hints = 0
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except (BlockingIOError, InterruptedError):
                return hints
            pos = 0
            while pos + _INOTIFY_EVENT.size <= len(data):
                _wd, mask, _cookie, length = _INOTIFY_EVENT.unpack_from(data, pos)
                name = data[pos + _INOTIFY_EVENT.size:pos + _INOTIFY_EVENT.size + length]
                pos += _INOTIFY_EVENT.size + length
                if mask & _IN_Q_OVERFLOW or (
                        name and not is_tmp_name(os.fsdecode(name.rstrip(b"\0")))):
                    hints += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Waiter(Protocol):
    """What run_loop needs of a Watcher."""

    def wait(self, timeout: float | None = None) -> bool: ...


class Watcher:
    """inotify hints (watchdog) plus a periodic rescan for a set of folders.

    `wait(timeout)` returns True when a pass is due: a hint arrived, or the rescan came
    round (at the first call, then `rescan_interval` after the last True), or `wake()`
    was called; False when `timeout` ran out first. `fileno()` is the read end of the
    wake-up pipe, for callers that select() on several things; `request_stop()`
    (SIGTERM) wakes every watcher. `looks` counts the hints and rescans so far: a caller
    woken for its own reasons (`wake()`) tells from it whether the folders need a look.
    `events` are the kinds of file events that are hints (default: created, modified,
    moved, deleted). `direct`: the hints are new files only (created, or renamed into a
    folder), read from an inotify descriptor by wait() itself instead of watchdog's
    threads (what the callbacks worker's inbox needs, at the lowest latency).
    `folder_events` gives some folders kinds of their own (watchdog only).
    """

    def __init__(self, folders: Sequence[Path], rescan_interval: float = 5.0, *,
                 clock: Clock = SYSTEM_CLOCK, log: Log | None = None,
                 events: Sequence[type[FileSystemEvent]] | None = None,
                 folder_events: Mapping[Path, Sequence[type[FileSystemEvent]]] | None = None,
                 direct: bool = False) -> None:
        self.folders = [Path(f) for f in folders]
        self._folder_events = {Path(f): list(e) for f, e in (folder_events or {}).items()}
        self.rescan_interval = rescan_interval
        self._clock = clock
        self._log = log if log is not None else _log.get("watcher")
        self._rescan_at: float | None = None          # None: due now (start)
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._observer: BaseObserver | None = None
        self._events = list(events) if events is not None else _HINT_EVENTS
        self._hints = _Hints(self._w)
        self._rescans = 0
        self._direct = direct
        self._inotify: _Inotify | None = None
        self._direct_hints = 0
        _state.wake_fds.add(self._w)

    @property
    def looks(self) -> int:
        """Hints and rescans so far (grows; compare two readings)."""
        return self._hints.count + self._direct_hints + self._rescans

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        """Make the next (or the current) wait() return True (not counted in `looks`)."""
        _poke(self._w, _WAKE)

    def start(self) -> Watcher:
        """Create missing folders and start watching them.

        If inotify cannot be had (the per-user instance or watch limit is reached), the
        watcher logs it and carries on with the periodic rescan alone: slower, still correct.
        """
        for folder in self.folders:
            ensure_dir(folder)
        if self._direct:
            try:
                self._inotify = _Inotify(self.folders)
            except OSError as exc:
                self._log.warning("inotify unavailable: watching by rescan only",
                                  error=str(exc), rescan_interval=self.rescan_interval)
            return self
        handler = self._hints
        observer: BaseObserver | None = None
        try:
            observer = Observer()
            for folder in self.folders:
                observer.schedule(handler, str(folder),
                                  event_filter=self._folder_events.get(folder, self._events))
            observer.start()
        except OSError as exc:
            self._log.warning("inotify unavailable: watching by rescan only", error=str(exc),
                              rescan_interval=self.rescan_interval)
            if observer is not None:
                observer.stop()
            return self
        self._observer = observer
        return self

    def stop(self) -> None:
        """Stop watching (wait() still reports rescans until close())."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join()
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            inotify.close()

    def close(self) -> None:
        """Stop watching and release the pipe."""
        self.stop()
        if self._w < 0:
            return
        _state.wake_fds.discard(self._w)
        os.close(self._r)
        os.close(self._w)
        self._r = self._w = -1

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self) -> bool:
        """Empty the pipe; True if anything but wake() pokes was in it."""
        seen = False
        try:
            while chunk := os.read(self._r, 4096):
                seen = seen or bool(chunk.strip(_WAKE))
        except BlockingIOError:
            pass
        if self._inotify is not None:
            hints = self._inotify.read()
            self._direct_hints += hints
            seen = seen or hints > 0
        return seen

    def _due(self) -> bool:
        """A look at the folders is due (a rescan, or a hint): the next rescan is one
        interval from now. A wake() alone does not put the rescan off."""
        if self._drain() or self._rescan_at is None \
                or self._clock.monotonic() >= self._rescan_at:
            self._rescan_at = self._clock.monotonic() + self.rescan_interval
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a hint or the rescan (True) or until `timeout` seconds pass (False)."""
        deadline = None if timeout is None else self._clock.monotonic() + max(0.0, timeout)
        while True:
            now = self._clock.monotonic()
            if self._rescan_at is None or now >= self._rescan_at:
                self._rescans += 1
                return self._due()
            limit = self._rescan_at - now
            if deadline is not None:
                limit = min(limit, max(0.0, deadline - now))
            fds = [self._r] if self._inotify is None else [self._r, self._inotify.fd]
            readable, _, _ = select.select(fds, [], [], limit)
            if self._clock.monotonic() >= self._rescan_at:
                self._rescans += 1
                return self._due()
            if self._r in readable:
                return self._due()
            if self._inotify is not None and self._inotify.fd in readable:
                hints = self._inotify.read()       # new files only; a temp file is none
                if hints:
                    self._direct_hints += hints
                    return self._due()
                if deadline is None or self._clock.monotonic() < deadline:
                    continue
            return False


def run_loop(waiter: Waiter, handle_pass: Callable[[], object], *,
             periodic: tuple[float, Callable[[], object]] | None = None,
             stop: Callable[[], bool] = stop_requested,
             clock: Clock = SYSTEM_CLOCK) -> None:
    """Wait for a hint or rescan, run one pass, repeat until `stop()`; also run
    `periodic = (interval, fn)` every `interval` seconds (first one interval from now)."""
    next_at = None if periodic is None else clock.monotonic() + periodic[0]
    while not stop():
        timeout = None if next_at is None else max(0.0, next_at - clock.monotonic())
        if waiter.wait(timeout) and not stop():
            handle_pass()
        if (periodic is not None and next_at is not None and clock.monotonic() >= next_at
                and not stop()):
            periodic[1]()
            next_at = clock.monotonic() + periodic[0]


# -- inboxes --------------------------------------------------------------------------------------

def _request_problem(rec: dict[str, Any]) -> str | None:
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        return "'id' must be a non-empty string"
    if not isinstance(rec.get("kind"), str):
        return "'kind' must be a string"
    return None


def inbox_requests(folder: Path, log: Log | None = None, *, kind: RecordKind = REQUEST,
                   problem: Callable[[dict[str, Any]], str | None] = _request_problem,
                   on_bad: Callable[[str, str], None] | None = None,
                   skip: Callable[[str], bool] = lambda _name: False,
                   hint: Callable[[str], bool] = lambda _name: False,
                   ) -> list[tuple[Path, dict[str, Any]]]:
    """The well-formed records of `kind` in `folder`, oldest first (by mtime_ns, then name).

    The one reader of every inbox (workers' REQUESTs, batchd's CONTROL requests). Temp
    files (a write in progress), quarantined files and names `skip` says are taken care
    of are left alone; anything else that is not a well-formed record is quarantined,
    logged and reported to `on_bad(name, why)`. A name `hint` says is a hint's (a request
    written without fsyncs, whose truth is in another, durable file) is dropped, not
    quarantined, when it is unreadable: a power cut tore it, and it held nothing else.
    """
    logger = log if log is not None else _log.get("runtime")
    stamped: list[tuple[int, str, bool]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_tmp_name(entry.name) or CORRUPT_MARK in entry.name or skip(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                    regular = entry.is_file(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                stamped.append((st.st_mtime_ns, entry.name, regular))
    except FileNotFoundError:
        return []
    found: list[tuple[Path, dict[str, Any]]] = []
    for _, name, regular in sorted(stamped):
        path = folder / name
        why: str | None
        if not regular:
            why = "not a regular file"
            _quarantine_request(path, why, logger)
        else:
            rec = read_record(kind, path, owner=not hint(name))
            if isinstance(rec, Missing):
                continue
            if isinstance(rec, Corrupt) and hint(name):
                discard(path)
                logger.info("torn hint dropped", path=str(path), reason=rec.reason)
                continue
            if isinstance(rec, Corrupt):
                why = rec.reason
                logger.warning("malformed request quarantined", path=str(path),
                               moved_to=rec.moved_to, reason=why)
            else:
                why = problem(rec)
                if why is None:
                    found.append((path, rec))
                    continue
                _quarantine_request(path, why, logger)
        if on_bad is not None:
            on_bad(name, why)
    return found


def _quarantine_request(path: Path, reason: str, log: Log) -> None:
    moved = quarantine(path)
    log.warning("malformed request quarantined", path=str(path), moved_to=moved, reason=reason)


class NotYet(Exception):
    """A request that cannot be handled yet (it names a job that has not arrived): it stays
    in the inbox and is tried again each pass until it is `keep_for` old, then it is
    quarantined and logged. str() says what it waits for."""


#: How long a request that raises NotYet is kept (its sender's arrival order is not ours).
NOT_YET_KEEP = 3600.0


def handle_inbox(folder: Path, handlers: Mapping[str, Callable[[Ctx, dict[str, Any]], None]],
                 ctx: Ctx, log: Log, *, clock: Clock = SYSTEM_CLOCK,
                 keep_for: float = NOT_YET_KEEP,
                 together: Mapping[str, Callable[[Ctx, list[dict[str, Any]]],
                                                 list[Exception | None]]] | None = None,
                 hint: Callable[[str], bool] = lambda _n: False,
                 always: Sequence[str] = (),
                 ) -> int:
    """Run each request in `folder` through `handlers[kind]`, then remove it; return how many.

    Requests are taken kind by kind in the order of `handlers` (so a submit in the inbox
    is always enqueued before a cancel that names its job, whatever their file times
    say), oldest first within a kind. A handler that raises BadRequest gets its request
    quarantined; one that raises NotYet leaves it for a later pass (up to `keep_for`
    seconds after its `created_at`). Stops between requests once a stop is requested.

    A kind in `together` is handled all at once: `together[kind](ctx, requests)` gets every
    request of that kind waiting (oldest first) and answers each with None (done), or the
    BadRequest or NotYet it would have raised alone; the done ones are then removed with
    one fsync of the folder (state.atomic.remove_many). It must be all or nothing per
    request and idempotent, as a handler is (a crash before the removal hands it the same
    requests again).

    A kind in `always` (one of `together`'s) is handled even when no request of it waits:
    `together[kind](ctx, [])` before the other kinds (the scheduler's submits, which also
    take the api's submission log).

    A file `hint` names is a hint's (written without fsyncs; its truth is in a durable
    file its handler reads): it is removed without the folder's fsync, since its return
    after a power cut only hands the handler the same hint again (and a torn one is
    dropped: inbox_requests).
    """
    rank = {kind: i for i, kind in enumerate(handlers)}
    todo = inbox_requests(folder, log, hint=hint)
    todo.sort(key=lambda item: rank.get(item[1]["kind"], len(rank)))    # stable: keeps age
    waiting = {req["kind"] for _, req in todo}
    for kind in always:
        if kind not in waiting:
            (together or {})[kind](ctx, [])
    done = 0
    index = 0
    while index < len(todo):
        if stop_requested():
            break
        path, req = todo[index]
        kind = req["kind"]
        group = (together or {}).get(kind)
        if group is not None:
            end = index
            while end < len(todo) and todo[end][1]["kind"] == kind:
                end += 1
            batch, index = todo[index:end], end
            outcomes = group(ctx, [r for _, r in batch])
            gone: list[str | os.PathLike[str]] = []
            for (one_path, one_req), outcome in zip(batch, outcomes, strict=True):
                if outcome is None:
                    gone.append(one_path)
                else:
                    _refused(one_path, one_req, outcome, log, clock=clock, keep_for=keep_for)
            remove_many(gone)
            done += len(gone)
            continue
        index += 1
        handler = handlers.get(kind)
        if handler is None:
            _quarantine_request(path, f"unknown request kind {kind!r}", log)
            continue
        try:
            handler(ctx, req)
        except (BadRequest, NotYet) as exc:
            _refused(path, req, exc, log, clock=clock, keep_for=keep_for)
            continue
        if hint(path.name):
            discard(path)
        else:
            remove(path)
        done += 1
    return done


def _refused(path: Path, req: dict[str, Any], exc: Exception, log: Log, *, clock: Clock,
             keep_for: float) -> None:
    """A request its handler refused: a BadRequest is quarantined; a NotYet stays for a
    later pass until it is `keep_for` old, then is quarantined too."""
    if isinstance(exc, NotYet):
        created = parse_iso(req.get("created_at"))
        if created is not None and clock.time() - created < keep_for:
            return
        _quarantine_request(path, f"gave up after {keep_for:g}s: {exc}", log)
        return
    if not isinstance(exc, BadRequest):
        raise exc
    _quarantine_request(path, str(exc), log)
