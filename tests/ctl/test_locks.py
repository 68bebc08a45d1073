"""Tests for supervisor.ctl.locks: `batchctl locks` reads locks/state.json with batchd down."""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config, RepoConfig
from supervisor.ctl.locks import run_locks, setup_locks
from supervisor.ctl.out import EXIT_OK, Ctx
from supervisor.state.atomic import ensure_dir
from supervisor.state.documents import locks_doc
from supervisor.state.layout import REPOS, WORKER_STATE, Layout, write_record
from supervisor.state.view import Unreadable

T0 = "2026-01-01T00:00:00.000Z"

TABLE = {
    "worker": "locks",
    "held": [{"repo": "app", "job": "a", "since": T0, "exclusive": True},
             {"repo": "old", "job": "o", "since": T0, "exclusive": True}],
    "waiting": {"app": ["b", "c"], "lib": ["c"]},
    "unavailable": [],
    "wants": {"b": {"repos": ["app"], "exclusive": True, "seq": 1, "created_at": T0},
              "c": {"repos": ["app", "lib"], "exclusive": False, "seq": 2, "created_at": T0}},
}


def make_ctx(tmp_path: Path, *, as_json: bool) -> Ctx:
    state = tmp_path / "state"
    ensure_dir(state)
    cfg = Config(state_dir=state, workspace_dir=state / "ws",
                 repositories={"app": RepoConfig(url="/srv/app.git", exclusive=True)})
    return Ctx(cfg=cfg, layout=Layout(state), json=as_json, out=io.StringIO(),
               err=io.StringIO())


def run(ctx: Ctx) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    setup_locks(parser)
    code = run_locks(ctx, parser.parse_args([]))
    assert isinstance(ctx.out, io.StringIO) and isinstance(ctx.err, io.StringIO)
    return code, ctx.out.getvalue(), ctx.err.getvalue()


def put(ctx: Ctx, rec: dict[str, Any]) -> None:
    ensure_dir(ctx.layout.worker_dir("locks"))
    write_record(WORKER_STATE, ctx.layout.worker_state("locks"), rec)


def test_no_table_yet_is_nothing_held(tmp_path: Path) -> None:
    """The locks worker never ran: an empty document, exit 0, nothing created."""
    ctx = make_ctx(tmp_path, as_json=True)
    code, out, _ = run(ctx)
    assert (EXIT_OK, {"held": [], "waiting": {}, "unavailable": []}) == (code, json.loads(out))
    assert [] == os.listdir(ctx.layout.root)


def test_json_shows_holders_queues_in_order_and_unavailable(tmp_path: Path) -> None:
    """held (repo, job, since) in grant order, queues first-in-line first, and the repos
    neither configured nor registered as unavailable (a registered one is known)."""
    ctx = make_ctx(tmp_path, as_json=True)
    put(ctx, TABLE)
    write_record(REPOS, ctx.layout.repos_file, {"repos": {"lib": {
        "url": "/srv/lib.git", "branch": "main", "exclusive": False, "added_at": T0}}})
    code, out, _ = run(ctx)
    assert EXIT_OK == code
    assert {"held": [{"repo": "app", "job": "a", "since": T0},
                     {"repo": "old", "job": "o", "since": T0}],
            "waiting": {"app": ["b", "c"], "lib": ["c"]},
            "unavailable": ["old"]} == json.loads(out)


def test_text_output_is_a_table(tmp_path: Path) -> None:
    """Without --json: one line per repository, its holder and its queue."""
    ctx = make_ctx(tmp_path, as_json=False)
    put(ctx, TABLE)
    code, out, _ = run(ctx)
    lines = out.splitlines()
    assert (EXIT_OK, 4) == (code, len(lines))
    assert lines[0].split() == ["REPO", "HELD_BY", "SINCE", "WAITING"]
    assert lines[1].split() == ["app", "a", T0, "b,c"]
    assert lines[2].split() == ["old", "(unavailable)", "o", T0, "-"]
    assert lines[3].split() == ["lib", "(unavailable)", "-", "-", "c"]


def test_an_empty_table_says_so_on_stderr(tmp_path: Path) -> None:
    """Nothing held or waited for: a note on stderr, nothing on stdout."""
    ctx = make_ctx(tmp_path, as_json=False)
    put(ctx, {"worker": "locks", "held": [], "waiting": {}})
    assert (EXIT_OK, "", "no repository lock is held or waited for\n") == run(ctx)


@pytest.mark.parametrize("raw", [b"{torn", b'{"schema": "batchd.worker_state", "v": 1, '
                                            b'"worker": "locks", "held": {}, "waiting": {}}'])
def test_an_unreadable_table_is_exit_1_and_left_in_place(tmp_path: Path, raw: bytes) -> None:
    """A corrupt state.json: exit 1 naming the file; batchctl does not move it (not its owner)."""
    ctx = make_ctx(tmp_path, as_json=True)
    ensure_dir(ctx.layout.worker_dir("locks"))
    ctx.layout.worker_state("locks").write_bytes(raw)
    with pytest.raises(Unreadable) as err:
        locks_doc(ctx.cfg, ctx.layout)
    assert str(ctx.layout.worker_state("locks")) in str(err.value)
    assert ["state.json"] == os.listdir(ctx.layout.worker_dir("locks"))
