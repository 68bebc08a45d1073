"""A job's output over HTTP: bytes from an offset, or a server-sent event stream that follows.

`GET /v1/jobs/{id}/output?offset=N` answers the bytes of the output file from N to its
end as it is now (`X-Batchd-Offset`: where the next read starts). With `Accept:
text/event-stream` it follows the file (the job's folder watched with inotify, plus a
rescan each second) until the job is terminal:

    retry: 1000
    id: 4096            <- the byte offset right after this event's bytes
    event: output
    data: "the text, as one JSON string"

    id: 4096
    event: end
    data: {"state": "completed", "offset": 4096}

A client that reconnects with `Last-Event-ID: 4096` (EventSource does) resumes at that
byte: no gap, no repeat, across api and batchd restarts alike, because the offset is a
position in a file that only grows. Text is UTF-8; a character split across two reads is
held back until its last byte arrives (the offset never points inside one), bytes that are
no UTF-8 become U+FFFD while the offsets still count bytes. The data is a JSON string so
that carriage returns and control characters arrive exactly. Terminal is asked BEFORE the
last read (as `batchctl tail -f` does), so the `end` event comes after every byte the job
ever wrote.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from supervisor.state.layout import Layout
from supervisor.state.view import TERMINAL

__all__ = ["CHUNK", "KEEPALIVE", "States", "decode_prefix", "follow", "read_range",
           "size_of"]

CHUNK = 64 * 1024
KEEPALIVE = 15.0
RESCAN = 1.0


def size_of(path: Path) -> int:
    """The output file's size now (0 when it does not exist yet)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def read_range(path: Path, start: int, end: int) -> bytes:
    """Bytes [start, end) of `path` (fewer if it is shorter; b"" if missing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, max(0, end - start), start)
    finally:
        os.close(fd)


def decode_prefix(data: bytes, *, final: bool) -> tuple[str, int]:
    """(text, bytes used): the longest prefix of `data` ending on a character boundary
    (all of it when `final`); invalid bytes become U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(data, final=final)
    held = len(decoder.getstate()[0])
    return text, len(data) - held


class States:
    """Job states for every stream, from ONE read of the view per `every` seconds
    (single-flight), so a hundred streams do not each open the queue."""

    def __init__(self, read: Callable[[list[str]], dict[str, str | None]],
                 every: float = 0.5) -> None:
        self._read = read
        self._every = every
        self._at = -1e9
        self._known: dict[str, str | None] = {}
        self._wanted: set[str] = set()
        self._lock = asyncio.Lock()

    async def state(self, job_id: str, *, fresh: bool = False) -> str | None:
        self._wanted.add(job_id)
        async with self._lock:
            if fresh or job_id not in self._known \
                    or time.monotonic() - self._at >= self._every:
                wanted = sorted(self._wanted)
                self._known = await run_in_threadpool(self._read, wanted)
                self._at = time.monotonic()
        return self._known.get(job_id)

    def forget(self, job_id: str) -> None:
        self._wanted.discard(job_id)


def _event(offset: int, kind: str, data: str) -> bytes:
    return f"id: {offset}\nevent: {kind}\ndata: {data}\n\n".encode()


async def follow(layout: Layout, job_id: str, start: int, *, states: States,
                 subscribe: Callable[[Path, asyncio.Event], None],
                 unsubscribe: Callable[[Path, asyncio.Event], None],
                 stopping: Callable[[], bool]) -> AsyncIterator[bytes]:
    """The event stream of job `job_id`'s output from byte `start` (see the module doc)."""
    path = layout.job_output(job_id)
    folder = path.parent
    wake = asyncio.Event()
    watched = folder if folder.is_dir() else layout.jobs_dir
    subscribe(watched, wake)
    offset = start
    last_sent = time.monotonic()
    try:
        yield b"retry: 1000\n\n"
        while not stopping():
            result_written = layout.job_result(job_id).exists()
            state = await states.state(job_id, fresh=result_written)
            ended = state in TERMINAL or state is None
            while True:                         # everything there is now
                data = await run_in_threadpool(read_range, path, offset, offset + CHUNK)
                if not data:
                    break
                at_end = len(data) < CHUNK
                text, used = decode_prefix(data, final=ended and at_end)
                if used == 0:
                    break                       # a character's first bytes: wait for the rest
                offset += used
                last_sent = time.monotonic()
                yield _event(offset, "output", json.dumps(text, ensure_ascii=False))
                if at_end:
                    break
            if ended:
                yield _event(offset, "end", json.dumps({"state": state, "offset": offset}))
                return
            if watched != folder and folder.is_dir():     # the job's folder appeared
                unsubscribe(watched, wake)
                watched = folder
                subscribe(watched, wake)
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), RESCAN)
            except TimeoutError:
                pass
            if time.monotonic() - last_sent >= KEEPALIVE:
                last_sent = time.monotonic()
                yield b": keepalive\n\n"
    finally:
        unsubscribe(watched, wake)
        states.forget(job_id)
