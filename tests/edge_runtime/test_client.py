"""The operator client against the real service over the pty cable: fetch, resume, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import time
from pathlib import Path

import pytest

from edge_runtime.cli import main
from edge_runtime.client import ClientError, OperatorClient

CAPTION = "survivor in a red jacket sitting on broken bricks, right side"


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def client(cable):
    with OperatorClient.open(cable.operator_path, timeout=1.0, retries=4) as c:
        yield c


def test_client_generates_and_fetches_identical_files(serve, client, tmp_path) -> None:
    service = serve()
    _wait(lambda: service.link.is_open)
    assert client.ping() > 0
    result, paths = client.generate_and_fetch(CAPTION, tmp_path / "received", n=2, seed=11)
    assert result.seed == 11 and len(paths) == 2 and result.round_trip_ms >= result.ms
    for (name, digest), path in zip(result.files, paths, strict=True):
        assert path == tmp_path / "received" / name
        robot_copy = tmp_path / "out" / name
        assert path.read_bytes() == robot_copy.read_bytes()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    status = client.status()
    assert status["images"] == "2" and status["precision"] == "fp32"
    assert any(line.startswith("<id> gen") for line in client.help())


def test_client_resumes_chunks_damaged_on_the_link(serve, client, cable, tmp_path) -> None:
    service = serve(chunk_size=64)
    _wait(lambda: service.link.is_open)
    result = client.generate(CAPTION, seed=12)
    ((name, digest),) = result.files
    rng = random.Random(7)
    damaged = []

    def noise(data: bytes) -> bytes:
        # Flip one bit inside some chunk payloads: the line checksum or the CRC must catch it.
        out = bytearray(data)
        start = 0
        while (start := out.find(b"b64=", start) + 4) >= 4:
            if rng.random() < 0.3 and start + 10 < len(out):
                out[start + 5] ^= 0x04
                damaged.append(start)
        return bytes(out)

    cable.corrupt = noise
    path = client.fetch(name, tmp_path / "got", digest)
    cable.corrupt = None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert len(damaged) >= 3
    assert service.status_fields()["fetches"] > 1  # the client asked again for what it lost


def test_client_resumes_a_fetch_cut_by_an_unplug(serve, client, cable, tmp_path) -> None:
    service = serve(chunk_size=64, reconnect_max_s=0.1)
    _wait(lambda: service.link.is_open)
    result = client.generate(CAPTION, seed=13)
    ((name, digest),) = result.files
    seen = {"data": 0, "pulled": False}

    def pull_mid_transfer(data: bytes) -> bytes:
        seen["data"] += data.count(b"$data ")
        if seen["data"] >= 5 and not seen["pulled"]:
            seen["pulled"] = True

            def unplug_and_replug() -> None:
                cable.unplug()
                time.sleep(0.3)
                cable.replug()

            threading.Thread(target=unplug_and_replug).start()
        return data

    cable.corrupt = pull_mid_transfer
    path = client.fetch(name, tmp_path / "got", digest)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert seen["pulled"] and service.status_fields()["reconnects"] == 1


def test_client_reports_refusals_in_one_line(serve, client) -> None:
    service = serve()
    _wait(lambda: service.link.is_open)
    with pytest.raises(ClientError, match="NOT_FOUND") as info:
        client.fetch("20250101T000000Z_x_s1_0.png", "unused")
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(ClientError, match="refusing"):
        client.fetch("../../etc/passwd", "unused")


def test_client_gives_up_with_a_clear_message_when_nobody_answers(client) -> None:
    client.retries = 1
    with pytest.raises(ClientError, match="gave up after 2 attempts: no reply within 1 s"):
        client.ping()


def test_client_cli_sends_captions_and_prints_local_paths(
    serve, cable, tmp_path, capsys, monkeypatch
) -> None:
    service = serve()
    _wait(lambda: service.link.is_open)
    out = tmp_path / "received"
    argv = ["client", "--serial", cable.operator_path, "--timeout", "2", "--out", str(out)]
    argv.append("--insecure")  # the fixture's service has no key (test_link_security signs)
    assert main([*argv, CAPTION, "-n", "2", "--seed", "5"]) == 0
    paths = capsys.readouterr().out.split()
    assert len(paths) == 2 and all(Path(p).parent == out for p in paths)
    robot = tmp_path / "out"
    assert sorted(Path(p).read_bytes() for p in paths) == sorted(
        p.read_bytes() for p in robot.iterdir()
    )
    assert main([*argv, "--status"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == "2"
    assert main([*argv, "--ping"]) == 0
    assert float(capsys.readouterr().out) > 0
    # stdin, one caption per line, with the slash commands and a caption that normalises away.
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/ping\n{CAPTION}\n\n🚑\n/quit\nignored\n"))
    assert main([*argv, "--no-fetch"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].endswith(" ms") and lines[1].endswith(".png") and len(lines) == 2
    assert "caption is empty after normalisation" in captured.err


def test_client_cli_names_the_port_it_cannot_open(tmp_path, capsys) -> None:
    assert main(["client", "--serial", str(tmp_path / "ttyNOPE"), "--ping", "--insecure"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rescue-edge: cannot open serial port") and "ttyNOPE" in err
    assert "\n" not in err
