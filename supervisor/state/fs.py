"""The seam between batchd's state layer and the kernel's file calls.

Every persistence step of the state layer (`_atomic`, `_wal`) goes through an `FS`
object, so that the crash-point tests can record each write/fsync/rename/unlink,
stop at any one of them and build the worst disk state a power cut could leave.
Production code uses `REAL`, a thin wrapper over `os`.
"""

from __future__ import annotations

import os
from typing import Protocol

__all__ = ["FS", "REAL", "OsFS"]


class FS(Protocol):
    """The file operations the state layer persists through."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int: ...
    def write(self, fd: int, data: bytes) -> None: ...
    def pwrite(self, fd: int, data: bytes, offset: int) -> None: ...
    def read(self, fd: int, n: int) -> bytes: ...
    def fsync(self, fd: int) -> None: ...
    def fdatasync(self, fd: int) -> None: ...
    def ftruncate(self, fd: int, size: int) -> None: ...
    def close(self, fd: int) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def fsync_dir(self, path: str) -> None: ...
    def mkdir(self, path: str) -> None: ...
    def read_file(self, path: str) -> bytes: ...
    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def size(self, path: str) -> int: ...
    def mtime(self, path: str) -> float: ...


class OsFS:
    """The real thing: each call is the matching `os` call, nothing added."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def read(self, fd: int, n: int) -> bytes:
        return os.read(fd, n)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def read_file(self, path: str) -> bytes:
        # os.open, fstat, read, close: no buffered file object (its fstat, ioctl and
        # lseek), so a small record costs four system calls, each a turn at the GIL
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            data = os.read(fd, size + 1)
            if len(data) <= size:            # short of what was asked: the end of the file
                return data
            chunks = [data]                  # it grew since the fstat: the rest
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def mtime(self, path: str) -> float:
        return os.stat(path).st_mtime


REAL: FS = OsFS()
