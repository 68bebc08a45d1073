"""Binding api.listen: TCP on IPv4 and IPv6, a unix socket with mode 0660 that replaces only
a stale socket; an address that cannot be had is exit 3 with the reason logged."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.api.server import bind
from tests.httpkit import config_text


def test_tcp_on_ipv4_and_ipv6() -> None:
    """127.0.0.1:0 and [::1]:0 listen on a free port."""
    for listen, family in (("127.0.0.1:0", socket.AF_INET), ("[::1]:0", socket.AF_INET6)):
        try:
            sock = bind(listen)
        except OSError as exc:       # a host without IPv6 on loopback
            pytest.skip(f"{listen}: {exc}")
        with sock:
            assert family == sock.family and sock.getsockname()[1] > 0


def test_a_unix_socket_is_0660_and_replaces_a_stale_one(tmp_path: Path) -> None:
    """The socket file has mode 0660 whatever the umask; a socket left by a killed api is
    replaced; a regular file in its place is refused and kept."""
    path = tmp_path / "run" / "api.sock"
    old = os.umask(0)
    try:
        first = bind(f"unix:{path}")
    finally:
        os.umask(old)
    assert 0o660 == stat.S_IMODE(os.stat(path).st_mode)
    first.close()                       # the file stays: a stale socket
    with bind(f"unix:{path}") as again:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert again.family == socket.AF_UNIX
    other = tmp_path / "file.sock"
    other.write_text("data")
    with pytest.raises(OSError, match="not a socket"):
        bind(f"unix:{other}")
    assert "data" == other.read_text()


def test_an_address_in_use_is_exit_3_with_the_reason(tmp_path: Path) -> None:
    """The worker cannot listen: exit 3 (recovery failed), the log says why."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    cfg = tmp_path / "batchd.yaml"
    cfg.write_text(config_text(tmp_path / "state",
                               listen=f"127.0.0.1:{taken.getsockname()[1]}"))
    done = subprocess.run([sys.executable, "-m", "supervisor.api", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)
    taken.close()
    assert 3 == done.returncode
    assert "cannot listen" in done.stderr and "in use" in done.stderr
