"""batchctl's webhook commands: `callbacks [--state S]` (read-only) and `callbacks retry ID`.

`callbacks` reads `callbacks/inbox/` (events handed over but not yet taken by the worker,
shown as pending with no try yet) and then `callbacks/outbox/` (one DELIVERY record per
event), never moving or writing anything, so it works with batchd down. The inbox is read
FIRST: the worker writes the record before it removes the request, so an event cannot
slip between the two reads. A record batchctl cannot read is named on stderr and skipped
(the worker, its owner, moves it aside); an outbox that cannot be listed is exit 1.

`callbacks retry ID` never writes the outbox (one writer per file: the worker). It drops
a REQUEST kind "retry" into `callbacks/inbox/` (write_record: temp, fsync, rename, fsync
folder; a crash before the rename leaves a temp file that is never read as a request).
The worker then makes the delivery pending, due now, on a fresh retry schedule (attempts
keep counting). Exit codes: 0 requested (failed, pending or in_flight: an in-flight one
is retried only if that try does not deliver it); 1 unknown event id, or already
delivered (a re-send of a delivered event is not done: nothing was requested); 2 an id
that is not an event id, or a usage mistake. With batchd down the request waits in the
inbox and is handled when the worker starts.
"""

from __future__ import annotations

import argparse

from supervisor.ctl.out import EXIT_OK, EXIT_USAGE, CtlError, Ctx, table
from supervisor.state.documents import deliveries
from supervisor.state.webhook import (
    DELIVERY_STATES,
    drop_request,
    retry_request,
    valid_event_id,
)

__all__ = [
    "cmd_callbacks",
    "cmd_callbacks_retry",
    "run_callbacks",
    "setup_callbacks",
]


def cmd_callbacks(ctx: Ctx, state: str | None) -> int:
    """`callbacks [--state S]`: the deliveries (all, or those in state S)."""
    records = [r for r in deliveries(ctx.layout, ctx.error) if state is None or r["state"] == state]
    if ctx.json:
        ctx.emit(records)
        return EXIT_OK
    if not records:
        ctx.note("no deliveries" if state is None else f"no {state} deliveries")
        return EXIT_OK
    rows = [(r["id"], r["job"], r["state"], r["attempts"], r["next_attempt_at"],
             r["last_error"], r["url"]) for r in records]
    for line in table(rows, header=("ID", "JOB", "STATE", "ATTEMPTS", "NEXT", "LAST_ERROR",
                                    "URL")):
        ctx.say(line)
    return EXIT_OK


def cmd_callbacks_retry(ctx: Ctx, event_id: str) -> int:
    """`callbacks retry ID`: ask the worker to try a failed or pending delivery again now."""
    if not valid_event_id(event_id):
        raise CtlError(f"invalid event id {event_id!r} (expected an id as `callbacks` "
                       "lists them)", EXIT_USAGE)
    known = {r["id"]: r for r in deliveries(ctx.layout, ctx.error)}
    rec = known.get(event_id)
    if rec is None:
        raise CtlError(f"no such delivery: {event_id}")
    if rec["state"] == "delivered":
        raise CtlError(f"delivery {event_id} was already delivered: nothing to retry")
    request = retry_request(event_id)
    drop_request(ctx.layout, request)
    if ctx.json:
        ctx.emit({"id": event_id, "state": rec["state"], "requested": True,
                  "request": request["id"]})
    else:
        ctx.say(f"retry requested for delivery {event_id} (state {rec['state']}, "
                f"{rec['attempts']} tries so far)")
    return EXIT_OK


def setup_callbacks(p: argparse.ArgumentParser) -> None:
    """Arguments of `callbacks [--state S]` and `callbacks retry ID`."""
    p.add_argument("action", metavar="retry", nargs="?", choices=("retry",),
                   help="retry the delivery ID")
    p.add_argument("event_id", metavar="ID", nargs="?", help="event id (with retry)")
    p.add_argument("--state", metavar="S", choices=DELIVERY_STATES,
                   help="only deliveries in state S: " + ", ".join(DELIVERY_STATES))


def run_callbacks(ctx: Ctx, args: argparse.Namespace) -> int:
    """Dispatch `callbacks` (list) and `callbacks retry ID`."""
    if args.action is None:         # argparse: a lone ID is refused as an invalid action
        return cmd_callbacks(ctx, args.state)
    if args.event_id is None:
        raise CtlError("callbacks retry: the event ID is missing", EXIT_USAGE)
    if args.state is not None:
        raise CtlError("callbacks retry: --state does not apply", EXIT_USAGE)
    return cmd_callbacks_retry(ctx, args.event_id)
