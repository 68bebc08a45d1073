"""The HTTP side of a webhook: the exact body and headers, a signature, the transport.

`attempt` POSTs a delivery record's payload once through a `Transport`: the real one
(`HttpTransport`, on http.client: redirects never followed, each sending thread's
connections kept alive) or the in-memory twin tests use (`MockTransport`, httpx's
model), and says what came of it as a state.webhook.Result (delivered, retry, failed,
and the delay a 429 or 503 asked for with Retry-After).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import http.client
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from supervisor import __version__
from supervisor.state.atomic import dump_json
from supervisor.state.webhook import (
    DELIVERED,
    FAILED,
    RETRY,
    RETRY_AFTER_STATUSES,
    Result,
    classify,
    retry_after_delay,
)

__all__ = ["BODY_KEEP", "HttpTransport", "MockTransport", "Reply", "Sent", "Transport",
           "TransportError", "attempt", "body_of", "request_headers", "sign"]


def sign(body: bytes, secret: str) -> str:
    """`sha256=<hex HMAC-SHA256 of body keyed with secret (UTF-8)>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_of(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes POSTed for `payload` (dump_json: UTF-8, sorted keys, newline)."""
    return dump_json(dict(payload))


def request_headers(event_id: str, body: bytes, secret: str | None) -> dict[str, str]:
    """The headers of every try of `event_id`; signed when `secret` is set."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": event_id,
               "User-Agent": f"batchd/{__version__}"}
    if secret is not None:
        headers["X-Batchd-Signature"] = sign(body, secret)
    return headers


class TransportError(Exception):
    """A try that got no HTTP status; str() is the error text, `permanent` = never retry."""

    def __init__(self, text: str, *, permanent: bool = False) -> None:
        super().__init__(text)
        self.permanent = permanent


@dataclass(frozen=True)
class Reply:
    """What a receiver answered: its status and headers (names lowercased)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, status: int, headers: Mapping[str, str] | None = None) -> Reply:
        """A Reply with `headers` given in any case (e.g. {"Retry-After": "120"})."""
        return cls(status, {k.lower(): v for k, v in (headers or {}).items()})

    @property
    def retry_after(self) -> str | None:
        """The Retry-After header as sent, or None."""
        return self.headers.get("retry-after")


class Transport(Protocol):
    """POSTs one body; returns the receiver's Reply or raises TransportError. Called from
    several sending threads at once."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
             ) -> Reply:
        ...


def _root_cause(exc: BaseException) -> str:
    """The innermost OS-level reason in an exception chain ("[Errno 111] Connection refused")."""
    seen: set[int] = set()
    best: BaseException = exc
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            best = cur
        nxt = [cur.__cause__, cur.__context__, getattr(cur, "reason", None),
               *[a for a in cur.args if isinstance(a, BaseException)]]
        todo.extend(e for e in nxt if isinstance(e, BaseException))
    if isinstance(best, OSError) and best.strerror:
        return f"[Errno {best.errno}] {best.strerror}" if best.errno else best.strerror
    return str(best)[:200]


#: At most this much of an answer's body is read (and dropped) to keep its connection.
BODY_KEEP = 64 * 1024

#: A keep-alive connection the receiver closed while idle fails like this on its next
#: request, before any answer: the request is sent again once on a new connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
          ConnectionAbortedError)


def _tls_context() -> ssl.SSLContext:
    """Certificates verified as requests and curl do: the CA bundle named by
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, else certifi's when installed, else the
    system's (OpenSSL's defaults, which honour SSL_CERT_FILE and SSL_CERT_DIR)."""
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if cafile is None and not os.environ.get("SSL_CERT_FILE"):
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            cafile = None
    return ssl.create_default_context(cafile=cafile)


def _send_head_and_body(conn: http.client.HTTPConnection, message_body: Any,
                        encode_chunked: bool) -> bool:
    """The request's head and a bytes body in ONE send (http.client sends them apart:
    two system calls, each a turn at the interpreter lock, and a small second segment
    Nagle may hold back); False: not a bytes body, http.client's own way applies."""
    if not isinstance(message_body, bytes) or encode_chunked:
        return False
    buffer: list[bytes] = conn._buffer  # type: ignore[attr-defined]
    buffer.extend((b"", b""))
    msg = b"\r\n".join(buffer) + message_body
    del buffer[:]
    conn.send(msg)
    return True


class _Http(http.client.HTTPConnection):
    """http.client's connection, sending a request's head and body at once."""

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if not _send_head_and_body(self, message_body, encode_chunked):
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]


class _Https(http.client.HTTPSConnection):
    """http.client's TLS connection, sending a request's head and body at once."""

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if not _send_head_and_body(self, message_body, encode_chunked):
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]


@dataclass(frozen=True)
class _Target:
    """Where one URL's request goes: the receiver, the path, and the proxy if any."""

    scheme: str
    host: str
    port: int
    path: str
    proxy: tuple[str, int, str | None] | None     # (host, port, Proxy-Authorization)

    @property
    def key(self) -> tuple[object, ...]:
        return (self.scheme, self.host, self.port, self.proxy)


@functools.lru_cache(maxsize=1024)
def _proxy_for(scheme: str, host: str) -> tuple[str, int, str | None] | None:
    """The proxy the environment names for `scheme` (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY,
    lowercase too), unless NO_PROXY covers `host`: (host, port, Proxy-Authorization).
    Worked out once per receiver (reading the environment costs more than a POST)."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    bypass: Callable[[str, dict[str, str]], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not url or bypass(host, proxies):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        return None
    auth = None
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(token.encode()).decode()
    return parts.hostname, parts.port or 8080, auth


def _target(url: str) -> _Target:
    """The request's target, or TransportError(permanent) for a URL that cannot be used."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TransportError(f"unusable URL: {exc}", permanent=True) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(f"unusable URL: {url!r} is not an http(s) URL with a host",
                             permanent=True)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path,
                   _proxy_for(scheme, host))


class HttpTransport:
    """The real transport, on the standard library's http.client: each sending thread
    keeps its own connections (one per receiver) alive from one POST to the next;
    redirects are never followed (http.client follows none).

    The answer's status and headers come back at once; then at most BODY_KEEP bytes of
    its body are read, for no longer than `timeout` in all, so the connection can serve
    the next POST (a longer or slower body closes it instead), so a receiver cannot hold
    the sending thread much beyond the timeout. Proxies come from the environment
    (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY), as for curl and requests: an http URL
    is sent to the proxy whole, an https one through a CONNECT tunnel. https is verified
    (see _tls_context). About a seventh of the processor time a requests Session takes
    per POST: it is most of what a delivery costs the worker.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._tls: ssl.SSLContext | None = None

    def _connections(self) -> dict[tuple[object, ...], http.client.HTTPConnection]:
        conns: dict[tuple[object, ...], http.client.HTTPConnection] | None = getattr(
            self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _connect(self, t: _Target, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if t.scheme == "https":
            if self._tls is None:
                self._tls = _tls_context()
            if t.proxy is not None:
                conn = _Https(t.proxy[0], t.proxy[1], timeout=timeout, context=self._tls)
                auth = {"Proxy-Authorization": t.proxy[2]} if t.proxy[2] else None
                conn.set_tunnel(t.host, t.port, headers=auth)
            else:
                conn = _Https(t.host, t.port, timeout=timeout, context=self._tls)
        elif t.proxy is not None:
            conn = _Http(t.proxy[0], t.proxy[1], timeout=timeout)
        else:
            conn = _Http(t.host, t.port, timeout=timeout)
        return conn

    def _send(self, conn: http.client.HTTPConnection, t: _Target, body: bytes,
              headers: Mapping[str, str], timeout: float) -> http.client.HTTPResponse:
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        out = dict(headers)
        path = t.path
        if t.proxy is not None and t.scheme == "http":
            path = f"http://{t.host}:{t.port}{t.path}"      # absolute form, to the proxy
            if t.proxy[2]:
                out["Proxy-Authorization"] = t.proxy[2]
        conn.request("POST", path, body=body, headers=out)
        return conn.getresponse()

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
             ) -> Reply:
        t = _target(url)
        conns = self._connections()
        conn = conns.pop(t.key, None)
        reused = conn is not None
        try:
            try:
                if conn is None:
                    conn = self._connect(t, timeout)
                resp = self._send(conn, t, body, headers, timeout)
            except _STALE:
                if not reused:
                    raise
                assert conn is not None
                conn.close()                         # idle too long for the receiver
                conn = self._connect(t, timeout)
                resp = self._send(conn, t, body, headers, timeout)
        except TimeoutError:
            if conn is not None:
                conn.close()
            raise TransportError(f"timed out after {timeout:g}s") from None
        except ssl.SSLError as exc:
            if conn is not None:
                conn.close()
            raise TransportError(f"TLS failed: {exc.reason or exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            if conn is not None:
                conn.close()
            what = "connection failed" if isinstance(exc, OSError) else "request failed"
            raise TransportError(f"{what}: {_root_cause(exc)}") from None
        except UnicodeError as exc:     # a host idna refuses, a path that is not ASCII:
            if conn is not None:        # the door refuses both; a record from before may not
                conn.close()
            raise TransportError(f"unusable URL: {exc}", permanent=True) from None
        reply = Reply.of(resp.status, dict(resp.getheaders()))
        if _drained(resp, time.monotonic() + timeout) and not resp.will_close:
            conns[t.key] = conn                      # kept for the next POST to it
        else:
            conn.close()
        return reply


def _drained(resp: http.client.HTTPResponse, deadline: float) -> bool:
    """Read what is left of a small body before `deadline`; True if it all came."""
    got = 0
    try:
        while chunk := resp.read(8192):
            got += len(chunk)
            if got > BODY_KEEP or time.monotonic() > deadline:
                return False
    except (OSError, http.client.HTTPException, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Sent:
    """One POST a MockTransport received."""

    url: str
    body: bytes
    headers: dict[str, str]
    timeout: float


@dataclass
class MockTransport:
    """A transport for unit tests (httpx.MockTransport style): `handler(sent)` answers
    each POST with a status or a Reply (to send headers such as Retry-After), or raises
    TransportError; every POST is kept in `sent` (list.append: safe from any thread)."""

    handler: Callable[[Sent], int | Reply]
    sent: list[Sent] = field(default_factory=list)

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
             ) -> Reply:
        sent = Sent(url, body, dict(headers), timeout)
        self.sent.append(sent)
        answer = self.handler(sent)
        return answer if isinstance(answer, Reply) else Reply(answer)


def attempt(transport: Transport, rec: Mapping[str, Any], *, secret: str | None,
            timeout: float, now: Callable[[], float] | None = None) -> Result:
    """POST the record's payload once (body computed once, headers per the contract).

    A 429 or 503 with a Retry-After header gives the delay it asks for (seconds, or an
    HTTP date taken against `now()`, the clock read when the answer came)."""
    body = body_of(rec["payload"])
    headers = request_headers(rec["id"], body, secret)
    try:
        reply = transport.post(rec["url"], body, headers, timeout)
    except TransportError as exc:
        return Result(FAILED if exc.permanent else RETRY, str(exc))
    status = reply.status
    outcome = classify(status)
    if outcome == DELIVERED:
        return Result(outcome, None)
    wait = None
    if status in RETRY_AFTER_STATUSES and reply.retry_after is not None:
        wait = retry_after_delay(reply.retry_after, time.time() if now is None else now())
    return Result(outcome, f"HTTP {status}", wait)
