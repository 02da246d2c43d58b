"""The operator's side of the serial link: what a ground-station laptop runs.

`OperatorClient` signs its requests (with a key), waits for the replies addressed to them (each
reply's signature, link and timestamp verified, or its checksum on an insecure link; anything else
is ignored), retries what the link garbled, and fetches results chunk by chunk — each chunk's
CRC-32 checked, missing chunks requested again by index, the whole file checked against the sha256
the robot announced, then written atomically.

Nothing a reply says is trusted: every field is checked (type, range, size, count, consistency
with the request) before it is used, and a reply that fails is one `BadReplyError`. Every wait has
a deadline, and the replies one request may collect are bounded, so a forged or absurd reply can
cost a bounded wait, never a hang or a traceback (docs/PROTOCOL.md § A program's view).

    with OperatorClient.open("/dev/ttyUSB0", key=read_key_file(path)) as client:
        result = client.generate("survivor in an orange jacket on rubble", n=2)
        paths = [client.fetch(name, "images", sha) for name, sha in result.files]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import serial

from edge_runtime import protocol, readback, signing, vocabulary
from edge_runtime.bundle import MAX_ATTRIBUTES, NOT_STATED
from edge_runtime.images import MAX_FILE_BYTES, write_atomic
from edge_runtime.protocol import Code, Reply, ReplyError, SignedReplyError

log = logging.getLogger(__name__)

_RESEND_CODES = {Code.BAD_CHECKSUM, Code.BAD_UTF8, Code.LINE_TOO_LONG, Code.BAD_ID, Code.AUTH}
"""Errors that mean the request was garbled on the way: send it again (a damaged signed line
fails its signature; a stale one is resent newer than the robot's replies)."""
_MAX_REPLY_LINE = 8192
"""Longest reply line kept (a 4 KiB chunk in base64 plus fields); longer ones are dropped."""
_MAX_EXTRA_REPLIES = 64
"""Non-final replies (ack, info) one request may collect; each extends the wait once."""
_MAX_CHUNK = 1 << 16
_MAX_CHUNKS_UNACKED = 1 << 15
_MAX_FIELD = 256
_CODE_RE = re.compile(r"[A-Z_]{1,32}")
_KEY_RE = re.compile(r"[a-z_][a-z0-9_]{0,31}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CRC_RE = re.compile(r"[0-9a-f]{8}")
_UINT_RE = re.compile(r"[0-9]{1,20}")
_DECIMAL_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")
_LABEL_RE = re.compile(r"[a-z][a-z0-9_-]{0,23}")
"""Attribute and value names, as the robot's manifest validation allows them."""
_PROBABILITY_RE = re.compile(r"(0\.[0-9]{2}|1\.00)")
"""A read-back confidence as the robot sends it: two decimals, 0.00..1.00."""
_MAX_UNDERSTOOD = 1200
"""Longest `understood` field: 16 attributes × (24 + 1 + 24 + 1 + 4 + 1) characters < 1,200."""


class ClientError(Exception):
    """A request the robot refused, or one that got no usable answer; one line."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class BadReplyError(ClientError):
    """A reply that passed its signature or checksum but breaks the protocol: a field missing,
    malformed, out of range or inconsistent with the request (a faulty or hostile robot)."""

    def __init__(self, reply: Reply, problem: str) -> None:
        super().__init__(f"robot sent an invalid {reply.kind} for {reply.id}: {problem}")
        self.code = "BAD_REPLY"


# ------------------------------------------------------------------------------------------
# Field checks: every value a reply carries passes one of these before it is used
# ------------------------------------------------------------------------------------------


def _printable(text: str) -> bool:
    """Plain ASCII without control characters: safe to print on the operator's terminal."""
    return all(" " <= c <= "~" for c in text)


def _raw(reply: Reply, key: str) -> str:
    if key not in reply.fields:
        raise BadReplyError(reply, f"no {key} field")
    value = reply.get(key)
    if len(value) > _MAX_FIELD and key != "b64":
        raise BadReplyError(reply, f"{key} is {len(value)} characters long")
    if not _printable(value):  # percent-encoding can smuggle escape sequences to a terminal
        raise BadReplyError(reply, f"{key} holds control or non-ASCII characters")
    return value


def _int(reply: Reply, key: str, low: int, high: int) -> int:
    value = _raw(reply, key)
    if not _UINT_RE.fullmatch(value) or not low <= int(value) <= high:
        raise BadReplyError(reply, f"{key}={value[:24]!r} is not an integer {low}..{high}")
    return int(value)


def _decimal(reply: Reply, key: str) -> float:
    value = _raw(reply, key)
    if not _DECIMAL_RE.fullmatch(value) or not math.isfinite(float(value)):
        raise BadReplyError(reply, f"{key}={value[:24]!r} is not a duration")
    return float(value)


def _equal(reply: Reply, key: str, expected: object) -> None:
    value = _raw(reply, key)
    if value != str(expected):
        raise BadReplyError(reply, f"{key}={value[:24]!r}, the request said {expected}")


def _matching(reply: Reply, key: str, pattern: re.Pattern[str], what: str) -> str:
    value = _raw(reply, key)
    if not pattern.fullmatch(value):
        raise BadReplyError(reply, f"{key}={value[:24]!r} is not {what}")
    return value


@dataclass(frozen=True)
class ReadBack:
    """What the robot says it understood from a caption (docs/PROTOCOL.md § Read-back)."""

    attributes: tuple[readback.AttributeReading, ...]
    off_domain: float
    warning: str | None
    """`readback.WARNING_OFF_DOMAIN`, `readback.WARNING_NOTHING_STATED` or None."""
    unknown_words: tuple[str, ...] = ()
    """The caption's words the robot's text encoder never learnt from."""

    def summary(self) -> str:
        """`understood as: colour=red (0.98) terrain=? (0.91) ...`."""
        return readback.summary(self.attributes)

    def warning_line(self) -> str | None:
        """The operator's warning, or None."""
        return readback.warning_text(self.warning, self.off_domain)

    @property
    def unknown_line(self) -> str | None:
        """`not in the robot's vocabulary: tangerine`, or None."""
        return readback.unknown_text(self.unknown_words)


def parse_readback(reply: Reply) -> ReadBack | None:
    """The read-back fields of a `gen` or `understand` reply; None when the robot sent none (its
    bundle has no read-back). Every item is checked: count, names, values, confidences, the
    warning's value; anything else is one `BadReplyError` naming the field."""
    if "understood" not in reply.fields:
        if any(key in reply.fields for key in ("off_domain", "warning", "unknown")):
            raise BadReplyError(reply, "off_domain, warning or unknown without understood")
        return None
    raw = reply.fields["understood"]
    if len(raw) > _MAX_UNDERSTOOD:
        raise BadReplyError(reply, f"understood is {len(raw)} characters long")
    items = reply.values("understood")
    if not 1 <= len(items) <= MAX_ATTRIBUTES:
        raise BadReplyError(reply, f"understood has {len(items)} items, expected 1..16")
    readings = []
    for item in items:
        parts = item.split(":")
        if len(parts) != 3:
            raise BadReplyError(
                reply, f"understood item {item[:40]!r} is not name:value:confidence"
            )
        name, value, confidence = parts
        if not _LABEL_RE.fullmatch(name):
            raise BadReplyError(reply, f"understood name {name[:30]!r} is not a label")
        if value != NOT_STATED and not _LABEL_RE.fullmatch(value):
            raise BadReplyError(reply, f"understood value {value[:30]!r} for {name} is not a label")
        if not _PROBABILITY_RE.fullmatch(confidence):
            raise BadReplyError(
                reply, f"understood confidence {confidence[:12]!r} for {name} is not 0.00..1.00"
            )
        readings.append(readback.AttributeReading(name, value, float(confidence)))
    if len({r.name for r in readings}) != len(readings):
        raise BadReplyError(reply, "understood names an attribute twice")
    off_domain = _matching(reply, "off_domain", _PROBABILITY_RE, "a probability 0.00..1.00")
    warning = None
    if "warning" in reply.fields:
        warning = _raw(reply, "warning")
        if warning not in readback.WARNINGS:
            raise BadReplyError(
                reply, f"warning={warning[:24]!r} is not one of {readback.WARNINGS}"
            )
    if len(reply.fields.get("unknown", "")) > vocabulary.MAX_REPORTED * (
        vocabulary.MAX_WORD_LENGTH + 1
    ):
        raise BadReplyError(reply, f"unknown is {len(reply.fields['unknown'])} characters long")
    unknown = reply.values("unknown")
    if len(unknown) > vocabulary.MAX_REPORTED:
        raise BadReplyError(
            reply, f"unknown has {len(unknown)} words, at most {vocabulary.MAX_REPORTED}"
        )
    for word in unknown:
        if not vocabulary.WORD.fullmatch(word) or len(word) > vocabulary.MAX_WORD_LENGTH:
            raise BadReplyError(reply, f"unknown word {word[:40]!r} is not 1..32 letters a-z")
    return ReadBack(tuple(readings), float(off_domain), warning, tuple(unknown))


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
    round_trip_ms: float
    """This side's time from sending the request to reading `done`."""
    readback: ReadBack | None = None
    """What the robot understood (None: its bundle has no read-back)."""


@dataclass(frozen=True)
class FindResult:
    """A `find` request's outcome as the robot reported it (every field checked)."""

    request_id: str
    frame: str
    """The frame's id on the robot (a file name made safe, or camera frame number)."""
    present: bool
    """The best score reached the robot's threshold."""
    best: float
    threshold: float
    boxes: list[tuple[int, int, int, int, float]]
    """(x0, y0, x1, y1, score) in the frame's pixels, best first."""
    overlay: tuple[str, str]
    """(file name on the robot, sha256) of the overlay image."""
    ms: float
    round_trip_ms: float


_FRAME_RE = re.compile(r"[A-Za-z0-9_-]{1,48}")
_BOX_RE = re.compile(r"([0-9]{1,5}):([0-9]{1,5}):([0-9]{1,5}):([0-9]{1,5}):([01]\.[0-9]{3})")
_SCORE_RE = re.compile(r"(0|[01]\.[0-9]{3})")


def parse_boxes(reply: Reply, limit: int) -> list[tuple[int, int, int, int, float]]:
    """The `boxes` field of a `find` reply: at most `limit` boxes x0:y0:x1:y1:score."""
    raw = reply.get("boxes")
    if "boxes" not in reply.fields or len(raw) > limit * 32:
        raise BadReplyError(reply, "no boxes field, or one too long")
    boxes = []
    for item in raw.split(",") if raw else []:
        match = _BOX_RE.fullmatch(item)
        if not match:
            raise BadReplyError(reply, f"box {item[:40]!r} is not x0:y0:x1:y1:score")
        x0, y0, x1, y1 = (int(match.group(i)) for i in range(1, 5))
        score = float(match.group(5))
        if x1 < x0 or y1 < y0 or score > 1.0:
            raise BadReplyError(reply, f"box {item[:40]!r} is not a box with a score in [0, 1]")
        boxes.append((x0, y0, x1, y1, score))
    if len(boxes) > limit:
        raise BadReplyError(reply, f"{len(boxes)} boxes, asked for at most {limit}")
    return boxes


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

    With `key`, requests are signed on link id `link` (0..127; give each ground station its own)
    and only replies signed for this link (or for no link: errors to lines the robot could not
    attribute) and newer than the session's start are read; without it (an `--insecure` robot),
    lines are checksummed only. The port's read timeout is set to 50 ms: replies are polled
    against the client's deadlines.
    """

    def __init__(
        self,
        port: serial.SerialBase,
        *,
        key: bytes | None = None,
        link: int = 1,
        timeout: float = 10.0,
        retries: int = 3,
        id_prefix: str | None = None,
    ) -> None:
        if not 0 <= link <= signing.MAX_OPERATOR_LINK:
            raise ValueError(f"link id must be 0..{signing.MAX_OPERATOR_LINK}, got {link}")
        self.port = port
        self.timeout = timeout
        """Seconds to wait for a request's final reply (and for silence within a fetch)."""
        self.retries = retries
        """Extra attempts after a garbled request, a BUSY, a timeout or a fetch without progress."""
        # A per-session prefix keeps ids of two client sessions apart in the robot's file names.
        self.id_prefix = id_prefix if id_prefix is not None else f"c{secrets.token_hex(2)}"
        self.link = link
        self._signer = signing.Signer(key, link) if key is not None else None
        self._guard = (
            signing.LinkGuard(key, links={link | signing.REPLY_BIT, signing.ANY_LINK})
            if key is not None
            else None
        )
        if self._guard is not None:
            # Replies recorded before this session (more than the one-minute window) are refused.
            self._guard.high_water = signing.now_ticks()
        self._signed_replies_seen = False
        self._counter = 0
        self._buffer = bytearray()
        self._discarding = False
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

    def request_line(self, request_id: str, command: str, **options: object) -> bytes:
        """The line for one request: signed with a key, checksummed without."""
        return protocol.format_request(request_id, command, signer=self._signer, **options)  # type: ignore[arg-type]

    def _send(self, line: bytes) -> None:
        log.debug("→ %r", line)
        try:
            self.port.write(line)
            self.port.flush()
        except (serial.SerialException, OSError) as err:
            raise ClientError(f"serial port {self.port.port}: {err}") from None

    def _read(self) -> bytes:
        try:
            return self.port.read(max(1, min(self.port.in_waiting, 1 << 16)))
        except (serial.SerialException, OSError) as err:
            raise ClientError(f"serial port {self.port.port}: {err}") from None

    def _parse(self, raw: bytes) -> Reply | None:
        try:
            reply = protocol.parse_reply(raw, self._guard)
        except SignedReplyError:
            self._signed_replies_seen = True
            return None
        except ReplyError as err:
            log.debug("ignoring line: %s", err)
            return None
        if self._signer is not None and self._guard is not None:
            # Our next timestamp is newer than anything the robot has said: if our clock is
            # behind the robot's memory of this link, a resend heals it (AUTH is resent).
            self._signer.last = max(self._signer.last, self._guard.high_water)
        if reply.kind == "err" and (
            not _CODE_RE.fullmatch(reply.code)
            or len(reply.text) > 4 * _MAX_FIELD
            or not _printable(reply.text)
        ):
            log.debug("ignoring malformed err line %r", raw[:60])
            return None
        return reply

    def _replies(self, deadline: float) -> Iterator[Reply]:
        """Replies as they arrive until `deadline` (monotonic); corrupt, forged, replayed and
        overlong lines are skipped."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                raw = bytes(self._buffer[: newline + 1])
                del self._buffer[: newline + 1]
                if self._discarding:  # the end of an overlong line
                    self._discarding = False
                    continue
                if not raw.strip():
                    continue
                reply = self._parse(raw)
                if reply is not None:
                    log.debug("← %r", raw[:200])
                    yield reply
                continue
            if len(self._buffer) > _MAX_REPLY_LINE:
                self._buffer.clear()  # memory stays bounded whatever the link spews
                self._discarding = True
            if time.monotonic() >= deadline:
                return
            data = self._read()
            if data:
                self._buffer += data

    def _silence(self) -> str:
        if self._signed_replies_seen and self._guard is None:
            return "the robot signs its replies and this client has no key (--key-file)"
        return f"no reply within {self.timeout:g} s"

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
                if reply.kind not in ("ack", "info") or len(replies) > _MAX_EXTRA_REPLIES:
                    raise BadReplyError(reply, f"unexpected after {len(replies) - 1} replies")
                deadline = time.monotonic() + self.timeout  # progress: keep waiting
            else:
                last_problem = self._silence()
                log.info("%s: %s (attempt %d)", request_id, last_problem, attempt + 1)
                continue
            err = replies[-1]
            if err.code == Code.BUSY:
                last_problem = f"robot busy: {err.text[:80]}"
                time.sleep(busy_wait)
                busy_wait = min(busy_wait * 2, 2.0)
                continue
            if err.code in _RESEND_CODES:
                last_problem = f"{err.code} {err.text[:80]}"
                log.info("%s: garbled on the way (%s); resending", request_id, last_problem)
                continue
            raise ClientError(f"robot refused {request_id}: {err.code} {err.text[:200]}", err.code)
        raise ClientError(f"gave up after {self.retries + 1} attempts: {last_problem}")

    def _final(self, replies: list[Reply], command: str) -> Reply:
        done = replies[-1]
        _equal(done, "cmd", command)
        for reply in replies[:-1]:
            if reply.kind == "info" and (
                len(reply.text) > 4 * _MAX_FIELD or not _printable(reply.text)
            ):
                raise BadReplyError(reply, f"info line of {len(reply.text)} characters")
        return done

    # -- commands -------------------------------------------------------------------------------

    def ping(self) -> float:
        """Round trip time of a ping, in ms."""
        t0 = time.perf_counter()
        done = self._final(self.exchange(lambda rid: self.request_line(rid, "ping")), "ping")
        _decimal(done, "uptime_s")
        return (time.perf_counter() - t0) * 1000.0

    def status(self) -> dict[str, str]:
        """The robot's status fields, decoded (names and sizes checked)."""
        done = self._final(self.exchange(lambda rid: self.request_line(rid, "status")), "status")
        if len(done.fields) > _MAX_EXTRA_REPLIES:
            raise BadReplyError(done, f"{len(done.fields)} fields")
        for key in done.fields:
            if not _KEY_RE.fullmatch(key):
                raise BadReplyError(done, f"field name {key[:24]!r}")
            _raw(done, key)
        return {k: done.get(k) for k in done.fields}

    def help(self) -> list[str]:
        """The robot's help lines."""
        replies = self.exchange(lambda rid: self.request_line(rid, "help"))
        self._final(replies, "help")
        return [r.text for r in replies if r.kind == "info"]

    def understand(self, caption: str) -> ReadBack:
        """What the robot reads in `caption`, without making an image (milliseconds on the
        robot, one short reply on the link). Raises `ClientError` (code NO_READBACK) when the
        robot's bundle has no read-back."""
        replies = self.exchange(lambda rid: self.request_line(rid, "understand", caption=caption))
        done = self._final(replies, "understand")
        understood = parse_readback(done)
        if understood is None:
            raise BadReplyError(done, "no understood field")
        return understood

    def generate(
        self, caption: str, n: int = 1, seed: int | None = None, *, strict: bool = False
    ) -> GenerateResult:
        """Ask for `n` images of `caption`. The seed is chosen here when not given, so a resent
        request makes exactly the same images. `strict`: the robot refuses (ClientError, code
        OFF_DOMAIN) rather than draw a caption it reads as off-domain."""
        if not 1 <= n <= protocol.MAX_IMAGES:
            raise ClientError(f"n must be 1..{protocol.MAX_IMAGES}, got {n}")
        seed = secrets.randbelow(protocol.MAX_SEED + 1) if seed is None else seed
        t0 = time.perf_counter()
        replies = self.exchange(
            lambda rid: self.request_line(
                rid, "gen", caption=caption, n=n, seed=seed, strict=strict
            )
        )
        done = self._final(replies, "gen")
        for reply in replies:  # the ack, and the done
            if reply.kind == "ack":
                _equal(reply, "cmd", "gen")
            _equal(reply, "n", n)
            _equal(reply, "seed", seed)
        names = done.values("files") if "files" in done.fields else []
        digests = done.values("sha256") if "sha256" in done.fields else []
        if len(names) != n or len(digests) != n or len(set(names)) != n:
            raise BadReplyError(
                done, f"{len(names)} file names and {len(digests)} digests for n={n}"
            )
        for name, digest in zip(names, digests, strict=True):
            if not protocol.FILE_RE.fullmatch(name) or not _SHA256_RE.fullmatch(digest):
                raise BadReplyError(done, f"file {name[:40]!r} / sha256 {digest[:16]!r}")
        return GenerateResult(
            request_id=done.id,
            seed=seed,
            files=list(zip(names, digests, strict=True)),
            ms=_decimal(done, "ms"),
            infer_ms=_decimal(done, "infer_ms"),
            round_trip_ms=(time.perf_counter() - t0) * 1000.0,
            readback=parse_readback(done),
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
                except BadReplyError:
                    raise
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
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ClientError(f"cannot create {target.parent}: {err.strerror}") from None
        write_atomic(target, data)
        return target

    def _check_ack(self, reply: Reply, name: str, start: int, count: int | None) -> _Fetch:
        _equal(reply, "cmd", "fetch")
        _equal(reply, "file", name)
        size = _int(reply, "bytes", 0, MAX_FILE_BYTES)
        chunk = _int(reply, "chunk", 1, _MAX_CHUNK)
        total = _int(reply, "chunks", 0, MAX_FILE_BYTES)
        if total != protocol.chunk_count(size, chunk):
            raise BadReplyError(reply, f"chunks={total} for {size} bytes in {chunk}-byte chunks")
        _equal(reply, "from", start)
        sent = _int(reply, "count", 0, total)
        wanted = total - start if count is None else min(count, total - start)
        if sent != wanted:
            raise BadReplyError(reply, f"count={sent}, expected {wanted}")
        sha = _matching(reply, "sha256", _SHA256_RE, "a sha256")
        return _Fetch(size=size, chunk=chunk, total=total, sha256=sha)

    def _chunk(self, reply: Reply, state: _Fetch, start: int, end: int) -> tuple[int, bytes]:
        index = _int(reply, "i", start, max(start, end - 1))
        crc = int(_matching(reply, "crc", _CRC_RE, "a CRC-32"), 16)
        text = _raw(reply, "b64")
        expected = min(state.chunk, state.size - index * state.chunk)
        if len(text) != 4 * -(-expected // 3):
            raise BadReplyError(reply, f"chunk {index}: {len(text)} base64 characters")
        try:
            chunk = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadReplyError(reply, f"chunk {index}: not base64") from None
        if len(chunk) != expected or binascii.crc32(chunk) != crc:
            # Damage that slipped past the line check (an insecure link): ask for it again.
            raise ReplyError(f"chunk {index}: length or CRC-32 mismatch")
        return index, chunk

    def _fetch_run(self, name: str, start: int, count: int | None, state: _Fetch) -> None:
        request_id = self.next_id()
        self._send(
            self.request_line(request_id, "fetch", file=name, start=start or None, count=count)
        )
        deadline = time.monotonic() + self.timeout
        end = -1  # one past the last chunk index this run may carry (known from the ack)
        extra = 0
        for reply in self._replies(deadline):
            if reply.id != request_id:
                continue
            extra += 1
            # Before the ack (lost on a lossy link) the run's size is unknown: a generous bound.
            limit = end - start + 2 if end >= 0 else _MAX_CHUNKS_UNACKED
            if extra > limit:
                raise BadReplyError(reply, f"{extra} replies to one fetch of {name}")
            deadline = time.monotonic() + self.timeout
            if reply.kind == "err":
                raise ClientError(f"fetch {name}: {reply.code} {reply.text[:200]}", reply.code)
            if reply.kind == "ack" and end < 0:
                announced = self._check_ack(reply, name, start, count)
                if state.sha256 and (announced.sha256, announced.size, announced.chunk) != (
                    state.sha256, state.size, state.chunk,
                ):  # fmt: skip
                    # The file changed between two runs: what we hold is from another version.
                    state.parts.clear()
                state.size, state.chunk = announced.size, announced.chunk
                state.total, state.sha256 = announced.total, announced.sha256
                end = start + _int(reply, "count", 0, state.total)
            elif reply.kind in ("data", "done") and end < 0:
                log.info("fetch %s: %s before the ack (lost); will ask again", name, reply.kind)
                if reply.kind == "done":
                    return
            elif reply.kind == "data":
                try:
                    index, chunk = self._chunk(reply, state, start, end)
                except BadReplyError:
                    raise
                except ReplyError as err:
                    log.info("fetch %s: %s; will ask again", name, err)
                    continue
                state.parts[index] = chunk
            elif reply.kind == "done":
                _equal(reply, "cmd", "fetch")
                _equal(reply, "file", name)
                return
            else:
                raise BadReplyError(reply, "out of order in a fetch")
        raise ClientError(f"fetch {name}: {self._silence()}")

    def find(self, caption: str, k: int | None = None) -> FindResult:
        """Ask the robot to look for the person `caption` describes in its current camera frame;
        raises `ClientError` (code NO_SEARCH) when it cannot (no frame scorer, no frame source)."""
        if k is not None and not 1 <= k <= protocol.MAX_FIND_BOXES:
            raise ClientError(f"k must be 1..{protocol.MAX_FIND_BOXES}, got {k}")
        t0 = time.perf_counter()
        replies = self.exchange(
            lambda rid: self.request_line(rid, "find", caption=caption, top_k=k)
        )
        done = self._final(replies, "find")
        for reply in replies:
            if reply.kind == "ack":
                _equal(reply, "cmd", "find")
        present = _int(done, "present", 0, 1)
        names = done.values("files") if "files" in done.fields else []
        digests = done.values("sha256") if "sha256" in done.fields else []
        if len(names) != 1 or len(digests) != 1:
            raise BadReplyError(done, f"{len(names)} overlay names and {len(digests)} digests")
        if not protocol.FILE_RE.fullmatch(names[0]) or not _SHA256_RE.fullmatch(digests[0]):
            raise BadReplyError(done, f"overlay {names[0][:40]!r} / sha256 {digests[0][:16]!r}")
        return FindResult(
            request_id=done.id,
            frame=_matching(done, "frame", _FRAME_RE, "a frame id"),
            present=bool(present),
            best=float(_matching(done, "best", _SCORE_RE, "a score")),
            threshold=float(_matching(done, "threshold", _SCORE_RE, "a score")),
            boxes=parse_boxes(done, k or protocol.MAX_FIND_BOXES),
            overlay=(names[0], digests[0]),
            ms=_decimal(done, "ms"),
            round_trip_ms=(time.perf_counter() - t0) * 1000.0,
        )

    def generate_and_fetch(
        self, caption: str, dest: str | Path, n: int = 1, seed: int | None = None
    ) -> tuple[GenerateResult, list[Path]]:
        """`generate`, then `fetch` every image into `dest`."""
        result = self.generate(caption, n=n, seed=seed)
        return result, [self.fetch(name, dest, sha) for name, sha in result.files]
