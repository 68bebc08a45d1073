"""One inotify instance on the api's event loop: wake the streams whose folders changed.

An SSE stream follows a job's output file; the api may serve hundreds at once, so it cannot
afford a watchdog observer (a thread and an inotify instance) per stream. `Folders` holds
one inotify descriptor, read by the asyncio loop itself (loop.add_reader), with one watch
per folder being followed, shared and counted by the streams that follow it. Events are
hints (docs/SUPERVISOR.md): a stream re-reads the file on every wake and also every
`rescan` seconds, so an overflowed queue or a folder that did not exist yet costs latency,
never a byte.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

__all__ = ["Folders"]

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE_SELF = 0x400
_IN_IGNORED = 0x8000
_IN_Q_OVERFLOW = 0x4000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE_SELF
_EVENT = struct.Struct("iIII")


class Folders:
    """Watched folders; `wait(folder, ...)` returns when something in it changed."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_wd: dict[int, str] = {}
        self._wd_of: dict[str, int] = {}
        self._users: dict[str, int] = {}
        self._events: dict[str, set[asyncio.Event]] = {}

    def _ensure(self) -> bool:
        if self._fd >= 0:
            return True
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return False              # limits reached: the streams fall back on rescans
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._read)
        return True

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        pos = 0
        woken: set[str] = set()
        overflow = False
        while pos + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
            pos += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                overflow = True
            folder = self._by_wd.get(wd)
            if folder is not None:
                woken.add(folder)
            if mask & _IN_IGNORED and folder is not None:   # the folder went away
                self._by_wd.pop(wd, None)
                self._wd_of.pop(folder, None)
        for folder in (self._events if overflow else woken):
            for event in self._events.get(folder, ()):
                event.set()

    def _watch(self, folder: str) -> None:
        if folder in self._wd_of or not self._ensure():
            return
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(folder), _MASK)
        if wd >= 0:
            self._wd_of[folder] = wd
            self._by_wd[wd] = folder

    def subscribe(self, folder: Path, event: asyncio.Event) -> None:
        """Set `event` whenever something in `folder` changes (watched from now on if the
        folder exists; call again once it does)."""
        key = os.fspath(folder)
        if event not in self._events.setdefault(key, set()):
            self._events[key].add(event)
            self._users[key] = self._users.get(key, 0) + 1
        self._watch(key)

    def unsubscribe(self, folder: Path, event: asyncio.Event) -> None:
        """Stop telling `event`; the last one out removes the watch."""
        key = os.fspath(folder)
        events = self._events.get(key)
        if events is None or event not in events:
            return
        events.discard(event)
        self._users[key] -= 1
        if self._users[key] > 0:
            return
        del self._users[key], self._events[key]
        wd = self._wd_of.pop(key, None)
        if wd is not None:
            self._by_wd.pop(wd, None)
            self._libc.inotify_rm_watch(self._fd, wd)

    def close(self) -> None:
        if self._fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
