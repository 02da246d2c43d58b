"""The operator's side of the serial link: what a ground-station laptop runs.

`OperatorClient` sends requests, waits for the replies addressed to them (checksums verified;
corrupt lines are ignored), retries what the link garbled, and fetches results chunk by chunk —
each chunk's CRC-32 checked, missing chunks requested again by index, the whole file checked
against the sha256 the robot announced, then written atomically.

    with OperatorClient.open("/dev/ttyUSB0") as client:
        result = client.generate("survivor in an orange jacket on rubble", n=2)
        paths = [client.fetch(name, "images", sha) for name, sha in result.files]
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import serial

from edge_runtime import protocol
from edge_runtime.images import write_atomic
from edge_runtime.protocol import Code, Reply, ReplyError

log = logging.getLogger(__name__)

_RESEND_CODES = {Code.BAD_CHECKSUM, Code.BAD_UTF8, Code.LINE_TOO_LONG, Code.BAD_ID}
"""Errors that mean the request was garbled on the way: send it again."""


class ClientError(Exception):
    """A request the robot refused, or one that got no usable answer; one line."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class GenerateResult:
    """A `gen` request's outcome as the robot reported it."""

    request_id: str
    seed: int
    files: list[tuple[str, str]]
    """(file name on the robot, sha256) per image."""
    ms: float
    """Robot-side time from receiving the line to files written."""
    infer_ms: float
    directory: str
    round_trip_ms: float
    """This side's time from sending the request to reading `done`."""


@dataclass
class _Fetch:
    size: int = -1
    chunk: int = 0
    total: int = -1
    sha256: str = ""
    parts: dict[int, bytes] = field(default_factory=dict)

    def missing_runs(self) -> list[tuple[int, int]]:
        """(first index, count) of each run of chunks not yet received."""
        runs: list[tuple[int, int]] = []
        index = 0
        while index < self.total:
            if index in self.parts:
                index += 1
                continue
            start = index
            while index < self.total and index not in self.parts:
                index += 1
            runs.append((start, index - start))
        return runs


class OperatorClient:
    """Request/reply over an open pyserial port (any: a device, a pty, `loop://`, `socket://`).

    The port's read timeout is set to 50 ms: replies are polled against the client's deadlines.
    """

    def __init__(
        self,
        port: serial.SerialBase,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        id_prefix: str | None = None,
    ) -> None:
        self.port = port
        self.timeout = timeout
        """Seconds to wait for a request's final reply (and for silence within a fetch)."""
        self.retries = retries
        """Extra attempts after a garbled request, a BUSY, a timeout or a fetch without progress."""
        # A per-session prefix keeps ids of two client sessions apart in the robot's file names.
        self.id_prefix = id_prefix if id_prefix is not None else f"c{secrets.token_hex(1)}"
        self._counter = 0
        self._buffer = bytearray()
        port.timeout = 0.05

    @classmethod
    def open(cls, url: str, baud: int = 115200, **kwargs: object) -> OperatorClient:
        """Open a serial device path or pyserial URL; raises `ClientError` naming the port."""
        try:
            port = serial.serial_for_url(url, baudrate=baud, timeout=0.05)
        except (serial.SerialException, OSError, ValueError) as err:
            raise ClientError(f"cannot open serial port {url}: {err}") from None
        return cls(port, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the port."""
        self.port.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- lines ----------------------------------------------------------------------------------

    def next_id(self) -> str:
        """A fresh request id."""
        self._counter += 1
        return f"{self.id_prefix}{self._counter}"

    def _send(self, line: bytes) -> None:
        log.debug("→ %r", line)
        self.port.write(line)
        self.port.flush()

    def _replies(self, deadline: float) -> Iterator[Reply]:
        """Replies as they arrive until `deadline` (monotonic); corrupt lines are skipped."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                raw = bytes(self._buffer[: newline + 1])
                del self._buffer[: newline + 1]
                if not raw.strip():
                    continue
                try:
                    reply = protocol.parse_reply(raw)
                except ReplyError as err:
                    log.debug("ignoring corrupt line: %s", err)
                    continue
                log.debug("← %r", raw)
                yield reply
                continue
            if time.monotonic() >= deadline:
                return
            data = self.port.read(max(1, self.port.in_waiting))
            if data:
                self._buffer += data
                if len(self._buffer) > 1 << 20:  # a link spewing garbage without newlines
                    del self._buffer[: -(1 << 16)]

    def exchange(
        self, build: Callable[[str], bytes], *, final_kinds: tuple[str, ...] = ("done",)
    ) -> list[Reply]:
        """Send `build(request_id)` and collect replies for that id up to its `done` (or `err`),
        resending on garbled requests, BUSY and timeouts; raises `ClientError`."""
        busy_wait = 0.2
        last_problem = "no reply"
        for attempt in range(self.retries + 1):
            request_id = self.next_id()
            self._send(build(request_id))
            replies: list[Reply] = []
            deadline = time.monotonic() + self.timeout
            for reply in self._replies(deadline):
                if reply.id != request_id:
                    continue
                replies.append(reply)
                if reply.kind == "err":
                    break
                if reply.kind in final_kinds:
                    return replies
                deadline = time.monotonic() + self.timeout  # progress: keep waiting
            else:
                last_problem = f"no reply within {self.timeout:g} s"
                log.info("%s: %s (attempt %d)", request_id, last_problem, attempt + 1)
                continue
            err = replies[-1]
            if err.code == Code.BUSY:
                last_problem = f"robot busy: {err.text}"
                time.sleep(busy_wait)
                busy_wait = min(busy_wait * 2, 2.0)
                continue
            if err.code in _RESEND_CODES:
                last_problem = f"{err.code} {err.text}"
                log.info("%s: garbled on the way (%s); resending", request_id, last_problem)
                continue
            raise ClientError(f"robot refused {request_id}: {err.code} {err.text}", err.code)
        raise ClientError(f"gave up after {self.retries + 1} attempts: {last_problem}")

    # -- commands -------------------------------------------------------------------------------

    def ping(self) -> float:
        """Round trip time of a ping, in ms."""
        t0 = time.perf_counter()
        self.exchange(lambda rid: protocol.format_request(rid, "ping"))
        return (time.perf_counter() - t0) * 1000.0

    def status(self) -> dict[str, str]:
        """The robot's status fields, decoded."""
        (done,) = [
            r
            for r in self.exchange(lambda rid: protocol.format_request(rid, "status"))
            if r.kind == "done"
        ]
        return {k: done.get(k) for k in done.fields}

    def help(self) -> list[str]:
        """The robot's help lines."""
        replies = self.exchange(lambda rid: protocol.format_request(rid, "help"))
        return [r.text for r in replies if r.kind == "info"]

    def generate(self, caption: str, n: int = 1, seed: int | None = None) -> GenerateResult:
        """Ask for `n` images of `caption`. The seed is chosen here when not given, so a resent
        request makes exactly the same images."""
        seed = secrets.randbelow(protocol.MAX_SEED + 1) if seed is None else seed
        t0 = time.perf_counter()
        replies = self.exchange(
            lambda rid: protocol.format_request(rid, "gen", caption=caption, n=n, seed=seed)
        )
        done = replies[-1]
        files = list(zip(done.values("files"), done.values("sha256"), strict=True))
        return GenerateResult(
            request_id=done.id,
            seed=int(done.get("seed", str(seed))),
            files=files,
            ms=float(done.get("ms", "nan")),
            infer_ms=float(done.get("infer_ms", "nan")),
            directory=done.get("dir"),
            round_trip_ms=(time.perf_counter() - t0) * 1000.0,
        )

    def fetch(self, name: str, dest: str | Path, expected_sha256: str | None = None) -> Path:
        """Download result `name` into directory `dest` (atomically), resuming missing chunks;
        verifies each chunk's CRC-32 and the file's sha256; returns the local path."""
        if not protocol.FILE_RE.fullmatch(name):
            # The name comes from the link: never let it choose a local path.
            raise ClientError(f"refusing to save a file named {name!r}")
        state = _Fetch()
        stalled = 0
        while True:
            runs = [(0, None)] if state.total < 0 else state.missing_runs()
            if not runs:
                break
            before = len(state.parts)
            for start, count in runs:
                try:
                    self._fetch_run(name, start, count, state)
                except ClientError as err:
                    if err.code in (Code.NOT_FOUND, Code.BAD_ARGS):
                        raise
                    log.info("fetch %s from %d: %s", name, start, err)
            if expected_sha256 and state.sha256 and state.sha256 != expected_sha256:
                raise ClientError(
                    f"{name}: robot announces sha256 {state.sha256[:12]}…, expected "
                    f"{expected_sha256[:12]}… (file replaced on the robot?)"
                )
            if len(state.parts) == before:
                stalled += 1
                if stalled > self.retries:
                    missing = sum(c for _, c in state.missing_runs()) if state.total >= 0 else "?"
                    raise ClientError(f"fetch {name}: no progress, {missing} chunks missing")
        data = b"".join(state.parts[i] for i in range(state.total))
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != state.size or digest != state.sha256:
            raise ClientError(
                f"fetch {name}: reassembled {len(data)} bytes with sha256 {digest[:12]}…, robot "
                f"said {state.size} bytes, {state.sha256[:12]}…"
            )
        target = Path(dest) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        return target

    def _fetch_run(self, name: str, start: int, count: int | None, state: _Fetch) -> None:
        request_id = self.next_id()
        self._send(
            protocol.format_request(
                request_id, "fetch", file=name, start=start or None, count=count
            )
        )
        deadline = time.monotonic() + self.timeout
        for reply in self._replies(deadline):
            if reply.id != request_id:
                continue
            deadline = time.monotonic() + self.timeout
            if reply.kind == "err":
                raise ClientError(f"fetch {name}: {reply.code} {reply.text}", reply.code)
            if reply.kind == "ack":
                sha = reply.get("sha256")
                if state.sha256 and sha != state.sha256:
                    # The file changed between two runs: what we hold is from another version.
                    state.parts.clear()
                state.size = int(reply.get("bytes"))
                state.chunk = int(reply.get("chunk"))
                state.total = int(reply.get("chunks"))
                state.sha256 = sha
            elif reply.kind == "data":
                try:
                    index, chunk = protocol.decode_chunk(reply)
                except ReplyError as err:
                    log.info("fetch %s: %s; will ask again", name, err)
                    continue
                if 0 <= index < max(state.total, 0):
                    state.parts[index] = chunk
            elif reply.kind == "done":
                return
        raise ClientError(f"fetch {name}: silence for {self.timeout:g} s")

    def generate_and_fetch(
        self, caption: str, dest: str | Path, n: int = 1, seed: int | None = None
    ) -> tuple[GenerateResult, list[Path]]:
        """`generate`, then `fetch` every image into `dest`."""
        result = self.generate(caption, n=n, seed=seed)
        return result, [self.fetch(name, dest, sha) for name, sha in result.files]
