"""Tests for supervisor.ctl.callbacks: `callbacks [--state S]` and `callbacks retry ID`.

The state is real: DELIVERY records written into a tmp outbox as the worker writes them,
deliver requests waiting in callbacks/inbox as the scheduler drops them; batchd is down.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor import callbacks
from supervisor import log as _log
from supervisor.callbacks.transport import MockTransport
from supervisor.config import CallbacksConfig, Config
from supervisor.ctl.callbacks import (
    cmd_callbacks,
    cmd_callbacks_retry,
    run_callbacks,
    setup_callbacks,
)
from supervisor.ctl.out import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CtlError, Ctx
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import MockClock
from supervisor.state.documents import DELIVERY_FIELDS as LIST_FIELDS
from supervisor.state.documents import deliveries
from supervisor.state.layout import DELIVERY, REQUEST, Layout, read_record, write_record
from supervisor.state.view import Unreadable
from supervisor.state.webhook import (
    Result,
    begin,
    delivery_request,
    drop_request,
    finish,
    new_delivery,
)

T0 = 1_800_000_000.0
URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def ctx(tmp_path: Path) -> Ctx:
    state = tmp_path / "state"
    ensure_dir(state)
    cfg = Config(state_dir=state, workspace_dir=state / "ws")
    return Ctx(cfg=cfg, layout=Layout(state), out=io.StringIO(), err=io.StringIO())


def out(ctx: Ctx) -> str:
    assert isinstance(ctx.out, io.StringIO)
    return ctx.out.getvalue()


def err(ctx: Ctx) -> str:
    assert isinstance(ctx.err, io.StringIO)
    return ctx.err.getvalue()


def store(ctx: Ctx, event_id: str, *, at: float, result: Result | None = None) -> None:
    """A record as the worker leaves it: pending, or after one try with `result`."""
    rec = new_delivery(delivery_request(event_id, URL, {"event_id": event_id},
                                        job=f"job-{event_id}", now=at), at)
    if result is not None:
        rec = finish(begin(rec, at), result, at, (30.0,))
    folder = (ctx.layout.callbacks_done if rec["state"] in ("delivered", "failed")
              else ctx.layout.callbacks_outbox)
    ensure_dir(folder)
    write_record(DELIVERY, folder / f"{event_id}.json", rec)


def sample(ctx: Ctx) -> None:
    store(ctx, "p1", at=T0 + 1)
    store(ctx, "f1", at=T0 + 2, result=Result("failed", "HTTP 404"))
    store(ctx, "d1", at=T0 + 3, result=Result("delivered", None))
    store(ctx, "r1", at=T0, result=Result("retry", "HTTP 503"))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def callbacks_inbox(ctx: Ctx) -> list[dict[str, Any]]:
    folder = ctx.layout.inbox("callbacks")
    recs = [read_record(REQUEST, folder / n, owner=False) for n in sorted(os.listdir(folder))]
    return [r for r in recs if isinstance(r, dict)]


# -- callbacks [--state S] ------------------------------------------------------------------------

def test_no_deliveries(ctx: Ctx) -> None:
    """Nothing yet (no outbox at all): a note on stderr, exit 0; --json prints []."""
    assert (EXIT_OK, "", "no deliveries\n") == (cmd_callbacks(ctx, None), out(ctx), err(ctx))
    ctx.json = True
    assert (EXIT_OK, []) == (cmd_callbacks(ctx, None), json.loads(out(ctx)))


def test_json_lists_every_delivery_with_every_key(ctx: Ctx) -> None:
    """An array of records, oldest first, each with exactly the listed keys; the numbers
    and errors as the worker left them."""
    sample(ctx)
    ctx.json = True
    assert EXIT_OK == cmd_callbacks(ctx, None)
    got = json.loads(out(ctx))
    assert [list(LIST_FIELDS)] * 4 == [list(r) for r in got]
    assert [("r1", "job-r1", URL, "pending", 1, "HTTP 503"),
            ("p1", "job-p1", URL, "pending", 0, None),
            ("f1", "job-f1", URL, "failed", 1, "HTTP 404"),
            ("d1", "job-d1", URL, "delivered", 1, None)] == [
        (r["id"], r["job"], r["url"], r["state"], r["attempts"], r["last_error"]) for r in got]
    assert [True, True, False, False] == [r["next_attempt_at"] is not None for r in got]


def test_state_filter_and_table(ctx: Ctx) -> None:
    """--state failed lists only failed ones; the table has a header and one row each."""
    sample(ctx)
    assert EXIT_OK == cmd_callbacks(ctx, "failed")
    lines = out(ctx).splitlines()
    assert (2, ["ID", "JOB", "STATE", "ATTEMPTS", "NEXT", "LAST_ERROR", "URL"]) == (
        len(lines), lines[0].split())
    assert ["f1", "job-f1", "failed", "1", "-", "HTTP", "404", URL] == lines[1].split()


def test_a_handed_over_event_shows_as_pending(ctx: Ctx) -> None:
    """A deliver request the worker has not taken yet is listed: pending, no try yet."""
    drop_request(ctx.layout, delivery_request("e9", URL, {"event_id": "e9"}, job="j9"))
    assert [{"id": "e9", "job": "j9", "url": URL, "state": "pending", "attempts": 0,
             "last_error": None}] == [{k: v for k, v in r.items()
                                       if k not in ("next_attempt_at", "created_at")}
                                      for r in deliveries(ctx.layout, ctx.error)]


def test_listing_is_read_only_and_skips_a_corrupt_record(ctx: Ctx) -> None:
    """A corrupt record is named on stderr and skipped, never moved (the worker owns it);
    nothing on disk changes."""
    sample(ctx)
    (ctx.layout.callbacks_outbox / "x1.json").write_bytes(b'{"id": ')
    before = tree(ctx.layout.root)
    assert EXIT_OK == cmd_callbacks(ctx, None)
    assert (before, 5) == (tree(ctx.layout.root), len(out(ctx).splitlines()))
    assert err(ctx).startswith(f"batchctl: skipping unreadable delivery record "
                               f"{ctx.layout.callbacks_outbox / 'x1.json'}: not valid JSON")


def test_an_outbox_that_is_not_a_folder_is_exit_1(ctx: Ctx) -> None:
    """What cannot be listed is never shown as empty."""
    ctx.layout.callbacks_outbox.parent.mkdir(parents=True)
    ctx.layout.callbacks_outbox.write_bytes(b"")
    with pytest.raises(Unreadable) as exc:
        cmd_callbacks(ctx, None)
    assert "callbacks/outbox" in str(exc.value)


# -- callbacks retry ID ---------------------------------------------------------------------------

@pytest.mark.parametrize("event_id", ["f1", "r1"])
def test_retry_drops_a_request_for_the_worker(ctx: Ctx, event_id: str) -> None:
    """A failed or pending delivery: one "retry" request in callbacks/inbox, exit 0; the
    outbox is not touched (its one writer is the worker)."""
    sample(ctx)
    outbox = tree(ctx.layout.callbacks_outbox)
    ctx.json = True
    assert EXIT_OK == cmd_callbacks_retry(ctx, event_id)
    (req,) = callbacks_inbox(ctx)
    assert ("retry", event_id, outbox) == (req["kind"], req["event_id"],
                                           tree(ctx.layout.callbacks_outbox))
    assert {"id": event_id, "state": "pending" if event_id == "r1" else "failed",
            "requested": True, "request": req["id"]} == json.loads(out(ctx))


@pytest.mark.parametrize(("event_id", "code", "message"), [
    ("nope", EXIT_FAILED, "no such delivery: nope"),
    ("d1", EXIT_FAILED, "delivery d1 was already delivered: nothing to retry"),
    ("../x", EXIT_USAGE, "invalid event id '../x'"),
])
def test_retry_refusals_write_nothing(ctx: Ctx, event_id: str, code: int,
                                      message: str) -> None:
    """Unknown id and delivered: exit 1; a malformed id: exit 2; no request written."""
    sample(ctx)
    with pytest.raises(CtlError) as exc:
        cmd_callbacks_retry(ctx, event_id)
    assert (code, True, False) == (exc.value.code, str(exc.value).startswith(message),
                                   ctx.layout.inbox("callbacks").exists())


def test_the_worker_takes_the_retry_request(ctx: Ctx) -> None:
    """What batchctl writes is what the worker's handler takes: failed -> pending, due now."""
    sample(ctx)
    cmd_callbacks_retry(ctx, "f1")
    log = _log.get("test")
    state = callbacks.Callbacks(
        log=log, outbox=callbacks.DirOutbox(ctx.layout.callbacks_outbox, log,
                                            done=ctx.layout.callbacks_done),
        transport=MockTransport(lambda sent: 200), settings=CallbacksConfig(),
        clock=MockClock(T0 + 50))
    callbacks.recover(state)
    assert 1 == callbacks.take_inbox(state, ctx.layout.inbox("callbacks"))
    (rec,) = [r for r in deliveries(ctx.layout, ctx.error) if r["id"] == "f1"]
    assert ("pending", 1, []) == (rec["state"], rec["attempts"], callbacks_inbox(ctx))


# -- the command line -----------------------------------------------------------------------------

def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="batchctl callbacks", exit_on_error=False)
    setup_callbacks(p)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def test_command_line_dispatch(ctx: Ctx) -> None:
    """`callbacks --state S` lists; `callbacks retry ID --json` retries."""
    sample(ctx)
    assert EXIT_OK == run_callbacks(ctx, parse("--state", "delivered"))
    assert ["d1"] == [line.split()[0] for line in out(ctx).splitlines()[1:]]
    assert EXIT_OK == run_callbacks(ctx, parse("retry", "f1", "--json"))
    assert ["f1"] == [r["event_id"] for r in callbacks_inbox(ctx)]


@pytest.mark.parametrize("argv", [("retry",), ("retry", "f1", "--state", "failed")])
def test_command_line_usage_errors(ctx: Ctx, argv: tuple[str, ...]) -> None:
    """retry without an ID, or with --state: usage errors (exit 2)."""
    with pytest.raises(CtlError) as exc:
        run_callbacks(ctx, parse(*argv))
    assert EXIT_USAGE == exc.value.code
