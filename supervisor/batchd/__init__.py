"""batchd, the parent: forks the four workers, supervises them, recovers in order, obeys batchctl.

`batchd [-c CONFIG] [--check]` runs in the foreground (systemd's Type=notify; no daemonizing).

One thread, one loop: a selector over the signal wakeup pipe (signal.set_wakeup_fd; the
handlers only record the signal) and the Watcher's pipe (inotify hints for `ready/` and
`control/inbox/`), with timers from a heap (startsecs, backoff, stopwaitsecs, watchdog,
reply expiry, a slow rescan). Idle, it sleeps until the nearest timer. SIGCHLD reaps with
waitpid(-1, WNOHANG); every worker change goes through the table of supervisor.batchd.procstate,
whose actions (spawn, SIGTERM, SIGKILL, timers, escalate) are carried out here.

Exit codes: 0 stopped by SIGTERM/SIGINT/`batchctl shutdown`, or `--check` found the config
valid; 1 startup recovery of the critical worker (scheduler) failed, the scheduler went
FATAL later (restart intensity exceeded or start retries used up), or another batchd holds
the state directory; 2 bad command line or bad configuration (nothing written on disk).

Files this process writes (one writer each; all through supervisor.state.atomic: temp file,
fsync, rename, fsync folder, so a crash at any step leaves the old or the new version):
  batchd.pid, batchd.lock   supervisor.state.instance (the lock file is never rewritten)
  workers.json              rewritten after every state change; a crash loses at most the
                            last change, and the next batchd writes its own from scratch
  startup-log.json          read-append-trim(10)-replace at the end of each startup
  control/replies/<id>.json written BEFORE the request is removed: a crash in between
                            leaves both, and the next batchd sees the reply and only removes
                            the request (a request is never acted on twice)
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import heapq
import importlib
import itertools
import os
import selectors
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from structlog.typing import FilteringBoundLogger

from supervisor import log as _log
from supervisor.batchd.procstate import Action, Cause, Event, Proc, State, Transition, step
from supervisor.batchd.sdnotify import Notifier
from supervisor.config import (
    WORKER_NAMES,
    Config,
    ConfigError,
    WorkerConfig,
    load,
    resolve_path,
    worker_settings,
)
from supervisor.runtime import EXIT_ORPHANED, EXIT_RECOVERY_FAILED
from supervisor.state.atomic import Corrupt, Missing, clean_tmp, ensure_dir, is_tmp_name, remove
from supervisor.state.clock import iso_now, parse_iso
from supervisor.state.instance import acquire
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
from supervisor.state.proc import start_time

__all__ = [
    "CRITICAL",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "PHASES",
    "Batchd",
    "append_startup",
    "changed_workers",
    "check_report",
    "describe_exit",
    "main",
    "serve",
    "workers_record",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: Workers whose failure takes batchd down (exit 1, so systemd restarts it).
CRITICAL: frozenset[str] = frozenset({"scheduler"})
#: Startup recovery, in dependency order; the workers of one phase start together.
PHASES: tuple[tuple[str, ...], ...] = (("scheduler",), ("locks",), ("reaper", "callbacks"))
STARTUP_LOG_KEEP = 10
REPLY_TTL = 600.0            # control replies older than this are removed
RESCAN_INTERVAL = 30.0       # the safety net behind inotify for ready/ and control/inbox/
READY_RECHECK = 1.0          # while a worker is STARTING and not yet seen ready
CONTROL_OPS = ("start", "stop", "restart", "shutdown", "reload")
_CHILD_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_DONE = frozenset({State.STOPPED, State.EXITED, State.FATAL})


# ----------------------------------------------------------------------------- pure helpers

def describe_exit(status: int) -> tuple[int, str]:
    """(exitstatus, message) for a waitpid status: the exit code, or -signal when killed."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return code, f"killed by {name}"
    why = {EXIT_RECOVERY_FAILED: " (recovery failed)",
           EXIT_ORPHANED: " (its parent died before it could watch for that)"}
    return code, f"exited with status {code}{why.get(code, '')}"


def changed_workers(old: Config, new: Config) -> list[str]:
    """The workers (startup order) whose settings differ: their `workers.<name>` entry or a
    config section they read (supervisor.config.WORKER_SECTIONS; `log` is read by all)."""
    return [name for name in WORKER_NAMES
            if old.workers.get(name) != new.workers.get(name)
            or worker_settings(old, name) != worker_settings(new, name)]


def workers_record(batchd_pid: int, procs: list[Proc], now: float,
                   restarts_before: dict[str, int] | None = None) -> dict[str, Any]:
    """The body of workers.json (kind WORKERS) for `procs` in startup order.

    `restarts` counts this batchd's restarts of a worker (supervisord's view);
    `restarts_total` adds those of earlier batchd lives (`restarts_before`), so the
    counter `batchctl stats` shows survives a restart of batchd itself.
    """
    before = restarts_before or {}
    return {
        "batchd_pid": batchd_pid,
        "updated_at": iso_now(now),
        "workers": [{
            "name": p.name,
            "state": p.state.value,
            "pid": p.pid,
            "start": p.start,
            "since": iso_now(p.since) if p.since else None,
            "restarts": p.restarts,
            "restarts_total": before.get(p.name, 0) + p.restarts,
            "critical": p.critical,
            "exitstatus": p.exitstatus,
            "message": p.message,
        } for p in procs],
    }


def append_startup(layout: Layout, entry: dict[str, Any],
                   keep: int = STARTUP_LOG_KEEP,
                   log: FilteringBoundLogger | None = None) -> list[dict[str, Any]]:
    """Add one startup to startup-log.json (newest last, at most `keep`); return the list.

    A corrupt log is quarantined by read_record (we own it), logged, and a new one begun.
    """
    current = read_record(STARTUP_LOG, layout.startup_log, owner=True)
    if isinstance(current, Corrupt) and log is not None:
        log.warning("startup-log.json was corrupt: moved aside, a new log begins",
                    reason=current.reason, moved_to=current.moved_to)
    startups: list[dict[str, Any]] = []
    if isinstance(current, dict) and isinstance(current.get("startups"), list):
        startups = [s for s in current["startups"] if isinstance(s, dict)]
    startups = [*startups, entry][-keep:]
    write_record(STARTUP_LOG, layout.startup_log, {"startups": startups})
    return startups


def check_report(cfg: Config) -> str:
    """What `--check` prints for a valid configuration."""
    lines = [f"configuration OK: {cfg.source}",
             f"  state_dir: {cfg.state_dir}",
             f"  workspace_dir: {cfg.workspace_dir}",
             f"  log: level {cfg.log.level}, format {cfg.log.format}, "
             f"to {cfg.log.file or 'stderr'}"]
    for name in WORKER_NAMES:
        w = cfg.workers.get(name, WorkerConfig())
        lines.append(f"  worker {name}: startsecs {w.startsecs:g}s, startretries "
                     f"{w.startretries}, stopwaitsecs {w.stopwaitsecs:g}s, at most "
                     f"{w.max_restarts} restarts in {w.restart_window:g}s"
                     + (" (critical)" if name in CRITICAL else ""))
    lines.append(f"  agents: {', '.join(sorted(cfg.agents)) or '(none)'}")
    lines.append(f"  repositories: {', '.join(sorted(cfg.repositories)) or '(none)'}")
    lines.append(f"  scheduler: max_concurrent_jobs {cfg.scheduler.max_concurrent_jobs}, "
                 f"launcher {cfg.launcher}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- timers

@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    key: str = field(compare=False)


class Timers:
    """A heap of named one-shot timers; setting a name again replaces its pending timer."""

    def __init__(self) -> None:
        self._heap: list[_Timer] = []
        self._live: dict[str, int] = {}
        self._seq = itertools.count()

    def set(self, key: str, when: float) -> None:
        seq = next(self._seq)
        self._live[key] = seq
        heapq.heappush(self._heap, _Timer(when, seq, key))

    def cancel(self, key: str) -> None:
        self._live.pop(key, None)

    def pending(self, key: str) -> bool:
        return key in self._live

    def next_due(self) -> float | None:
        while self._heap and self._live.get(self._heap[0].key) != self._heap[0].seq:
            heapq.heappop(self._heap)
        return self._heap[0].when if self._heap else None

    def pop_due(self, now: float) -> Iterator[str]:
        """The keys of timers due at `now`, earliest first (each fires once)."""
        while True:
            due = self.next_due()
            if due is None or due > now:
                return
            timer = heapq.heappop(self._heap)
            del self._live[timer.key]
            yield timer.key


# ----------------------------------------------------------------------------- spawning

def fork_worker(name: str, cfg: Config) -> int:
    """Fork; the child becomes worker `name` (supervisor.runtime.worker_entry, never returns).

    The signals batchd handles are blocked across fork so no handler of the parent runs
    in the child; worker_entry resets the child's signal state and closes inherited fds.
    The heap is frozen across fork (gc.freeze): the child's first collection, and so its
    restart latency, does not grow with the parent's heap, and copy-on-write pages stay
    shared.
    """
    from supervisor.runtime import worker_entry

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _CHILD_SIGNALS)
    gc.freeze()          # the child's gc.collect() then skips the parent's whole heap
    try:
        pid = os.fork()
        if pid == 0:
            try:
                worker_entry(name, cfg)
            finally:
                os._exit(70)
    finally:
        gc.unfreeze()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return pid


def _preload_workers(log: FilteringBoundLogger) -> None:
    """Import the runtime and worker modules once here, so each fork starts warm."""
    for module in ("supervisor.runtime", *(f"supervisor.{n}" for n in WORKER_NAMES)):
        try:
            importlib.import_module(module)
        except (ImportError, SyntaxError) as exc:
            log.warning("cannot preload worker module", module=module, error=str(exc))


# ----------------------------------------------------------------------------- the supervisor

@dataclass
class _Waiter:
    """A control request answered when its workers reach the state it waits for."""

    rid: str
    op: str                                # "stop", "start" (also restart, reload)
    workers: tuple[str, ...]
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Phase:
    worker: str
    started_at: str
    t0: float
    record: dict[str, Any] | None = None


class Batchd:
    """The supervisor's state and event handlers; `run()` is the loop around them.

    `spawn(name, cfg) -> pid`, `kill(pid, sig)` and `proc_start(pid)` are the process seams
    (fork_worker, os.kill, supervisor.state.proc.start_time in production); `clock` and `wall`
    the monotonic and epoch clocks. Unit tests drive the handlers directly without `run()`.
    """

    def __init__(self, cfg: Config, *, config_path: str | None = None,
                 log: FilteringBoundLogger | None = None,
                 notifier: Notifier | None = None,
                 spawn: Callable[[str, Config], int] = fork_worker,
                 kill: Callable[[int, int], None] = os.kill,
                 proc_start: Callable[[int], int | None] = start_time,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.layout = Layout(cfg.state_dir)
        self.log = log if log is not None else _log.get("batchd")
        self.notifier = notifier if notifier is not None else Notifier(None)
        self._spawn_fn, self._kill_fn, self._proc_start = spawn, kill, proc_start
        self.clock, self.wall = clock, wall
        self.pid = os.getpid()
        self.started_wall = wall()
        self.procs = {n: Proc(n, cfg.workers.get(n, WorkerConfig()), critical=n in CRITICAL,
                              since=self.started_wall) for n in WORKER_NAMES}
        self.by_pid: dict[int, str] = {}
        self.timers = Timers()
        self.ready_records: dict[str, dict[str, Any]] = {}
        self.restart_pending: set[str] = set()
        self.waiters: list[_Waiter] = []
        self.handling: set[str] = set()
        self.dirty = True
        self.last_status = ""
        self.reload_pending: str | None = None     # a reload asked for during startup
        # startup recovery
        self.startup_id = uuid.uuid4().hex[:12]
        self.startup_t0 = clock()
        self.phases_left: list[tuple[str, ...]] = list(PHASES)
        self.phase: list[_Phase] = []
        self.phase_log: list[dict[str, Any]] = []
        self.starting_up = True
        self.outcome = "ok"
        # shutdown
        self.stopping = False
        self.stop_queue: list[str] = []
        self._stepping = False
        self.exit_code: int | None = None
        self.done = False
        self.signals: list[int] = []
        self.restarts_before: dict[str, int] = {}

    def read_previous_restarts(self) -> None:
        """Seed the cumulative restart counters from the workers.json of the last batchd.

        Called once the instance lock is held (we own the file): a corrupt one is
        quarantined and logged, and the counters start again from zero.
        """
        rec = read_record(WORKERS, self.layout.workers_file, owner=True)
        if isinstance(rec, Corrupt):
            self.log.warning("workers.json was corrupt: moved aside; restart counters restart",
                             reason=rec.reason, moved_to=rec.moved_to)
            return
        if not isinstance(rec, dict) or not isinstance(rec.get("workers"), list):
            return
        for w in rec["workers"]:
            if not isinstance(w, dict) or w.get("name") not in self.procs:
                continue
            total = w.get("restarts_total", w.get("restarts"))
            if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
                self.restarts_before[w["name"]] = total

    # -- events into the table -----------------------------------------------------------

    def event(self, name: str, ev: Event, *, exitstatus: int | None = None,
              message: str | None = None) -> Transition | None:
        """Feed one event to worker `name` and carry out the table's actions."""
        proc = self.procs[name]
        t = step(proc, ev, now=self.clock(), wall=self.wall(), exitstatus=exitstatus,
                 message=message)
        if t is None:
            return None
        for action in t.actions:
            if action is not Action.ESCALATE:
                self._act(proc, action)
        if t.old is not t.new or t.cause is Cause.EXIT_RETRY:
            self.dirty = True
            level = "warning" if t.new in (State.BACKOFF, State.FATAL) else "info"
            getattr(self.log, level)("worker state", worker=name, old=t.old.value,
                                     new=t.new.value, cause=t.cause.value, pid=proc.pid,
                                     message=proc.message if t.new is not State.RUNNING
                                     else None)
        if Action.ESCALATE in t.actions:
            self._escalate(proc)
        self._after(proc, t)
        return t

    def _act(self, proc: Proc, action: Action) -> None:
        name = proc.name
        if action is Action.CANCEL_TIMERS:
            self.timers.cancel(name)
        elif action is Action.SPAWN:
            self._spawn(proc)
        elif action is Action.ARM_BACKOFF:
            self.timers.set(name, self.clock() + proc.backoff)
        elif action is Action.TERM:
            self._signal(proc, signal.SIGTERM)
            self.timers.set(name, self.clock() + proc.config.stopwaitsecs)
        elif action is Action.KILL:
            self._signal(proc, signal.SIGKILL)

    def _spawn(self, proc: Proc) -> None:
        try:
            pid = self._spawn_fn(proc.name, self.cfg)
        except OSError as exc:
            self.log.error("fork failed", worker=proc.name, error=str(exc))
            # The table sees a failed spawn as an immediate exit (BACKOFF, then FATAL).
            self.timers.set(f"forkfail:{proc.name}", self.clock())
            return
        proc.pid, proc.start = pid, self._proc_start(pid)
        self.by_pid[pid] = proc.name
        self.timers.set(proc.name, self.clock() + proc.config.startsecs)
        self.timers.set("ready-recheck", self.clock() + READY_RECHECK)

    def _signal(self, proc: Proc, sig: int) -> None:
        if proc.pid is None:
            return
        try:
            self._kill_fn(proc.pid, sig)
        except ProcessLookupError:
            return  # already gone: its exit is about to be reaped

    def _escalate(self, proc: Proc) -> None:
        """A worker went FATAL: a critical one takes batchd down (exit 1)."""
        if not proc.critical or self.stopping:
            return
        if self.starting_up:
            if all(ph.worker != proc.name for ph in self.phase):
                # It recovered (its phase passed) but died before the others were done.
                self._abort_startup(f"critical worker {proc.name} is FATAL: {proc.message}")
            return                    # else its phase records the failure and aborts
        self.log.error("critical worker is FATAL: stopping batchd", worker=proc.name,
                       message=proc.message)
        self.shutdown(EXIT_FAILURE, f"critical worker {proc.name} is FATAL")

    def timer_fired(self, key: str) -> None:
        """A timer came due: a worker's startsecs/backoff/stopwait, or a global chore."""
        if key in self.procs:
            state = self.procs[key].state
            ev = {State.STARTING: Event.UP, State.BACKOFF: Event.RETRY,
                  State.STOPPING: Event.STOPWAIT}.get(state)
            if ev is not None:
                self.event(key, ev)
        elif key.startswith("forkfail:"):
            self.event(key.split(":", 1)[1], Event.EXIT, exitstatus=None,
                       message="could not fork")
        elif key == "watchdog":
            self.notifier.watchdog()
            self._arm_watchdog()
        elif key == "reply-gc":
            self.gc_replies()
        elif key in ("rescan", "ready-recheck"):
            self.scan()
            if key == "rescan":
                self.timers.set("rescan", self.clock() + RESCAN_INTERVAL)

    def _arm_watchdog(self) -> None:
        if self.notifier.watchdog_interval:
            self.timers.set("watchdog", self.clock() + self.notifier.watchdog_interval)

    def reaped(self, pid: int, status: int) -> None:
        """A child was reaped by waitpid."""
        name = self.by_pid.pop(pid, None)
        if name is None:
            return
        proc = self.procs[name]
        if proc.pid != pid:
            return
        code, message = describe_exit(status)
        self.event(name, Event.EXIT, exitstatus=code, message=message)

    def reap(self) -> None:
        """Collect every exited child (SIGCHLD coalesces)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.reaped(pid, status)

    def check_ready(self, name: str) -> None:
        """Accept `ready/<name>.json` if it names this incarnation (pid AND start time)."""
        proc = self.procs[name]
        if proc.state is not State.STARTING or proc.ready or proc.pid is None:
            return
        try:
            rec = read_record(READY, self.layout.ready_file(name), owner=False)
        except OSError as exc:
            self.log.warning("cannot read ready file", worker=name, error=str(exc))
            return
        if not isinstance(rec, dict) or rec.get("pid") != proc.pid \
                or rec.get("start") != proc.start:
            return
        self.ready_records[name] = rec
        self.event(name, Event.READY)

    def scan(self) -> None:
        """Look at the files inotify hinted at: ready records, control requests."""
        for name in WORKER_NAMES:
            self.check_ready(name)
        if any(p.state is State.STARTING and not p.ready for p in self.procs.values()):
            self.timers.set("ready-recheck", self.clock() + READY_RECHECK)
        self.scan_control()

    # -- what follows a transition ----------------------------------------------------------

    def _after(self, proc: Proc, t: Transition) -> None:
        if proc.state is State.STOPPED and proc.name in self.restart_pending:
            self.restart_pending.discard(proc.name)
            if not self.stopping:
                self.event(proc.name, Event.START)
                return
        if self.starting_up:
            self._startup_progress()
        if self.stopping:
            self._stop_next()
        self._resolve_waiters()

    # -- startup recovery -------------------------------------------------------------------

    def begin(self) -> None:
        """Start recovery: the first phase's workers."""
        self.log.info("startup recovery begins", startup=self.startup_id,
                      phases=[list(p) for p in PHASES])
        self._next_phase()

    def _next_phase(self) -> None:
        if not self.phases_left:
            self._finish_startup()
            return
        workers = self.phases_left.pop(0)
        phase = [_Phase(w, iso_now(self.wall()), self.clock()) for w in workers]
        self.status(f"recovering: {', '.join(workers)}")
        for w in workers:
            self.event(w, Event.START)
        self.phase = phase            # only now: the phase is judged once all are started
        self._startup_progress()

    def _startup_progress(self) -> None:
        if not self.phase:
            return
        for ph in self.phase:
            if ph.record is not None:
                continue
            proc = self.procs[ph.worker]
            if proc.ready:
                ph.record = self._phase_record(ph, ok=True, error=None)
            elif proc.state is State.FATAL:
                ph.record = self._phase_record(ph, ok=False, error=proc.message)
        if any(ph.record is None for ph in self.phase):
            return
        self.phase_log += [ph.record for ph in self.phase if ph.record is not None]
        failed = [ph for ph in self.phase if ph.record is not None and not ph.record["ok"]]
        self.phase = []
        if any(self.procs[ph.worker].critical for ph in failed):
            self._abort_startup(f"critical worker {failed[0].worker} could not recover: "
                                f"{self.procs[failed[0].worker].message}")
            return
        if failed:
            self.outcome = "degraded"
        self._next_phase()

    def _phase_record(self, ph: _Phase, *, ok: bool, error: str | None) -> dict[str, Any]:
        rec = self.ready_records.get(ph.worker, {}) if ok else {}
        degraded = rec.get("degraded") or []
        if ok and degraded:
            self.outcome = "degraded"
        return {"worker": ph.worker, "started_at": ph.started_at,
                "duration_ms": round((self.clock() - ph.t0) * 1000.0, 1), "ok": ok,
                "found": rec.get("found") or {}, "did": rec.get("did") or {},
                "degraded": list(degraded), "error": error}

    def _startup_entry(self, outcome: str) -> dict[str, Any]:
        return {"id": self.startup_id, "started_at": iso_now(self.started_wall),
                "finished_at": iso_now(self.wall()),
                "duration_ms": round((self.clock() - self.startup_t0) * 1000.0, 1),
                "outcome": outcome, "phases": self.phase_log}

    def _write_startup(self, outcome: str) -> None:
        try:
            append_startup(self.layout, self._startup_entry(outcome), log=self.log)
        except OSError as exc:
            self.log.error("cannot write the startup log", error=str(exc))

    def _finish_startup(self) -> None:
        self.starting_up = False
        self._write_startup(self.outcome)
        self.log.info("startup recovery done", startup=self.startup_id, outcome=self.outcome,
                      duration_ms=round((self.clock() - self.startup_t0) * 1000.0, 1))
        self.notifier.ready(self.status_text())
        self.last_status = self.status_text()
        if self.reload_pending is not None:
            rid, self.reload_pending = self.reload_pending, None
            self.reload(rid or None)
        self.scan_control()

    def _abort_startup(self, error: str) -> None:
        self.log.error("startup recovery failed", startup=self.startup_id, error=error)
        for ph in self.phase:
            if ph.record is None:
                self.phase_log.append(self._phase_record(ph, ok=False, error="aborted"))
        self.phase = []
        self.starting_up = False
        self._write_startup("failed")
        self.shutdown(EXIT_FAILURE, f"startup failed: {error}")

    # -- shutdown ---------------------------------------------------------------------------

    def shutdown(self, code: int, reason: str) -> None:
        """Stop the workers one by one in reverse start order, then leave the loop."""
        if self.exit_code is None or code > self.exit_code:
            self.exit_code = code
        if self.stopping:
            return
        if self.starting_up:
            self.starting_up = False
            for ph in self.phase:
                if ph.record is None:
                    self.phase_log.append(self._phase_record(ph, ok=False, error=reason))
            self.phase = []
            self._write_startup("failed")
        self.stopping = True
        self.log.info("shutting down", reason=reason, exit_code=self.exit_code)
        self.notifier.stopping(f"stopping: {reason}")
        self.last_status = "stopping"
        self.stop_queue = list(reversed(WORKER_NAMES))
        for waiter in list(self.waiters):
            self._reply_waiter(waiter, False, "batchd is shutting down")
        self._stop_next()

    def _stop_next(self) -> None:
        """Stop the head of the queue; when it is down, the next (one at a time)."""
        if self._stepping:
            return                    # re-entered from the STOP event below
        self._stepping = True
        try:
            while self.stop_queue:
                proc = self.procs[self.stop_queue[0]]
                if proc.state in (State.STARTING, State.RUNNING, State.BACKOFF):
                    self.event(proc.name, Event.STOP)
                if proc.state is State.STOPPING:
                    return
                self.stop_queue.pop(0)
            self.done = True
        finally:
            self._stepping = False

    # -- control requests -------------------------------------------------------------------

    def scan_control(self) -> None:
        """Handle new requests in control/inbox (each once; see the module docstring)."""
        try:
            names = sorted(os.listdir(self.layout.control_inbox))
        except FileNotFoundError:
            return
        for fname in names:
            if not fname.endswith(".json") or is_tmp_name(fname):
                continue
            rid = fname[:-len(".json")]
            if rid in self.handling:
                continue
            path = self.layout.control_inbox / fname
            if self.layout.reply_file(rid).exists():
                remove(path)          # answered before a crash: only the removal was left
                continue
            rec = read_record(CONTROL, path, owner=True)
            if isinstance(rec, Missing):
                continue
            if isinstance(rec, Corrupt):
                self.log.warning("malformed control request quarantined", request=rid,
                                 reason=rec.reason, moved_to=rec.moved_to)
                self.reply(rid, False, f"malformed request: {rec.reason}", remove_request=False)
                continue
            op = rec.get("op")
            if self.starting_up and op != "shutdown":
                continue              # answered once startup recovery is done
            self.handling.add(rid)
            self._control(rid, rec)

    def _control(self, rid: str, rec: dict[str, Any]) -> None:
        op, worker = rec.get("op"), rec.get("worker")
        created = parse_iso(rec.get("created_at"))
        self.log.info("control request", request=rid, op=op, worker=worker)
        if not isinstance(created, int | float) or created < self.started_wall - 0.001:
            self.reply(rid, False, "expired: written before this batchd started")
            return
        if op not in CONTROL_OPS:
            self.reply(rid, False, f"unknown operation {op!r} (expected one of "
                                   f"{', '.join(CONTROL_OPS)})")
            return
        if self.stopping:
            self.reply(rid, False, "batchd is shutting down")
            return
        if op == "shutdown":
            self.reply(rid, True, "shutting down")
            self.shutdown(EXIT_OK, "shutdown requested by batchctl")
            return
        if op == "reload":
            self.reload(rid)
            return
        if worker not in self.procs:
            self.reply(rid, False, f"unknown worker {worker!r} (expected one of "
                                   f"{', '.join(WORKER_NAMES)})")
            return
        assert isinstance(worker, str)
        if op == "start":
            self.start_worker(rid, worker)
        elif op == "stop":
            self.stop_worker(rid, worker)
        else:
            self.restart_workers(rid, [worker])

    def start_worker(self, rid: str | None, name: str) -> None:
        proc = self.procs[name]
        if proc.state in (State.STARTING, State.RUNNING, State.STOPPING):
            if proc.state is State.STOPPING:
                self.restart_pending.add(name)
            elif proc.state is State.RUNNING and rid is not None:
                self.reply(rid, True, "already running")
                return
        else:
            self.event(name, Event.START)
        self._wait(rid, "start", (name,), {"message": "started"})

    def stop_worker(self, rid: str | None, name: str) -> None:
        proc = self.procs[name]
        self.restart_pending.discard(name)
        if proc.state in _DONE:
            if rid is not None:
                self.reply(rid, True, f"not running ({proc.state.value})")
            return
        self.event(name, Event.STOP)
        self._wait(rid, "stop", (name,), {"message": "stopped"})

    def restart_workers(self, rid: str | None, names: list[str],
                        result: dict[str, Any] | None = None) -> None:
        """Stop then start each (a BACKOFF or stopped one just starts); reply when all are
        RUNNING, or as soon as one is in BACKOFF/FATAL."""
        for name in names:
            proc = self.procs[name]
            if proc.state in (State.STARTING, State.RUNNING, State.STOPPING):
                self.restart_pending.add(name)
                if proc.state is not State.STOPPING:
                    self.event(name, Event.STOP)
            else:
                self.event(name, Event.START)
        self._wait(rid, "start", tuple(names), result or {"message": "restarted"})

    def _wait(self, rid: str | None, op: str, workers: tuple[str, ...],
              result: dict[str, Any] | None = None) -> None:
        if rid is None:
            return
        self.waiters.append(_Waiter(rid, op, workers, result or {}))
        self._resolve_waiters()

    def _resolve_waiters(self) -> None:
        for waiter in list(self.waiters):
            states = {n: self.procs[n].state for n in waiter.workers}
            if waiter.op == "stop":
                if all(s in _DONE for s in states.values()):
                    self._reply_waiter(waiter, True, str(waiter.result.get("message")))
                continue
            bad = [n for n, s in states.items()
                   if s in (State.BACKOFF, State.FATAL)
                   or (s in (State.STOPPED, State.EXITED) and n not in self.restart_pending)]
            if bad:
                self._reply_waiter(waiter, False, "; ".join(
                    f"{n} {states[n].value}: {self.procs[n].message or 'did not start'}"
                    for n in bad))
            elif all(s is State.RUNNING for s in states.values()):
                self._reply_waiter(waiter, True, str(waiter.result.get("message")))

    def _reply_waiter(self, waiter: _Waiter, ok: bool, message: str) -> None:
        self.waiters.remove(waiter)
        self.reply(waiter.rid, ok, message, result=waiter.result.get("result"))

    def reply(self, rid: str, ok: bool, message: str, result: Any = None, *,
              remove_request: bool = True) -> None:
        """Write the reply durably, then remove the request (the crash-replay order)."""
        try:
            write_record(REPLY, self.layout.reply_file(rid),
                         {"id": rid, "ok": ok, "message": message, "result": result})
            if remove_request:
                remove(self.layout.control_inbox / f"{rid}.json")
        except OSError as exc:
            self.log.error("cannot answer control request", request=rid, error=str(exc))
        self.handling.discard(rid)
        self.log.info("control reply", request=rid, ok=ok, message=message)
        if not self.timers.pending("reply-gc"):
            self.timers.set("reply-gc", self.clock() + REPLY_TTL + 1.0)

    def gc_replies(self) -> None:
        """Remove replies older than REPLY_TTL; come back when the oldest left expires."""
        folder = self.layout.control_replies
        now = self.wall()
        oldest: float | None = None
        with contextlib.suppress(FileNotFoundError):
            clean_tmp(folder, 60.0)
            for fname in os.listdir(folder):
                path = folder / fname
                try:
                    mtime = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if now - mtime >= REPLY_TTL:
                    remove(path)
                else:
                    oldest = mtime if oldest is None else min(oldest, mtime)
        if oldest is not None:
            self.timers.set("reply-gc", self.clock() + (oldest + REPLY_TTL - now) + 1.0)

    # -- reload -----------------------------------------------------------------------------

    def reload(self, rid: str | None = None) -> None:
        """Re-read the config from the same source; restart only the workers it changed."""
        if self.starting_up:
            self.reload_pending = rid or ""
            return
        try:
            new = load(self.config_path)
            if new.state_dir != self.cfg.state_dir:
                raise ConfigError(f"state_dir cannot change on reload ({self.cfg.state_dir} "
                                  f"-> {new.state_dir}); restart batchd to move it")
            if new.log != self.cfg.log:
                self.log = _log.setup(new.log, name="batchd")
        except (ConfigError, OSError, ValueError, RecursionError) as exc:
            # Whatever the new file holds, a running batchd keeps running on the old one.
            self.log.error("reload refused; keeping the running configuration", error=str(exc))
            self.status(f"reload refused: {exc}")
            if rid is not None:
                self.reply(rid, False, f"reload refused: {exc}")
            return
        changed = changed_workers(self.cfg, new)
        self.cfg = new
        for name, proc in self.procs.items():
            proc.config = new.workers.get(name, WorkerConfig())
        restart = [n for n in changed if self.procs[n].state is not State.STOPPED]
        self.log.info("configuration reloaded", source=new.source, changed=changed,
                      restarting=restart)
        message = ("reloaded; restarted: " + ", ".join(restart)) if restart \
            else "reloaded; no worker needed a restart"
        result = {"message": message, "result": {"restarted": restart, "changed": changed}}
        if restart:
            self.restart_workers(rid, restart, result)
        elif rid is not None:
            self.reply(rid, True, message, result=result["result"])

    # -- status -----------------------------------------------------------------------------

    def status_text(self) -> str:
        if self.stopping:
            return "stopping"
        if self.starting_up:
            return self.last_status or "starting"
        running = [p for p in self.procs.values() if p.state is State.RUNNING]
        bad = [p for p in self.procs.values() if p.state in (State.FATAL, State.BACKOFF)]
        text = f"{len(running)}/{len(self.procs)} workers running"
        if bad or self.outcome == "degraded":
            notes = ", ".join(f"{p.name} {p.state.value}" for p in bad) or "see startup-log"
            return f"degraded: {notes}; {text}"
        return text

    def status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.notifier.status(text)

    def publish(self) -> None:
        """Rewrite workers.json (if anything changed) and refresh systemd's STATUS=."""
        if not self.dirty:
            return
        self.dirty = False
        procs = [self.procs[n] for n in WORKER_NAMES]
        try:
            write_record(WORKERS, self.layout.workers_file,
                         workers_record(self.pid, procs, self.wall(), self.restarts_before))
        except OSError as exc:
            self.log.error("cannot write workers.json", error=str(exc))
        if not self.starting_up and not self.stopping:
            self.status(self.status_text())

    # -- signals ----------------------------------------------------------------------------

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self.reap()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.shutdown(EXIT_OK, f"{signal.Signals(signum).name} received")
        elif signum == signal.SIGHUP and not self.stopping:
            self.log.info("SIGHUP received: reloading the configuration")
            self.reload(None)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Take the instance lock, recover in order, supervise until stopped; the exit code."""
        try:
            ensure_dir(self.layout.root)
            inst = acquire(self.layout, config=self.cfg.source)
        except OSError as exc:
            print(f"batchd: cannot use state dir {self.layout.root}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        if isinstance(inst, int):
            print(f"batchd: another batchd (pid {inst}) holds the state dir "
                  f"{self.layout.root}", file=sys.stderr)
            return EXIT_FAILURE
        try:
            try:
                for folder in self.layout.all_dirs():
                    ensure_dir(folder)
                for folder in (self.layout.root, self.layout.control_inbox):
                    clean_tmp(folder, 60.0)
                self.gc_replies()
                self.read_previous_restarts()
            except OSError as exc:
                print(f"batchd: cannot prepare state dir {self.layout.root}: {exc}",
                      file=sys.stderr)
                return EXIT_FAILURE
            return self._run_locked()
        finally:
            self._kill_leftovers()
            inst.release()

    def _run_locked(self) -> int:
        self.log.info("batchd starting", state_dir=str(self.layout.root),
                      config=self.cfg.source, systemd=self.notifier.enabled)
        _preload_workers(self.log)
        from supervisor.runtime import Watcher

        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in _CHILD_SIGNALS}
        old_fd = signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
        self.signals.extend(_take_early_signals())   # arrived while we were starting
        watcher = Watcher([self.layout.ready_dir, self.layout.control_inbox],
                          rescan_interval=RESCAN_INTERVAL).start()
        sel = selectors.DefaultSelector()
        sel.register(sig_r, selectors.EVENT_READ, "signal")
        sel.register(watcher.fileno(), selectors.EVENT_READ, "watch")
        try:
            if self.notifier.watchdog_interval:
                self.timers.set("watchdog", self.clock())
            self.timers.set("rescan", self.clock() + RESCAN_INTERVAL)
            self.begin()
            self.publish()
            self._loop(sel, sig_r, watcher)
            self.publish()
        finally:
            sel.close()
            watcher.close()
            signal.set_wakeup_fd(old_fd)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(sig_r)
            os.close(sig_w)
        code = self.exit_code if self.exit_code is not None else EXIT_OK
        self.log.info("batchd stopped", exit_code=code)
        self.notifier.close()
        return code

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _loop(self, sel: selectors.BaseSelector, sig_r: int, watcher: Any) -> None:
        while not self.done:
            due = self.timers.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            for key, _ in sel.select(timeout):
                if key.data == "signal":
                    _drain(sig_r)
                elif watcher.wait(0):
                    self.scan()
            while self.signals:
                self.handle_signal(self.signals.pop(0))
            for tkey in self.timers.pop_due(self.clock()):
                self.timer_fired(tkey)
            self.publish()

    def _kill_leftovers(self) -> None:
        """Last resort on the way out (normally every worker is already stopped)."""
        for pid in list(self.by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        return
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise


# ----------------------------------------------------------------------------- the command

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="batchd",
        description="batchd: a crash-resilient batch-job supervisor (runs in the foreground).")
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="the YAML configuration (default: $BATCHD_CONFIG, then "
                        "/etc/batchd/batchd.yaml, then the built-in default)")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration, print what was checked, and exit "
                        "(0 valid, 2 invalid)")
    return p


_EARLY_SIGNALS: list[int] = []


def _catch_early_signals() -> None:
    """From the first instruction on, SIGTERM/SIGINT/SIGHUP are recorded, not fatal.

    Python's defaults would kill batchd (exit 143) for a SIGTERM that arrives while it
    loads its config and takes its lock; the loop handles recorded ones once it runs.
    """
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _record_early_signal)


def _record_early_signal(signum: int, frame: object) -> None:
    _EARLY_SIGNALS.append(signum)


def _take_early_signals() -> list[int]:
    taken = list(_EARLY_SIGNALS)
    _EARLY_SIGNALS.clear()
    return taken


def main(argv: list[str] | None = None) -> int:
    """`batchd [-c CONFIG] [--check]`; returns the exit code (see the module docstring)."""
    _catch_early_signals()
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:          # argparse printed the usage error (or --help)
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"batchd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(check_report(cfg))
        return EXIT_OK
    return serve(cfg, config_path=resolve_path(args.config))


def serve(cfg: Config, *, config_path: str | None) -> int:
    """Run batchd on `cfg` in the foreground until stopped (SIGHUP re-reads `config_path`,
    or the lookup of supervisor.config.load when None); the exit code."""
    _catch_early_signals()
    try:
        log = _log.setup(cfg.log, name="batchd")
    except ConfigError as exc:
        print(f"batchd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    notifier = Notifier.from_env(os.environ)
    return Batchd(cfg, config_path=config_path, log=log, notifier=notifier).run()

