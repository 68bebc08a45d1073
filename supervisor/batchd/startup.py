"""Startup recovery: the phases of workers in dependency order, their verdicts, the startup log.

A `Startup` is consulted by batchd, never the other way round: `next_phase` names the
workers to start next, `judge` says whether the current phase is still waiting, done or
failed (from the workers' Procs and their ready records), and `write` appends the whole
startup to `startup-log.json`: read, append, keep the last 10, replace atomically. A
corrupt log is quarantined (batchd owns it) and a new one begun.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from structlog.typing import FilteringBoundLogger

from supervisor.batchd.procstate import Proc, State
from supervisor.state.atomic import Corrupt
from supervisor.state.clock import Clock, iso_now
from supervisor.state.layout import STARTUP_LOG, Layout, read_record, write_record

__all__ = ["PHASES", "STARTUP_LOG_KEEP", "Startup", "Verdict", "append_startup", "phases_for"]

#: Startup recovery, in dependency order; the workers of one phase start together. The
#: api (only when configured) comes after the scheduler and the locks are ready.
PHASES: tuple[tuple[str, ...], ...] = (("scheduler",), ("locks",),
                                       ("reaper", "callbacks", "api"))
STARTUP_LOG_KEEP = 10


def phases_for(enabled: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """PHASES with only the `enabled` workers (a phase left empty is dropped)."""
    kept = (tuple(w for w in phase if w in enabled) for phase in PHASES)
    return tuple(phase for phase in kept if phase)


def append_startup(layout: Layout, entry: dict[str, Any],
                   keep: int = STARTUP_LOG_KEEP,
                   log: FilteringBoundLogger | None = None) -> list[dict[str, Any]]:
    """Add one startup to startup-log.json (newest last, at most `keep`); return the list."""
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


@dataclass
class _Phase:
    worker: str
    started_at: str
    t0: float
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class Verdict:
    """What the current phase amounts to: "waiting", "next" (done: start the next phase),
    "recovered" (the last phase is done) or "failed" (a critical worker could not
    recover; `error` says which and why)."""

    kind: str
    error: str | None = None


class Startup:
    """One startup of batchd: its phases, what each worker found and did, the outcome."""

    def __init__(self, clock: Clock, log: FilteringBoundLogger,
                 phases: Sequence[tuple[str, ...]] = PHASES) -> None:
        self.clock = clock
        self.log = log
        self.id = uuid.uuid4().hex[:12]
        self.t0 = clock.monotonic()
        self.started_wall = clock.time()
        self.left: list[tuple[str, ...]] = list(phases)
        self.current: list[_Phase] = []
        self.phase_log: list[dict[str, Any]] = []
        self.outcome = "ok"                  # "degraded" once a non-critical part failed

    def next_phase(self) -> tuple[str, ...] | None:
        """The workers of the next phase (None: recovery is complete)."""
        return self.left.pop(0) if self.left else None

    def begin_phase(self, workers: Sequence[str]) -> None:
        """The phase's workers were told to start: judge them from now on."""
        self.current = [_Phase(w, iso_now(self.clock.time()), self.clock.monotonic())
                        for w in workers]

    def in_phase(self, worker: str) -> bool:
        """Whether `worker` belongs to the phase being judged."""
        return any(ph.worker == worker for ph in self.current)

    def judge(self, procs: Mapping[str, Proc],
              ready_records: Mapping[str, dict[str, Any]]) -> Verdict:
        """Record each worker of the phase that is ready or FATAL; the phase's verdict."""
        if not self.current:
            return Verdict("waiting")
        for ph in self.current:
            if ph.record is not None:
                continue
            proc = procs[ph.worker]
            if proc.ready:
                ph.record = self._record(ph, ok=True, error=None,
                                         ready=ready_records.get(ph.worker, {}))
            elif proc.state is State.FATAL:
                ph.record = self._record(ph, ok=False, error=proc.message)
        if any(ph.record is None for ph in self.current):
            return Verdict("waiting")
        self.phase_log += [ph.record for ph in self.current if ph.record is not None]
        failed = [ph for ph in self.current if ph.record is not None and not ph.record["ok"]]
        self.current = []
        critical = [ph for ph in failed if procs[ph.worker].critical]
        if critical:
            name = critical[0].worker
            return Verdict("failed", f"critical worker {name} could not recover: "
                                     f"{procs[name].message}")
        if failed:
            self.outcome = "degraded"
        return Verdict("next" if self.left else "recovered")

    def close_open(self, error: str) -> None:
        """Record every worker of the current phase not judged yet as failed (`error`)."""
        for ph in self.current:
            if ph.record is None:
                self.phase_log.append(self._record(ph, ok=False, error=error))
        self.current = []

    def _record(self, ph: _Phase, *, ok: bool, error: str | None,
                ready: Mapping[str, Any] | None = None) -> dict[str, Any]:
        rec = ready or {}
        degraded = rec.get("degraded") or []
        if ok and degraded:
            self.outcome = "degraded"
        return {"worker": ph.worker, "started_at": ph.started_at,
                "duration_ms": round((self.clock.monotonic() - ph.t0) * 1000.0, 1), "ok": ok,
                "found": rec.get("found") or {}, "did": rec.get("did") or {},
                "degraded": list(degraded), "error": error}

    def duration_ms(self) -> float:
        return round((self.clock.monotonic() - self.t0) * 1000.0, 1)

    def entry(self, outcome: str) -> dict[str, Any]:
        """This startup as one entry of startup-log.json."""
        return {"id": self.id, "started_at": iso_now(self.started_wall),
                "finished_at": iso_now(self.clock.time()), "duration_ms": self.duration_ms(),
                "outcome": outcome, "phases": self.phase_log}

    def write(self, layout: Layout, outcome: str) -> None:
        """Append this startup to the log (a failure to write is logged, not raised)."""
        try:
            append_startup(layout, self.entry(outcome), log=self.log)
        except OSError as exc:
            self.log.error("cannot write the startup log", error=str(exc))
