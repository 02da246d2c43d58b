"""systemd's notify protocol (READY=1, WATCHDOG=1, STOPPING=1) with the standard library only.

The protocol is one datagram per message on the AF_UNIX socket named by $NOTIFY_SOCKET (a path,
or an abstract name written with a leading '@'); see sd_notify(3). Hand-written rather than a
dependency because it is a dozen lines and the robot's install stays at four packages.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to systemd when $NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_usec / 1e6 / 2 if watchdog_usec > 0 else 0.0
        """Seconds between WATCHDOG=1 pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        self._last_ping = 0.0
        self._socket: socket.socket | None = None
        if address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (the watchdog is ours only when
        WATCHDOG_PID is unset or names this process)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec = 0
        watchdog_pid = env.get("WATCHDOG_PID")
        if watchdog_pid is None or watchdog_pid == str(os.getpid()):
            try:
                usec = int(env.get("WATCHDOG_USEC", "0"))
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not an integer", env.get("WATCHDOG_USEC"))
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._socket is not None

    def notify(self, message: str) -> bool:
        """Send one message ("READY=1", "STATUS=...", ...); False (logged) when it cannot."""
        if self._socket is None or not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._socket.sendto(message.encode("utf-8"), target)
        except OSError as err:
            what = message.split("=", maxsplit=1)[0]
            log.warning("sd_notify %s to %s failed: %s", what, self.address, err)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """READY=1 (plus STATUS= when given): start-up is complete."""
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify("STOPPING=1")

    def watchdog_due(self, now: float | None = None) -> bool:
        """Whether a WATCHDOG=1 ping is due."""
        if not self.watchdog_interval_s or self._socket is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self._last_ping >= self.watchdog_interval_s

    def watchdog(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 and note the time."""
        self._last_ping = time.monotonic() if now is None else now
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
