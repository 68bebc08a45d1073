"""The scheduler's fork server: a small process that starts adaptors detached (stdlib only).

Run as a script (`python -I -S spawner.py FD`) by scheduler.launch; it serves launch
requests on the socket FD until its other end (the scheduler) is closed, for each one
forking a short-lived child (cheaply: the server is small) that posix_spawns the adaptor
in a session of its own, reports its pid and exits, so the adaptor is parented by no
worker.
docs/JOBS.md ("Launching an adaptor") has the protocol and the crash cases.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

__all__ = ["MAX_REQUEST", "main", "read_start", "reap", "serve_one", "spawn_child"]

#: The largest request (argv and environment, JSON) the server takes, in bytes.
MAX_REQUEST = 1 << 20


def read_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2:].split()[19])


def spawn_child(argv: list[str], env: dict[str, str], fds: tuple[int, int, int],
                sigdef: tuple[int, ...]) -> None:
    """In the short-lived child: /dev/null on stdin, the log on stdout/stderr (`fds`: the
    log's, /dev/null's, the report pipe's), every other fd closed, cwd /; posix_spawn the
    adaptor (setsid, default signals, empty mask), write "<pid> <start>" (or "ERR <why>")
    on the report pipe, exit. Never returns.

    The start time is read while the adaptor is still this process's child: its pid
    cannot be reused before that."""
    log_fd, null_fd, report_fd = fds
    try:
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 1 << 20)
        for fd in (0, 1, 2):
            os.set_inheritable(fd, True)
        os.chdir("/")
        pid = os.posix_spawn(argv[0], argv, env, setsid=True, setsigmask=(),
                             setsigdef=sigdef)
        start = read_start(pid)
        if start is None:
            raise OSError(f"the adaptor process {pid} vanished as it started")
        os.write(report_fd, f"{pid} {start}\n".encode())
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then _exit
        try:
            os.write(report_fd, f"ERR {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(127)
    os._exit(0)


def reap(pid: int) -> None:
    """Wait for child `pid` to end (gone already: nothing to wait for)."""
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _start(req: bytes, log_fd: int, null_fd: int, sigdef: tuple[int, ...]) -> tuple[int, bytes]:
    """Fork the child that starts the request's adaptor: (its pid, its report)."""
    body = json.loads(req)
    argv = [str(a) for a in body["argv"]]
    env = {str(k): str(v) for k, v in body["env"].items()}
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        child = os.fork()
        if child == 0:
            try:
                os.close(report_r)
                spawn_child(argv, env, (log_fd, null_fd, report_w), sigdef)
            finally:
                os._exit(127)
        os.close(report_w)
        report_w = -1
        return child, os.read(report_r, 4096)   # one write of one line; b"": it died
    finally:
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)


def serve_one(sock: socket.socket, null_fd: int, sigdef: tuple[int, ...]) -> bool:
    """Take one request from `sock` and answer it; False once the scheduler is gone.

    The answer is "R" + the child's report (never empty: an empty message reads as EOF);
    the child is reaped after it, its exit is not the launch's."""
    try:
        msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, 1)
    except OSError:
        return False
    child = 0
    try:
        if not msg:
            return False
        if len(fds) != 1:
            raise ValueError(f"a request carries one log fd, not {len(fds)}")
        child, report = _start(msg, fds[0], null_fd, sigdef)
    except Exception as exc:  # noqa: BLE001 - every failure is the launcher's to report
        report = f"ERR {type(exc).__name__}: {exc}\n".encode()
    finally:
        for fd in fds:
            os.close(fd)
    try:
        sock.send(b"R" + report)
    except OSError:
        return False
    finally:
        if child:
            reap(child)
    return True


def main() -> None:
    """Serve launch requests on the socket whose fd is argv[1] until the scheduler is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # a ^C is the scheduler's to act on
    sigdef = tuple(sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}))
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.set_inheritable(False)
    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    while serve_one(sock, null_fd, sigdef):
        pass


if __name__ == "__main__":
    main()
