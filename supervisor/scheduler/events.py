"""The webhook events the scheduler emits when a job ends: its job event, and batch events.

A job's events are durable in the callbacks inbox BEFORE its terminal WAL record;
batch events when every job of a batch is terminal, marked as such so that the callbacks
worker holds them for `callbacks.batch_settle` and sends each batch's event once.
docs/CALLBACKS.md tells why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor.state.jobs import batch_record, job_record
from supervisor.state.layout import Layout
from supervisor.state.queue import TERMINAL_STATES, JobQueue
from supervisor.state.webhook import (
    batch_event_id,
    batch_payload,
    delivery_request,
    drop_request,
    job_event_id,
    job_payload,
)

__all__ = ["BatchIndex", "emit_job_end"]


@dataclass
class BatchIndex:
    """batch name -> job ids in submission order, caught up incrementally from the queue."""

    members: dict[str, list[str]] = field(default_factory=dict)
    seen: int = 0        # how many of queue.ids() have been indexed

    def jobs(self, queue: JobQueue, batch: str) -> list[str]:
        """The ids of `batch`'s jobs, in submission order (read-only: the index's own list).

        Only jobs enqueued since the last call are read; with none, nothing is copied."""
        if len(queue) > self.seen:
            ids = queue.ids()
            for job_id in ids[self.seen:]:
                entry = queue.get(job_id)
                name = entry.get("batch") if entry is not None else None
                if isinstance(name, str):
                    self.members.setdefault(name, []).append(job_id)
            self.seen = len(ids)
        return self.members.get(batch, [])

    def forget(self, queue: JobQueue, forget: Callable[[], list[str]]) -> list[str]:
        """Run `forget` (the queue forgetting jobs) keeping the index exact: caught up
        before, the forgotten ids dropped after (positions in the queue moved)."""
        self.jobs(queue, "")
        gone = forget()
        if gone:
            dropped = set(gone)
            for name, ids in list(self.members.items()):
                kept = [i for i in ids if i not in dropped]
                if kept:
                    self.members[name] = kept
                else:
                    del self.members[name]
            self.seen = len(queue)
        return gone


def emit_job_end(layout: Layout, queue: JobQueue, index: BatchIndex,
                 entry: Mapping[str, Any], state_of: Callable[[str], str | None]) -> int:
    """Drop the webhook events due now that the job `entry` (already holding its terminal
    fields) has ended; return how many requests were written.

    `state_of(id)` gives each job's current state, including terminal states decided in
    this pass but not yet flushed to the WAL.
    """
    written = 0
    url = entry.get("callback")
    if isinstance(url, str) and url:
        record = job_record(dict(entry), layout)
        eid = job_event_id(str(entry["id"]), entry.get("created_at"))
        drop_request(layout, delivery_request(eid, url, job_payload(eid, record),
                                              job=str(entry["id"])))
        written += 1
    batch = entry.get("batch")
    if not isinstance(batch, str) or not batch:
        return written
    members = index.jobs(queue, batch)
    # Most ends leave the batch unfinished, and its newest jobs are the likeliest to still
    # run: look from the newest and stop at the first that is not terminal.
    if any((state_of(job_id) or "queued") not in TERMINAL_STATES
           for job_id in reversed(members)):
        return written
    states = [(job_id, state_of(job_id) or "queued") for job_id in members]
    record = batch_record(batch, states)
    if not record["done"]:
        return written
    urls: list[str] = []
    for job_id in members:
        other = entry if job_id == entry["id"] else queue.get(job_id)
        cb = other.get("callback") if other is not None else None
        if isinstance(cb, str) and cb and cb not in urls:
            urls.append(cb)
    for cb in urls:
        eid = batch_event_id(batch, cb, members)
        # `batch=`: the callbacks worker holds it for the settle window and sends it only
        # if no job joined the batch meanwhile (a later event then covers them).
        drop_request(layout, delivery_request(eid, cb, batch_payload(eid, record),
                                              batch=batch))
        written += 1
    return written
