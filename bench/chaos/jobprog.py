"""The program a chaos `shell` job runs: markers outside the state dir, numbered lines.

    python -S jobprog.py MARKERS LINES SLEEP BIG EXIT

Appends `S <job> <pid> <ns>` to MARKERS (a file outside the state dir) first, then writes
LINES numbered lines to stdout (the job's output file), sleeping SLEEP seconds after each;
the lines whose numbers are in BIG (comma-separated, or `-`) are over 64 KiB. Then it
appends `E <job> <pid> <ns>` and exits EXIT. Standard library only (it runs with -S); the
expected output is `line_bytes` of the same arguments, computed again by the checker.

A write that fails for lack of space (ENOSPC, EDQUOT) is tried again until it succeeds, as
a careful program does: the chaos run fills the state dir's file system on purpose, and the
output must still be whole. Any other error ends the program (exit 70).
"""

from __future__ import annotations

import errno
import os
import sys
import time

__all__ = ["BIG_BASE", "line_bytes", "main"]

#: A "big" line is this long plus its number (over 64 KiB, so it crosses every pipe and
#: buffer size a reader might assume).
BIG_BASE = 70_000

_RETRY = (errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR)


def line_bytes(job: str, n: int, big: bool) -> bytes:
    """Line `n` of job `job`'s output, newline included."""
    head = f"{job} line {n:05d}"
    if not big:
        return (head + "\n").encode()
    pad = (f"{n:05d}-" * (BIG_BASE // 6 + 2))[: BIG_BASE + n]
    return f"{head} {pad}\n".encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as exc:
            if exc.errno not in _RETRY:
                raise
            time.sleep(0.05)
            continue
        view = view[n:]


def _marker(path: str, kind: str, job: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, f"{kind} {job} {os.getpid()} {time.time_ns()}\n".encode())
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    markers, lines, sleep, big, code = argv
    job = os.environ.get("BATCHD_JOB_ID", "?")
    bigs = set() if big == "-" else {int(x) for x in big.split(",")}
    _marker(markers, "S", job)
    try:
        for n in range(1, int(lines) + 1):
            _write_all(1, line_bytes(job, n, n in bigs))
            if float(sleep):
                time.sleep(float(sleep))
    except OSError as exc:
        sys.stderr.write(f"jobprog: {exc}\n")
        return 70
    _marker(markers, "E", job)
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
