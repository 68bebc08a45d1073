"""Processes of jobs that are finished or unknown: SIGTERM, then SIGKILL after kill_grace.

A process belongs to a job of this state dir when its environment carries
`BATCHD_JOB_DIR=<state_dir>/jobs/<id>` (every process of a job inherits it from the
adaptor, wherever it moved: another session, another user). One whose job is finished
or unknown and that is older than `reaper.grace` is an orphan (the scheduler kills a
job's process group when it ends; what left that group, or outlived a scheduler killed
at the wrong instant, is the reaper's). Right before each signal the process is checked
again — the same pid with the same start time, its job still finished or unknown (the
queue read afresh) — so a reused pid or a job id used again is never hit.

The SIGKILL deadlines live in memory only: a reaper restarted in the grace sends SIGTERM
again and waits the grace again (never less), which is all a crash can cost here.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor.state.proc import Tagged, age_of, alive, tagged
from supervisor.state.retention import Known, process_verdict

__all__ = ["Orphans"]

#: The job's state read afresh (None: unknown), right before a signal.
StateOf = Callable[[str], str | None]


@dataclass
class Orphans:
    """The orphans signalled so far: (pid, start) -> when SIGKILL is due (epoch seconds)."""

    grace: float
    kill_grace: float
    jobs_dir: str
    due: dict[tuple[int, int], float] = field(default_factory=dict)

    def next_due(self) -> float | None:
        return min(self.due.values(), default=None)

    def reap(self, known: Known, now: float, state_of: StateOf,
             on_signal: Callable[[Tagged, str, str], None]) -> int:
        """One look at every tagged process: SIGTERM new orphans, SIGKILL those whose
        grace is over; how many orphans were found this time (first SIGTERMs).
        `on_signal(process, signal name, why)` reports each signal sent."""
        found = tagged(self.jobs_dir)
        present = {(t.pid, t.start) for t in found}
        for key in [k for k in self.due if k not in present]:
            del self.due[key]                        # gone (by our signal, or by itself)
        first = 0
        for t in found:
            key = (t.pid, t.start)
            why = process_verdict(t.job_id, age_of(t.start, now), known, grace=self.grace)
            if why is None:
                self.due.pop(key, None)
                continue
            if key not in self.due:
                if _signal(t, signal.SIGTERM, state_of):
                    self.due[key] = now + self.kill_grace
                    first += 1
                    on_signal(t, "SIGTERM", why)
            elif now >= self.due[key] and _signal(t, signal.SIGKILL, state_of):
                on_signal(t, "SIGKILL", why)
        return first


def _signal(t: Tagged, sig: signal.Signals, state_of: StateOf) -> bool:
    """Send `sig` if `t` is still the same process and its job still finished/unknown."""
    state = state_of(t.job_id)
    if state in ("queued", "waiting", "starting", "running") or not alive(t.pid, t.start):
        return False
    try:
        os.kill(t.pid, sig)
    except ProcessLookupError:
        return False
    return True
