"""batchd's handlers: what each signal, hint, timer and request does to the workers and to batchd.

`Batchd` wires the parts, each consulted and never consulting back: `Workers` (the
process table's executor), `Startup` (the recovery phases), `Control` (requests and
replies), `Publisher` (workers.json, STATUS=). Its own life is the table of batchd.life,
whose actions are the methods in `_LIFE`. batchd.loop feeds it (`run`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from supervisor import log as _log
from supervisor.batchd import life
from supervisor.batchd.control import REPLY_TTL, Control, Request
from supervisor.batchd.life import Life
from supervisor.batchd.procstate import Action, Event, Proc, State, Transition
from supervisor.batchd.publish import Publisher, status_text
from supervisor.batchd.reload import plan, read_new_config
from supervisor.batchd.sdnotify import Notifier
from supervisor.batchd.startup import Startup, phases_for
from supervisor.batchd.timers import Timers
from supervisor.batchd.workers import (
    READY_RECHECK,
    Workers,
    fork_worker,
)
from supervisor.config import WORKER_NAMES, Config, ConfigError, enabled_workers
from supervisor.state.clock import SYSTEM_CLOCK, Clock
from supervisor.state.layout import Layout
from supervisor.state.proc import start_time

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "RESCAN_INTERVAL", "Batchd",
           "record_early_signal", "take_early_signals"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
RESCAN_INTERVAL = 30.0       # the safety net behind inotify for ready/ and control/inbox/

_EARLY_SIGNALS: list[int] = []


def record_early_signal(signum: int, frame: object) -> None:
    """Before the loop runs, SIGTERM/SIGINT/SIGHUP are recorded here, not fatal."""
    _EARLY_SIGNALS.append(signum)


def take_early_signals() -> list[int]:
    taken = list(_EARLY_SIGNALS)
    _EARLY_SIGNALS.clear()
    return taken


class Batchd:
    """The supervisor: its parts, its life, and the loop around them.

    `spawn(name, cfg) -> pid`, `kill(pid, sig)` and `proc_start(pid)` are the process seams
    (fork_worker, os.kill, state.proc.start_time in production) and `clock` the time
    (monotonic for timers, wall for records). Unit tests drive the handlers (`begin`,
    `scan`, `reaped`, `timer_fired`, `handle_signal`, `publish`) without `run()`.
    """

    def __init__(self, cfg: Config, *, config_path: str | None = None,
                 log: FilteringBoundLogger | None = None,
                 notifier: Notifier | None = None,
                 spawn: Callable[[str, Config], int] = fork_worker,
                 kill: Callable[[int, int], None] = os.kill,
                 proc_start: Callable[[int], int | None] = start_time,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.layout = Layout(cfg.state_dir)
        self.log = log if log is not None else _log.get("batchd")
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.clock = clock
        self.pid = os.getpid()
        self.timers = Timers()
        self.workers = Workers(cfg, self.layout, self.timers, clock, self.log, spawn=spawn,
                               kill=kill, proc_start=proc_start)
        self.startup = Startup(clock, self.log, phases_for(enabled_workers(cfg)))
        self.started_wall = self.startup.started_wall
        self.control = Control(self.layout, clock, self.log, self.started_wall)
        self.publisher = Publisher(self.layout, self.notifier, self.log, self.pid)
        self.life = Life.STARTING
        self.exit_code: int | None = None
        self.signals: list[int] = []
        self.stop_queue: list[str] = []
        self._stepping = False
        self._why = ""                             # the reason of the life event in hand
        self._reload_rids: list[str] = []          # the requests of the reload in hand
        self._deferred_reloads: list[str] = []     # reloads asked for while one was busy
        self._reload_asked = False                 # a reload (SIGHUP or request) is deferred
        self._reloading: tuple[str, ...] = ()      # workers the applied reload restarts

    # -- views the tests and the status line use -------------------------------------------

    @property
    def procs(self) -> dict[str, Proc]:
        return self.workers.procs

    @property
    def starting_up(self) -> bool:
        return self.life is Life.STARTING

    @property
    def stopping(self) -> bool:
        return self.life in (Life.STOPPING, Life.STOPPED)

    @property
    def done(self) -> bool:
        return self.life is Life.STOPPED

    def status_text(self) -> str:
        if self.stopping:
            return "stopping"
        if self.starting_up:
            return self.publisher.last_status or "starting"
        return status_text(self.workers.ordered(), self.startup.outcome == "degraded")

    # -- batchd's own life -----------------------------------------------------------------

    def life_event(self, event: life.Event, why: str = "") -> None:
        """Feed batchd's life table and carry out the row's actions in order."""
        old = self.life
        self.life, actions = life.step(self.life, event)
        if self.life is not old:
            self.log.info("batchd life", old=old.value, new=self.life.value,
                          on=event.value, why=why or None)
        self._why = why
        for action in actions:
            self._LIFE[action](self)

    def _finish_startup(self) -> None:
        self.startup.write(self.layout, self.startup.outcome)
        self.log.info("startup recovery done", startup=self.startup.id,
                      outcome=self.startup.outcome, duration_ms=self.startup.duration_ms())
        self.notifier.ready(self.status_text())
        self.publisher.last_status = self.status_text()
        self.scan_control()

    def _abort_startup(self) -> None:
        self.log.error("startup recovery failed", startup=self.startup.id, error=self._why)
        self.startup.close_open(self._why or "aborted")
        self.startup.write(self.layout, "failed")

    def _defer_reload(self) -> None:
        self._reload_asked = True
        self._deferred_reloads += self._reload_rids

    def _replay_reload(self) -> None:
        if self._reload_asked:
            rids, self._deferred_reloads, self._reload_asked = self._deferred_reloads, [], False
            self.reload(rids)

    def _apply_reload(self) -> None:
        """Re-read the config from the same source; restart only the workers it changed."""
        rids = self._reload_rids
        new = read_new_config(self.cfg, self.config_path)
        if isinstance(new, str):
            self.log.error("reload refused; keeping the running configuration", error=new)
            self.publisher.status(f"reload refused: {new}")
            for rid in rids:
                self.control.reply(rid, False, f"reload refused: {new}")
            self.life_event(life.Event.RELOADED)
            return
        if new.log != self.cfg.log:
            try:
                self.log = _log.setup(new.log, name="batchd")
            except ConfigError as exc:
                self.log.error("reload: cannot switch logging; keeping it", error=str(exc))
        todo = plan(self.cfg, new, lambda n: self.procs[n].state is State.STOPPED)
        self.cfg = new
        self.workers.reconfigure(new)
        self.log.info("configuration reloaded", source=new.source, changed=todo.changed,
                      restarting=todo.restart, starting=todo.started, stopping=todo.stopped)
        for name in todo.stopped:
            self.event(name, Event.STOP)
        told = todo.restart + todo.started
        self.control.wait(rids, "start", told, todo.message(), todo.result())
        if not told:      # nothing to wait for: answered at once
            self.control.resolve(self.procs)
        for name in todo.restart:
            self.event(name, Event.RESTART)
        for name in todo.started:
            self.event(name, Event.START)
        self._reloading = (*told, *todo.stopped)   # judged once every one of them was told
        if self._reloading:
            self._after()
        else:
            self.life_event(life.Event.RELOADED)

    def _begin_shutdown(self) -> None:
        self.log.info("shutting down", reason=self._why, exit_code=self.exit_code)
        self.notifier.stopping(f"stopping: {self._why}")
        self.publisher.last_status = "stopping"
        self.stop_queue = list(reversed(WORKER_NAMES))
        self.control.refuse_all("batchd is shutting down")
        self._stop_next()

    def _leave(self) -> None:
        """The loop ends after this turn (`done`)."""

    _LIFE: dict[life.Do, Callable[[Batchd], None]] = {
        life.Do.FINISH_STARTUP: _finish_startup,
        life.Do.ABORT_STARTUP: _abort_startup,
        life.Do.DEFER_RELOAD: _defer_reload,
        life.Do.APPLY_RELOAD: _apply_reload,
        life.Do.REPLAY_RELOAD: _replay_reload,
        life.Do.BEGIN_SHUTDOWN: _begin_shutdown,
        life.Do.LEAVE: _leave,
    }

    def shutdown(self, code: int, reason: str) -> None:
        """Stop the workers one by one in reverse start order, then leave the loop."""
        if self.exit_code is None or code > self.exit_code:
            self.exit_code = code
        self.life_event(life.Event.SHUTDOWN, reason)

    def reload(self, rids: list[str]) -> None:
        """A reload asked for by SIGHUP (no request) or by `batchctl reload` requests."""
        self._reload_rids = rids
        self.life_event(life.Event.RELOAD)

    # -- workers ---------------------------------------------------------------------------

    def event(self, name: str, ev: Event, *, exitstatus: int | None = None,
              message: str | None = None) -> Transition | None:
        """Feed one event to worker `name`; then see what it means for batchd."""
        t = self.workers.event(name, ev, exitstatus=exitstatus, message=message)
        if t is not None:
            if Action.ESCALATE in t.actions:
                self._escalate(self.procs[name])
            self._after()
        return t

    def _escalate(self, proc: Proc) -> None:
        """A worker went FATAL: a critical one takes batchd down (exit 1)."""
        if not proc.critical or self.stopping:
            return
        if self.starting_up and self.startup.in_phase(proc.name):
            return                    # its phase records the failure and aborts startup
        self.log.error("critical worker is FATAL: stopping batchd", worker=proc.name,
                       message=proc.message)
        if self.exit_code is None or self.exit_code < EXIT_FAILURE:
            self.exit_code = EXIT_FAILURE
        self.life_event(life.Event.CRITICAL_FATAL,
                        f"critical worker {proc.name} is FATAL: {proc.message}")

    def _after(self) -> None:
        """After any worker transition: startup progress, shutdown progress, waiters,
        a reload that is through."""
        if self.starting_up:
            self._progress()
        if self.life is Life.STOPPING:
            self._stop_next()
        self.control.resolve(self.procs)
        if self.life is Life.RELOADING and self._reloading and all(
                self.procs[n].state not in (State.STARTING, State.STOPPING)
                for n in self._reloading):
            self._reloading = ()
            self.life_event(life.Event.RELOADED)

    def begin(self) -> None:
        """Start recovery: the first phase's workers."""
        self.log.info("startup recovery begins", startup=self.startup.id,
                      phases=[list(p) for p in phases_for(enabled_workers(self.cfg))])
        self._next_phase()

    def _next_phase(self) -> None:
        workers = self.startup.next_phase()
        if workers is None:
            self.life_event(life.Event.RECOVERED)
            return
        self.publisher.status(f"recovering: {', '.join(workers)}")
        for w in workers:
            self.event(w, Event.START)
        self.startup.begin_phase(workers)    # judged once all are started
        self._progress()

    def _progress(self) -> None:
        verdict = self.startup.judge(self.procs, self.workers.ready_records)
        if verdict.kind == "next":
            self._next_phase()
        elif verdict.kind == "recovered":
            self.life_event(life.Event.RECOVERED)
        elif verdict.kind == "failed":
            if self.exit_code is None or self.exit_code < EXIT_FAILURE:
                self.exit_code = EXIT_FAILURE
            self.life_event(life.Event.STARTUP_FAILED, f"startup failed: {verdict.error}")

    def _stop_next(self) -> None:
        """Stop the head of the queue; when it is down, the next (one at a time)."""
        if self._stepping:
            return                    # re-entered from the STOP event below
        self._stepping = True
        try:
            while self.stop_queue:
                proc = self.procs[self.stop_queue[0]]
                if proc.state in (State.STARTING, State.RUNNING, State.BACKOFF) or (
                        proc.state is State.STOPPING and proc.restart):
                    self.event(proc.name, Event.STOP)
                if proc.state is State.STOPPING:
                    return
                self.stop_queue.pop(0)
            self.life_event(life.Event.ALL_STOPPED)
        finally:
            self._stepping = False

    def timer_fired(self, key: str) -> None:
        """A timer came due: a worker's startsecs/backoff/stopwait, or a global chore."""
        worker_event = self.workers.timer_event(key)
        if worker_event is not None:
            name, ev, message = worker_event
            self.event(name, ev, exitstatus=None, message=message)
        elif key == "watchdog":
            self.notifier.watchdog()
            self._arm_watchdog()
        elif key == "reply-gc":
            self.gc_replies()
        elif key in ("rescan", "ready-recheck"):
            self.scan()
            if key == "rescan":
                self.timers.set("rescan", self.clock.monotonic() + RESCAN_INTERVAL)

    def _arm_watchdog(self) -> None:
        if self.notifier.watchdog_interval:
            self.timers.set("watchdog",
                            self.clock.monotonic() + self.notifier.watchdog_interval)

    def reaped(self, pid: int, status: int) -> None:
        """A child was reaped by waitpid."""
        exited = self.workers.reaped(pid, status)
        if exited is not None:
            name, code, message = exited
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

    def scan(self) -> None:
        """Look at the files inotify hinted at: ready records, control requests."""
        for name in WORKER_NAMES:
            if self.workers.ready_now(name):
                self.event(name, Event.READY)
        if self.workers.awaiting_ready():
            self.timers.set("ready-recheck", self.clock.monotonic() + READY_RECHECK)
        self.scan_control()

    # -- control requests ------------------------------------------------------------------

    def scan_control(self) -> None:
        """Act on new control requests (each once; see batchd.control)."""
        for req in self.control.scan(accepting=not self.starting_up):
            self._act_on(req)

    def _act_on(self, req: Request) -> None:
        rid = req.id
        if self.stopping:
            self.control.reply(rid, False, "batchd is shutting down")
            return
        if req.op == "shutdown":
            self.control.reply(rid, True, "shutting down")
            self.shutdown(EXIT_OK, "shutdown requested by batchctl")
            return
        if req.op == "reload":
            self.reload([rid])
            return
        if req.worker not in self.procs:
            self.control.reply(rid, False, f"unknown worker {req.worker!r} (expected one of "
                                           f"{', '.join(WORKER_NAMES)})")
            return
        if req.op != "stop" and not self.workers.enabled(req.worker):
            self.control.reply(rid, False, f"worker {req.worker} is not configured "
                                           "(api.listen is null); set it and reload")
            return
        assert req.worker is not None
        {"start": self.start_worker, "stop": self.stop_worker,
         "restart": self.restart_worker}[req.op](rid, req.worker)

    def start_worker(self, rid: str | None, name: str) -> None:
        proc = self.procs[name]
        if proc.state is State.RUNNING:
            if rid is not None:
                self.control.reply(rid, True, "already running")
            return
        self.control.wait([rid] if rid else [], "start", [name], "started")
        if proc.state is State.STOPPING:
            self.event(name, Event.RESTART)     # start again once it is down
        elif proc.state is not State.STARTING:
            self.event(name, Event.START)
        self.control.resolve(self.procs)

    def stop_worker(self, rid: str | None, name: str) -> None:
        proc = self.procs[name]
        if proc.state in (State.STOPPED, State.EXITED, State.FATAL):
            if rid is not None:
                self.control.reply(rid, True, f"not running ({proc.state.value})")
            return
        self.control.wait([rid] if rid else [], "stop", [name], "stopped")
        self.event(name, Event.STOP)
        self.control.resolve(self.procs)

    def restart_worker(self, rid: str | None, name: str) -> None:
        """Stop then start it (a BACKOFF or stopped one just starts); answered when it is
        RUNNING, or as soon as it is in BACKOFF/FATAL."""
        self.control.wait([rid] if rid else [], "start", [name], "restarted")
        self.event(name, Event.RESTART)
        self.control.resolve(self.procs)

    def gc_replies(self) -> None:
        """Remove expired replies; come back when the oldest left expires."""
        due = self.control.gc()
        if due is not None:
            self.timers.set("reply-gc",
                            self.clock.monotonic() + (due - self.clock.time()) + 1.0)

    # -- publishing ------------------------------------------------------------------------

    def publish(self) -> None:
        """workers.json if anything changed (failed: the "publish" timer), then STATUS=."""
        if not self.workers.dirty or self.timers.pending("publish"):
            return
        retry = self.publisher.workers(self.workers.ordered(), self.clock.time())
        if retry is not None:                       # ENOSPC, EIO: the change stays
            self.timers.set("publish", self.clock.monotonic() + retry)
        self.workers.dirty = retry is not None
        if self.life in (Life.RUNNING, Life.RELOADING):
            self.publisher.status(self.status_text())

    # -- signals and the loop --------------------------------------------------------------

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self.reap()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.shutdown(EXIT_OK, f"{signal.Signals(signum).name} received")
        elif signum == signal.SIGHUP and not self.stopping:
            self.log.info("SIGHUP received: reloading the configuration")
            self.reload([])

    def arm_reply_gc(self) -> None:
        """After replies were written: remove them once they are REPLY_TTL old."""
        if self.control.replied and not self.timers.pending("reply-gc"):
            self.timers.set("reply-gc", self.clock.monotonic() + REPLY_TTL + 1.0)
        self.control.replied = False

