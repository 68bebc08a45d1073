"""The api's HTTP protocol over a real uvicorn server on 127.0.0.1: a response of known
length leaves in ONE write (head and body together), byte for byte what uvicorn sends;
a streamed head, the head of a HEAD answer and a "100 Continue" leave at once; a failure
after the head still sends the head, then closes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from supervisor.api.protocol import OneWriteProtocol
from supervisor.api.server import bind

#: Every write a connection's transport was given, in order (the test's record).
WRITES: list[bytes] = []
#: Set by the client once it has read a streamed response's head.
HEAD_SEEN = threading.Event()


class _Recorder:
    """A transport that records what it is given to write, then passes it on."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Recording(OneWriteProtocol):
    """OneWriteProtocol over a recording transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Recorder(transport))  # type: ignore[arg-type]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/json":
        body = b'{"ids":["a"]}'
        if scope["method"] == "POST":
            while (await receive()).get("more_body"):
                pass
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        deadline = time.monotonic() + 10
        while not HEAD_SEEN.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": False})
    elif path == "/fail":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        raise RuntimeError("failed after the head")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    sock = bind("127.0.0.1:0")
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            loop="uvloop", http=Recording, ws="none", date_header=False,
                            server_header=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[:2]
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


def _read(conn: socket.socket, until: bytes) -> bytes:
    data = b""
    while until not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _head(status: str, *headers: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode()


def test_a_response_of_known_length_is_one_write_on_a_kept_alive_connection(
        server: tuple[str, int]) -> None:
    """Two requests on one keep-alive connection: each answer is ONE write, head and
    body together, the very bytes uvicorn writes in two."""
    WRITES.clear()
    answer = _head("201 Created", "content-type: application/json",
                   "content-length: 13") + b'{"ids":["a"]}'
    with socket.create_connection(server, timeout=10) as conn:
        for _ in range(2):
            conn.sendall(b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer == _read(conn, b'"]}')
    assert [answer, answer] == WRITES


def test_a_100_continue_leaves_at_once_and_the_answer_in_one_write(
        server: tuple[str, int]) -> None:
    """A client that waits for "100 Continue" before its body gets it (its own write),
    then the answer in one write."""
    WRITES.clear()
    with socket.create_connection(server, timeout=10) as conn:
        conn.sendall(b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert b"HTTP/1.1 100 Continue\r\n\r\n" == _read(conn, b"\r\n\r\n")
        conn.sendall(b"{}")
        got = _read(conn, b'"]}')
    answer = _head("201 Created", "content-type: application/json",
                   "content-length: 13") + b'{"ids":["a"]}'
    assert (answer, [b"HTTP/1.1 100 Continue\r\n\r\n", answer]) == (got, WRITES)


def test_a_streamed_head_is_written_before_its_first_chunk(server: tuple[str, int]) -> None:
    """A response without Content-Length (an event stream) shows its head at once: the
    app sends the first event only after the client has read the head."""
    WRITES.clear()
    HEAD_SEEN.clear()
    with socket.create_connection(server, timeout=10) as conn:
        conn.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = _read(conn, b"\r\n\r\n")
        HEAD_SEEN.set()
        rest = _read(conn, b"0\r\n\r\n")
    assert _head("200 OK", "content-type: text/event-stream",
                 "transfer-encoding: chunked") == head
    assert b"9\r\ndata: 1\n\n\r\n0\r\n\r\n" == rest
    assert [head, rest] == WRITES


def test_the_head_of_a_head_request_is_written_alone(server: tuple[str, int]) -> None:
    """HEAD: no body follows, so the head is not held; the connection stays usable."""
    WRITES.clear()
    head = _head("201 Created", "content-type: application/json", "content-length: 13")
    with socket.create_connection(server, timeout=10) as conn:
        conn.sendall(b"HEAD /json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head == _read(conn, b"\r\n\r\n")
        conn.sendall(b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head + b'{"ids":["a"]}' == _read(conn, b'"]}')
    assert [head, head + b'{"ids":["a"]}'] == WRITES


def test_a_failure_after_the_head_sends_the_head_then_closes(
        server: tuple[str, int]) -> None:
    """The app raises after its head (a body of 10 bytes announced, none sent): the held
    head goes out before uvicorn closes the connection, as uvicorn alone would send it."""
    WRITES.clear()
    with socket.create_connection(server, timeout=10) as conn:
        conn.sendall(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        got = _read(conn, b"never")                 # read until the server closes
    assert _head("200 OK", "content-length: 10") == got
    assert [got] == WRITES
