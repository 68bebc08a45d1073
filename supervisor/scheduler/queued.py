"""The scheduler's queued jobs: the Runnable index built from the queue, retries, pause.

`index(queue, now)` rebuilds the index of scheduler.runnable from the WAL at start (law 4:
priorities, delays and dependencies are in the jobs' bodies, so a restart keeps order and
times). `retry_job(entry, ...)` makes the new job that retries a lost or failed one that
has `retries` left: its id is derived from the retried job's, so a crash replay of the
finalize finds the retry already queued instead of making a second. `Paused` is the
scheduler's one pause flag, kept in `scheduler/paused.json` (one writer: the scheduler;
batchctl asks through the inbox), so a restart stays paused.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.scheduler.runnable import Runnable
from supervisor.state.atomic import Corrupt, Missing
from supervisor.state.clock import iso_now
from supervisor.state.jobs import retry_spec
from supervisor.state.layout import PAUSED, Layout, read_record, write_record
from supervisor.state.queue import JobQueue

__all__ = ["Paused", "add", "agent_load", "index", "retry_id", "retry_job"]


def _follow(queue: JobQueue) -> Any:
    def follow(job_id: str) -> str | None:
        if queue.state(job_id) not in ("failed", "lost"):      # only these are retried
            return None
        entry = queue.get(job_id)
        retried = None if entry is None else entry.get("retried_as")
        return retried if isinstance(retried, str) else None
    return follow


def index(queue: JobQueue, now: float) -> tuple[Runnable, list[tuple[str, str]]]:
    """The index of every queued job, in submission order; the (job, reason) of those
    that can never run (a dependency that ended otherwise, or is unknown)."""
    runnable = Runnable()
    doomed = []
    follow = _follow(queue)
    for job_id in queue.ids("queued"):
        entry = queue.get(job_id)
        if entry is None:
            continue
        reason = runnable.add(entry, queue.state, follow, now)
        if reason is not None:
            doomed.append((job_id, reason))
    return runnable, doomed


def add(runnable: Runnable, queue: JobQueue, entry: Mapping[str, Any], now: float,
        state_of: Any = None) -> str | None:
    """Index one newly queued job (see Runnable.add); the reason it can never run."""
    return runnable.add(entry, state_of or queue.state, _follow(queue), now)


def agent_load(queue: JobQueue) -> Counter[str]:
    """Jobs of each agent that are waiting for locks, starting or running (what an
    agent's max_concurrent counts)."""
    load: Counter[str] = Counter()
    for state in ("waiting", "starting", "running"):
        for job_id in queue.ids(state):
            entry = queue.get(job_id)
            if entry is not None:
                load[str(entry.get("agent"))] += 1
    return load


def retry_id(entry: Mapping[str, Any], n: int, taken: Sequence[str] = ()) -> str:
    """The id of retry `n` of a chain rooted at `entry`'s root: `<root>.r<n>`, shortened
    with a digest to stay within 64 characters; `taken` (ids that exist but are not this
    job's retry) pushes it to a digest-qualified form. Deterministic: a replay derives the
    same id."""
    root = str(entry.get("retry_root") or entry["id"])
    candidate = f"{root}.r{n}"
    digest = hashlib.sha256(f"{entry['id']}\0{n}".encode()).hexdigest()[:8]
    if len(candidate) > 64:
        candidate = f"{root[:64 - len(f'.r{n}') - 9]}-{digest}.r{n}"
    if candidate in taken:
        candidate = f"{candidate[:64 - 9]}-{digest}"
    return candidate


def retry_job(entry: Mapping[str, Any], new_id: str, *, finished: float,
              schedule: Sequence[float], workspace: str) -> dict[str, Any]:
    """The body of the job that retries `entry` (which ended lost or failed with retries
    left): its spec, `retry_of`, one retry less, not before the retry schedule's delay."""
    n = int(entry.get("retry_n") or 0) + 1
    delay = float(schedule[min(n, len(schedule)) - 1]) if schedule else 0.0
    job = retry_spec(entry)
    job.update(id=new_id, retry_of=str(entry["id"]),
               retry_root=str(entry.get("retry_root") or entry["id"]), retry_n=n,
               retries=int(entry.get("retries") or 0) - 1, workspace=workspace,
               created_at=iso_now(finished), not_before=iso_now(finished + delay))
    return job


@dataclass
class Paused:
    """The pause flag as `scheduler/paused.json` holds it (missing: not paused)."""

    paused: bool = False
    since: str | None = None

    @classmethod
    def read(cls, layout: Layout, *, owner: bool) -> Paused:
        """The flag (a corrupt file reads as paused: starting jobs nobody meant to start is
        the worse mistake). Its owner quarantines it and writes the pause in its place, so
        every reader (`status`) sees the pause the scheduler keeps and `resume` ends it."""
        rec = read_record(PAUSED, layout.paused_file, owner=owner)
        if isinstance(rec, Missing):
            return cls()
        if isinstance(rec, Corrupt):
            paused = cls(True, iso_now())
            if owner:
                with contextlib.suppress(OSError):      # still paused in memory
                    paused.write(layout)
            return paused
        return cls(bool(rec.get("paused")), rec.get("since"))

    def write(self, layout: Layout) -> None:
        """Durably (atomic record), before the scheduler acts on it."""
        write_record(PAUSED, layout.paused_file, {"paused": self.paused, "since": self.since})
