"""Tests for supervisor.ctl.follow: output, tail offsets, following without loss or repeats."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config
from supervisor.ctl.follow import (
    cmd_diff,
    cmd_output,
    cmd_tail,
    follow,
    read_from,
    split_lines,
    tail_offset,
)
from supervisor.ctl.out import EXIT_OK, EXIT_USAGE, CtlError, Ctx
from supervisor.state.atomic import ensure_dir
from supervisor.state.layout import CHANGES, RESULT, Layout, write_record
from supervisor.state.submission import write_submission


def _lines(n: int, *, trailing: bool = True) -> bytes:
    text = "\n".join(f"line {i}" for i in range(1, n + 1))
    return (text + ("\n" if trailing else "")).encode()


def _tail(path: Path, n: int) -> bytes:
    start, end = tail_offset(path, n)
    return path.read_bytes()[start:end]


def _ctx(tmp_path: Path) -> tuple[Ctx, io.BytesIO]:
    state = tmp_path / "state"
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")
    cfg = Config(state_dir=state, workspace_dir=state / "ws")
    return Ctx(cfg=cfg, layout=Layout(state), out=out, err=io.StringIO()), raw


def _doc(ctx: Ctx, raw: io.BytesIO) -> Any:
    """The one JSON document the command printed."""
    ctx.out.flush()
    return json.loads(raw.getvalue())


def _pending_job(ctx: Ctx, job_id: str) -> Path:
    """A submitted job (batchd down: it waits in the inbox) and its output path."""
    write_submission(ctx.layout, [{"id": job_id, "agent": "shell", "prompt": "x", "repos": []}])
    out = ctx.layout.job_output(job_id)
    ensure_dir(out.parent)
    return out


@pytest.mark.parametrize(("data", "n", "expected"), [
    (_lines(20), 3, b"line 18\nline 19\nline 20\n"),
    (_lines(20, trailing=False), 2, b"line 19\nline 20"),
    (_lines(2), 10, _lines(2)),
    (_lines(5), 0, b""),
    (b"", 10, b""),
    (b"\n\n\n", 2, b"\n\n"),
])
def test_tail_offset_finds_the_last_lines(tmp_path: Path, data: bytes, n: int,
                                          expected: bytes) -> None:
    """The last N lines, a final unterminated line counting as one."""
    path = tmp_path / "out"
    path.write_bytes(data)
    assert expected == _tail(path, n)


def test_tail_offset_crosses_block_boundaries(tmp_path: Path) -> None:
    """Lines longer than the read-back block are found whole."""
    path = tmp_path / "out"
    long = b"x" * 200_000
    path.write_bytes(b"a\n" + long + b"\n" + long + b"\nend\n")
    assert long + b"\nend\n" == _tail(path, 2)


def test_tail_offset_of_missing_file_is_empty(tmp_path: Path) -> None:
    """No output file yet: nothing to show, offset 0."""
    assert (0, 0) == tail_offset(tmp_path / "none", 10)


def test_read_from_reads_to_end_and_returns_offset(tmp_path: Path) -> None:
    """Everything after the offset is written once; the new offset is the end."""
    path = tmp_path / "out"
    path.write_bytes(b"0123456789")
    got: list[bytes] = []
    assert 10 == read_from(path, 4, got.append)
    assert b"456789" == b"".join(got)
    assert 3 == read_from(tmp_path / "missing", 3, got.append)


def test_follow_prints_each_byte_once_until_finished(tmp_path: Path) -> None:
    """Appends between polls (partial lines too) come out exactly once, in order."""
    path = tmp_path / "out"
    path.write_bytes(b"")
    chunks = [b"par", b"tial\nline 2\n", b"", b"last"]
    got: list[bytes] = []
    polls = iter(range(100))

    def sleep(_: float) -> None:
        i = next(polls)
        if i < len(chunks):
            with open(path, "ab") as f:
                f.write(chunks[i])

    def finished() -> bool:
        # Terminal once the last chunk has been appended; the read after it gets it.
        return path.read_bytes().endswith(b"last")

    end = follow(path, 0, got.append, finished, sleep=sleep)
    assert (b"partial\nline 2\nlast", len(b"partial\nline 2\nlast")) == (b"".join(got), end)


def test_cmd_output_prints_bytes_as_is(tmp_path: Path) -> None:
    """`output` copies the file byte for byte, invalid UTF-8 included."""
    ctx, raw = _ctx(tmp_path)
    _pending_job(ctx, "j1").write_bytes(b"hello\n\xff\x00 bin")
    assert EXIT_OK == cmd_output(ctx, "j1")
    assert b"hello\n\xff\x00 bin" == raw.getvalue()


def test_cmd_output_of_job_without_output_prints_nothing(tmp_path: Path) -> None:
    """A known job that has written nothing yet: empty output, exit 0."""
    ctx, raw = _ctx(tmp_path)
    _pending_job(ctx, "j1")
    assert (EXIT_OK, b"") == (cmd_output(ctx, "j1"), raw.getvalue())


def test_cmd_output_unknown_job_exits_1_and_bad_id_exits_2(tmp_path: Path) -> None:
    """Unknown job: not found (1); malformed id: usage error (2)."""
    ctx, _ = _ctx(tmp_path)
    with pytest.raises(CtlError) as info:
        cmd_output(ctx, "nope")
    assert (1, "no such job: nope") == (info.value.code, str(info.value))
    with pytest.raises(CtlError) as info:
        cmd_output(ctx, "../x")
    assert EXIT_USAGE == info.value.code


def test_cmd_tail_follow_stops_when_result_exists(tmp_path: Path) -> None:
    """tail -f of a finished job prints the last lines plus the rest, then returns."""
    ctx, raw = _ctx(tmp_path)
    _pending_job(ctx, "j1").write_bytes(_lines(30))
    write_record(RESULT, ctx.layout.job_result("j1"),
                 {"id": "j1", "exit_code": 0, "finished_at": "2026-01-01T00:00:00Z"})
    assert EXIT_OK == cmd_tail(ctx, "j1", 2, True)
    assert b"line 29\nline 30\n" == raw.getvalue()


def test_cmd_tail_refuses_negative_count(tmp_path: Path) -> None:
    """-n below zero is a usage error."""
    ctx, _ = _ctx(tmp_path)
    _pending_job(ctx, "j1")
    with pytest.raises(CtlError) as info:
        cmd_tail(ctx, "j1", -1, False)
    assert EXIT_USAGE == info.value.code


@pytest.mark.parametrize(("data", "expected"), [
    (b"", []),
    (b"a\nb\n", ["a", "b"]),
    (b"a\n\nb", ["a", "", "b"]),
    (b"\n", [""]),
    (b"caf\xc3\xa9 \xff\r\n", ["caf\u00e9 \ufffd\r"]),
])
def test_split_lines_keeps_line_count_and_replaces_bad_bytes(data: bytes,
                                                             expected: list[str]) -> None:
    """Lines split on newline only (as tail counts them); invalid UTF-8 becomes U+FFFD."""
    assert expected == split_lines(data)


def test_cmd_output_json_is_one_object(tmp_path: Path) -> None:
    """output --json: {"job", "output" (decoded, bad bytes replaced), "bytes" (raw count)}."""
    ctx, raw = _ctx(tmp_path)
    ctx.json = True
    _pending_job(ctx, "j1").write_bytes(b"hello\n\xff\x00 bin")
    assert EXIT_OK == cmd_output(ctx, "j1")
    assert {"job": "j1", "output": "hello\n\ufffd\x00 bin", "bytes": 12} == _doc(ctx, raw)


def test_cmd_tail_json_is_one_object(tmp_path: Path) -> None:
    """tail --json: {"job", "lines"} with the last N lines, without newlines."""
    ctx, raw = _ctx(tmp_path)
    ctx.json = True
    _pending_job(ctx, "j1").write_bytes(_lines(30))
    assert EXIT_OK == cmd_tail(ctx, "j1", 3, False)
    assert {"job": "j1", "lines": ["line 28", "line 29", "line 30"]} == _doc(ctx, raw)


def test_cmd_tail_follow_json_prints_one_document_when_the_job_ends(tmp_path: Path) -> None:
    """tail -f --json: the last lines plus all appended ones, in ONE document at the end."""
    ctx, raw = _ctx(tmp_path)
    ctx.json = True
    out = _pending_job(ctx, "j1")
    out.write_bytes(_lines(5))

    def finish() -> None:
        with open(out, "ab") as f:
            f.write(b"more \xe2\x82")      # a character that may reach a poll split in two
            f.flush()
            f.write(b"\xac\nend")
        write_record(RESULT, ctx.layout.job_result("j1"),
                     {"id": "j1", "exit_code": 0, "finished_at": "2026-01-01T00:00:00Z"})

    timer = threading.Timer(0.3, finish)
    timer.start()
    try:
        assert EXIT_OK == cmd_tail(ctx, "j1", 2, True)
    finally:
        timer.cancel()
    assert {"job": "j1", "lines": ["line 4", "line 5", "more \u20ac", "end"]} == _doc(ctx, raw)


def test_cmd_diff_prints_the_patch_once_collected(tmp_path: Path) -> None:
    """`diff JOB`: nothing (exit 0) until changes.json exists beside the patch, then the
    patch's bytes as they are; --json adds the cut flag and says a cut on stderr."""
    ctx, raw = _ctx(tmp_path)
    _pending_job(ctx, "d1")
    patch = b"diff --git a/x b/x\n\xff\n"
    ctx.layout.job_patch("d1").write_bytes(patch)
    assert EXIT_OK == cmd_diff(ctx, "d1")
    ctx.out.flush()
    assert b"" == raw.getvalue()
    write_record(CHANGES, ctx.layout.job_changes("d1"), {
        "id": "d1", "repos": {}, "patch": {"cut": True, "total_bytes": 99, "max_bytes": 20}})
    assert EXIT_OK == cmd_diff(ctx, "d1")
    ctx.out.flush()
    assert patch == raw.getvalue()
    ctx, raw = _ctx(tmp_path)
    ctx.json = True
    assert EXIT_OK == cmd_diff(ctx, "d1")
    doc = _doc(ctx, raw)
    assert ("d1", len(patch), True) == (doc["job"], doc["bytes"], doc["cut"])
    assert isinstance(ctx.err, io.StringIO) and "was cut" in ctx.err.getvalue()


def test_cmd_diff_unknown_job_exits_1(tmp_path: Path) -> None:
    """No such job: CtlError with exit 1, like `output`."""
    ctx, _ = _ctx(tmp_path)
    with pytest.raises(CtlError) as info:
        cmd_diff(ctx, "ghost")
    assert 1 == info.value.code
