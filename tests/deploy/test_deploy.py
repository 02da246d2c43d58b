"""deploy/: the install script, the systemd unit, and a robot simulated the way the unit starts
the service (a udev-named serial device, NOTIFY_SOCKET, watchdog, SIGTERM)."""

from __future__ import annotations

import configparser
import os
import re
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
    """deploy/install.sh into a temp root (prefix root/opt, state root/state), without root or
    systemd; returns the root."""
    root = tmp_path_factory.mktemp("robot")
    env = dict(os.environ, PIP_CONSTRAINT=str(REPO / "constraints.txt"))
    env.pop("PYTHONPATH", None)
    command = [
        "bash", str(DEPLOY / "install.sh"), "--prefix", str(root / "opt"), "--state",
        str(root / "state"), "--systemd-dir", str(root / "systemd"), "--no-service",
        "--bundle", str(TINY_BUNDLE), "--python", sys.executable,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return root


def _unit(installed: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(installed / "systemd" / "rescue-t2i.service")
    return parser


def test_install_script_yields_working_rescue_edge_without_torch(installed: Path) -> None:
    python = installed / "opt" / "venv" / "bin" / "python"
    probe = "import importlib.util as u; print([u.find_spec(m) for m in ('torch', 'h5py')])"
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout
    assert found.strip() == "[None, None]"
    info = subprocess.run(
        [installed / "opt" / "venv" / "bin" / "rescue-edge", "info", installed / "opt" / "bundle"],
        capture_output=True,
        text=True,
    )
    assert info.returncode == 0, info.stderr
    assert '"variants"' in info.stdout


def test_install_places_the_bundle_read_only_outside_the_state_folder(installed: Path) -> None:
    bundle = installed / "opt" / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in TINY_BUNDLE.iterdir())
    for path in [bundle, *bundle.iterdir()]:
        assert not path.is_symlink()
        assert path.stat().st_mode & 0o022 == 0  # nobody but the owner (root on a robot) writes
    assert sorted(p.name for p in (installed / "state").iterdir()) == ["images"]


def _install(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _hostile_bundle(tmp: Path, kind: str) -> str:
    bundle = tmp / f"bundle-{kind}"
    shutil.copytree(TINY_BUNDLE, bundle)
    if kind == "symlinked-file":
        (bundle / "generator.onnx").unlink()
        (bundle / "generator.onnx").symlink_to(TINY_BUNDLE / "generator.onnx")
    elif kind == "subfolder":
        (bundle / "sub").mkdir()
    elif kind == "fifo":
        os.mkfifo(bundle / "pipe")
    elif kind == "odd-name":
        (bundle / "a b.onnx").write_bytes(b"x")
    elif kind == "no-manifest":
        (bundle / "manifest.json").unlink()
    elif kind == "symlinked-folder":
        (tmp / "link").symlink_to(bundle)
        return str(tmp / "link")
    return str(bundle)


INJECT = "/tmp/x\nExecStartPre=+/bin/sh -c id"
"""A value that, rendered by sed as before, added a root command to the unit."""
HOSTILE_ARGS: list[tuple[str, str, str]] = [
    # (flag, hostile value, what the one-line refusal says)
    ("--prefix", "relative/p", "must be an absolute path"),
    ("--prefix", "/tmp/a b", "must be an absolute path"),
    ("--prefix", INJECT, "must be an absolute path"),
    ("--prefix", "/tmp/a&b", "must be an absolute path"),
    ("--prefix", "/tmp/a#b", "must be an absolute path"),
    ("--prefix", "/tmp/$(id)", "must be an absolute path"),
    ("--prefix", "/tmp/`id`", "must be an absolute path"),
    ("--prefix", "/tmp/a;b", "must be an absolute path"),
    ("--prefix", "/tmp/../etc", "must be an absolute path"),
    ("--prefix", "/", "must be an absolute path"),
    ("--prefix", "/usr", "a system folder"),
    ("--prefix", "/opt", "a system folder"),
    ("--state", "/var/lib", "a system folder"),
    ("--state", "/var/lib/", "a system folder"),
    ("--state", "/etc", "a system folder"),
    ("--state", "/home", "a system folder"),
    ("--state", "state", "must be an absolute path"),
    ("--state", "/tmp/s%i", "must be an absolute path"),
    ("--state", "/tmp/s\\x", "must be an absolute path"),
    ("--state", "/tmp/s t", "must be an absolute path"),
    ("--state", "@ROOT@/p/state", "inside --prefix"),
    ("--device", "ttyUSB0", "must be an absolute path"),
    ("--device", "/dev/tty USB0", "must be an absolute path"),
    ("--device", "/dev/x\nExecStartPre=+/bin/sh", "must be an absolute path"),
    ("--device", "/dev/null;id", "must be an absolute path"),
    ("--device", "/dev/%n", "must be an absolute path"),
    ("--device", "/etc/passwd", "must be under /dev"),
    ("--device", "/dev/shm", "not a character device"),
    ("--user", "root", "shared or privileged"),
    ("--user", "nobody", "shared or privileged"),
    ("--user", "Root", "not a valid user name"),
    ("--user", "a b", "not a valid user name"),
    ("--user", "x\ny", "not a valid user name"),
    ("--user", "-rf", "not a valid user name"),
    ("--user", "a" * 40, "not a valid user name"),
    ("--python", "python3; rm -rf /", "not a plain interpreter"),
    ("--python", "/nonexistent/python", "not found"),
    ("--source", "/nonexistent/src", "not found"),
    ("--systemd-dir", "etc/systemd/system", "must be an absolute path"),
    ("--find-links", "@ROOT@/wheels-unpinned", "no requirements.txt"),
    ("--bundle", "@BUNDLE:no-manifest", "no manifest.json"),
    ("--bundle", "@BUNDLE:symlinked-folder", "is a symlink"),
    ("--bundle", "@BUNDLE:symlinked-file", "is not a regular file"),
    ("--bundle", "@BUNDLE:subfolder", "is not a regular file"),
    ("--bundle", "@BUNDLE:fifo", "is not a regular file"),
    ("--bundle", "@BUNDLE:odd-name", "is not allowed"),
]


@pytest.mark.parametrize(("flag", "value", "message"), HOSTILE_ARGS)
def test_install_script_refuses_hostile_arguments_before_writing(
    flag: str, value: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "wheels-unpinned").mkdir()
    value = value.replace("@ROOT@", str(tmp_path))
    if value.startswith("@BUNDLE:"):
        value = _hostile_bundle(tmp_path, value.removeprefix("@BUNDLE:"))
    safe = [
        "--prefix", str(tmp_path / "p"), "--state", str(tmp_path / "s"),
        "--systemd-dir", str(tmp_path / "sd"), "--no-service", "--python", sys.executable,
    ]  # fmt: skip
    before = sorted(p.name for p in tmp_path.iterdir())
    done = _install([*safe, flag, value])  # the hostile value comes last and wins
    assert done.returncode == 2, (flag, value, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: ") and message in lines[0], lines
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # refused before writing


def test_install_script_refuses_bad_options(tmp_path: Path) -> None:
    assert len(HOSTILE_ARGS) >= 30
    for args, message in (
        (["--frobnicate"], "unknown option --frobnicate"),
        (["--prefix"], "--prefix needs a value"),
        (["--device", "/dev/rescue-radio-missing", "--dry-run"], "no such device"),
        (["--device", "/dev/null"], "needs root"),
    ):
        if message == "needs root" and os.geteuid() == 0:
            continue
        done = _install(["--prefix", str(tmp_path / "p"), "--state", str(tmp_path / "s"), *args])
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()  # refused before touching anything


def _render(*extra: str) -> str:
    done = _install(["--dry-run", "--device", "/dev/null", "--python", sys.executable, *extra])
    assert done.returncode == 0, done.stderr
    return done.stdout


def _settings(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def test_unit_render_fills_every_placeholder_with_the_validated_values() -> None:
    text = _render()
    assert not re.search(r"@[A-Z_]+@", text)
    unit = _settings(text)
    assert unit["ExecStart"] == [
        "/opt/rescue-t2i/venv/bin/rescue-edge serve --serial /dev/null --baud 115200 "
        "--bundle /opt/rescue-t2i/bundle --out /var/lib/rescue-t2i/images --precision auto"
    ]
    # Only the images folder is writable, made by systemd for the service user; the bundle is not.
    assert unit["StateDirectory"] == ["rescue-t2i/images"] and "ReadWritePaths" not in unit
    assert unit["DeviceAllow"] == ["/dev/null rw"] and unit["DevicePolicy"] == ["closed"]
    assert unit["BindsTo"] == ["dev-null.device"]
    hardening = (
        "MemoryMax", "TasksMax", "SystemCallFilter", "CapabilityBoundingSet",
        "StartLimitBurst", "StartLimitIntervalSec", "RestartPreventExitStatus",
    )  # fmt: skip
    assert set(hardening) <= set(unit)
    custom = _settings(_render("--state", "/srv/rescue/state", "--prefix", "/srv/r"))
    assert custom["ReadWritePaths"] == ["/srv/rescue/state/images"]
    assert "StateDirectory" not in custom


@pytest.mark.skipif(not Path("/dev/ttyS0").is_char_device(), reason="no /dev/ttyS0 here")
def test_unit_allows_the_serial_driver_class_so_a_replugged_adapter_still_opens() -> None:
    assert _settings(_render("--device", "/dev/ttyS0"))["DeviceAllow"] == [
        "/dev/ttyS0 rw",
        "char-ttyS rw",
    ]
    # Never a broad class: /dev/null's is "mem" (/dev/mem, /dev/kmem), /dev/tty1's "tty".
    assert _settings(_render("--device", "/dev/null"))["DeviceAllow"] == ["/dev/null rw"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not available")
def test_unit_exposure_is_ok_by_systemd_analyze_security(tmp_path: Path) -> None:
    unit = tmp_path / "rescue-t2i.service"
    unit.write_text(_render())
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if "offline" in done.stderr and ("unrecognized" in done.stderr or "Unknown" in done.stderr):
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"exposure level for rescue-t2i.service: ([0-9.]+) (\w+)", done.stdout)
    assert match, done.stdout[-2000:] + done.stderr
    print(f"systemd-analyze security --offline: {match.group(1)} {match.group(2)}")
    assert float(match.group(1)) <= 3.0


def test_runtime_works_without_writable_executable_memory(tmp_path: Path) -> None:
    """The unit's MemoryDenyWriteExecute=yes, in the kernel's own form (PR_SET_MDWE, Linux 6.3+),
    on a child that loads the bundle and draws images with both variants."""
    code = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        "    sys.exit(77)\n"
        "from edge_runtime.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for precision in ("fp32", "int8"):
        done = subprocess.run(
            [sys.executable, "-c", code, "generate", "person in red", "-n", "2", "--seed", "1",
             "--bundle", str(TINY_BUNDLE), "--out", str(tmp_path), "--precision", precision],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode == 77:
            pytest.skip("this kernel has no PR_SET_MDWE")
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.split()) == 2


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
    assert service["ReadWritePaths"] == str(installed / "state" / "images")
    assert f"--bundle {installed / 'opt' / 'bundle'} " in service["ExecStart"]
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
        # The unit's budgets hold for the service as it runs (TasksMax counts threads).
        status = Path(f"/proc/{service.pid}/status").read_text()
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        peak_mb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
        print(f"service after a request: {threads} threads, peak RSS {peak_mb:.0f} MB")
        unit = _unit(installed)["Service"]
        assert threads < int(unit["TasksMax"])
        assert peak_mb < int(unit["MemoryMax"].removesuffix("M"))
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=20) == 0
        _wait_for(notify_socket, "STOPPING=1", 2)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        cable.close()


def test_dockerfile_pins_its_base_by_digest_and_documents_a_confined_run() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base
    for text in (dockerfile, (DEPLOY / "DEPLOY.md").read_text()):
        run = text[text.index("docker run") :].split("rescue-t2i-edge:arm64")[0]
        for flag in ("--read-only", "--cap-drop ALL", "--security-opt no-new-privileges",
                     "--memory ", "/bundle:ro"):  # fmt: skip
            assert flag in run, flag


def test_hash_wheels_pins_every_wheel_by_sha256(tmp_path: Path) -> None:
    import hashlib

    wheels = {
        "rescue_t2i-0.1.0-py3-none-any.whl": b"ours",
        "onnxruntime-1.16.3-cp311-cp311-manylinux_2_27_aarch64.whl": b"ort",
    }
    for name, data in wheels.items():
        (tmp_path / name).write_bytes(data)
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "hash_wheels.py"), str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "requirements.txt").read_text().splitlines()
    assert lines == [
        f"onnxruntime==1.16.3 --hash=sha256:{hashlib.sha256(b'ort').hexdigest()}",
        f"rescue-t2i==0.1.0 --hash=sha256:{hashlib.sha256(b'ours').hexdigest()}",
    ]
    (tmp_path / "not-a-wheel.whl").write_bytes(b"x")
    bad = subprocess.run(
        [sys.executable, str(DEPLOY / "hash_wheels.py"), str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "not a wheel file name" in bad.stderr
