"""The serial service over a real pty cable, with pyserial on the operator's side."""

from __future__ import annotations

import binascii
import contextlib
import errno
import hashlib
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable

import numpy as np
import pytest
import serial

from edge_runtime import protocol, signing
from edge_runtime.engine import Engine
from edge_runtime.images import decode_png
from edge_runtime.protocol import format_request
from edge_runtime.sdnotify import Notifier
from edge_runtime.service import Service, ServiceConfig

CAPTION = "survivor in an orange jacket lying on rubble, left side"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_service_answers_ping_status_help(serve, reader, cable) -> None:
    service = serve()
    wait_for(lambda: service.link.is_open, what="the service to open the port")
    reader.send(format_request("p1", "ping"))
    (done,) = reader.read(1)
    assert (done.kind, done.id, done.get("cmd")) == ("done", "p1", "ping")
    # Typed by hand, as in miniterm: no checksum, no '$', CR LF.
    reader.send(b"s1 status\r\n")
    (status,) = reader.read(1)
    assert status.kind == "done" and status.get("bundle").startswith("tiny@")
    assert status.get("precision") == "fp32" and status.get("link") == "up"
    assert int(status.get("requests")) == 2 and status.get("last_error") == "none"
    reader.send(b"h1 help\n")
    replies = reader.until("h1")
    assert [r.kind for r in replies] == ["info"] * len(protocol.HELP) + ["done"]
    assert any("gen [n=N] [seed=S]" in r.text for r in replies)


def test_service_generates_and_serves_chunks(serve, reader, engine: Engine, tmp_path) -> None:
    service = serve(chunk_size=256)
    wait_for(lambda: service.link.is_open)
    reader.send(format_request("g1", "gen", caption=CAPTION, n=3, seed=42))
    ack, done = reader.until("g1")
    assert (ack.kind, ack.get("n"), ack.get("seed"), ack.get("ahead")) == ("ack", "3", "42", "0")
    assert done.kind == "done" and float(done.get("ms")) >= float(done.get("infer_ms")) > 0
    names, digests = done.values("files"), done.values("sha256")
    assert len(names) == 3 and all("_g1_s42_" in n for n in names)
    assert "dir" not in done.fields  # replies name files relative to the output directory
    out = tmp_path / "out"
    expected = engine.generate(CAPTION, n=3, seed=42)
    for k, (name, digest) in enumerate(zip(names, digests, strict=True)):
        data = (out / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        np.testing.assert_array_equal(decode_png(data), expected[k])
    # Fetch the second image in 256-byte chunks, each CRC-checked, then resume from chunk 2.
    reader.send(format_request("f1", "fetch", file=names[1]))
    replies = reader.until("f1")
    ack, *data_lines, done = replies
    size = int(ack.get("bytes"))
    assert ack.get("sha256") == digests[1] and int(ack.get("chunks")) == -(-size // 256)
    chunks = {}
    for line in data_lines:
        assert line.kind == "data"
        index, chunk = protocol.decode_chunk(line)
        assert binascii.crc32(chunk) == int(line.get("crc"), 16)
        chunks[index] = chunk
    blob = b"".join(chunks[i] for i in range(len(chunks)))
    assert hashlib.sha256(blob).hexdigest() == digests[1] and done.get("cmd") == "fetch"
    reader.send(format_request("f2", "fetch", file=names[1], start=2, count=2))
    ack, d2, d3, done = reader.until("f2")
    assert [protocol.decode_chunk(d)[0] for d in (d2, d3)] == [2, 3]
    assert protocol.decode_chunk(d3)[1] == chunks[3]


def test_service_file_names_never_come_from_the_caption(serve, reader, tmp_path) -> None:
    service = serve()
    wait_for(lambda: service.link.is_open)
    hostile = "../../etc/passwd; rm -rf / $(reboot) `id` | tee x"
    reader.send(format_request("x-1", "gen", caption=hostile, seed=1))
    *_, done = reader.until("x-1")
    assert done.kind == "done"
    (name,) = done.values("files")
    assert name.endswith("_x-1_s1_0.png") and "/" not in name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [name]
    reader.send(b"f1 fetch ../manifest.json\r\n")
    (err,) = reader.read(1)
    assert (err.kind, err.code) == ("err", "BAD_ARGS")
    (tmp_path / "out" / "link.png").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_bytes(b"secret")
    reader.send(b"f2 fetch link.png\r\n")
    (err,) = reader.read(1)
    assert (err.kind, err.code) == ("err", "NOT_FOUND")


# ------------------------------------------------------------------------------------------
# Fuzz: ≥ 10,000 hostile lines over the pty, then a valid request
# ------------------------------------------------------------------------------------------

_BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]
_TEMPLATES = [
    b"{id} ping",
    b"{id} status",
    b"{id} fetch 20250101T000000Z_a_s1_0.png",
    b"{id} fetch missing.png from=2 count=3",
    b"{id} gen n=0 survivor",
    b"{id} gen n=99 survivor",
    b"{id} gen seed=x survivor",
    b"{id} gen colour=red survivor",
    b"{id} gen",
    b"{id} gen \xf0\x9f\x9a\x91\xf0\x9f\x94\xa5",
    b"{id} reboot",
    b"{id} ping extra",
    b"{id}",
    b"gen survivor on rubble",
    b"status",
]


def _fuzz_lines(rng, count: int, max_line: int) -> list[bytes]:
    """Hostile lines by category; none holds a line terminator (they are added when sent)."""
    no_breaks = bytes(b for b in range(256) if b not in b"\r\n\x08\x7f")
    lines: list[bytes] = []
    while len(lines) < count:
        rid = rng.choice([b"1", b"z9", b"A_b-c", b"x" * 16, b"x" * 17, b"$7", b"-"])
        template = rng.choice(_TEMPLATES).replace(b"{id}", rid)
        kind = rng.randrange(9)
        if kind == 0:  # random bytes
            line = bytes(rng.choice(no_breaks) for _ in range(rng.randrange(1, 100)))
        elif kind == 1:  # overlong
            line = bytes(
                rng.choice(no_breaks) for _ in range(rng.randrange(max_line + 1, 3 * max_line))
            )
        elif kind == 2:  # bad checksum: wrong digits, or not digits at all
            body = template
            good = protocol.checksum(body)
            digits = rng.choice(
                [b"%02X" % ((good + rng.randrange(1, 256)) % 256), b"ZZ", b"4", b"g0"]
            )
            line = b"$" + body + b"*" + digits
        elif kind == 3:  # broken UTF-8 inside an otherwise fine request
            line = b"%s gen survivor %s on rubble" % (rid, rng.choice(_BAD_UTF8))
        elif kind == 4:  # the templates, some with a correct checksum
            line = template
            if rng.random() < 0.5:
                line = b"$" + line + b"*%02X" % protocol.checksum(line)
        elif kind == 5:  # printable garbage
            line = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 60)))
        elif kind == 6:  # NUL, ESC and other control bytes sprinkled into a template
            mutable = bytearray(template)
            for _ in range(rng.randrange(1, 4)):
                mutable.insert(
                    rng.randrange(len(mutable) + 1), rng.choice([0, 0x1B, 0x07, 0x0B, 0x85])
                )
            line = bytes(mutable)
        elif kind == 7:  # a single byte flipped in a checksummed line (noise on the radio)
            body = b"$" + template + b"*%02X" % protocol.checksum(template)
            mutable = bytearray(body)
            position = rng.randrange(1, len(mutable) - 3)
            mutable[position] ^= 1 << rng.randrange(7)
            line = bytes(mutable).replace(b"\r", b"R").replace(b"\n", b"N")
        else:  # separators injected: one line becomes several
            pieces = template.split(b" ")
            line = rng.choice([b"\r", b"\n", b"\r\n"]).join(pieces)
        lines.append(line)
    return lines


def test_service_survives_10000_fuzzed_lines_with_a_correct_error_for_each(
    serve, reader, oracle, tmp_path
) -> None:
    import random

    max_line = 128  # short, so overlong lines are cheap to send
    # Unlimited replies to junk: this test checks the answer to every line (the junk share and
    # coalescing have their own tests in test_link_security.py).
    service = serve(max_line=max_line, junk_share=None)
    wait_for(lambda: service.link.is_open)
    rng = random.Random(20160517)
    lines = _fuzz_lines(rng, 10_000, max_line)
    sent = answered = errors = 0
    generated = []  # a flipped bit can turn "n=0" into "n=1": a valid gen, served for real
    for start in range(0, len(lines), 200):
        batch = lines[start : start + 200]
        payload = b"".join(line + rng.choice([b"\r\n", b"\n", b"\r"]) for line in batch)
        expected = [
            e
            for line in batch
            for piece in line.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            if (e := oracle(piece, max_line=max_line)) is not None
        ]
        reader.send(payload)
        replies = []
        while len(replies) < len(expected):
            (reply,) = reader.read(1, timeout=30)
            if reply.kind == "done" and reply.get("cmd") == "gen":
                generated.append(reply)  # a worker's reply: arrives whenever it is ready
            elif reply.kind == "info":
                assert reply.text.startswith("last error "), reply  # status's message line
            else:
                replies.append(reply)
        for want, got in zip(expected, replies, strict=True):
            if want[0] == "ack" and got.kind == "err":
                assert (got.code, got.id) == ("BUSY", want[2])
            else:
                assert (got.kind, got.code, got.id) == want, (want, got)
            errors += got.kind == "err"
        sent += len(batch)
        answered += len(replies)
    assert sent == 10_000 and answered >= 10_000
    wait_for(lambda: service.status_fields()["queue"] == 0, what="the queue to drain")
    tail = reader.quiet(0.3)
    generated += [protocol.parse_reply(raw) for raw in tail.splitlines(keepends=True)]
    assert all(r.kind == "done" and r.get("cmd") == "gen" for r in generated)
    # Still serving: a real request after the storm.
    reader.send(format_request("after", "gen", caption=CAPTION, seed=3))
    ack, done = reader.until("after")
    assert (ack.kind, done.kind) == ("ack", "done")
    (name,) = done.values("files")
    assert decode_png((tmp_path / "out" / name).read_bytes()).shape == (64, 64, 3)
    status = service.status_fields()
    assert status["errors"] == errors and status["requests"] == answered + 1
    assert status["ok"] >= 1 and status["link"] == "up" and status["reconnects"] == 0


# ------------------------------------------------------------------------------------------
# The link and the disk misbehaving
# ------------------------------------------------------------------------------------------


def test_service_reconnects_after_the_cable_is_pulled_and_plugged_back(
    serve, reader, cable
) -> None:
    service = serve(reconnect_max_s=0.2)
    wait_for(lambda: service.link.is_open)
    reader.send(b"1 ping\r\n")
    assert reader.read(1)[0].kind == "done"
    cable.unplug()
    wait_for(lambda: not service.link.is_open, what="the service to notice the unplug")
    reader.send(b"2 ping\r\n")  # into the void: nobody is on the other end
    time.sleep(0.3)  # several reconnect attempts fail while the device is absent
    assert not service.link.is_open
    cable.replug()
    wait_for(lambda: service.link.is_open, what="the service to reconnect")
    reader.send(b"3 status\r\n")
    info, status = reader.read(2)
    assert status.id == "3" and status.get("link") == "up"
    assert (status.get("reconnects"), status.get("link_losses")) == ("1", "1")
    assert status.get("last_error") == "LINK" and info.kind == "info"
    assert info.text.startswith("last error ") and ": LINK " in info.text
    assert reader.quiet(0.1) == b""  # the ping sent while unplugged got no reply, as expected


def _disk_full_after(monkeypatch, files_ok: int) -> list[str]:
    """Make writes to regular files fail with ENOSPC after `files_ok` files (ptys, pipes and
    sockets are untouched, so the link keeps working)."""
    real_write = os.write
    written: list[str] = []

    def write(fd: int, data: bytes) -> int:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            key = f"{info.st_dev}:{info.st_ino}"
            if key not in written:
                written.append(key)
            if len(written) > files_ok:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return written


def test_service_reports_a_full_disk_and_keeps_serving(
    serve, reader, tmp_path, monkeypatch
) -> None:
    service = serve()
    wait_for(lambda: service.link.is_open)
    out = tmp_path / "out"
    _disk_full_after(monkeypatch, files_ok=1)  # the second image of the request hits ENOSPC
    reader.send(format_request("d1", "gen", caption=CAPTION, n=3, seed=1))
    ack, err = reader.until("d1")
    assert (ack.kind, err.kind, err.code) == ("ack", "err", "OUTPUT")
    assert "No space left on device" in err.text and "<out>/" in err.text
    assert str(out) not in err.text  # no absolute paths on the link
    assert list(out.iterdir()) == []  # all or nothing: the image written first was removed
    monkeypatch.undo()  # space freed
    reader.send(format_request("d2", "gen", caption=CAPTION, n=2, seed=1))
    *_, done = reader.until("d2")
    assert done.kind == "done" and len(list(out.iterdir())) == 2
    assert service.status_fields()["last_error"] == "OUTPUT"


def test_service_reports_an_unusable_output_dir_and_keeps_serving(serve, reader, tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    service = serve(out_dir=blocker / "images")
    wait_for(lambda: service.link.is_open)
    reader.send(format_request("o1", "gen", caption=CAPTION, seed=1))
    _, err = reader.until("o1")
    assert err.code == "OUTPUT" and "cannot create output directory" in err.text
    reader.send(b"o2 ping\r\n")
    assert reader.read(1)[0].kind == "done"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_service_reports_a_read_only_output_dir(serve, reader, tmp_path) -> None:
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    service = serve(out_dir=out)
    wait_for(lambda: service.link.is_open)
    reader.send(format_request("r1", "gen", caption=CAPTION, seed=1))
    _, err = reader.until("r1")
    assert err.code == "OUTPUT" and "Permission denied" in err.text


def test_service_answers_busy_when_the_queue_is_full(serve, reader, engine, monkeypatch) -> None:
    release = threading.Event()
    real_generate = engine.generate

    def slow_generate(*args: object, **kwargs: object) -> object:
        release.wait(10)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(engine, "generate", slow_generate)
    service = serve(queue_size=1)
    wait_for(lambda: service.link.is_open)
    reader.send(format_request("b1", "gen", caption=CAPTION, seed=1))
    assert reader.read(1)[0].kind == "ack"
    wait_for(lambda: service.status_fields()["queue"] == 0, what="the worker to take b1")
    reader.send(format_request("b2", "gen", caption=CAPTION, seed=2))
    assert reader.read(1)[0].kind == "ack"  # waits in the queue
    reader.send(format_request("b3", "gen", caption=CAPTION, seed=3))
    (busy,) = reader.read(1)
    assert (busy.id, busy.code) == ("b3", "BUSY")
    reader.send(b"b4 ping\r\n")  # the main loop answers while the worker is stuck
    assert reader.read(1)[0].kind == "done"
    release.set()
    done = [r for r in reader.read(2) if r.kind == "done"]
    assert sorted(r.id for r in done) == ["b1", "b2"]
    assert service.status_fields()["busy"] == 1


def test_service_withholds_the_watchdog_while_the_worker_hangs(
    engine, cable, tmp_path, monkeypatch
) -> None:
    release = threading.Event()
    real_generate = engine.generate
    monkeypatch.setattr(
        engine, "generate", lambda *a, **k: (release.wait(10), real_generate(*a, **k))[1]
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.05)
    notifier = Notifier(str(tmp_path / "notify"), watchdog_usec=200_000)
    service = Service(
        engine, ServiceConfig(port=str(cable.robot_path), out_dir=tmp_path / "o"), notifier=notifier
    )
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    port = serial.Serial(cable.operator_path, timeout=0.05)

    def pings(seconds: float) -> int:
        count, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                count += sock.recv(100) == b"WATCHDOG=1"
        return count

    try:
        assert pings(0.5) >= 3  # every 0.1 s while healthy
        wait_for(lambda: service.link.is_open)
        port.write(b"w1 gen survivor\r\n")
        wait_for(lambda: service._health.busy_since is not None, what="the worker to start")
        time.sleep(1.2)  # hung for longer than the watchdog allows (2 × 0.1 s, at least 1 s)
        pings(0.1)  # the pings sent before the hang was noticed
        assert pings(0.5) == 0
        release.set()
        assert pings(0.5) >= 3
    finally:
        release.set()
        service.request_stop()
        thread.join(10)
        port.close()
        sock.close()


# ------------------------------------------------------------------------------------------
# The real process: systemd notifications and SIGTERM
# ------------------------------------------------------------------------------------------


def _read_pty(master: int, buffer: bytearray, timeout: float) -> int:
    """Append what the pty master has within `timeout`; returns the byte count."""
    ready, _, _ = select.select([master], [], [], timeout)
    if not ready:
        return 0
    data = os.read(master, 65536)
    buffer += data
    return len(data)


def test_service_process_notifies_systemd_and_finishes_the_current_request_on_sigterm(
    tiny_bundle, tmp_path
) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    out = tmp_path / "out"
    out.mkdir()
    big = os.urandom(1 << 20)  # a 1 MiB result: its fetch outlasts what the pty can buffer
    (out / "big.png").write_bytes(big)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="200000")
    env.pop("WATCHDOG_PID", None)
    log_path = tmp_path / "stderr.log"
    key = signing.generate_key()
    signing.write_key_file(tmp_path / "operator.key", key)
    signer = signing.Signer(key, link=1)
    guard = signing.LinkGuard(key, links={1 | signing.REPLY_BIT})
    command = [
        sys.executable, "-m", "edge_runtime", "serve", "--serial", os.ttyname(slave),
        "--bundle", str(tiny_bundle), "--out", str(out), "--precision", "fp32",
        "--key-file", str(tmp_path / "operator.key"),
    ]  # fmt: skip
    with open(log_path, "wb") as log_file:
        # cwd elsewhere: the robot venv's test then runs the installed package, not the checkout.
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=log_file, cwd=tmp_path
        )
    try:
        messages = [sock.recv(4096).decode()]
        assert messages[0].startswith("READY=1"), messages
        while messages.count("WATCHDOG=1") < 3:
            messages.append(sock.recv(4096).decode())
        os.write(master, signer.sign("f1 fetch big.png") + b"\r\n")
        received = bytearray()
        deadline = time.monotonic() + 10
        while b"$ack f1" not in received:
            assert time.monotonic() < deadline, received
            _read_pty(master, received, 0.5)
        time.sleep(0.5)  # we stop reading: the service's writes back up, the fetch is mid-way
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "exited before finishing the fetch in progress"
        os.write(master, signer.sign("g1 gen survivor on rubble") + b"\r\n")  # while stopping
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # read until the process is gone and all is read
            exited = proc.poll() is not None
            if not _read_pty(master, received, 0.2) and exited:
                break
        assert proc.wait(timeout=1) == 0
        sock.settimeout(1)
        with contextlib.suppress(TimeoutError):
            while True:
                messages.append(sock.recv(4096).decode())
        assert "STOPPING=1" in messages
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fd in (master, slave):
            os.close(fd)
        sock.close()
    lines = bytes(received).splitlines(keepends=True)
    replies = [protocol.parse_reply(raw, guard) for raw in lines]  # every one signed, in order
    by_kind = {(r.kind, r.id) for r in replies}
    assert ("done", "f1") in by_kind
    shutdown = [r for r in replies if r.id == "g1"]
    assert [(r.kind, r.code) for r in shutdown] == [("err", "SHUTDOWN")]
    ack = next(r for r in replies if (r.kind, r.id) == ("ack", "f1"))
    chunks = dict(protocol.decode_chunk(r) for r in replies if r.kind == "data")
    assert len(chunks) == int(ack.get("chunks"))
    blob = b"".join(chunks[i] for i in range(len(chunks)))
    assert blob == big and hashlib.sha256(blob).hexdigest() == ack.get("sha256")
    assert "SIGTERM" in log_path.read_text()
