"""deploy/: the install script, the systemd unit, and a robot simulated the way the unit starts
the service (a udev-named serial device, NOTIFY_SOCKET, watchdog, SIGTERM)."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from pty_cable import PtyCable

from edge_runtime import signing
from edge_runtime.client import OperatorClient

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TINY_BUNDLE = REPO / "tests" / "fixtures" / "tiny_bundle"

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="robots run Linux"),
    # The robot venv's run would repeat the same ~1 min install; the main run covers it.
    pytest.mark.skipif(
        os.environ.get("RESCUE_ROBOT_INSTALL") == "1", reason="covered by the main test run"
    ),
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/install.sh into a temp prefix, without root or systemd."""
    prefix = tmp_path_factory.mktemp("robot")
    env = dict(os.environ, PIP_CONSTRAINT=str(REPO / "constraints.txt"))
    env.pop("PYTHONPATH", None)
    command = [
        "bash", str(DEPLOY / "install.sh"), "--prefix", str(prefix), "--state",
        str(prefix / "state"), "--systemd-dir", str(prefix / "systemd"), "--no-service",
        "--bundle", str(TINY_BUNDLE), "--python", sys.executable,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return prefix


def _unit(installed: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(installed / "systemd" / "rescue-t2i.service")
    return parser


def test_install_script_yields_working_rescue_edge_without_torch(installed: Path) -> None:
    python = installed / "venv" / "bin" / "python"
    probe = "import importlib.util as u; print([u.find_spec(m) for m in ('torch', 'h5py')])"
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout
    assert found.strip() == "[None, None]"
    info = subprocess.run(
        [installed / "venv" / "bin" / "rescue-edge", "info", installed / "state" / "bundle"],
        capture_output=True,
        text=True,
    )
    assert info.returncode == 0, info.stderr
    assert '"variants"' in info.stdout


def test_install_script_refuses_bad_options(tmp_path: Path) -> None:
    for args, message in (
        (["--bundle", str(tmp_path)], "no manifest.json"),
        (["--device", "ttyUSB0"], "must be an absolute path"),
        (["--frobnicate"], "unknown option --frobnicate"),
        ([], "needs root"),
    ):
        if not args and os.geteuid() == 0:
            continue
        done = subprocess.run(
            ["bash", str(DEPLOY / "install.sh"), "--prefix", str(tmp_path / "p"), *args],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()  # refused before touching anything


def _environment(installed: Path) -> dict[str, str]:
    """Every Environment= assignment of the unit (configparser keeps only the last line)."""
    values: dict[str, str] = {}
    for line in (installed / "systemd" / "rescue-t2i.service").read_text().splitlines():
        if line.startswith("Environment="):
            for item in shlex.split(line.removeprefix("Environment=")):
                key, _, value = item.partition("=")
                values[key] = value
    return values


def test_udev_rule_gives_the_radio_its_own_group() -> None:
    rule = [
        line
        for line in (DEPLOY / "99-rescue-serial.rules").read_text().splitlines()
        if line.startswith("SUBSYSTEM==")
    ]
    assert len(rule) == 1 and 'GROUP="rescue-radio"' in rule[0] and 'MODE="0660"' in rule[0]
    assert "dialout" not in rule[0]
    install = (DEPLOY / "install.sh").read_text()
    assert "groupadd --system rescue-radio" in install and "keygen" in install


def test_unit_file_has_the_robot_settings(installed: Path) -> None:
    unit = _unit(installed)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["User"] == "rescue" and service["SupplementaryGroups"] == "rescue-radio"
    # The key arrives as a systemd credential, never as a command-line value.
    assert service["LoadCredential"] == "operator-key:/etc/rescue-t2i/operator.key"
    assert "--key-file" not in service["ExecStart"] and "--insecure" not in service["ExecStart"]
    environment = _environment(installed)
    assert environment["RESCUE_EDGE_OUT_MAX_BYTES"] == "1G"
    assert environment["RESCUE_EDGE_OUT_MIN_FREE"] == "256M"
    assert unit["Unit"]["BindsTo"] == r"dev-rescue\x2dradio.device"
    assert "--serial /dev/rescue-radio" in service["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not available")
def test_unit_file_passes_systemd_analyze_verify(installed: Path) -> None:
    unit = installed / "systemd" / "rescue-t2i.service"
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rescue-t2i.service" not in done.stderr, done.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def _wait_for(sock: socket.socket, message: str, seconds: float) -> list[str]:
    seen: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            seen += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            continue
        if message in seen:
            return seen
    raise AssertionError(f"no {message} within {seconds} s; got {seen}")


def test_robot_simulation_serial_service_as_the_unit_starts_it(
    installed: Path, tmp_path: Path, notify_socket: socket.socket
) -> None:
    cable = PtyCable(tmp_path)
    argv = shlex.split(_unit(installed)["Service"]["ExecStart"])
    # The udev name /dev/rescue-radio becomes the cable's symlink; everything else as the unit says.
    argv = [str(cable.robot_path) if a == "/dev/rescue-radio" else a for a in argv]
    # LoadCredential= as systemd does it: the key in a private directory named by the variable.
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    key = signing.generate_key()
    signing.write_key_file(credentials / signing.CREDENTIAL_NAME, key)
    env = dict(
        os.environ,
        **_environment(installed),
        NOTIFY_SOCKET=str(tmp_path / "notify"),
        WATCHDOG_USEC="2000000",
        CREDENTIALS_DIRECTORY=str(credentials),
    )
    service = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(notify_socket, "READY=1", 60)
        _wait_for(notify_socket, "WATCHDOG=1", 5)
        client = OperatorClient.open(cable.operator_path, timeout=30, key=key)
        try:
            result, paths = client.generate_and_fetch(
                "survivor in an orange jacket lying on rubble, left side",
                tmp_path / "got",
                n=2,
                seed=7,
            )
            status = client.status()
        finally:
            client.port.close()
        assert status["auth"] == "signed" and status["disk_max_bytes"] == str(1 << 30)
        assert len(paths) == 2 and len(set(result.files)) == 2
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            assert image is not None and image.shape[2] == 3 and image.shape[0] == image.shape[1]
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=20) == 0
        _wait_for(notify_socket, "STOPPING=1", 2)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        cable.close()
