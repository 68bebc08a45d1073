"""Helpers for tests of the api over real HTTP: a running api (alone or under batchd), tokens,
a keep-alive client, and a server-sent events reader that reconnects with Last-Event-ID."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.config import load
from supervisor.state.layout import READY, Layout, read_record
from supervisor.state.tokens import add, tokens_path
from tests.helpers import until

__all__ = ["ApiProc", "Client", "Event", "config_text", "make_tokens", "read_events"]

#: Fast worker settings for process tests (every worker, the api included).
FAST = "{startsecs: 0.2, startretries: 1, stopwaitsecs: 5}"


def config_text(state: Path, *, listen: str = "127.0.0.1:0", extra: str = "") -> str:
    """A batchd config with the api on `listen` (port 0: any free port), jobs run directly."""
    workers = "\n".join(f"  {n}: {FAST}" for n in
                        ("scheduler", "locks", "reaper", "callbacks", "api"))
    return (f"state_dir: {state}\nlog: {{level: info, format: json}}\nlauncher: direct\n"
            f"scheduler: {{heartbeat_interval: 0.5, stale_after: 5, dead_after: 10, "
            f"kill_grace: 1}}\nworkers:\n{workers}\napi: {{listen: '{listen}'}}\n{extra}")


def make_tokens(cfg_path: Path) -> dict[str, str]:
    """One token per scope (named after it), made as `batchctl token add` makes them."""
    cfg = load(str(cfg_path))
    path = tokens_path(cfg, Layout(cfg.state_dir))
    return {scope: add(path, scope, scope) for scope in ("read", "submit", "admin")}


def api_address(layout: Layout, pid: int | None = None) -> tuple[str, int] | None:
    """(host, port) the api reported ready on (of process `pid`, when given)."""
    rec = read_record(READY, layout.ready_file("api"), owner=False)
    if not isinstance(rec, dict) or (pid is not None and rec.get("pid") != pid):
        return None
    listen = str(rec["found"]["listen"])
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class ApiProc:
    """The api worker alone (`python -m supervisor.api -c CONFIG`), on a free port."""

    cfg_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    address: tuple[str, int] = ("127.0.0.1", 0)

    def start(self) -> ApiProc:
        layout = Layout(load(str(self.cfg_path)).state_dir)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.api", "-c",
                                          str(self.cfg_path)], stdout=out, stderr=out)

        def ready() -> tuple[str, int] | None:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            return api_address(layout, self.proc.pid)

        self.address = until("the api ready", ready)
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Client:
    """A keep-alive HTTP/1.1 client for one api, with a default token."""

    address: tuple[str, int]
    token: str | None = None
    timeout: float = 30.0
    _conn: http.client.HTTPConnection | None = None

    def conn(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(*self.address, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: bytes | str | Any = None, *,
                token: str | None = "default", headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body bytes); a dict/list body is sent as JSON."""
        hdrs = dict(headers or {})
        tok = self.token if token == "default" else token
        if tok is not None:
            hdrs["Authorization"] = f"Bearer {tok}"
        if body is not None and not isinstance(body, bytes | str):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (0, 1):
            conn = self.conn()
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
                continue
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Event:
    """One server-sent event."""

    id: str | None
    event: str
    data: str
    fields: dict[str, str] = field(default_factory=dict)


def read_events(address: tuple[str, int], path: str, token: str, *,
                last_event_id: str | None = None, timeout: float = 30.0) -> Iterator[Event]:
    """The events of one SSE response, as they come (the generator ends with the stream)."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise AssertionError(f"{resp.status}: {resp.read()!r}")
        block: list[str] = []
        while True:
            raw = resp.readline()
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\n")
            if line:
                block.append(line)
                continue
            ev = Event(None, "message", "")
            data: list[str] = []
            for item in block:
                if item.startswith(":"):
                    continue
                key, _, value = item.partition(": ")
                if key == "id":
                    ev.id = value
                elif key == "event":
                    ev.event = value
                elif key == "data":
                    data.append(value)
                else:
                    ev.fields[key] = value
            block = []
            ev.data = "\n".join(data)
            if ev.id is not None or data:
                yield ev
    finally:
        conn.close()
