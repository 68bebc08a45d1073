"""Logging for batchd and its workers: structlog set up from the config's `log` section.

Every line carries `name` (the program or worker) and `pid`. `console` writes human-readable
`key=value` lines (coloured only on a terminal); `json` writes one JSON object per line with
`timestamp` (ISO-8601 UTC), `level`, `event`, `name`, `pid`, then the bound keys.

The output (stderr or `log.file`), the level and the format live in this module's state, read
at each log call, so every logger ever made follows the latest `setup()`: a forked worker
calls `setup()` again and its lines carry its own name and pid, written to its own freshly
opened descriptor. Each line is one `write()` on an O_APPEND descriptor, so the processes
sharing a log file do not interleave within a line.

Lines that other code writes through the standard library's `logging` (watchdog,
requests) are bridged into the same output, format and file (`_Bridge`): no module of
batchd makes a stdlib logger of its own.

Crash safety: a log file is not state. It is opened in append mode (O_CLOEXEC, so jobs do
not inherit it) and never rewritten; a crash leaves at most a torn last line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, cast

import structlog
from structlog.typing import FilteringBoundLogger

from supervisor.config import ConfigError, LogConfig

__all__ = ["component", "get", "setup", "shutdown"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_METHOD_LEVEL = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                 "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
                 "critical": logging.CRITICAL, "fatal": logging.CRITICAL, "msg": logging.INFO}
_FIRST = ("timestamp", "level", "event", "name", "pid")


@dataclass
class _State:
    level: int = logging.INFO
    json: bool = False
    fd: int = 2                  # stderr until setup() opens a file
    owned: bool = False          # fd is a log file this process opened (close it on re-setup)
    name: str = "batchd"         # for lines from loggers that bound no name


_state = _State()
_json_render = structlog.processors.JSONRenderer(default=str)
_exc_info = structlog.processors.format_exc_info
_CONSOLE = {colors: structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False)
            for colors in (False, True)}


def _filter(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _METHOD_LEVEL.get(method, logging.INFO) < _state.level:
        raise structlog.DropEvent
    return event


def _order(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Stamp name and pid (read now: right after a fork too) and put the fixed keys first."""
    event.setdefault("name", _state.name)
    event["pid"] = os.getpid()
    first = {k: event.pop(k) for k in _FIRST if k in event}
    return {**first, **event}


def _render(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    if _state.json:
        return cast(str, _json_render(logger, method, _exc_info(logger, method, event)))
    return _CONSOLE[os.isatty(_state.fd)](logger, method, event)


class _Writer:
    """structlog's logger: one os.write() of the rendered line to the current descriptor."""

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(_state.fd, data):]
        except OSError:
            # A closed or broken log stream must not take a worker down with it.
            return

    log = debug = info = warn = warning = error = err = exception = critical = fatal = msg


_STDLIB_METHOD = ((logging.ERROR, "error"), (logging.WARNING, "warning"),
                  (logging.INFO, "info"), (0, "debug"))


class _Bridge(logging.Handler):
    """Hands standard-library log records to structlog, so they get our output, format,
    level filter, name and pid; `component` is the stdlib logger's name."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        method = next(m for level, m in _STDLIB_METHOD if record.levelno >= level)
        logger = structlog.get_logger().bind(component=record.name)
        extra: dict[str, Any] = {}
        if record.exc_info:
            extra["exc_info"] = record.exc_info
        getattr(logger, method)(message, **extra)


def _bridge_stdlib(level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Bridge)]:
        root.removeHandler(handler)
    root.addHandler(_Bridge())
    root.setLevel(max(level, logging.INFO))    # third-party debug chatter stays out


def shutdown() -> None:
    """Flush whatever the standard library's logging still holds (at process exit)."""
    logging.shutdown()


def _writer_factory(*_: Any) -> _Writer:
    return _WRITER


_WRITER = _Writer()


def setup(cfg: LogConfig, *, name: str) -> FilteringBoundLogger:
    """Configure logging from `cfg` for this process (again after a fork) and return get(name).

    Raises ConfigError if `cfg.file` cannot be opened for appending.
    """
    if cfg.level not in _LEVELS:
        raise ConfigError(f"log.level: expected one of {', '.join(_LEVELS)}, got {cfg.level!r}")
    fd = 2
    if cfg.file is not None:
        try:
            fd = os.open(cfg.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"log.file: cannot open {cfg.file}: {exc.strerror}") from None
    if _state.owned:             # the file of the last setup (in a forked child: its copy)
        os.close(_state.fd)
    _state.level, _state.json, _state.name = _LEVELS[cfg.level], cfg.format == "json", name
    _state.fd, _state.owned = fd, cfg.file is not None
    structlog.configure(
        processors=[
            _filter,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _order,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=_writer_factory,
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib(_state.level)
    return get(name)


def component(name: str) -> FilteringBoundLogger:
    """A logger for a part of the state layer (the WAL, the queue): its lines carry the
    program's own `name` (and pid) and `component`."""
    if not structlog.is_configured():
        setup(LogConfig(), name=_state.name)
    return cast(FilteringBoundLogger, structlog.get_logger().bind(component=name))


def get(name: str) -> FilteringBoundLogger:
    """A logger whose lines carry `name` (and pid); before any setup(), info to stderr."""
    if not structlog.is_configured():
        setup(LogConfig(), name=name)
    return cast(FilteringBoundLogger, structlog.get_logger().bind(name=name))
