"""sd_notify over a real AF_UNIX datagram socket, as systemd provides it."""

from __future__ import annotations

import os
import socket

import pytest

from edge_runtime.sdnotify import Notifier


@pytest.fixture
def systemd(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    yield sock, str(tmp_path / "notify")
    sock.close()


def test_notifier_sends_ready_watchdog_and_stopping(systemd) -> None:
    sock, path = systemd
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert notifier.enabled and notifier.watchdog_interval_s == 1.5
    assert notifier.ready("serving /dev/ttyUSB0")
    assert sock.recv(100) == b"READY=1\nSTATUS=serving /dev/ttyUSB0"
    assert notifier.watchdog_due(now=100.0)
    assert notifier.watchdog(now=100.0)
    assert sock.recv(100) == b"WATCHDOG=1"
    assert not notifier.watchdog_due(now=101.0) and notifier.watchdog_due(now=101.6)
    assert notifier.stopping()
    assert sock.recv(100) == b"STOPPING=1"
    notifier.close()


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"rescue-edge-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_notifier_is_silent_without_systemd_and_honours_watchdog_pid(tmp_path, caplog) -> None:
    absent = Notifier.from_env({})
    assert not absent.enabled and not absent.ready() and not absent.watchdog_due()
    other = Notifier.from_env(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert other.watchdog_interval_s == 0  # the watchdog belongs to another process
    bad = Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"})
    assert bad.watchdog_interval_s == 0 and "WATCHDOG_USEC" in caplog.text
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert not gone.ready()  # logged, never raised: a service must not die for systemd
    assert "sd_notify READY" in caplog.text
