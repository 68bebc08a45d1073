"""sd_notify over a real unix datagram socket (supervisor.batchd.sdnotify)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.batchd.sdnotify import Notifier, socket_address, watchdog_interval


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    s.bind(path)
    s.settimeout(5)
    yield s, path
    s.close()


def _lines(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().split("\n")


def test_ready_status_watchdog_stopping_reach_the_socket(sock: tuple[socket.socket, str]) -> None:
    """Each notification is one datagram of KEY=VALUE lines."""
    s, path = sock
    n = Notifier(path)
    assert n.ready("4/4 workers running")
    assert ["READY=1", "STATUS=4/4 workers running", f"MAINPID={os.getpid()}"] == _lines(s)
    assert n.status("recovering: scheduler")
    assert ["STATUS=recovering: scheduler"] == _lines(s)
    assert n.watchdog()
    assert ["WATCHDOG=1"] == _lines(s)
    assert n.stopping("stopping: SIGTERM")
    assert ["STOPPING=1", "STATUS=stopping: SIGTERM"] == _lines(s)
    n.close()


def test_abstract_socket_names_start_with_at() -> None:
    """'@name' in NOTIFY_SOCKET is the abstract socket '\\0name'."""
    name = f"batchd-test-{secrets.token_hex(6)}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        env = {"NOTIFY_SOCKET": "@" + name}
        n = Notifier.from_env(env)
        assert n.status("hello")
        assert ["STATUS=hello"] == _lines(s)
    finally:
        s.close()
    assert "\0x" == socket_address("@x")


def test_from_env_unsets_the_variables_so_children_do_not_inherit() -> None:
    """NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are removed once read."""
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42",
           "OTHER": "1"}
    n = Notifier.from_env(env, pid=42)
    assert {"OTHER": "1"} == env
    assert 15.0 == n.watchdog_interval
    assert "/run/x" == n.address


def test_watchdog_interval_is_half_the_timeout_and_respects_the_pid() -> None:
    """WATCHDOG_USEC/2; None if WATCHDOG_PID names another process or values are junk."""
    assert 15.0 == watchdog_interval({"WATCHDOG_USEC": "30000000"}, 7)
    assert 15.0 == watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7)
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 7) is None
    assert watchdog_interval({}, 7) is None


def test_without_a_socket_nothing_is_sent_and_nothing_raises(tmp_path: Path) -> None:
    """Not under systemd: a no-op; a vanished socket: False and the error kept, no exception."""
    assert not Notifier(None).ready("x")
    assert not Notifier(None).enabled
    gone = Notifier(str(tmp_path / "missing.sock"))
    assert not gone.status("x")
    assert 1 == gone.errors
    assert gone.last_error is not None
