"""The HTTP side of a webhook (callbacks.transport): body, headers, signature, transports."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from supervisor.callbacks.transport import (
    HttpTransport,
    MockTransport,
    Reply,
    Sent,
    TransportError,
    _proxy_for,
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

@dataclass
class Seen:
    """What the test server saw: (path, client port) per request, and the request lines."""

    hits: list[tuple[str, int]]
    lines: list[str]
    release: threading.Event


@pytest.fixture
def server() -> Iterator[tuple[str, Seen]]:
    """A real HTTP/1.1 server on 127.0.0.1:0 (keep-alive); the path picks the answer:
    /200, /302, /slow (held until released), /503 (Retry-After: 120), /429 (Retry-After:
    an HTTP date, T0 + 60 s), /drop (answers, then closes without saying so)."""
    seen = Seen([], [], threading.Event())

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            seen.hits.append((self.path, self.client_address[1]))
            seen.lines.append(self.requestline)
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/slow":
                seen.release.wait(5)
            status = {"/302": 302, "/503": 503, "/429": 429}.get(self.path, 200)
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/elsewhere")
            if status == 503:
                self.send_header("Retry-After", "120")
            if status == 429:
                self.send_header("Retry-After", "Fri, 15 Jan 2027 08:01:00 GMT")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            if self.path == "/drop":
                self.close_connection = True

        def log_message(self, *args: Any) -> None:
            return

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    seen.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests talk to 127.0.0.1 directly unless one sets a proxy itself."""
    _proxy_for.cache_clear()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                 "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_http_transport_posts_and_never_follows_redirects(server: tuple[str, Seen]) -> None:
    """Real HTTP: 200 comes back; a 302 comes back as 302 and its Location is not fetched."""
    base, seen = server
    transport = HttpTransport()
    assert (200, 302) == (transport.post(f"{base}/200", b"{}", {}, 5.0).status,
                          transport.post(f"{base}/302", b"{}", {}, 5.0).status)
    assert ["/200", "/302"] == [path for path, _ in seen.hits]


def test_http_transport_returns_retry_after_in_both_forms(server: tuple[str, Seen]) -> None:
    """Real HTTP: a 503's `Retry-After: 120` and a 429's HTTP-date Retry-After reach the
    result as the delay they ask for (the date taken against the clock given)."""
    base, _ = server
    transport = HttpTransport()
    got = [attempt(transport, {**record(), "url": f"{base}{path}"}, secret=None, timeout=5.0,
                   now=lambda: T0)
           for path in ("/503", "/429")]
    assert [Result(RETRY, "HTTP 503", 120.0), Result(RETRY, "HTTP 429", 60.0)] == got


def test_a_thread_keeps_its_connection_alive(server: tuple[str, Seen]) -> None:
    """Three POSTs from one thread share one connection; another thread has its own."""
    base, seen = server
    transport = HttpTransport()
    for _ in range(3):
        transport.post(f"{base}/200", b"{}", {}, 5.0)
    other = threading.Thread(target=lambda: transport.post(f"{base}/200", b"{}", {}, 5.0))
    other.start()
    other.join()
    ports = [port for _, port in seen.hits]
    assert (1, 2) == (len(set(ports[:3])), len(set(ports)))


def test_a_connection_the_receiver_dropped_is_replaced(server: tuple[str, Seen]) -> None:
    """The receiver closed a kept connection without saying so: the next POST goes once,
    on a new connection."""
    base, seen = server
    transport = HttpTransport()
    assert 200 == transport.post(f"{base}/drop", b"{}", {}, 5.0).status
    assert 200 == transport.post(f"{base}/200", b"{}", {}, 5.0).status
    assert ["/drop", "/200"] == [path for path, _ in seen.hits]


def test_http_transport_errors(server: tuple[str, Seen]) -> None:
    """A timeout and a refused connection are retriable TransportErrors with their text; a
    URL that cannot be used at all is a permanent one."""
    base, seen = server
    transport = HttpTransport()
    with pytest.raises(TransportError) as slow:
        transport.post(f"{base}/slow", b"{}", {}, 0.3)
    seen.release.set()
    with pytest.raises(TransportError) as refused:
        transport.post("http://127.0.0.1:9/", b"{}", {}, 2.0)
    with pytest.raises(TransportError) as bad:
        transport.post("http://127.0.0.1:99999/", b"{}", {}, 2.0)
    assert ("timed out after 0.3s", False) == (str(slow.value), slow.value.permanent)
    assert "Connection refused" in str(refused.value) and not refused.value.permanent
    assert (True, True) == (str(bad.value).startswith("unusable URL"), bad.value.permanent)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/\u00fc", "http://127.0.0.1:9/?q=\u00fc",
                                 "http://a..b/", "http://" + "a" * 64 + ".invalid/"])
def test_a_url_http_client_cannot_send_is_a_permanent_error(url: str) -> None:
    """A non-ASCII path or query (UnicodeEncodeError in http.client) or a host idna refuses
    (UnicodeError) raised out of the sending thread and killed the callbacks worker, again
    at each restart: now a permanent TransportError (the delivery fails, once). The door
    refuses such URLs; a record written before it did may still hold one."""
    with pytest.raises(TransportError) as info:
        HttpTransport().post(url, b"{}", {}, 2.0)
    assert (True, True) == (str(info.value).startswith("unusable URL: "),
                            info.value.permanent)


def test_a_proxy_from_the_environment(server: tuple[str, Seen],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY: the POST goes to the proxy with the whole URL in its request line (here
    the test server stands in for the proxy); NO_PROXY naming the host: straight there."""
    base, seen = server
    monkeypatch.setenv("HTTP_PROXY", base)
    assert 200 == HttpTransport().post("http://receiver.invalid:8080/hook", b"{}", {},
                                       5.0).status
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    _proxy_for.cache_clear()                  # the environment is read once per receiver
    assert 200 == HttpTransport().post(f"{base}/200", b"{}", {}, 5.0).status
    assert ["POST http://receiver.invalid:8080/hook HTTP/1.1", "POST /200 HTTP/1.1"] == \
        seen.lines
