"""Which queued job starts next: priorities, delays, dependencies and agent limits, indexed.

The scheduler's only memory of its queued jobs, rebuilt from the queue at every start (law
4). A queued job is in exactly one place:

    blocked   it waits for jobs of its `after`/`after_any` (indexed by the job it waits
              for, so a job's end touches only its own waiters: a chain of 10,000 costs
              one step per end, not a scan);
    delayed   its `not_before` is still ahead (a heap by time; the loop sleeps until the
              first one: a timer, not a poll);
    ready     it may start: one heap per agent by (-priority, submission order), so a job
              held back by its agent's `max_concurrent` never blocks another agent's.

`pop` gives the best ready job whose agent has room. A dependency that ends otherwise than
the waiter asks for (`after`: anything but completed) dooms the waiter: `ended` returns it
with its reason ("dependency JOB failed"), and the scheduler fails it without running it.
A dependency that ends failed or lost but will be retried (`retried_as`) is not an end:
its waiters wait for the retry instead. Nothing here writes a file or reads a clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor.state.clock import parse_iso

__all__ = ["Runnable"]

_TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out", "lost"})


@dataclass
class _Queued:
    """One queued job as the index sees it."""

    agent: str
    priority: int
    seq: int
    not_before: float | None
    all_of: set[str] = field(default_factory=set)     # `after` deps not yet completed
    any_of: set[str] = field(default_factory=set)     # `after_any` deps not yet terminal


@dataclass
class Runnable:
    """The queued jobs' order and readiness (see the module docstring)."""

    jobs: dict[str, _Queued] = field(default_factory=dict)
    ready: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    delayed: list[tuple[float, int, str]] = field(default_factory=list)
    waiters: dict[str, set[str]] = field(default_factory=dict)   # dep -> jobs waiting on it
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    # -- what comes in ------------------------------------------------------------------------

    def add(self, entry: Mapping[str, Any], state_of: Callable[[str], str | None],
            follow: Callable[[str], str | None], now: float) -> str | None:
        """Index a queued job; the reason it can never run (a dependency that already
        ended otherwise, or is unknown), or None. `state_of(id)` is a job's state,
        `follow(id)` the job a failed/lost one was retried as (None: not retried)."""
        job_id = str(entry["id"])
        if job_id in self.jobs:
            return None
        priority = entry.get("priority")
        item = _Queued(agent=str(entry.get("agent")),
                       priority=priority if isinstance(priority, int) else 0,
                       seq=next(self._seq), not_before=parse_iso(entry.get("not_before")))
        for key, bucket in (("after", item.all_of), ("after_any", item.any_of)):
            for named in entry.get(key) or ():
                dep = _last_retry(str(named), follow)
                state = state_of(dep)
                if state is None:
                    return f"dependency {dep} is unknown"
                if state not in _TERMINAL:
                    bucket.add(dep)
                elif key == "after" and state != "completed":
                    return f"dependency {dep} {state}"
        self.jobs[job_id] = item
        for dep in item.all_of | item.any_of:
            self.waiters.setdefault(dep, set()).add(job_id)
        self._place(job_id, now)
        return None

    def _place(self, job_id: str, now: float) -> None:
        item = self.jobs[job_id]
        if item.all_of or item.any_of:
            return                                             # blocked
        if item.not_before is not None and item.not_before > now:
            heapq.heappush(self.delayed, (item.not_before, item.seq, job_id))
            return
        heapq.heappush(self.ready.setdefault(item.agent, []),
                       (-item.priority, item.seq, job_id))

    def ended(self, job_id: str, state: str, retried_as: str | None,
              now: float) -> list[tuple[str, str]]:
        """Job `job_id` reached `state`: its waiters move on; the (job, reason) of those
        it dooms. A job retried as another hands its waiters to the retry."""
        self.discard(job_id)
        waiting = self.waiters.pop(job_id, set())
        if retried_as is not None and state in ("failed", "lost"):
            for waiter in waiting:
                item = self.jobs[waiter]
                for bucket in (item.all_of, item.any_of):
                    if job_id in bucket:
                        bucket.discard(job_id)
                        bucket.add(retried_as)
                self.waiters.setdefault(retried_as, set()).add(waiter)
            return []
        doomed = []
        for waiter in sorted(waiting, key=lambda w: self.jobs[w].seq):
            item = self.jobs[waiter]
            if job_id in item.all_of and state != "completed":
                doomed.append((waiter, f"dependency {job_id} {state}"))
                self.discard(waiter)                 # never ready; its waiters stay listed
                continue
            item.all_of.discard(job_id)
            item.any_of.discard(job_id)
            self._place(waiter, now)
        return doomed

    def discard(self, job_id: str) -> None:
        """Forget a job that left `queued` (started, cancelled, failed); heaps drop it
        lazily, and its own dependencies stop listing it."""
        item = self.jobs.pop(job_id, None)
        if item is None:
            return
        for dep in item.all_of | item.any_of:
            waiting = self.waiters.get(dep)
            if waiting is not None:
                waiting.discard(job_id)
                if not waiting:
                    del self.waiters[dep]

    # -- what goes out ------------------------------------------------------------------------

    def due(self, now: float) -> float | None:
        """Move the delayed jobs whose time has come to ready; when the next one is due."""
        while self.delayed:
            when, seq, job_id = self.delayed[0]
            item = self.jobs.get(job_id)
            if item is None or item.seq != seq:
                heapq.heappop(self.delayed)                    # gone, or placed again
                continue
            if when > now:
                return when
            heapq.heappop(self.delayed)
            heapq.heappush(self.ready.setdefault(item.agent, []),
                           (-item.priority, item.seq, job_id))
        return None

    def next_delayed(self) -> float | None:
        """When the first delayed job may start (looking only; `due` moves it)."""
        while self.delayed:
            when, seq, job_id = self.delayed[0]
            item = self.jobs.get(job_id)
            if item is not None and item.seq == seq and item.not_before == when:
                return when
            heapq.heappop(self.delayed)                        # gone, or placed again
        return None

    def pop(self, room: Callable[[str], bool]) -> tuple[str, _Queued] | None:
        """The best ready job whose agent has `room`, taken out of the index (with what
        `restore` needs to put it back), or None."""
        best: tuple[int, int, str] | None = None
        for agent, heap in self.ready.items():
            while heap and heap[0][2] not in self.jobs:
                heapq.heappop(heap)                            # gone meanwhile
            if heap and room(agent) and (best is None or heap[0] < best):
                best = heap[0]
        if best is None:
            return None
        job_id = best[2]
        item = self.jobs[job_id]
        heapq.heappop(self.ready[item.agent])
        self.discard(job_id)
        return job_id, item

    def restore(self, job_id: str, item: _Queued) -> None:
        """Put back a job `pop` gave that could not start after all (same place in line)."""
        self.jobs[job_id] = item
        heapq.heappush(self.ready.setdefault(item.agent, []),
                       (-item.priority, item.seq, job_id))

    def has_ready(self) -> bool:
        """Whether some job may start now (an agent limit aside)."""
        return any(any(j in self.jobs for _, _, j in heap) for heap in self.ready.values())

    def why(self, job_id: str, now: float) -> str | None:
        """Why a queued job has not started, as far as the index knows."""
        item = self.jobs.get(job_id)
        if item is None:
            return None
        if item.all_of or item.any_of:
            return "after " + ", ".join(sorted(item.all_of | item.any_of))
        if item.not_before is not None and item.not_before > now:
            return "not_before"
        return None

    def __len__(self) -> int:
        return len(self.jobs)


def _last_retry(job_id: str, follow: Callable[[str], str | None]) -> str:
    """The last job of `job_id`'s retry chain (itself when it was never retried)."""
    seen = {job_id}
    while (nxt := follow(job_id)) is not None and nxt not in seen:
        seen.add(nxt)
        job_id = nxt
    return job_id
