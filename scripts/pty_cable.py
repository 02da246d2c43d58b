"""A real serial cable for tests: two pseudo-terminals joined by a relay thread, which can be
unplugged and plugged back in (used by the runtime's and the deploy tests)."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty
from collections.abc import Callable
from pathlib import Path


class PtyCable:
    """Two ttys joined by a relay thread, like a robot's USB-serial adapter and a ground
    station's radio: the service opens `robot_path` (a symlink, as udev's /dev/rescue-radio is),
    the operator opens `operator_path` with pyserial.

    `unplug()` closes the robot-side pty master and removes the symlink — the service then sees
    exactly what a pulled USB cable gives it (EIO on read); `replug()` makes a fresh pty and
    points the symlink at it. `corrupt`, when set, may rewrite robot → operator bytes in flight.
    """

    def __init__(self, directory: Path) -> None:
        self.robot_path = directory / "rescue-radio"
        self._op_master, self._op_slave = os.openpty()
        os.set_blocking(self._op_master, False)
        tty.setraw(self._op_slave)  # no echo or line editing before pyserial configures it
        self.operator_path = os.ttyname(self._op_slave)
        self._robot: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._running = True
        self.corrupt: Callable[[bytes], bytes] | None = None
        self.replug()
        self._thread = threading.Thread(target=self._relay, name="pty-cable", daemon=True)
        self._thread.start()

    def replug(self) -> None:
        """Plug a fresh robot-side pty in under the same path."""
        master, slave = os.openpty()
        os.set_blocking(master, False)
        tty.setraw(slave)
        link = self.robot_path.with_name(self.robot_path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.ttyname(slave))
        link.replace(self.robot_path)
        with self._lock:
            self._robot = (master, slave)
        os.write(self._wake_w, b"!")

    def unplug(self) -> None:
        """Pull the cable: the robot-side pty disappears, and so does its path."""
        with self._lock:
            robot, self._robot = self._robot, None
        with contextlib.suppress(FileNotFoundError):
            self.robot_path.unlink()
        if robot:
            for fd in robot:
                os.close(fd)
        os.write(self._wake_w, b"!")

    def _relay(self) -> None:
        while self._running:
            with self._lock:
                robot = self._robot[0] if self._robot else None
            fds = [self._op_master, self._wake_r] + ([robot] if robot is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.2)
            except (OSError, ValueError):
                continue  # a descriptor was closed by unplug(); loop picks up the new state
            if self._wake_r in ready:
                os.read(self._wake_r, 1024)
            for fd in ready:
                if fd == self._wake_r:
                    continue
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    continue
                with self._lock:
                    current = self._robot[0] if self._robot else None
                if fd == self._op_master:
                    if current is not None:  # unplugged: the bytes go nowhere, as on a radio
                        self._write_all(current, data)
                elif fd == current:
                    if self.corrupt is not None:
                        data = self.corrupt(data)
                    self._write_all(self._op_master, data)

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view and self._running:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                select.select([], [fd], [], 0.1)  # the reader is behind: wait, as a UART would
            except OSError:
                return  # the far side went away mid-write (unplug)

    def close(self) -> None:
        """Stop the relay and close every descriptor."""
        self._running = False
        os.write(self._wake_w, b"!")
        self._thread.join(timeout=5)
        self.unplug()
        for fd in (self._op_master, self._op_slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
