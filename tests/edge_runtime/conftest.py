"""Fixtures for the robot runtime: the committed tiny bundle, one engine per session, and a real
serial cable made of two pseudo-terminals that can be unplugged and plugged back in."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial
from pty_cable import PtyCable  # tests/support, on the pytest path

from edge_runtime import protocol, tokenizer
from edge_runtime.engine import Engine
from edge_runtime.protocol import Reply
from edge_runtime.service import Service, ServiceConfig

TINY_BUNDLE = Path(__file__).resolve().parent.parent / "fixtures" / "tiny_bundle"


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    assert (TINY_BUNDLE / "manifest.json").is_file(), (
        f"{TINY_BUNDLE} is missing: regenerate it with the export package's fixture script"
    )
    return TINY_BUNDLE


@pytest.fixture(scope="session")
def engine(tiny_bundle: Path) -> Engine:
    """fp32 on one thread: the reference every determinism test compares against."""
    return Engine(tiny_bundle, precision="fp32", threads=1)


class ReplyReader:
    """Reply lines from a pyserial port; every line's checksum is verified (parse_reply)."""

    def __init__(self, port: serial.Serial) -> None:
        self.port = port
        self._buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def read(self, count: int, timeout: float = 10.0) -> list[Reply]:
        """Exactly `count` replies (fails the test on a timeout or a corrupt line)."""
        replies: list[Reply] = []
        deadline = time.monotonic() + timeout
        while len(replies) < count:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                raw = bytes(self._buffer[: newline + 1])
                del self._buffer[: newline + 1]
                assert raw.endswith(b"\r\n"), raw
                replies.append(protocol.parse_reply(raw))
                continue
            assert time.monotonic() < deadline, f"got {len(replies)} of {count} replies: {replies}"
            self._buffer += self.port.read(max(1, self.port.in_waiting))
        return replies

    def until(
        self, request_id: str, kinds: tuple[str, ...] = ("done", "err"), timeout: float = 10.0
    ) -> list[Reply]:
        """Replies up to and including the first of `kinds` for `request_id`."""
        out: list[Reply] = []
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"no {kinds} for {request_id}: {out}"
            (reply,) = self.read(1, timeout=max(0.1, deadline - time.monotonic()))
            out.append(reply)
            if reply.id == request_id and reply.kind in kinds:
                return out

    def quiet(self, seconds: float = 0.2) -> bytes:
        """Whatever arrives within `seconds` (expected: nothing)."""
        end = time.monotonic() + seconds
        data = bytearray(self._buffer)
        self._buffer.clear()
        while time.monotonic() < end:
            data += self.port.read(max(1, self.port.in_waiting))
        return bytes(data)


@pytest.fixture
def cable(tmp_path: Path) -> Iterator[PtyCable]:
    link = PtyCable(tmp_path)
    try:
        yield link
    finally:
        link.close()


@pytest.fixture
def operator(cable: PtyCable) -> Iterator[serial.Serial]:
    """The operator's pyserial port on the cable."""
    port = serial.Serial(cable.operator_path, 115200, timeout=0.05)
    try:
        yield port
    finally:
        port.close()


@pytest.fixture
def serve(engine: Engine, cable: PtyCable, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start the real service on the cable in a thread: `serve(**ServiceConfig overrides)`."""
    started: list[tuple[Service, threading.Thread]] = []

    def start(**overrides: object) -> Service:
        options: dict[str, object] = {"port": str(cable.robot_path), "out_dir": tmp_path / "out"}
        options.update(overrides)
        service = Service(engine, ServiceConfig(**options))  # type: ignore[arg-type]
        thread = threading.Thread(target=service.run, name="service", daemon=True)
        thread.start()
        started.append((service, thread))
        return service

    yield start
    for service, thread in started:
        service.request_stop()
        thread.join(timeout=20)
        assert not thread.is_alive(), "service did not stop"


@pytest.fixture
def reader(operator: serial.Serial) -> ReplyReader:
    """Checksum-verifying reply reader on the operator's port."""
    return ReplyReader(operator)


# ------------------------------------------------------------------------------------------
# An independent model of docs/PROTOCOL.md's request rules, for the fuzz tests: written from
# the document, sharing no code with edge_runtime.protocol (only the tokenizer, the contract).
# ------------------------------------------------------------------------------------------

_ORACLE_COMMANDS = {"gen", "generate", "fetch", "ping", "status", "help", "understand", "find"}
_ORACLE_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")
_ORACLE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _oracle_id(line: bytes) -> str:
    line = line.lstrip(b" \t")
    line = line[1:].lstrip(b" \t") if line.startswith(b"$") else line
    token = re.split(rb"[ \t]", line, maxsplit=1)[0]
    return token.decode() if re.fullmatch(rb"[A-Za-z0-9_-]{1,16}", token) else "-"


def expected_reply(
    line: bytes, max_line: int = 512, max_images: int = 16, existing: frozenset[str] = frozenset()
) -> tuple[str, str, str] | None:
    """(kind, code, id) the service must answer one line (terminator removed) with; None when
    it must stay silent (a blank line). A valid `gen` is ("ack", "", id): BUSY is also right."""
    # Terminal line editing first: BS/DEL erase the previous UTF-8 character; the length limit
    # applies to the line as it grows.
    edited = bytearray()
    for byte in line:
        if byte in (0x08, 0x7F):
            while edited and 0x80 <= edited[-1] < 0xC0:
                edited.pop()
            if edited:
                edited.pop()
            continue
        edited.append(byte)
        if len(edited) > max_line:
            return ("err", "LINE_TOO_LONG", _oracle_id(bytes(edited)))
    line = bytes(edited)
    s = line.strip(b" \t")
    if not s:
        return None
    guess = _oracle_id(s)
    s = s[1:] if s.startswith(b"$") else s
    if len(s) >= 3 and s[-3] == ord("*"):
        body, digits = s[:-3], s[-2:]
        xor = 0
        for byte in body:
            xor ^= byte
        if not re.fullmatch(rb"[0-9A-Fa-f]{2}", digits) or int(digits, 16) != xor:
            return ("err", "BAD_CHECKSUM", guess)
        s = body
    try:
        text = s.decode("utf-8")
    except UnicodeDecodeError:
        return ("err", "BAD_UTF8", guess)
    tokens = [t for t in re.split(r"[ \t]+", text) if t]
    if not tokens or not _ORACLE_ID.fullmatch(tokens[0]):
        return ("err", "BAD_ID", "-")
    rid = tokens[0]
    second = tokens[1].lower() if len(tokens) > 1 else ""
    if rid.lower() in _ORACLE_COMMANDS and second not in _ORACLE_COMMANDS:
        return ("err", "BAD_ID", "-")
    if second not in _ORACLE_COMMANDS:
        return ("err", "UNKNOWN_COMMAND", rid)
    args = tokens[2:]
    if second in ("ping", "status", "help"):
        return ("err", "BAD_ARGS", rid) if args else ("done", "", rid)
    if second == "fetch":
        if not args or not _ORACLE_FILE.fullmatch(args[0]):
            return ("err", "BAD_ARGS", rid)
        seen = set()
        for token in args[1:]:
            key, eq, value = token.partition("=")
            low = 1 if key.lower() == "count" else 0
            if (
                not eq
                or not re.fullmatch(r"[A-Za-z_]+", key)
                or key.lower() not in ("from", "count")
                or key.lower() in seen
                or not re.fullmatch(r"[0-9]{1,20}", value)
                or not low <= int(value) <= 2**31 - 1
            ):
                return ("err", "BAD_ARGS", rid)
            seen.add(key.lower())
        return ("done", "", rid) if args[0] in existing else ("err", "NOT_FOUND", rid)
    # gen and understand: leading key=value options (understand takes none), an optional --,
    # then the caption. understand is answered at once ("done"); the tiny bundle has a read-back.
    limits = {"n": (1, max_images), "seed": (0, 2**32 - 1), "strict": (0, 1)}
    if second == "understand":
        limits = {}
    elif second == "find":
        limits = {"k": (1, 16)}
    seen = set()
    rest = args
    while rest:
        token = rest[0]
        if token == "--":
            rest = rest[1:]
            break
        key, eq, value = token.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_]+", key):
            break
        low, high = limits.get(key.lower(), (0, None))
        if (
            high is None
            or key.lower() in seen
            or not re.fullmatch(r"[0-9]{1,20}", value)
            or not low <= int(value) <= high
        ):
            return ("err", "BAD_ARGS", rid)
        seen.add(key.lower())
        rest = rest[1:]
    if not tokenizer.normalize(" ".join(rest)):
        return ("err", "BAD_CAPTION", rid)
    if second == "find":  # the tiny bundle has no frame scorer (docs/PROTOCOL.md § find)
        return ("err", "NO_SEARCH", rid)
    return ("done", "", rid) if second == "understand" else ("ack", "", rid)


@pytest.fixture(scope="session")
def oracle() -> Callable[..., tuple[str, str, str] | None]:
    """`expected_reply` (a session fixture, so hypothesis tests may use it)."""
    return expected_reply
