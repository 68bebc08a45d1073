"""Job control every door shares (batchctl and the api): cancel, retry, pause and resume.

Each one checks what it is asked against the read-only view, then hands the scheduler ONE
durable request (state.layout.send_request; a retry goes through state.submission.accept,
the very path of `submit`): nothing here writes anything the scheduler owns. A crash
before the request's rename leaves a temp file that is never read as a request; after it,
the scheduler handles the request once (each is idempotent: cancelling a terminal job does
nothing, pausing a paused scheduler changes nothing).

Pause is a flag the scheduler keeps in `scheduler/paused.json` (layout.PAUSED, written only
by the scheduler when it takes a `pause` request, atomically): it survives restarts until a
resume. Readers show the flag as it will be once the requests still in the inbox are
taken (the latest one wins), as they show pending submissions as queued.
"""

from __future__ import annotations

import secrets
from typing import Any

from supervisor.config import Config
from supervisor.state.clock import iso_now
from supervisor.state.jobs import cancel_request, job_record
from supervisor.state.layout import PAUSED, Layout, read_record, send_request
from supervisor.state.submission import Checker, JobError, accept, known
from supervisor.state.view import TERMINAL, open_view, read_pending

__all__ = [
    "NoSuchJob",
    "NotTerminal",
    "cancel",
    "pause_request",
    "paused",
    "paused_on_disk",
    "retry",
    "set_paused",
]


class NoSuchJob(LookupError):
    """The job id is well formed but no job has it; str() is the id."""


class NotTerminal(Exception):
    """A retry of a job that has not ended yet; str() says which state it is in."""


def cancel(cfg: Config, layout: Layout, job_id: str) -> dict[str, Any]:
    """Ask the scheduler to cancel `job_id`: {"job", "state", "requested", "request"}.

    An already-terminal job is left alone (requested false, no request written).
    NoSuchJob if there is no such job."""
    with open_view(cfg, layout) as view:
        entry = view.get(job_id)
    if entry is None:
        raise NoSuchJob(job_id)
    state = str(entry["state"])
    if state in TERMINAL:
        return {"job": job_id, "state": state, "requested": False, "request": None}
    request = cancel_request(job_id)
    send_request(layout, "scheduler", request)
    return {"job": job_id, "state": state, "requested": True, "request": request["id"]}


#: The keys of a job that a retry takes over (its spec as submitted).
_SPEC_KEYS = ("agent", "prompt", "repos", "callback", "timeout", "batch", "exclusive")


def retry(cfg: Config, layout: Layout, job_id: str) -> dict[str, Any]:
    """Submit a new job with `job_id`'s spec and `retry_of` = job_id; its record.

    The new job is checked by the one validator against today's configuration (JobError
    when, say, its agent is gone) and handed over by state.submission.accept, durably.
    NoSuchJob if there is no such job; NotTerminal if it has not ended."""
    with open_view(cfg, layout) as view:
        entry = view.get(job_id)
    if entry is None:
        raise NoSuchJob(job_id)
    if entry["state"] not in TERMINAL:
        raise NotTerminal(f"job {job_id} is {entry['state']}: only an ended job is retried")
    spec = {k: entry[k] for k in _SPEC_KEYS if entry.get(k) is not None}
    job = Checker(known(cfg, layout)).check(spec)
    job["retry_of"] = job_id
    [new_id] = accept(cfg, layout, [job])
    with open_view(cfg, layout) as view:
        new = view.get(new_id)
    if new is None:                     # taken by the scheduler and forgotten: unheard of
        raise JobError(f"job {new_id} vanished right after it was submitted")
    return job_record(new, layout)


def pause_request(pause: bool, *, now: float | None = None) -> dict[str, Any]:
    """The REQUEST body asking the scheduler to stop (True) or resume starting jobs."""
    return {"id": f"pause-{secrets.token_hex(8)}", "kind": "pause", "paused": pause,
            "created_at": iso_now(now)}


def set_paused(layout: Layout, pause: bool) -> dict[str, Any]:
    """Ask the scheduler to pause or resume: {"paused", "request"} (durable on return)."""
    request = pause_request(pause)
    send_request(layout, "scheduler", request)
    return {"paused": pause, "request": request["id"]}


def paused_on_disk(layout: Layout) -> bool:
    """The scheduler's flag as it last wrote it (False when it never did, or when the file
    cannot be read: the scheduler, its owner, moves a corrupt one aside and resumes)."""
    rec = read_record(PAUSED, layout.paused_file, owner=False)
    return isinstance(rec, dict) and rec.get("paused") is True


def paused(layout: Layout) -> bool:
    """Whether starting new jobs is paused, counting requests not taken yet (latest wins)."""
    pending = read_pending(layout).paused
    return paused_on_disk(layout) if pending is None else pending
