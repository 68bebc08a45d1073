"""The HTTP side of a webhook: the exact body and headers, a signature, the transport.

`attempt` POSTs a delivery record's payload once through a `Transport`: the real one
(`RequestsTransport`, requests imported at its first POST, redirects never followed, one
session per sending thread) or the in-memory twin tests use (`MockTransport`, httpx's
model), and says what came of it as a state.webhook.Result (delivered, retry, failed,
and the delay a 429 or 503 asked for with Retry-After).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

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

if TYPE_CHECKING:
    import requests

__all__ = ["BODY_KEEP", "MockTransport", "Reply", "RequestsTransport", "Sent", "Transport",
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


def _drain(resp: requests.Response, deadline: float) -> None:
    """Read what is left of a small body before `deadline`, so the connection goes back
    to the session's pool; anything else is left to close()."""
    import requests as rq

    got = 0
    try:
        for chunk in resp.iter_content(8192):
            got += len(chunk)
            if got > BODY_KEEP or time.monotonic() > deadline:
                return
    except (rq.RequestException, OSError, ValueError):
        return


class RequestsTransport:
    """The real transport: a `requests.Session` per sending thread (a session is not
    safe to share between threads; each keeps its own connections alive), redirects
    never followed.

    `stream=True` returns at the response headers; then at most BODY_KEEP bytes of the
    body are read, for no longer than `timeout` in all, so that the connection can be
    kept alive for the next POST to that receiver (a body left unread forces a new
    connection each time); a longer or slower body just closes the connection, so a
    receiver cannot hold the sending thread beyond about twice `timeout`.
    Proxies come from the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), as for curl.
    `requests` is imported at the first POST, not before: a (re)started worker reports
    ready without paying for it, and modules that only build requests never load it.
    """

    def __init__(self, session: requests.Session | None = None) -> None:
        self.session = session          # a session given here is used by every thread
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if self.session is not None:
            return self.session
        mine: requests.Session | None = getattr(self._local, "session", None)
        if mine is None:
            import requests as rq

            mine = self._local.session = rq.Session()
        return mine

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
             ) -> Reply:
        import requests as rq

        try:
            resp = self._session().post(url, data=body, headers=dict(headers),
                                        timeout=timeout, allow_redirects=False, stream=True)
        except rq.Timeout:
            raise TransportError(f"timed out after {timeout:g}s") from None
        except (rq.exceptions.InvalidURL, rq.exceptions.InvalidSchema,
                rq.exceptions.MissingSchema) as exc:
            raise TransportError(f"unusable URL: {exc}", permanent=True) from None
        except rq.ConnectionError as exc:
            raise TransportError(f"connection failed: {_root_cause(exc)}") from None
        except rq.RequestException as exc:
            raise TransportError(f"request failed: {_root_cause(exc)}") from None
        except ValueError as exc:   # a URL or header urllib3 cannot even parse
            raise TransportError(f"unusable request: {exc}", permanent=True) from None
        reply = Reply.of(int(resp.status_code), resp.headers)
        _drain(resp, time.monotonic() + timeout)
        resp.close()
        return reply


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
