"""The api worker's process: bind `api.listen`, serve the app with uvicorn, stop on SIGTERM.

uvicorn (an ASGI server on uvloop with the httptools parser) and Starlette were chosen for
streaming and concurrency: one event loop holds hundreds of keep-alive connections and
server-sent event streams at the cost of a coroutine each, while blocking reads of the
state directory run in a thread pool; a thread per connection (http.server) would not
scale to long-lived streams, and nothing here needs a heavier framework. uvicorn runs
api.protocol.OneWriteProtocol (its httptools protocol, each response of known length in
one write) and app.App (POST /v1/jobs without Starlette's layers; docs/API.md "The worker").

The socket is bound before the loop starts, so a bad or busy address fails the worker's
start (exit 3, logged with the reason: batchd retries it, then leaves it FATAL and runs
degraded). A unix socket (`unix:/path`) is created with mode 0660 (bound under a umask
that never lets it be wider), a stale socket file left by a killed api is replaced, any
other file in its place is refused. The ready record is written once uvicorn listens.
SIGTERM (uvicorn's own handler, then the runtime's): stop accepting, end the event
streams (clients reconnect with Last-Event-ID), let requests in flight finish for up to
GRACE seconds, exit 0. Nothing the api holds needs saving: every request it acknowledged
is already durable in an owner's inbox.
"""

from __future__ import annotations

import os
import socket
import stat
import time

from supervisor import log as _log
from supervisor.api.app import build_app, make_api
from supervisor.api.protocol import OneWriteProtocol
from supervisor.config import Config, parse_listen
from supervisor.runtime import EXIT_OK, EXIT_RECOVERY_FAILED, report_ready
from supervisor.state.atomic import ensure_dir
from supervisor.state.clock import iso_now
from supervisor.state.layout import Layout

__all__ = ["GRACE", "bind", "serve"]

#: Seconds requests in flight may take to finish after SIGTERM.
GRACE = 3.0
_BACKLOG = 1024


def bind(listen: str) -> socket.socket:
    """A listening socket for an `api.listen` address (OSError saying why not)."""
    host, port = parse_listen(listen)
    if host == "unix":
        path = str(port)
        ensure_dir(os.path.dirname(path))
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise OSError(f"{path} exists and is not a socket; refusing to replace it")
            os.unlink(path)             # a stale socket of a killed api
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o660)
    else:
        assert isinstance(port, int)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    sock.listen(_BACKLOG)
    sock.set_inheritable(False)
    return sock


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, str):
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(cfg: Config) -> int:
    """The worker's main: bind, serve until SIGTERM; 0, or 3 when it cannot listen."""
    import uvicorn

    started, started_at = time.monotonic(), iso_now()
    layout = Layout(cfg.state_dir)
    log = _log.get("api")
    assert cfg.api.listen is not None, "the api runs only with api.listen set"
    try:
        sock = bind(cfg.api.listen)
    except (OSError, ValueError) as exc:
        log.error("cannot listen", listen=cfg.api.listen, error=str(exc))
        return EXIT_RECOVERY_FAILED
    address = _address(sock)
    api = make_api(cfg, layout, log)
    app = build_app(api)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            loop="uvloop", http=OneWriteProtocol, ws="none",
                            timeout_graceful_shutdown=int(GRACE), timeout_keep_alive=75,
                            server_header=False, date_header=True, proxy_headers=False)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.should_exit:
                return
            report_ready(layout, "api", found={"listen": address,
                                               "tokens": len(api.tokens.names())},
                         did={"listening": address},
                         degraded=[api.tokens.problem] if api.tokens.problem else [],
                         started_monotonic=started, started_at=started_at)
            log.info("ready", listen=address)

    server = Server(config)
    api.stopping = lambda: bool(server.should_exit)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK


