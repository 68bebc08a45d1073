"""The settle check of held batch events: is the batch still done with the same jobs?

A batch event waits `callbacks.batch_settle` after its batch's last job ended; then this
check reads the scheduler's job queue (its WAL, opened read-only, never written) and
says SEND (every job it lists is terminal and no job joined the batch since), WAIT (a
job it lists is not terminal in the queue yet) or SUPERSEDED (the batch gained jobs: a
later event, emitted when those end, covers them). docs/CALLBACKS.md has the argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from supervisor.runtime import Log
from supervisor.state.queue import TERMINAL_STATES, JobQueue, QueueError
from supervisor.state.wal import WalError

__all__ = ["BatchCheck", "Verdict", "check_batches", "members_of", "wal_check"]


class Verdict(StrEnum):
    """What the check says of one held batch event."""

    SEND = "send"                # the batch is done with exactly these jobs: deliver it
    WAIT = "wait"                # a job it lists is not terminal in the queue yet
    SUPERSEDED = "superseded"    # the batch gained jobs since: drop it


#: held records -> event id -> verdict (an id left out: WAIT).
BatchCheck = Callable[[Sequence[dict[str, Any]]], dict[str, Verdict]]


def members_of(rec: dict[str, Any]) -> list[str]:
    """The job ids a batch event lists (its payload's batch record), in submission order."""
    jobs = rec["payload"]["batch"]["jobs"]
    return [str(j) for j in jobs]


def check_batches(queue: JobQueue, recs: Sequence[dict[str, Any]]) -> dict[str, Verdict]:
    """The verdict on each held batch event against `queue` (a read-only view).

    A listed job the queue no longer knows counts as terminal (it was, to be listed). A
    job joined the batch after the event was made only if it was submitted after the
    newest listed job (the scheduler lists every job it has indexed when it emits), so
    only the jobs after that one are read."""
    verdicts: dict[str, Verdict] = {}
    position: dict[str, int] | None = None
    ids: list[str] = []
    joined: dict[tuple[str, int], bool] = {}
    for rec in recs:
        members = members_of(rec)
        states = [queue.state(job) for job in members]
        if any(state is not None and state not in TERMINAL_STATES for state in states):
            verdicts[rec["id"]] = Verdict.WAIT
            continue
        if position is None:
            ids = queue.ids()
            position = {job: i for i, job in enumerate(ids)}
        start = 1 + max((position.get(job, -1) for job in members), default=-1)
        key = (str(rec["batch"]), start)
        if key not in joined:
            joined[key] = any((queue.get(job) or {}).get("batch") == rec["batch"]
                              for job in ids[start:])
        verdicts[rec["id"]] = Verdict.SUPERSEDED if joined[key] else Verdict.SEND
    return verdicts


def wal_check(wal_dir: Path, log: Log) -> BatchCheck:
    """The production check: the scheduler's WAL at `wal_dir`, opened read-only for each
    round of checks; when it cannot be read every event waits (and it is said why)."""
    def check(recs: Sequence[dict[str, Any]]) -> dict[str, Verdict]:
        try:
            if not wal_dir.is_dir():        # a batch event comes from a scheduler with a log
                raise FileNotFoundError(f"no job queue at {wal_dir}")
            queue = JobQueue.open(wal_dir, readonly=True)
        except (OSError, WalError, QueueError) as exc:
            log.warning("cannot read the job queue: held batch events wait", error=str(exc),
                        events=len(recs))
            return {}
        try:
            return check_batches(queue, recs)
        finally:
            queue.close()
    return check
