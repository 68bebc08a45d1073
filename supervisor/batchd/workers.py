"""The worker table's executor: forks, signals, reaps and ready checks for batchd's children.

`Workers` holds one `procstate.Proc` per worker and carries out what the pure table of
batchd.procstate decides (`event`), through the process seams batchd passes in (`spawn`,
`kill`, `proc_start`), the shared `Timers` and the clock. It never decides anything about
batchd's own life: the caller reads each `Transition` (ESCALATE, a phase that finished)
and acts on it. Children are forked by the one thread that lives as long as batchd, so
their PR_SET_PDEATHSIG holds (see supervisor.runtime.die_with_parent).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from structlog.typing import FilteringBoundLogger

from supervisor.batchd.procstate import Action, Cause, Event, Proc, State, Transition, step
from supervisor.batchd.timers import Timers
from supervisor.config import WORKER_NAMES, Config, WorkerConfig, enabled_workers
from supervisor.runtime import EXIT_ORPHANED, EXIT_RECOVERY_FAILED
from supervisor.state.clock import Clock
from supervisor.state.layout import READY, Layout, read_record

__all__ = ["CHILD_SIGNALS", "CRITICAL", "DONE", "Workers", "describe_exit", "fork_worker",
           "preload_workers"]

#: Workers whose failure takes batchd down (exit 1, so systemd restarts it).
CRITICAL: frozenset[str] = frozenset({"scheduler"})
#: States in which a worker has no process and none is on its way.
DONE = frozenset({State.STOPPED, State.EXITED, State.FATAL})
#: The signals batchd handles (blocked across fork, so no handler runs in a child).
CHILD_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
READY_RECHECK = 1.0          # while a worker is STARTING and not yet seen ready


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
    old = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
    gc.freeze()
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


def preload_workers(log: FilteringBoundLogger) -> None:
    """Import the runtime and worker modules once here, so each fork starts warm."""
    for module in ("supervisor.runtime", *(f"supervisor.{n}" for n in WORKER_NAMES)):
        try:
            importlib.import_module(module)
        except (ImportError, SyntaxError) as exc:
            log.warning("cannot preload worker module", module=module, error=str(exc))


class Workers:
    """The workers' Procs and the carrying out of their table's actions."""

    def __init__(self, cfg: Config, layout: Layout, timers: Timers, clock: Clock,
                 log: FilteringBoundLogger, *,
                 spawn: Callable[[str, Config], int] = fork_worker,
                 kill: Callable[[int, int], None] = os.kill,
                 proc_start: Callable[[int], int | None]) -> None:
        self.cfg = cfg
        self.layout = layout
        self.timers = timers
        self.clock = clock
        self.log = log
        self._spawn_fn, self._kill_fn, self._proc_start = spawn, kill, proc_start
        now = clock.time()
        self.procs: dict[str, Proc] = {
            n: Proc(n, cfg.workers.get(n, WorkerConfig()), critical=n in CRITICAL, since=now)
            for n in WORKER_NAMES}
        self.by_pid: dict[int, str] = {}
        self.ready_records: dict[str, dict[str, Any]] = {}
        self.dirty = True                  # workers.json is behind

    def ordered(self) -> list[Proc]:
        """The Procs batchd shows (workers.json, STATUS=), in startup order: every worker the
        configuration runs, and an optional one it no longer runs until that one is down."""
        enabled = enabled_workers(self.cfg)
        return [self.procs[n] for n in WORKER_NAMES
                if n in enabled or self.procs[n].state not in DONE]

    def enabled(self, name: str) -> bool:
        """Whether the configuration runs worker `name` (the api only with api.listen)."""
        return name in enabled_workers(self.cfg)

    def reconfigure(self, cfg: Config) -> None:
        """A reload: each Proc follows its new `workers.<name>` settings."""
        self.cfg = cfg
        for name, proc in self.procs.items():
            proc.config = cfg.workers.get(name, WorkerConfig())

    # -- the table ---------------------------------------------------------------------------

    def event(self, name: str, ev: Event, *, exitstatus: int | None = None,
              message: str | None = None) -> Transition | None:
        """Feed one event to worker `name` and carry out its actions (ESCALATE is the
        caller's); the transition, or None if the table ignores it."""
        proc = self.procs[name]
        t = step(proc, ev, now=self.clock.monotonic(), wall=self.clock.time(),
                 exitstatus=exitstatus, message=message)
        if t is None:
            return None
        for action in t.actions:
            self._ACTIONS[action](self, proc)
        if t.old is not t.new or t.cause is Cause.EXIT_RETRY:
            self.dirty = True
            level = "warning" if t.new in (State.BACKOFF, State.FATAL) else "info"
            getattr(self.log, level)("worker state", worker=name, old=t.old.value,
                                     new=t.new.value, cause=t.cause.value, pid=proc.pid,
                                     message=proc.message if t.new is not State.RUNNING
                                     else None)
        return t

    def _cancel_timers(self, proc: Proc) -> None:
        self.timers.cancel(proc.name)

    def _spawn(self, proc: Proc) -> None:
        try:
            pid = self._spawn_fn(proc.name, self.cfg)
        except OSError as exc:
            self.log.error("fork failed", worker=proc.name, error=str(exc))
            # The table sees a failed spawn as an immediate exit (BACKOFF, then FATAL).
            self.timers.set(f"forkfail:{proc.name}", self.clock.monotonic())
            return
        proc.pid, proc.start = pid, self._proc_start(pid)
        self.by_pid[pid] = proc.name
        self.timers.set(proc.name, self.clock.monotonic() + proc.config.startsecs)
        self.timers.set("ready-recheck", self.clock.monotonic() + READY_RECHECK)

    def _arm_backoff(self, proc: Proc) -> None:
        self.timers.set(proc.name, self.clock.monotonic() + proc.backoff)

    def _term(self, proc: Proc) -> None:
        self._signal(proc, signal.SIGTERM)
        self.timers.set(proc.name, self.clock.monotonic() + proc.config.stopwaitsecs)

    def _kill(self, proc: Proc) -> None:
        self._signal(proc, signal.SIGKILL)

    def _escalate(self, proc: Proc) -> None:
        """The caller's business (it decides what a FATAL critical worker means)."""

    _ACTIONS: dict[Action, Callable[[Workers, Proc], None]] = {
        Action.CANCEL_TIMERS: _cancel_timers,
        Action.SPAWN: _spawn,
        Action.ARM_BACKOFF: _arm_backoff,
        Action.TERM: _term,
        Action.KILL: _kill,
        Action.ESCALATE: _escalate,
    }

    def _signal(self, proc: Proc, sig: int) -> None:
        if proc.pid is None:
            return
        try:
            self._kill_fn(proc.pid, sig)
        except ProcessLookupError:
            return  # already gone: its exit is about to be reaped

    # -- what the loop sees ------------------------------------------------------------------

    def timer_event(self, key: str) -> tuple[str, Event, str | None] | None:
        """The (worker, event, message) a due timer amounts to, or None if not a worker's."""
        if key in self.procs:
            ev = {State.STARTING: Event.UP, State.BACKOFF: Event.RETRY,
                  State.STOPPING: Event.STOPWAIT}.get(self.procs[key].state)
            return None if ev is None else (key, ev, None)
        if key.startswith("forkfail:"):
            return key.split(":", 1)[1], Event.EXIT, "could not fork"
        return None

    def reaped(self, pid: int, status: int) -> tuple[str, int, str] | None:
        """A child was reaped: (worker, exitstatus, message) if it is a current worker."""
        name = self.by_pid.pop(pid, None)
        if name is None or self.procs[name].pid != pid:
            return None
        code, message = describe_exit(status)
        return name, code, message

    def ready_now(self, name: str) -> bool:
        """Whether `ready/<name>.json` names this incarnation (pid AND start time); the
        record is kept for the startup log."""
        proc = self.procs[name]
        if proc.state is not State.STARTING or proc.ready or proc.pid is None:
            return False
        try:
            rec = read_record(READY, self.layout.ready_file(name), owner=False)
        except OSError as exc:
            self.log.warning("cannot read ready file", worker=name, error=str(exc))
            return False
        if not isinstance(rec, dict) or rec.get("pid") != proc.pid \
                or rec.get("start") != proc.start:
            return False
        self.ready_records[name] = rec
        return True

    def awaiting_ready(self) -> bool:
        """Whether any worker is STARTING without its ready record yet."""
        return any(p.state is State.STARTING and not p.ready for p in self.procs.values())

    def kill_all(self) -> None:
        """Last resort on the way out (normally every worker is already stopped)."""
        for pid in list(self.by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
