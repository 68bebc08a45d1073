"""The HTTP side of a webhook (callbacks.transport): body, headers, signature, transports."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from supervisor.callbacks.transport import (
    MockTransport,
    Reply,
    RequestsTransport,
    Sent,
    TransportError,
    attempt,
    body_of,
    request_headers,
    sign,
)
from supervisor.state.atomic import dump_json
from supervisor.state.webhook import (
    DELIVERED,
    FAILED,
    RETRY,
    Result,
    delivery_request,
    new_delivery,
)

T0 = 1_800_000_000.0
PAYLOAD = {"event_id": "e1", "job": {"id": "j1", "state": "completed", "note": "héllo"}}


def record(event_id: str = "e1", now: float = T0) -> dict[str, Any]:
    return new_delivery(delivery_request(event_id, "http://127.0.0.1:9/hook", PAYLOAD,
                                         job="j1", now=now), now)


def answers(*statuses: int) -> Callable[[Sent], int]:
    """A handler answering `statuses` in turn (the last one forever)."""
    queue = list(statuses)

    def handler(sent: Sent) -> int:
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return handler


@pytest.mark.parametrize(("status", "result"), [
    (200, Result(DELIVERED, None)), (503, Result(RETRY, "HTTP 503")),
    (400, Result(FAILED, "HTTP 400")), (302, Result(FAILED, "HTTP 302")),
])
def test_attempt_reports_the_outcome_and_the_status(status: int, result: Result) -> None:
    """One try's result: the outcome and, unless delivered, "HTTP <status>"."""
    assert result == attempt(MockTransport(answers(status)), record(), secret=None, timeout=1)


def test_mock_transport_answers_with_headers() -> None:
    """A MockTransport handler may answer a Reply to send headers such as Retry-After."""
    transport = MockTransport(lambda sent: Reply.of(429, {"Retry-After": "7"}))
    assert Result(RETRY, "HTTP 429", 7.0) == attempt(transport, record(), secret=None,
                                                     timeout=1, now=lambda: T0)


def test_attempt_transport_errors() -> None:
    """A transport error is retried with its text; a permanent one fails at once."""
    def refused(sent: Sent) -> int:
        raise TransportError("connection failed: [Errno 111] Connection refused")

    def bad_url(sent: Sent) -> int:
        raise TransportError("unusable URL: nope", permanent=True)

    assert (Result(RETRY, "connection failed: [Errno 111] Connection refused"),
            Result(FAILED, "unusable URL: nope")) == (
        attempt(MockTransport(refused), record(), secret=None, timeout=1),
        attempt(MockTransport(bad_url), record(), secret=None, timeout=1))


# -- body, headers, signature ---------------------------------------------------------------

def test_body_is_the_canonical_dump_of_the_payload() -> None:
    """The body is dump_json(payload): sorted keys, UTF-8, what a receiver json-decodes."""
    body = body_of(PAYLOAD)
    assert (dump_json(PAYLOAD), PAYLOAD) == (body, json.loads(body))


def test_signature_is_the_hmac_of_the_exact_body_bytes() -> None:
    """X-Batchd-Signature is sha256=<hex HMAC-SHA256(secret, the bytes POSTed)>."""
    transport = MockTransport(answers(200))
    attempt(transport, record(), secret="s3cret", timeout=7.5)
    sent = transport.sent[0]
    want = "sha256=" + hmac.new(b"s3cret", sent.body, hashlib.sha256).hexdigest()
    assert (want, want, body_of(PAYLOAD)) == (
        sent.headers["X-Batchd-Signature"], sign(sent.body, "s3cret"), sent.body)
    assert ("http://127.0.0.1:9/hook", 7.5) == (sent.url, sent.timeout)


def test_headers_without_a_secret_carry_no_signature() -> None:
    """Content-Type and Idempotency-Key always; no signature header when no secret."""
    headers = request_headers("e1", b"{}", None)
    assert ("application/json", "e1", False) == (
        headers["Content-Type"], headers["Idempotency-Key"], "X-Batchd-Signature" in headers)


# -- the real transport -------------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[tuple[str, list[str], threading.Event]]:
    """A real HTTP server on 127.0.0.1:0; the path picks the answer: /200, /302, /slow,
    /503 (Retry-After: 120), /429 (Retry-After: an HTTP date, T0 + 60 s)."""
    seen: list[str] = []
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/slow":
                release.wait(5)
            status = {"/302": 302, "/503": 503, "/429": 429}.get(self.path, 200)
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/elsewhere")
            if status == 503:
                self.send_header("Retry-After", "120")
            if status == 429:
                self.send_header("Retry-After", "Fri, 15 Jan 2027 08:01:00 GMT")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen, release
    release.set()
    srv.shutdown()
    srv.server_close()


def test_requests_transport_posts_and_never_follows_redirects(
        server: tuple[str, list[str], threading.Event]) -> None:
    """Real HTTP: 200 comes back; a 302 comes back as 302 and its Location is not fetched."""
    base, seen, _ = server
    transport = RequestsTransport()
    assert (200, 302) == (transport.post(f"{base}/200", b"{}", {}, 5.0).status,
                          transport.post(f"{base}/302", b"{}", {}, 5.0).status)
    assert ["/200", "/302"] == seen


def test_requests_transport_returns_retry_after_in_both_forms(
        server: tuple[str, list[str], threading.Event]) -> None:
    """Real HTTP: a 503's `Retry-After: 120` and a 429's HTTP-date Retry-After reach the
    result as the delay they ask for (the date taken against the clock given)."""
    base, _, _ = server
    transport = RequestsTransport()
    got = [attempt(transport, {**record(), "url": f"{base}{path}"}, secret=None, timeout=5.0,
                   now=lambda: T0)
           for path in ("/503", "/429")]
    assert [Result(RETRY, "HTTP 503", 120.0), Result(RETRY, "HTTP 429", 60.0)] == got


def test_each_thread_has_its_own_session(
        server: tuple[str, list[str], threading.Event]) -> None:
    """A requests.Session is not shared between sending threads: two threads, two sessions."""
    base, _, _ = server
    transport = RequestsTransport()
    sessions: list[object] = []

    def post() -> None:
        transport.post(f"{base}/200", b"{}", {}, 5.0)
        sessions.append(transport._session())

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 2 == len({id(s) for s in sessions})


def test_requests_transport_errors(server: tuple[str, list[str], threading.Event]) -> None:
    """A timeout and a refused connection are retriable TransportErrors with their text."""
    base, _, release = server
    transport = RequestsTransport()
    with pytest.raises(TransportError) as slow:
        transport.post(f"{base}/slow", b"{}", {}, 0.3)
    release.set()
    with pytest.raises(TransportError) as refused:
        transport.post("http://127.0.0.1:9/", b"{}", {}, 2.0)
    assert ("timed out after 0.3s", False) == (str(slow.value), slow.value.permanent)
    assert "Connection refused" in str(refused.value) and not refused.value.permanent
