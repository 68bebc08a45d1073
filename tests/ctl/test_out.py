"""Tests for supervisor.ctl.out: tables, cells, ages, JSON documents, the command context."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

from supervisor.config import Config
from supervisor.ctl.out import (
    EXIT_FAILED,
    EXIT_USAGE,
    PROG,
    CtlError,
    Ctx,
    age,
    cell,
    emit_json,
    table,
)
from supervisor.state.layout import Layout


def _ctx(tmp_path: Path, out: io.TextIOBase | None = None) -> Ctx:
    cfg = Config(state_dir=tmp_path, workspace_dir=tmp_path / "ws")
    return Ctx(cfg=cfg, layout=Layout(tmp_path), out=out or io.StringIO(), err=io.StringIO())


def test_table_aligns_columns_and_leaves_last_unpadded() -> None:
    """Columns are as wide as their widest cell; no trailing blanks."""
    lines = table([("a", "RUNNING", "x"), ("long-name", "FATAL", "")], header=("N", "S", "D"))
    assert ["N          S        D",
            "a          RUNNING  x",
            "long-name  FATAL"] == lines


def test_table_of_nothing_is_empty() -> None:
    """No rows and no header: no lines."""
    assert [] == table([])


def test_cell_renders_null_lists_and_bools() -> None:
    """None is '-', lists are comma-joined, bools yes/no."""
    assert ["-", "a,b", "-", "yes", "no", "3"] == [
        cell(None), cell(["a", "b"]), cell([]), cell(True), cell(False), cell(3)]


def test_age_formats_clock_and_days() -> None:
    """Uptime is H:MM:SS, with days in front when over a day; unknown is '-'."""
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    assert "1:02:03" == age("2026-11-28T10:57:57Z", now)
    assert "2 days, 0:00:00" == age("2026-11-26T12:00:00Z", now)
    assert "-" == age(None, now)


def test_emit_json_prints_one_document() -> None:
    """The whole output parses as exactly one JSON value."""
    out = io.StringIO()
    emit_json([{"a": 1}, {"b": None}], out)
    assert [{"a": 1}, {"b": None}] == json.loads(out.getvalue())


def test_ctl_error_carries_exit_code() -> None:
    """CtlError defaults to exit 1 and keeps its message."""
    assert (EXIT_FAILED, "x") == (CtlError("x").code, str(CtlError("x")))
    assert EXIT_USAGE == CtlError("y", EXIT_USAGE).code


def test_write_bytes_passes_bytes_through(tmp_path: Path) -> None:
    """Job output reaches stdout's buffer byte for byte (no decoding)."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")
    ctx = _ctx(tmp_path, out)
    ctx.say("head")
    ctx.write_bytes(b"\xff\xfe partial")
    assert b"head\n\xff\xfe partial" == raw.getvalue()


def test_note_goes_to_stderr_and_emit_to_stdout(tmp_path: Path) -> None:
    """Operator notes never end up inside the JSON document."""
    ctx = _ctx(tmp_path)
    ctx.note("careful")
    ctx.emit({"k": 1})
    assert isinstance(ctx.out, io.StringIO) and isinstance(ctx.err, io.StringIO)
    assert ({"k": 1}, "careful\n") == (json.loads(ctx.out.getvalue()), ctx.err.getvalue())


def test_error_is_prefixed_with_the_program_name(tmp_path: Path) -> None:
    """Ctx.error writes 'batchctl: <message>' on stderr, like other Unix tools."""
    ctx = _ctx(tmp_path)
    ctx.error("no such job: x")
    assert isinstance(ctx.err, io.StringIO)
    assert ("batchctl: no such job: x\n", "batchctl") == (ctx.err.getvalue(), PROG)
