"""Job control every door shares (batchctl and the api): cancel, retry, pause and resume.

Each one checks what it is asked against the read-only view, then hands the scheduler ONE
durable request (state.layout.send_request; a retry goes through state.submission.accept,
the very path of `submit`): nothing here writes anything the scheduler owns. A crash
before the request's rename leaves a temp file that is never read as a request; after it,
the scheduler handles the request once (each is idempotent: cancelling a terminal job does
nothing, pausing a paused scheduler changes nothing).

Pause is a flag the scheduler keeps in `scheduler/paused.json` (layout.PAUSED, written only
by the scheduler when it takes a `pause` or `resume` request): it survives restarts until a
resume. Readers ask the view (JobView.paused), which counts requests not taken yet.
"""

from __future__ import annotations

import uuid
from typing import Any

from supervisor.config import Config
from supervisor.state.clock import iso_now
from supervisor.state.jobs import cancel_request, retry_spec
from supervisor.state.layout import Layout, send_request
from supervisor.state.submission import Checker, accept, known
from supervisor.state.view import TERMINAL, open_view

__all__ = [
    "NoSuchJob",
    "NotTerminal",
    "cancel",
    "pause_request",
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


def retry(cfg: Config, layout: Layout, job_id: str) -> str:
    """Submit a new job with `job_id`'s spec (state.jobs.retry_spec) and `retry_of` =
    job_id; the new id.

    The new job is checked by the one validator against today's configuration (JobError
    when, say, its agent is gone) and handed over by state.submission.accept, durably.
    NoSuchJob if there is no such job; NotTerminal if it has not ended."""
    with open_view(cfg, layout) as view:
        entry = view.get(job_id)
    if entry is None:
        raise NoSuchJob(job_id)
    if entry.get("state") not in TERMINAL:
        raise NotTerminal(f"job {job_id} is {entry.get('state')}: only a finished job can be "
                          "retried (cancel it first)")
    job = Checker(known(cfg, layout)).check(retry_spec(entry))
    job["retry_of"] = job_id
    (new_id,) = accept(cfg, layout, [job])
    return new_id


def pause_request(pause: bool, *, now: float | None = None) -> dict[str, Any]:
    """The REQUEST body asking the scheduler to stop (True) or start again starting jobs."""
    kind = "pause" if pause else "resume"
    return {"id": f"{kind}-{uuid.uuid4().hex}", "kind": kind, "created_at": iso_now(now)}


def set_paused(layout: Layout, pause: bool) -> dict[str, Any]:
    """Ask the scheduler to pause or resume: {"paused"} (durable on return)."""
    send_request(layout, "scheduler", pause_request(pause))
    return {"paused": pause}
