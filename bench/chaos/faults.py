"""The chaos run's faults: a table drawn from a seeded generator, and what each one does.

A fault is `Fault(name, weight, act)`; `act(run)` carries it out now, or returns False when
it cannot apply at this instant (a worker that is not RUNNING, no running job, batchd down,
a disk window already open), and another is drawn. SIGKILLs are counted by target in
`kills_by`; the others (SIGSTOP windows, SIGTERM restarts, ENOSPC windows) in `faults`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.chaos.run import Run

__all__ = ["FAULTS", "KILL_TARGETS", "REDRAW", "Fault"]

WORKERS = ("scheduler", "locks", "reaper", "callbacks")
KILL_TARGETS = ("batchd", *WORKERS, "adaptor", "agent")


@dataclass(frozen=True)
class Fault:
    name: str
    weight: float
    act: Callable[[Run], bool]


def _kill_batchd(run: Run) -> bool:
    """SIGKILL batchd (its workers die with it); systemd restarts it after a random delay."""
    if run.rig.batchd_pid is None or run.systemd.restarting:
        return False
    run.systemd.expect("kill")
    if not run.rig.signal_batchd(signal.SIGKILL):
        return False
    run.killed("batchd", None)
    return True


def _kill_worker(name: str) -> Callable[[Run], bool]:
    def act(run: Run) -> bool:
        pid = run.rig.running_worker(name)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        run.rig.workers[name].state = "KILLED"
        run.killed(name, None)
        return True
    act.__name__ = f"kill_{name}"
    return act


def _kill_job_proc(adaptor: bool) -> Callable[[Run], bool]:
    def act(run: Run) -> bool:
        procs = run.rig.job_procs()
        adaptors = {p.pid for p in procs if p.adaptor}
        if adaptor:
            targets = [p for p in procs if p.adaptor]
        else:       # the agent: the adaptor's child (/bin/sh -c, or the program it exec'd)
            targets = [p for p in procs if not p.adaptor and p.ppid in adaptors]
        if not targets:
            return False
        target = run.rng_faults.choice(sorted(targets, key=lambda p: p.pid))
        try:
            os.kill(target.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        run.killed("adaptor" if adaptor else "agent", target.job)
        return True
    return act


def _stop_worker(run: Run) -> bool:
    """SIGSTOP a RUNNING worker; SIGCONT it 1-4 s later."""
    name = run.rng_faults.choice(WORKERS)
    pid = run.rig.running_worker(name)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    run.fault("sigstop")

    def cont() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    run.later(run.rng_faults.uniform(1.0, 4.0), cont)
    return True


def _sigterm_restart(run: Run) -> bool:
    """A clean restart: SIGTERM, batchd stops its workers and exits 0, systemd starts it."""
    if run.rig.batchd_pid is None or run.systemd.restarting:
        return False
    run.systemd.expect("term")
    if not run.rig.signal_batchd(signal.SIGTERM):
        return False
    run.fault("sigterm")
    return True


def _enospc(run: Run) -> bool:
    """Fill the state dir's file system for 1-5 s (at most one window at a time, 20 s
    apart at least)."""
    if run.rig.tmpfs is None or run.disk_full or time.monotonic() < run.disk_next:
        return False
    run.disk_full = True
    run.rig.fill()
    run.fault("enospc")
    start = time.time()
    hold = run.rng_faults.uniform(1.0, 5.0)

    def free() -> None:
        run.rig.free()
        run.disk_full = False
        run.disk_next = time.monotonic() + 20.0
        run.enospc_windows.append((start, time.time()))

    def top_up() -> None:
        if run.disk_full:
            run.rig.fill()

    for t in (0.5, 1.0, 2.0, 3.0, 4.0):
        if t < hold:
            run.later(t, top_up)
    run.later(hold, free)
    return True


#: The faults and their weights (relative; the run draws `rate` of them per second).
FAULTS: tuple[Fault, ...] = (
    Fault("kill_batchd", 2.0, _kill_batchd),
    Fault("kill_scheduler", 12.0, _kill_worker("scheduler")),
    Fault("kill_locks", 10.0, _kill_worker("locks")),
    Fault("kill_reaper", 8.0, _kill_worker("reaper")),
    Fault("kill_callbacks", 10.0, _kill_worker("callbacks")),
    Fault("kill_adaptor", 5.0, _kill_job_proc(adaptor=True)),
    Fault("kill_agent", 5.0, _kill_job_proc(adaptor=False)),
    Fault("sigstop_worker", 2.0, _stop_worker),
    Fault("sigterm_restart", 0.5, _sigterm_restart),
    Fault("enospc", 0.5, _enospc),
)

#: What a draw that could not apply is replaced by: the faults of workers and jobs (never
#: batchd's own, whose restarts would otherwise pile up while it starts).
REDRAW: tuple[Fault, ...] = tuple(f for f in FAULTS if f.name.startswith(("kill_", "sigstop"))
                                  and f.name != "kill_batchd")
