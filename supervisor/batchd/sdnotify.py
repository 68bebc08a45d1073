"""systemd's notify protocol (sd_notify), spoken directly over $NOTIFY_SOCKET: no libsystemd.

A notification is one datagram of newline-separated `KEY=VALUE` lines sent to the unix
datagram socket named by $NOTIFY_SOCKET (a path, or an abstract name written with a
leading '@'). batchd sends READY=1 once startup recovery is done, STATUS= lines as its
state changes, WATCHDOG=1 from its main loop every WATCHDOG_USEC/2 when systemd asks for
a watchdog (and WATCHDOG_PID, if set, is batchd's pid), and STOPPING=1 on shutdown.
Nothing here is durable state: a lost datagram is lost (systemd then times out), and a
failure to send is reported as False, never raised: batchd runs the same without systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

__all__ = ["ENV_KEYS", "Notifier", "socket_address", "watchdog_interval"]

#: The variables systemd passes; batchd removes them from its environment once read so
#: its workers and their jobs do not inherit them (NotifyAccess=main would refuse them).
ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str | None) -> str | None:
    """The address to send to: an '@name' becomes the abstract '\\0name'; '' or None -> None."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked.

    None also when WATCHDOG_PID is set to another process, or the values are not numbers.
    """
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    try:
        usec = int(raw)
        if wpid and int(wpid) != pid:
            return None
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends notifications to one socket; a no-op when there is no socket (not under systemd)."""

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self.address = socket_address(address)
        self.watchdog_interval = watchdog
        self._sock: socket.socket | None = None
        self.sent: int = 0
        self.errors: int = 0
        self.last_error: str | None = None

    @classmethod
    def from_env(cls, env: MutableMapping[str, str], *, pid: int | None = None,
                 unset: bool = True) -> Notifier:
        """Read $NOTIFY_SOCKET and the watchdog settings; remove them from `env` if `unset`."""
        me = os.getpid() if pid is None else pid
        notifier = cls(env.get("NOTIFY_SOCKET"), watchdog_interval(env, me))
        if unset:
            for key in ENV_KEYS:
                env.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send `lines` ("READY=1", "STATUS=...") as one datagram; True if it was sent."""
        if self.address is None or not lines:
            return False
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
