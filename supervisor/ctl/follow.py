"""batchctl's output readers: `output JOB`, `tail JOB [-n N] [-f]` and `diff JOB`. Read-only.

A job's output file is append-only (the adaptor writes it as the agent speaks), so a
reader keeps one byte offset: everything before it has been printed, nothing after it
has. `tail -f` reads from that offset to the end of the file on every poll and advances
it by exactly what it printed, so no byte is printed twice or skipped, whatever restarts
around it: it reads only files. It stops when the job is terminal (its result file
exists, or the queue says so), after one last read to the end.

Without --json the bytes go out as they are. With --json each command prints ONE
document, built from the same bytes decoded as UTF-8 (invalid bytes become U+FFFD):
`output` {"job", "output", "bytes"} (bytes = the raw byte count), `tail` {"job", "lines"}
(lines without their newline); `tail -f --json` collects until the job ends, then prints.

`diff JOB` prints the job's changes.patch (written by its adaptor when the agent exited,
before the result: docs/JOBFILES.md) as its bytes; nothing when there is none (a job still
running, one without repositories or changes), exit 0 either way. `--json`: {"job",
"patch", "bytes", "cut", "changes"} (the patch decoded as UTF-8, `cut` whether it was cut
at its 50 MiB limit, `changes` the record's). A cut patch is also said on stderr.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from supervisor.ctl.jobs import lookup
from supervisor.ctl.out import EXIT_OK, EXIT_USAGE, CtlError, Ctx
from supervisor.state.layout import CHANGES, read_record
from supervisor.state.view import TERMINAL, collected_patch, open_view

__all__ = [
    "cmd_diff",
    "cmd_output",
    "cmd_tail",
    "follow",
    "read_from",
    "split_lines",
    "tail_offset",
]

_CHUNK = 1 << 16


def read_from(path: Path, offset: int, write: Callable[[bytes], None]) -> int:
    """Write the bytes of `path` from `offset` to its current end; return the new offset.

    A missing file reads as empty (the job has not written yet, or was reaped).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return offset
    try:
        while True:
            data = os.pread(fd, _CHUNK, offset)
            if not data:
                return offset
            write(data)
            offset += len(data)
    finally:
        os.close(fd)


def tail_offset(path: Path, lines: int) -> tuple[int, int]:
    """(start, end): where the last `lines` lines of `path` begin, and its current size.

    Reads backwards in blocks, so a huge output costs only what is shown. A last line
    without its newline counts as a line.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0, 0
    try:
        end = os.fstat(fd).st_size
        if lines <= 0 or end == 0:
            return end, end
        pos = end
        # A final newline ends the last line; it does not start another.
        wanted = lines + 1 if os.pread(fd, 1, end - 1) == b"\n" else lines
        while pos > 0:
            start = max(0, pos - _CHUNK)
            block = os.pread(fd, pos - start, start)
            idx = len(block)
            while True:
                idx = block.rfind(b"\n", 0, idx)
                if idx < 0:
                    break
                wanted -= 1
                if wanted == 0:
                    return start + idx + 1, end
            pos = start
        return 0, end
    finally:
        os.close(fd)


def follow(path: Path, offset: int, write: Callable[[bytes], None],
           finished: Callable[[], bool], *, interval: float = 0.1,
           sleep: Callable[[float], None] = time.sleep) -> int:
    """Print what is appended to `path` from `offset` until `finished()`; the final offset.

    `finished` is asked BEFORE each read: once it says True, the read that follows reaches
    everything the job ever wrote, and the loop ends.
    """
    while True:
        done = finished()
        offset = read_from(path, offset, write)
        if done:
            return offset
        sleep(interval)


def _output_path(ctx: Ctx, job_id: str) -> Path:
    """The job's output file (exit 1 if there is no such job)."""
    with open_view(ctx.cfg, ctx.layout) as view:
        record = lookup(view, job_id)
    return Path(record["output_path"])


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def split_lines(data: bytes) -> list[str]:
    """Output bytes as text lines without their newline (a final newline ends the last one)."""
    if not data:
        return []
    lines = _decode(data).split("\n")
    if data.endswith(b"\n"):
        lines.pop()
    return lines


def cmd_output(ctx: Ctx, job_id: str) -> int:
    """`output JOB`: the whole output so far, bytes as they are (none yet: nothing, exit 0)."""
    path = _output_path(ctx, job_id)
    if not ctx.json:
        read_from(path, 0, ctx.write_bytes)
        return EXIT_OK
    chunks: list[bytes] = []
    size = read_from(path, 0, chunks.append)
    ctx.emit({"job": job_id, "output": _decode(b"".join(chunks)), "bytes": size})
    return EXIT_OK


def cmd_diff(ctx: Ctx, job_id: str) -> int:
    """`diff JOB`: the job's changes as one patch, bytes as they are (none: nothing, exit 0;
    no such job: exit 1)."""
    with open_view(ctx.cfg, ctx.layout) as view:
        record = lookup(view, job_id)
    paths = ctx.layout.job(job_id)
    chunks: list[bytes] = []
    patch_path = collected_patch(ctx.layout, job_id)
    size = 0 if patch_path is None else read_from(
        patch_path, 0, chunks.append if ctx.json else ctx.write_bytes)
    info = read_record(CHANGES, paths.changes, owner=False)
    patch = info.get("patch") if isinstance(info, dict) else None
    cut = bool(patch.get("cut")) if isinstance(patch, dict) else False
    if cut and isinstance(patch, dict):
        ctx.error(f"the patch of job {job_id} was cut at {size} of {patch.get('total_bytes')} "
                  f"bytes (its limit is {patch.get('max_bytes')}); {paths.changes} lists "
                  "every file")
    if ctx.json:
        ctx.emit({"job": job_id, "patch": _decode(b"".join(chunks)), "bytes": size, "cut": cut,
                  "changes": record["changes"]})
    return EXIT_OK


class _Ended:
    """Is the job terminal? Its result file is checked every poll, the queue every second."""

    def __init__(self, ctx: Ctx, job_id: str, *, every: float = 1.0) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.every = every
        self.next_check = 0.0

    def __call__(self) -> bool:
        if self.ctx.layout.job_result(self.job_id).exists():
            return True
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + self.every
        with open_view(self.ctx.cfg, self.ctx.layout) as view:
            return lookup(view, self.job_id)["state"] in TERMINAL


def cmd_tail(ctx: Ctx, job_id: str, lines: int, follow_: bool) -> int:
    """`tail JOB [-n N] [-f]`: the last N lines; with -f, then everything until the job ends."""
    if lines < 0:
        raise CtlError(f"-n must be >= 0, got {lines}", EXIT_USAGE)
    path = _output_path(ctx, job_id)
    chunks: list[bytes] = []
    write = chunks.append if ctx.json else ctx.write_bytes
    start, end = tail_offset(path, lines)
    offset = start
    if end > start:
        offset = _read_range(path, start, end, write)
    if follow_:
        follow(path, offset, write, _Ended(ctx, job_id))
    if ctx.json:
        ctx.emit({"job": job_id, "lines": split_lines(b"".join(chunks))})
    return EXIT_OK


def _read_range(path: Path, start: int, end: int, write: Callable[[bytes], None]) -> int:
    """Write bytes [start, end) of `path`; return the offset reached."""
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        while offset < end:
            data = f.read(min(_CHUNK, end - offset))
            if not data:
                break
            write(data)
            offset += len(data)
    return offset
