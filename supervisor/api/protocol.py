"""The api's HTTP/1.1 protocol for uvicorn: httptools, each response's head and body in ONE write.

uvicorn's httptools protocol writes a response's head (status line and headers) when the
application sends `http.response.start` and its body with the next message: two writes,
so two send calls, two loopback segments and two wake-ups of the client for every answer
of a few dozen bytes. OneWriteProtocol is that protocol with one change: the head of a
response whose length is known (Content-Length) is held until its first body bytes and
written with them. Every byte and every check stays uvicorn's (its RequestResponseCycle
builds and validates the head). What is not held, or is flushed at once:
- a head without Content-Length (a chunked stream: the SSE events) is written at once,
  as a client must see it before the first event, which may come much later;
- the head of an answer to HEAD (no body follows) is written at once;
- a held head goes out with the next write on its connection (uvicorn writes every body
  message of such a response, an empty one too) or before a close (uvicorn closes the
  connection whenever a response cannot be completed: an exception after the head, a
  body shorter or longer than announced, an application that returns without it), so
  the bytes on the wire are uvicorn's, in uvicorn's order, only in fewer segments.
docs/API.md "The worker" says what it saves.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["OneWriteProtocol"]


class _Joining:
    """The transport of one request/response cycle: the head of a response of known length
    is held and written with the first bytes after it."""

    __slots__ = ("_cycle", "_held", "_transport", "_waiting_head")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._held: bytes | None = None
        self._waiting_head = True      # its response's head not written yet

    def write(self, data: bytes) -> None:
        """Write `data` (after the held head, in the same write), or hold it when it is the
        head of a response whose body follows (Content-Length given, not HEAD)."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
            return
        cycle = self._cycle
        # the head is the first write once the response has started (a "100 Continue"
        # comes before it, while nothing is started); uvicorn has decided the framing then
        if self._waiting_head and cycle.response_started:
            self._waiting_head = False
            if cycle.chunked_encoding is False and cycle.scope["method"] != "HEAD":
                self._held = data
                return
        self._transport.write(data)

    def flush(self) -> None:
        """Write the held head, if any."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:       # what else a cycle may ask of a transport
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering each response of known length in one write."""

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:   # a new request: its own transport
            cycle.transport = _Joining(self.transport, cycle)  # type: ignore[assignment]
