"""batchd's control requests (start, stop, restart W, shutdown, reload): write one, await its reply.

Shared by `batchctl start|stop|restart|shutdown|reload` and the api's `POST
/v1/workers/{w}/restart`. The protocol (docs/SUPERVISOR.md): probe batchd's lock first (not
running: NotRunning, nothing written), write `control/inbox/<uuid>.json` (kind CONTROL)
atomically and durably, then wait for batchd's `control/replies/<uuid>.json`. Only that
request file is written here; batchd owns both folders' cleanup. A crash after the rename
leaves a complete request that batchd answers once (or "expired" if a later batchd finds it).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from supervisor.config import Config
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import SYSTEM_CLOCK, Clock, iso_now
from supervisor.state.layout import CONTROL, REPLY, Layout, read_record, write_record
from supervisor.state.view import batchd_pid

__all__ = ["NoReply", "NotRunning", "reply_timeout", "send_control", "wait_reply",
           "write_control"]

#: Poll interval while waiting for a reply (docs/SUPERVISOR.md).
_POLL_S = 0.02


class NotRunning(Exception):
    """batchd is not running (nothing was written); str() names the state dir."""


class NoReply(Exception):
    """batchd stopped, or did not answer in time; str() says which request and why."""


def reply_timeout(cfg: Config, op: str, worker: str | None) -> float:
    """How long to wait for a reply: stopwaitsecs + 10 s for stop/restart, else 10 s."""
    if op in ("stop", "restart") and worker is not None:
        wcfg = cfg.workers.get(worker)
        return (wcfg.stopwaitsecs if wcfg is not None else 10.0) + 10.0
    return 10.0


def wait_reply(layout: Layout, request_id: str, timeout: float, *,
               clock: Clock = SYSTEM_CLOCK, path: Path | None = None,
               inbox: Path | None = None) -> dict[str, Any]:
    """The reply to `request_id` (batchd's, or at `path` a worker's to a request in
    `inbox`); NoReply if batchd stops or `timeout` passes."""
    path = layout.reply_file(request_id) if path is None else path
    inbox = layout.control_inbox if inbox is None else inbox
    deadline = clock.monotonic() + timeout
    while True:
        reply = read_record(REPLY, path, owner=False)
        if isinstance(reply, dict):
            return reply
        if batchd_pid(layout) is None:
            reply = read_record(REPLY, path, owner=False)
            if isinstance(reply, dict):
                return reply
            raise NoReply(f"batchd stopped before answering request {request_id}")
        if clock.monotonic() >= deadline:
            raise NoReply(f"no reply from batchd within {timeout:g}s "
                          f"(request {request_id} is still in {inbox})")
        clock.sleep(_POLL_S)


def write_control(layout: Layout, op: str, worker: str | None) -> str:
    """Write one CONTROL request (batchd must run: else NotRunning); its id."""
    if batchd_pid(layout) is None:
        raise NotRunning(f"batchd is not running (state dir {layout.root})")
    request_id = uuid.uuid4().hex
    ensure_dir(layout.control_inbox)
    write_record(CONTROL, layout.control_inbox / f"{request_id}.json", {
        "id": request_id, "op": op, "worker": worker, "created_at": iso_now(time.time())})
    return request_id


def send_control(cfg: Config, layout: Layout, op: str, worker: str | None) -> dict[str, Any]:
    """Write one CONTROL request and return batchd's reply (NotRunning, NoReply)."""
    request_id = write_control(layout, op, worker)
    return wait_reply(layout, request_id, reply_timeout(cfg, op, worker))
