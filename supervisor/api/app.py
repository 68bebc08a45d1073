"""The api's routes (CONTRACT.md "HTTP API"): JSON under /v1, /metrics, the dashboard at /.

Every route is a front door to the same files and the same code as batchctl: reads go
through state.view and state.documents, submissions through state.submission (the one
validator, then the one durable request), control through state.jobcontrol and
state.control. The api writes nothing but requests into the owners' inboxes.

Errors are `{"error": {"code", "message"}}` with 400 (malformed JSON, a bad parameter,
cursor or offset), 401 (no valid token), 403 (scope too short), 404, 405, 409 (an id in
use by another job, a retry of a job still running), 413 (body over MAX_BODY), 422 (a job
the validator refuses: the message names the key), 503 (batchd not running where it must,
state that cannot be read, a write the disk refused: ENOSPC, EIO — code "storage", nothing
half-written, try again once the disk works). An unexpected failure is 500 with no
traceback (it is logged).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Send

from supervisor.api import openapi
from supervisor.api.inotify import Folders
from supervisor.api.stream import States, follow, read_range, size_of
from supervisor.api.submit import Batcher
from supervisor.config import WORKER_NAMES, Config, enabled_workers
from supervisor.runtime import Log
from supervisor.state import agentbin, control, documents, jobcontrol
from supervisor.state.joblist import (
    MAX_LIMIT,
    CursorError,
    filter_text,
    page,
    parse_label,
    parse_since,
)
from supervisor.state.jobs import valid_job_id
from supervisor.state.layout import Layout
from supervisor.state.metrics import CONTENT_TYPE, Metrics
from supervisor.state.queue import JOB_STATES
from supervisor.state.submission import (
    Checker,
    DiskLow,
    JobError,
    KnownCache,
    Refused,
    decode_json,
)
from supervisor.state.tokens import TokenTable, allows, tokens_path
from supervisor.state.view import (
    JobFilter,
    Unreadable,
    batchd_pid,
    collected_patch,
    follow_queue,
    open_view,
)

__all__ = ["HANDLERS", "MAX_BODY", "STATIC", "Api", "ApiError", "App", "build_app", "make_api",
           "routes"]

#: The largest request body accepted (a POST of many jobs); larger is 413.
MAX_BODY = 16 * 1024 * 1024
#: The dashboard's files, shipped in the package.
STATIC = Path(__file__).resolve().parent / "static"
_DEFAULT_LIMIT = 100
_INLINE_CHECK = 64 * 1024


class ApiError(Exception):
    """A client-facing error: HTTP status, a short code and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


@dataclass
class Api:
    """What the routes share: the configuration, the state dir, tokens, and the helpers
    that outlive one request (the submit writer, the inotify folders, the metrics cache,
    what submissions are checked against)."""

    cfg: Config
    layout: Layout
    log: Log
    tokens: TokenTable
    metrics: Metrics
    known: KnownCache
    folders: Folders = field(default_factory=Folders)
    batcher: Batcher | None = None
    states: States | None = None
    stopping: Callable[[], bool] = lambda: False

    def job_states(self, ids: list[str]) -> dict[str, str | None]:
        with open_view(self.cfg, self.layout) as view:
            return {i: view.state(i) for i in ids}


# -- requests ---------------------------------------------------------------------------------

def _api(request: Request) -> Api:
    api: Api = request.app.state.api
    return api


def require(request: Request, scope: str) -> tuple[str, str]:
    """The (scope, token name) of the request's bearer token; 401 or 403 otherwise."""
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer "
                                            "TOKEN; batchctl token add)")
    found = _api(request).tokens.check(token.strip())
    if found is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token")
    if not allows(found[0], scope):
        raise ApiError(403, "forbidden", f"token {found[1]!r} has scope {found[0]!r}; "
                                         f"this needs {scope!r}")
    return found


def _params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each given at most once, none unknown (400 otherwise)."""
    if not request.scope.get("query_string"):
        return {}
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise ApiError(400, "bad_parameter", f"unknown query parameter {key!r} "
                                                 f"(known: {', '.join(allowed) or 'none'})")
        if key in out and key != "label":
            raise ApiError(400, "bad_parameter", f"query parameter {key!r} given twice")
        out[key] = value if key not in out else f"{out[key]}\n{value}"
    return out


def _job_id(request: Request) -> str:
    job_id = str(request.path_params["id"])
    if not valid_job_id(job_id):
        raise ApiError(400, "bad_id", f"invalid job id {job_id!r} "
                                      "(expected [A-Za-z0-9][A-Za-z0-9._-]{0,63})")
    return job_id


def _int(text: str, name: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    if not text.isdigit() or len(text) > 18:
        raise ApiError(400, "bad_parameter", f"{name} must be a non-negative integer, "
                                             f"got {text!r}")
    value = int(text)
    if value < minimum or (maximum is not None and value > maximum):
        raise ApiError(400, "bad_parameter",
                       f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


async def _body(request: Request) -> bytes:
    """The request body, 413 past MAX_BODY (told by Content-Length or counted)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise ApiError(413, "too_large", f"body of {length} bytes is over the limit of "
                                         f"{MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "too_large", f"body is over the limit of {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(raw: bytes) -> Any:
    """The body as the job door decodes JSON (a key given twice refused); 400 otherwise."""
    try:
        return decode_json(raw.decode("utf-8"))
    except JobError as exc:
        raise ApiError(400, "bad_json", str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc.msg} (line "
                                        f"{exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "body is nested too deeply") from None


async def _read(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking read of the state dir off the loop; Unreadable state is 503."""
    try:
        return await run_in_threadpool(fn, *args)
    except Unreadable as exc:
        raise ApiError(503, "unreadable", str(exc)) from None


# -- jobs -------------------------------------------------------------------------------------

def _check_jobs(api: Api, body: Any) -> list[dict[str, Any]]:
    """The checked jobs of a POST body (one job object, or {"jobs": [...]}); 422 otherwise."""
    if isinstance(body, dict) and set(body) == {"jobs"}:
        items = body["jobs"]
        if not isinstance(items, list) or not items:
            raise ApiError(422, "invalid", "jobs must be a non-empty array of job objects")
        many = True
    else:
        items, many = [body], False
    checker = Checker(api.known.get())
    jobs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"jobs[{i}]: " if many else ""
        try:
            job = checker.check(item)
        except JobError as exc:
            raise ApiError(422, "invalid", f"{where}{exc}") from None
        if job["id"] is not None:
            first = seen.setdefault(job["id"], i)
            if first != i:
                raise ApiError(422, "invalid", f"{where}duplicate job id {job['id']!r} "
                                               f"(also jobs[{first}])")
        jobs.append(job)
    return jobs


async def post_jobs(request: Request) -> Response:
    require(request, "submit")
    _params(request, ())
    api = _api(request)
    raw = await _body(request)
    body = _json(raw)
    # a small body is checked on the loop (a thread hop costs more than the check); a big
    # one (thousands of jobs) in a thread, so streams and other requests keep flowing
    jobs = _check_jobs(api, body) if len(raw) < _INLINE_CHECK else \
        await run_in_threadpool(_check_jobs, api, body)
    assert api.batcher is not None
    try:
        ids = await api.batcher.submit_async(jobs)
    except Refused as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except JobError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    except DiskLow as exc:
        raise ApiError(503, "disk_low", f"{exc}; nothing was queued") from None
    except Unreadable as exc:
        raise ApiError(503, "unreadable", f"{exc}; ids in use cannot be checked, nothing "
                                          "was queued") from None
    return JSONResponse({"ids": ids}, status_code=201)     # an OSError: 503 storage (_storage)


_LIST_PARAMS = ("state", "batch", "agent", "label", "since", "limit", "cursor", "order")


def _filter(params: dict[str, str]) -> JobFilter:
    state = params.get("state")
    if state is not None and state not in JOB_STATES:
        raise ApiError(400, "bad_parameter", f"state {state!r} is not one of "
                                             f"{', '.join(JOB_STATES)}")
    try:
        labels = dict(parse_label(t) for t in params["label"].split("\n")) \
            if "label" in params else {}
        since = parse_since(params["since"]) if "since" in params else None
        for name in ("batch", "agent"):
            if name in params:
                filter_text(name, params[name])
    except ValueError as exc:
        raise ApiError(400, "bad_parameter", str(exc).replace("--", "", 1)) from None
    return JobFilter(state=state, batch=params.get("batch"), agent=params.get("agent"),
                     labels=labels, since=since)


def _list_jobs(api: Api, f: JobFilter, limit: int, cursor: str | None,
               newest_first: bool) -> dict[str, Any]:
    with open_view(api.cfg, api.layout) as view:
        got = page(view, f, limit=limit, cursor=cursor, newest_first=newest_first)
        return {"jobs": [view.record(e) for e in got.entries], "next_cursor": got.next_cursor}


async def get_jobs(request: Request) -> Response:
    require(request, "read")
    params = _params(request, _LIST_PARAMS)
    f = _filter(params)
    limit = _int(params["limit"], "limit", minimum=1, maximum=MAX_LIMIT) \
        if "limit" in params else _DEFAULT_LIMIT
    order = params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "bad_parameter", f"order must be asc or desc, got {order!r}")
    try:
        doc = await _read(_list_jobs, _api(request), f, limit, params.get("cursor"),
                          order == "desc")
    except CursorError as exc:
        raise ApiError(400, "bad_cursor", str(exc)) from None
    return JSONResponse(doc)


def _record(api: Api, job_id: str) -> dict[str, Any]:
    with open_view(api.cfg, api.layout) as view:
        entry = view.get(job_id)
        if entry is None:
            raise ApiError(404, "not_found", f"no such job: {job_id}")
        return view.record(entry)


async def get_job(request: Request) -> Response:
    require(request, "read")
    _params(request, ())
    return JSONResponse(await _read(_record, _api(request), _job_id(request)))


async def cancel_job(request: Request) -> Response:
    require(request, "submit")
    _params(request, ())
    api, job_id = _api(request), _job_id(request)
    try:
        doc = await _read(jobcontrol.cancel, api.cfg, api.layout, job_id)
    except jobcontrol.NoSuchJob:
        raise ApiError(404, "not_found", f"no such job: {job_id}") from None
    return JSONResponse(doc, status_code=202 if doc["requested"] else 200)


async def retry_job(request: Request) -> Response:
    require(request, "submit")
    _params(request, ())
    api, job_id = _api(request), _job_id(request)
    try:
        new_id = await _read(jobcontrol.retry, api.cfg, api.layout, job_id)
    except jobcontrol.NoSuchJob:
        raise ApiError(404, "not_found", f"no such job: {job_id}") from None
    except jobcontrol.NotTerminal as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except JobError as exc:
        raise ApiError(422, "invalid", f"cannot retry {job_id}: {exc}") from None
    except DiskLow as exc:
        raise ApiError(503, "disk_low", f"cannot retry {job_id}: {exc}") from None
    return JSONResponse({"id": new_id, "retry_of": job_id}, status_code=201)


async def job_diff(request: Request) -> Response:
    require(request, "read")
    _params(request, ())
    api, job_id = _api(request), _job_id(request)
    await _read(_record, api, job_id)              # 404 for an unknown job
    patch = collected_patch(api.layout, job_id)
    data = b"" if patch is None else await run_in_threadpool(read_range, patch, 0,
                                                             size_of(patch))
    return Response(data, media_type="text/x-diff")


async def job_output(request: Request) -> Response:
    require(request, "read")
    params = _params(request, ("offset",))
    api, job_id = _api(request), _job_id(request)
    await _read(_record, api, job_id)              # 404 for an unknown job
    path = api.layout.job_output(job_id)
    sse = "text/event-stream" in request.headers.get("accept", "")
    last = request.headers.get("last-event-id") if sse else None
    if last is not None and last.strip():
        start = _int(last.strip(), "Last-Event-ID")
    else:
        start = _int(params["offset"], "offset") if "offset" in params else 0
    size = size_of(path)
    if start > size:
        raise ApiError(400, "bad_offset", f"offset {start} is past the end of the output "
                                          f"({size} bytes so far)")
    if not sse:
        data = await run_in_threadpool(read_range, path, start, size)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Batchd-Offset": str(start + len(data))})
    assert api.states is not None
    events = follow(api.layout, job_id, start, states=api.states,
                    subscribe=api.folders.subscribe, unsubscribe=api.folders.unsubscribe,
                    stopping=api.stopping)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- batchd's documents -----------------------------------------------------------------------

def _doc(scope: str, fn: Callable[[Api], Any]) -> Callable[[Request], Awaitable[Response]]:
    """A GET route answering one of batchctl's --json documents."""
    async def route(request: Request) -> Response:
        require(request, scope)
        _params(request, ())
        return JSONResponse(await _read(fn, _api(request)))
    return route


def _workers(api: Api) -> list[dict[str, Any]]:
    if batchd_pid(api.layout) is None:
        raise ApiError(503, "not_running", f"batchd is not running (state dir "
                                           f"{api.layout.root})")
    return documents.workers_doc(api.cfg, api.layout)


def _batches(api: Api) -> list[dict[str, Any]]:
    with open_view(api.cfg, api.layout) as view:
        return documents.batch_records(view)


async def get_batch(request: Request) -> Response:
    require(request, "read")
    _params(request, ())
    name = str(request.path_params["batch"])
    found = [r for r in await _read(_batches, _api(request)) if r["batch"] == name]
    if not found:
        raise ApiError(404, "not_found", f"no such batch: {name}")
    return JSONResponse(found[0])


async def get_agents(request: Request) -> Response:
    require(request, "read")
    _params(request, ())
    return JSONResponse(await _read(_agents, _api(request)))


def _agents(api: Api) -> list[dict[str, Any]]:
    """`batchctl agents --json`; the api reads the version cache, never writes it (a
    binary not asked yet is asked again each time, its version not kept)."""
    return agentbin.agent_records(api.cfg, api.layout, owner=False)


# -- control (admin) --------------------------------------------------------------------------

async def post_pause(request: Request) -> Response:
    require(request, "admin")
    _params(request, ())
    pause = request.url.path.endswith("/pause")
    doc = await run_in_threadpool(jobcontrol.set_paused, _api(request).layout, pause)
    return JSONResponse(doc, status_code=202)


async def restart_worker(request: Request) -> Response:
    require(request, "admin")
    _params(request, ())
    api = _api(request)
    worker = str(request.path_params["worker"])
    if worker not in WORKER_NAMES:
        raise ApiError(404, "not_found", f"no worker named {worker!r} (one of "
                                         f"{', '.join(enabled_workers(api.cfg))})")
    try:
        if worker == "api":          # restarting ourselves: the reply would come too late
            rid = await run_in_threadpool(control.write_control, api.layout, "restart", worker)
            return JSONResponse({"id": rid, "ok": True, "message": "restart requested",
                                 "result": None}, status_code=202)
        reply = await run_in_threadpool(control.send_control, api.cfg, api.layout,
                                        "restart", worker)
    except control.NotRunning as exc:
        raise ApiError(503, "not_running", str(exc)) from None
    except control.NoReply as exc:
        raise ApiError(503, "no_reply", str(exc)) from None
    doc = {k: reply.get(k) for k in ("id", "ok", "message", "result")}
    if not reply.get("ok"):
        raise ApiError(409, "conflict", f"{worker}: {reply.get('message') or 'restart failed'}")
    return JSONResponse(doc)


# -- metrics, OpenAPI, the dashboard ----------------------------------------------------------

async def get_metrics(request: Request) -> Response:
    require(request, "read")
    _params(request, ())
    data = await run_in_threadpool(_api(request).metrics.exposition)
    return Response(data, media_type=CONTENT_TYPE)


async def get_token(request: Request) -> Response:
    scope, name = require(request, "read")
    _params(request, ())
    return JSONResponse({"name": name, "scope": scope})


async def get_openapi(request: Request) -> Response:
    require(request, "read")
    _params(request, ())
    return JSONResponse(openapi.DOCUMENT)


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def routes() -> list[Route | Mount]:
    """Every route of the api (the OpenAPI test checks them against openapi.DOCUMENT)."""
    return [
        Route("/", dashboard, methods=["GET"]),
        Route("/metrics", get_metrics, methods=["GET"]),
        Route("/v1/openapi.json", get_openapi, methods=["GET"]),
        Route("/v1/token", get_token, methods=["GET"]),
        Route("/v1/jobs", get_jobs, methods=["GET"]),
        Route("/v1/jobs", post_jobs, methods=["POST"]),
        Route("/v1/jobs/{id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{id}/cancel", cancel_job, methods=["POST"]),
        Route("/v1/jobs/{id}/retry", retry_job, methods=["POST"]),
        Route("/v1/jobs/{id}/diff", job_diff, methods=["GET"]),
        Route("/v1/jobs/{id}/output", job_output, methods=["GET"]),
        Route("/v1/status", _doc("read", lambda a: documents.status_doc(a.cfg, a.layout)),
              methods=["GET"]),
        Route("/v1/workers", _doc("read", _workers), methods=["GET"]),
        Route("/v1/locks", _doc("read", lambda a: documents.locks_doc(a.cfg, a.layout)),
              methods=["GET"]),
        Route("/v1/callbacks", _doc("read", lambda a: documents.deliveries(a.layout)),
              methods=["GET"]),
        Route("/v1/batches", _doc("read", _batches), methods=["GET"]),
        Route("/v1/batches/{batch}", get_batch, methods=["GET"]),
        Route("/v1/stats", _doc("read", lambda a: documents.stats_doc(a.cfg, a.layout)),
              methods=["GET"]),
        Route("/v1/agents", get_agents, methods=["GET"]),
        Route("/v1/pause", post_pause, methods=["POST"]),
        Route("/v1/resume", post_pause, methods=["POST"]),
        Route("/v1/workers/{worker}/restart", restart_worker, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]


# -- errors -----------------------------------------------------------------------------------

async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": 'Bearer realm="batchd"'} if exc.status == 401 else None
    return error_response(exc.status, exc.code, exc.message, headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request",
               413: "too_large"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = {404: f"no route {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, str(exc.detail))
    return error_response(exc.status_code, code, message, dict(exc.headers or {}) or None)


async def _unexpected(request: Request, exc: Exception) -> Response:
    _api(request).log.error("request failed", path=request.url.path, method=request.method,
                            error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    return error_response(500, "internal", "internal error (logged by the api worker)")


async def _storage(request: Request, exc: Exception) -> Response:
    """The state dir refused a read or a write (a full or failing disk, a file gone): 503,
    the error named; every write is atomic, so nothing was half-done."""
    assert isinstance(exc, OSError)
    _api(request).log.error("request failed: the state dir refused it", path=request.url.path,
                            method=request.method, error=str(exc), errno=exc.errno)
    what = exc.strerror or str(exc)
    return error_response(503, "storage", f"the state dir cannot be used now ({what}); "
                                          "nothing was changed: try again later")


def _warm(api: Api) -> None:
    try:
        api.metrics.exposition()
    except (OSError, Unreadable) as exc:
        api.log.warning("metrics: first exposition failed", error=str(exc))


#: The handlers of the exceptions a route may raise, looked up along the exception's MRO
#: (as Starlette does); anything else is _unexpected (500, logged).
HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    ApiError: _api_error, HTTPException: _http_error, OSError: _storage}


def _handler(exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    for cls in type(exc).__mro__:
        handler = HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None


class App:
    """The ASGI application uvicorn serves: `POST /v1/jobs` straight to its route, every
    other request (and the lifespan) through Starlette.

    A submission is the api's hot path (a client POSTing jobs one at a time), and
    Starlette's layers (its two exception middlewares, the router matching the path
    against the routes in turn, the route's own exception wrapper) were a quarter of the
    Python a POST cost on the event loop (about 15 of 55 microseconds). This path runs
    the same route function with the same Request, and answers its exceptions with the
    same handlers (HANDLERS) as Starlette would: an ApiError its document, an OSError
    503 `storage`, anything else 500 (logged) and then raised on to uvicorn, as
    Starlette's ServerErrorMiddleware does (uvicorn then closes the
    connection). Any other method or path, `/v1/jobs/` included, is Starlette's."""

    def __init__(self, starlette: Starlette) -> None:
        self.starlette = starlette

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive,
                       send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/jobs" and \
                scope["method"] == "POST":
            await self.post_jobs(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)

    async def post_jobs(self, scope: MutableMapping[str, Any], receive: Receive,
                        send: Send) -> None:
        """POST /v1/jobs without Starlette's middleware and router, answered the same."""
        scope["app"] = self.starlette           # what Request.app is (Starlette sets it)
        request = Request(scope, receive)
        try:
            response = await post_jobs(request)
        except Exception as exc:
            handler = _handler(exc)
            if handler is not None:
                response = await handler(request, exc)
            else:
                await (await _unexpected(request, exc))(scope, receive, send)
                raise
        await response(scope, receive, send)

    @property
    def state(self) -> State:
        """The Starlette application's state (`state.api`)."""
        return self.starlette.state


def build_app(api: Api) -> App:
    """The ASGI application over `api` (its submit writer and states start with it)."""
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        api.batcher = Batcher(api.cfg, api.layout, loop=asyncio.get_running_loop())
        api.states = States(api.job_states)
        # the first exposition decodes every finished job once: do it now, off the loop
        threading.Thread(target=_warm, args=(api,), name="metrics-warm", daemon=True).start()
        try:
            yield
        finally:
            api.batcher.close()
            api.folders.close()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        **HANDLERS, Exception: _unexpected}
    app = Starlette(routes=routes(), lifespan=lifespan, exception_handlers=handlers)
    app.state.api = api
    return App(app)


def make_api(cfg: Config, layout: Layout, log: Log) -> Api:
    """The shared parts of one api worker over `cfg`'s state dir (its views share one
    read-only queue that follows the log: state.view.follow_queue)."""
    follow_queue(layout)
    return Api(cfg=cfg, layout=layout, log=log, tokens=TokenTable(tokens_path(cfg, layout)),
               metrics=Metrics(cfg, layout), known=KnownCache(cfg, layout))


