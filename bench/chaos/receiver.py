"""The chaos run's webhook receiver: a local HTTP server that fails, hangs and answers 429.

Every POST is recorded (path, Idempotency-Key, the body's event id, job or batch, what was
answered, when). Each event misbehaves at most `max_bad` times, chosen by a seeded
generator: 500, a hang past the sender's timeout (then 503), 429 with `Retry-After`, or the
connection closed without an answer; after that it is answered 200. So an event that never
got a 2xx was given up by batchd, not by the receiver.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Hit", "Receiver"]


@dataclass(frozen=True)
class Hit:
    """One POST the receiver got and what it answered (0: closed without an answer)."""

    path: str
    key: str | None
    event_id: str | None
    job: str | None          # the job's id (a job event)
    job_state: str | None    # the state the job event carries
    batch: str | None        # the batch's name (a batch event)
    batch_jobs: tuple[str, ...]
    status: int
    at: float


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) in a thread of its own."""

    def __init__(self, seed: int, *, hang_s: float, max_bad: int = 2,
                 bad_rate: float = 0.3) -> None:
        self.rng = random.Random(seed)
        self.hang_s = hang_s
        self.max_bad = max_bad
        self.bad_rate = bad_rate
        self.hits: list[Hit] = []
        self.bad: dict[str, int] = {}
        self.lock = threading.Lock()
        self.misbehaved: dict[str, int] = {"500": 0, "hang": 0, "429": 0, "close": 0}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                receiver.handle(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return       # a sender that hung up (its timeout): nothing to report

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver",
                                       daemon=True)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _choose(self, key: str) -> str:
        with self.lock:
            if self.bad.get(key, 0) >= self.max_bad or self.rng.random() >= self.bad_rate:
                return "200"
            self.bad[key] = self.bad.get(key, 0) + 1
            what = self.rng.choice(("500", "hang", "429", "close"))
            self.misbehaved[what] += 1
            return what

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        job = body.get("job") if isinstance(body.get("job"), dict) else None
        batch = body.get("batch") if isinstance(body.get("batch"), dict) else None
        key = req.headers.get("Idempotency-Key")
        what = self._choose(key or "")
        status = {"200": 200, "500": 500, "hang": 503, "429": 429, "close": 0}[what]
        if what == "hang":
            time.sleep(self.hang_s)
        hit = Hit(path=req.path, key=key,
                  event_id=body.get("event_id") if isinstance(body.get("event_id"), str)
                  else None,
                  job=str(job.get("id")) if job else None,
                  job_state=str(job.get("state")) if job else None,
                  batch=str(batch.get("batch")) if batch else None,
                  batch_jobs=tuple(str(j) for j in (batch or {}).get("jobs") or ()),
                  status=status, at=time.time())
        with self.lock:
            self.hits.append(hit)
        if status == 0:
            req.close_connection = True
            return
        try:
            req.send_response(status)
            if status == 429:
                req.send_header("Retry-After", "1")
            req.send_header("Content-Length", "0")
            req.end_headers()
        except OSError:
            return
