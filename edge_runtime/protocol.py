"""The operator line protocol: request parsing and reply formatting, no I/O (docs/PROTOCOL.md).

One request per line, typeable in a serial terminal and easy for a program to build::

    [$]<id> <command> [<args>][*HH]          e.g.  7 gen n=2 seed=42 survivor on rubble

Replies always start with ``$`` and end with an NMEA-style ``*HH`` checksum (XOR of the bytes
between ``$`` and ``*``, two upper-case hex digits), then CR LF::

    $ack 7 gen n=2 seed=42 queue=0*3C
    $done 7 gen n=2 seed=42 ms=6.1 infer_ms=4.0 files=...,... sha256=...,... dir=...*1F
    $err 7 BAD_ARGS n must be an integer 1..16, got 'x'*55

With a key (every deployed robot), lines and replies carry a signature after the `*` instead of
the checksum (`edge_runtime.signing`, docs/PROTOCOL.md § Signed lines); the service verifies it
before this module parses the body (`parse_request(..., authenticated=True)`).

Checks run in a fixed order, and the first failure is the reply (the fuzz tests rely on it):
line length, signature or checksum (when present), UTF-8, request id, command, arguments.
Reply lines are 7-bit ASCII whatever the request held, so any terminal shows them and any radio
passes them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from edge_runtime import signing, tokenizer

MAX_LINE = 512
"""Default longest request line in bytes (terminator excluded)."""
MAX_IMAGES = 16
"""Default largest `n` of one `gen` request."""
MAX_SEED = 2**32 - 1
CHUNK_SIZE = 512
"""Raw bytes per `data` line of a fetch (684 base64 characters, ≈ 65 ms at 115200 baud)."""

ID_RE = re.compile(rb"[A-Za-z0-9_-]{1,16}")
"""Request ids: 1–16 ASCII letters, digits, '_' or '-' (they become part of file names)."""
ID_TEXT_RE = re.compile(r"[A-Za-z0-9_-]{1,16}")
FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""Names `fetch` accepts: no directories, no dot files (the service's temp files start with '.')."""
_OPTION_RE = re.compile(r"([A-Za-z_]+)=(.*)", re.DOTALL)
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Tokens are separated by spaces and tabs only: other control characters are part of a token, so
# the id read from raw bytes (for error replies) and from decoded text always agree.
_TOKEN_RE = re.compile(r"[ \t]*([^ \t]+)[ \t]*")
_TOKEN_BYTES_RE = re.compile(rb"[ \t]*([^ \t]+)")
_WHITESPACE = b" \t"
NO_ID = "-"
"""The id of an error reply to a line whose id could not be read."""

# Commands and their aliases; the value is the canonical name used in replies.
COMMANDS = {
    "gen": "gen",
    "generate": "gen",
    "fetch": "fetch",
    "ping": "ping",
    "status": "status",
    "help": "help",
    "understand": "understand",
    "find": "find",
}
MAX_FIND_BOXES = 16
"""Largest `k` of a `find` request: each box is ~25 bytes of the reply."""

HELP = (
    "<id> gen [n=N] [seed=S] [strict=1] [--] <caption>   N images (1..{max_n}) of the caption",
    "<id> understand <caption>                what the robot reads in the caption (no image)",
    "<id> find [k=K] [--] <caption>            look for that person in the robot's camera frame",
    "<id> fetch <file> [from=K] [count=M]     send a result's bytes in base64 chunks (CRC-32 each)",
    "<id> status                              bundle, precision, uptime, counters, last error",
    "<id> ping                                liveness check",
    "<id> help                                this list",
    "ids: 1-16 of A-Z a-z 0-9 _ -; lines are signed (rescue-edge sign; docs/PROTOCOL.md)",
)


class Code:
    """Error codes of `err` replies (the third field)."""

    LINE_TOO_LONG = "LINE_TOO_LONG"
    BAD_CHECKSUM = "BAD_CHECKSUM"
    BAD_UTF8 = "BAD_UTF8"
    BAD_ID = "BAD_ID"
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    BAD_ARGS = "BAD_ARGS"
    BAD_CAPTION = "BAD_CAPTION"
    BUSY = "BUSY"
    NOT_FOUND = "NOT_FOUND"
    OUTPUT = "OUTPUT"
    SHUTDOWN = "SHUTDOWN"
    INTERNAL = "INTERNAL"
    OFF_DOMAIN = "OFF_DOMAIN"
    """`gen strict=1`: the caption reads as nothing the robot knows; no image was made."""
    NO_READBACK = "NO_READBACK"
    """`understand`: the robot's bundle has no read-back graph."""
    NO_SEARCH = "NO_SEARCH"
    """`find`: the robot's bundle has no frame scorer, or `serve` was started without a frame
    source."""
    AUTH = "AUTH"
    """The line is unsigned, forged, replayed or stale (robot has a key), or signed while the
    robot has none."""


class ProtocolError(Exception):
    """A request that gets an `err` reply: code, one-line message and the id to reply to."""

    def __init__(self, code: str, message: str, request_id: str = NO_ID) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


# ------------------------------------------------------------------------------------------
# Checksums and framing
# ------------------------------------------------------------------------------------------


def checksum(body: bytes) -> int:
    """NMEA 0183 checksum: XOR of every byte."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def with_checksum(body: str) -> str:
    """`body` as a request line with its checksum, e.g. '7 ping' → '$7 ping*1A' (no terminator)."""
    raw = body.encode("utf-8")
    return f"${body}*{checksum(raw):02X}"


def _split_checksum(line: bytes) -> tuple[bytes, int | None, bytes]:
    """(body, checksum or None, checksum text). A line whose third-to-last byte is '*' has one."""
    if len(line) >= 3 and line[-3:-2] == b"*":
        digits = line[-2:]
        return line[:-3], (int(digits, 16) if all(b in _HEX for b in digits) else -1), digits
    return line, None, b""


def _printable(text: str, limit: int = 40) -> str:
    """User-supplied text made safe to echo in a reply: short, one line, ASCII."""
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return ascii(short)


def _split_token(text: str) -> tuple[str, str]:
    """(first token, rest) with only space and tab as separators (as in `guess_id`)."""
    match = _TOKEN_RE.match(text)
    if not match:
        return "", ""
    return match.group(1), text[match.end() :]


def guess_id(line: bytes) -> str:
    """The request id a (possibly broken) line starts with, or `NO_ID`: used to address errors."""
    line = line.lstrip(_WHITESPACE)
    if line.startswith(b"$"):
        line = line[1:]
    token = _TOKEN_BYTES_RE.match(line)
    if token and ID_RE.fullmatch(token.group(1)):
        return token.group(1).decode("ascii")
    return NO_ID


# ------------------------------------------------------------------------------------------
# Line framing
# ------------------------------------------------------------------------------------------

_TERMINATOR_RE = re.compile(rb"[\r\n]")
_ERASE = b"\x08\x7f"  # backspace and DEL, whichever the operator's terminal sends


@dataclass(frozen=True)
class Line:
    """One framed input line: complete, or the start of one that grew past the limit."""

    data: bytes
    overlong: bool = False
    """True: `data` is the first `max_line` + 1 bytes; the rest, up to the line end, is dropped."""


class LineFramer:
    """Bytes from the link → lines, with a bounded buffer.

    CR, LF and CR LF all end a line (miniterm sends CR LF, programs often LF alone); blank lines
    are dropped. Backspace and DEL erase the previous character, as a terminal's line editing
    would, because an operator typing in miniterm sends them raw. A line longer than `max_line`
    bytes is reported once, as soon as it overflows, and the rest of it up to the next terminator
    is discarded, so memory stays bounded whatever arrives.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Line]:
        """Consume `data`; return the lines it completed (and overflow notices), in order."""
        out: list[Line] = []
        *complete, tail = _TERMINATOR_RE.split(data)
        for piece in complete:
            self._append(piece, out)
            if not self._discarding and self._buffer.strip(b" \t"):
                out.append(Line(bytes(self._buffer)))
            self._buffer.clear()
            self._discarding = False
        self._append(tail, out)
        return out

    def _append(self, piece: bytes, out: list[Line]) -> None:
        if self._discarding or not piece:
            return
        if _ERASE[0] not in piece and _ERASE[1] not in piece:
            self._buffer += piece  # the common case: the buffer only grows
            self._check_overflow(out)
            return
        for byte in piece:
            if byte in _ERASE:
                # Erase a whole UTF-8 character: its continuation bytes, then its lead byte.
                while self._buffer and 0x80 <= self._buffer[-1] < 0xC0:
                    self._buffer.pop()
                if self._buffer:
                    self._buffer.pop()
                continue
            self._buffer.append(byte)
            # Checked byte by byte, so the verdict never depends on how reads split the input.
            if self._check_overflow(out):
                return

    def _check_overflow(self, out: list[Line]) -> bool:
        if len(self._buffer) <= self.max_line:
            return False
        out.append(Line(bytes(self._buffer[: self.max_line + 1]), overlong=True))
        self._buffer.clear()
        self._discarding = True
        return True


# ------------------------------------------------------------------------------------------
# Requests
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One parsed request line."""

    id: str
    command: str
    """Canonical command name (a value of `COMMANDS`)."""
    caption: str = ""
    """`gen`: the caption exactly as sent (the engine normalises it)."""
    n: int = 1
    seed: int | None = None
    """`gen`: None when the operator gave none (the service picks and reports one)."""
    strict: bool = False
    """`gen`: refuse (OFF_DOMAIN) rather than draw a caption that reads as off-domain."""
    file: str = ""
    """`fetch`: the result's file name."""
    start: int = 0
    """`fetch`: first chunk index to send."""
    count: int | None = None
    """`fetch`: number of chunks to send (None: to the end)."""
    top_k: int | None = None
    """`find`: boxes to report (None: the bundle's `search.top_k`)."""
    checksummed: bool = False
    """Whether the line carried a (verified) checksum or signature."""
    link: int | None = None
    """The signed line's link id (None: unsigned); replies go out on `link | 0x80`."""


def parse_request(
    line: bytes,
    *,
    max_line: int = MAX_LINE,
    max_images: int = MAX_IMAGES,
    authenticated: bool = False,
) -> Request | None:
    """Parse one request line (terminator removed); None for a blank line (no reply is due).

    `authenticated`: `line` is the body of a verified signed line (`signing.split_signed`), so it
    has no checksum of its own to look for. Raises `ProtocolError` with the first problem in the
    documented order.
    """
    if len(line) > max_line:
        raise ProtocolError(
            Code.LINE_TOO_LONG,
            f"line is {len(line)} bytes, the limit is {max_line}",
            guess_id(line),
        )
    line = line.strip(_WHITESPACE)
    if not line:
        return None
    guessed_id = guess_id(line)  # to address the errors found before the id is read
    if line.startswith(b"$"):
        line = line[1:]
    body, expected, digits = (line, None, b"") if authenticated else _split_checksum(line)
    if expected is not None:
        if expected < 0:
            raise ProtocolError(
                Code.BAD_CHECKSUM,
                f"checksum {_printable(digits.decode('latin-1'))} is not two hex digits",
                guessed_id,
            )
        actual = checksum(body)
        if actual != expected:
            raise ProtocolError(
                Code.BAD_CHECKSUM,
                f"checksum mismatch: line says {expected:02X}, its bytes give {actual:02X}",
                guessed_id,
            )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError(
            Code.BAD_UTF8,
            f"byte 0x{body[err.start]:02x} at offset {err.start} is not UTF-8",
            guessed_id,
        ) from None
    first, rest = _split_token(text)
    if not ID_TEXT_RE.fullmatch(first):
        raise ProtocolError(
            Code.BAD_ID,
            f"line must start with a request id (1-16 of A-Z a-z 0-9 _ -), got {_printable(first)};"
            " e.g. '1 gen survivor on rubble'",
        )
    request_id = first
    word, args = _split_token(rest)
    if first.lower() in COMMANDS and word.lower() not in COMMANDS:
        # The commonest typing mistake in a terminal: the id was forgotten.
        raise ProtocolError(
            Code.BAD_ID,
            f"missing request id before {_printable(first)}; e.g. '1 {first} ...'",
        )
    if not word:
        raise ProtocolError(Code.UNKNOWN_COMMAND, "no command after the id; try 'help'", request_id)
    command = COMMANDS.get(word.lower())
    if command is None:
        raise ProtocolError(
            Code.UNKNOWN_COMMAND,
            f"unknown command {_printable(word)}; known: {', '.join(sorted(set(COMMANDS)))}",
            request_id,
        )
    checksummed = authenticated or expected is not None
    if command in ("gen", "understand", "find"):
        return _parse_gen(request_id, args, max_images, checksummed, command)
    if command == "fetch":
        return _parse_fetch(request_id, args, checksummed)
    if args.strip(" \t"):
        raise ProtocolError(
            Code.BAD_ARGS, f"{command} takes no arguments, got {_printable(args)}", request_id
        )
    return Request(id=request_id, command=command, checksummed=checksummed)


def _int_option(request_id: str, key: str, value: str, low: int, high: int) -> int:
    if value.isascii() and value.isdigit() and len(value) <= 20:
        number = int(value)
        if low <= number <= high:
            return number
    raise ProtocolError(
        Code.BAD_ARGS,
        f"{key} must be an integer {low}..{high}, got {_printable(value)}",
        request_id,
    )


def _options(
    request_id: str, tokens: list[str], known: Mapping[str, tuple[int, int]]
) -> tuple[dict[str, int], list[str]]:
    """Leading key=value tokens → options; returns them and the remaining tokens."""
    options: dict[str, int] = {}
    rest = list(tokens)
    while rest:
        match = _OPTION_RE.fullmatch(rest[0])
        if not match:
            break
        key = match.group(1).lower()
        if key not in known:
            raise ProtocolError(
                Code.BAD_ARGS,
                f"unknown option {_printable(key)} (known: {', '.join(known)}; "
                "put -- before a caption that starts with 'word=')",
                request_id,
            )
        if key in options:
            raise ProtocolError(Code.BAD_ARGS, f"option {key} given twice", request_id)
        low, high = known[key]
        options[key] = _int_option(request_id, key, match.group(2), low, high)
        rest.pop(0)
    return options, rest


def _parse_gen(
    request_id: str, args: str, max_images: int, checksummed: bool, command: str = "gen"
) -> Request:
    # Options are leading key=value tokens (up to an optional --); the caption is the rest of the
    # line as sent.
    leading = []
    caption = args
    while True:
        token, rest = _split_token(caption)
        if not token or not (token == "--" or _OPTION_RE.fullmatch(token)):
            break
        caption = rest
        if token == "--":
            break
        leading.append(token)
    known: dict[str, tuple[int, int]] = {}
    if command == "gen":
        known = {"n": (1, max_images), "seed": (0, MAX_SEED), "strict": (0, 1)}
    elif command == "find":
        known = {"k": (1, MAX_FIND_BOXES)}
    options, _ = _options(request_id, leading, known)
    try:
        tokenizer.encode(caption)
    except tokenizer.CaptionError as err:
        raise ProtocolError(Code.BAD_CAPTION, str(err), request_id) from None
    return Request(
        id=request_id,
        command=command,
        caption=caption,
        n=options.get("n", 1),
        seed=options.get("seed"),
        strict=bool(options.get("strict", 0)),
        top_k=options.get("k"),
        checksummed=checksummed,
    )


def _parse_fetch(request_id: str, args: str, checksummed: bool) -> Request:
    tokens = [t for t in re.split(r"[ \t]+", args) if t]
    if not tokens:
        raise ProtocolError(
            Code.BAD_ARGS, "fetch needs a file name (from a done reply)", request_id
        )
    name = tokens[0]
    if not FILE_RE.fullmatch(name):
        raise ProtocolError(
            Code.BAD_ARGS,
            f"file {_printable(name)} is not a result name (letters, digits, '_', '.', '-';"
            " no directories)",
            request_id,
        )
    options, rest = _options(
        request_id, tokens[1:], {"from": (0, 2**31 - 1), "count": (1, 2**31 - 1)}
    )
    if rest:
        raise ProtocolError(
            Code.BAD_ARGS,
            f"unexpected {_printable(' '.join(rest))} after fetch options",
            request_id,
        )
    return Request(
        id=request_id,
        command="fetch",
        file=name,
        start=options.get("from", 0),
        count=options.get("count"),
        checksummed=checksummed,
    )


def format_request(
    request_id: str,
    command: str,
    *,
    caption: str = "",
    n: int | None = None,
    seed: int | None = None,
    file: str = "",
    start: int | None = None,
    count: int | None = None,
    strict: bool = False,
    top_k: int | None = None,
    signer: signing.Signer | None = None,
) -> bytes:
    """A request line with CR LF as a program sends it: signed by `signer` when given (the robot
    has a key), else checksummed."""
    if not ID_RE.fullmatch(request_id.encode("ascii", "replace")):
        raise ValueError(f"bad request id {request_id!r}")
    parts = [request_id, command]
    if command == "gen":
        parts += [f"n={n}"] if n is not None else []
        parts += [f"seed={seed}"] if seed is not None else []
        parts += ["strict=1"] if strict else []
        # Newlines would end the request early; the tokenizer turns them into spaces anyway.
        parts += ["--", " ".join(caption.split())]
    elif command == "understand":
        parts += ["--", " ".join(caption.split())]
    elif command == "find":
        parts += [f"k={top_k}"] if top_k is not None else []
        parts += ["--", " ".join(caption.split())]
    elif command == "fetch":
        parts.append(file)
        parts += [f"from={start}"] if start is not None else []
        parts += [f"count={count}"] if count is not None else []
    body = " ".join(parts)
    if signer is not None:
        return signer.sign(body) + b"\r\n"
    return (with_checksum(body) + "\r\n").encode("utf-8")


# ------------------------------------------------------------------------------------------
# Replies
# ------------------------------------------------------------------------------------------


def encode_value(value: object) -> str:
    """A field value percent-encoded so it holds no space, '*', ',' or non-ASCII character.

    A list or tuple becomes comma-separated encoded items.
    """
    if isinstance(value, list | tuple):
        return ",".join(encode_value(v) for v in value)
    # '=' may stay: a field splits at its first '='. Base64 passes through unchanged.
    # '?' too: the read-back's "not stated" stays readable in a terminal (colour:?:0.91).
    return quote(str(value), safe="/:.-_~@+=?")


def _ascii_line(text: str) -> str:
    # Control characters would break the line or the operator's terminal; non-ASCII becomes \x...
    cleaned = "".join(c if c >= " " and c != "\x7f" else " " for c in text)
    return cleaned.encode("ascii", "backslashreplace").decode("ascii")


def reply_body(kind: str, request_id: str, fields: Sequence[tuple[str, object]] = ()) -> bytes:
    """The ASCII body `kind id key=value ...` of an ack, done or data line (no framing)."""
    body = " ".join([kind, request_id, *(f"{k}={encode_value(v)}" for k, v in fields)])
    return _ascii_line(body).encode("ascii")


def text_body(kind: str, request_id: str, text: str) -> bytes:
    """The ASCII body `kind id free text` of an err or info line (no framing)."""
    return _ascii_line(f"{kind} {request_id} {text}").encode("ascii")


def error_body(request_id: str, code: str, message: str) -> bytes:
    """The body `err id CODE message`."""
    return text_body("err", request_id, f"{code} {message}")


def frame(body: bytes) -> bytes:
    """`$body*HH` CR LF: a checksummed line (the unsigned framing)."""
    return b"$" + body + b"*%02X\r\n" % checksum(body)


def format_reply(kind: str, request_id: str, fields: Sequence[tuple[str, object]] = ()) -> bytes:
    """A `$kind id key=value ...*HH` CR LF line (ack, done, data)."""
    return frame(reply_body(kind, request_id, fields))


def format_text(kind: str, request_id: str, text: str) -> bytes:
    """A `$kind id free text*HH` CR LF line (err, info)."""
    return frame(text_body(kind, request_id, text))


def format_error(request_id: str, code: str, message: str) -> bytes:
    """An `$err id CODE message*HH` line."""
    return frame(error_body(request_id, code, message))


@dataclass(frozen=True)
class Reply:
    """One reply line as a program sees it."""

    kind: str
    """ack, done, err, data or info."""
    id: str
    fields: dict[str, str] = field(default_factory=dict)
    """ack/done/data: key → value as sent (percent-encoded); read them with `get` and `values`."""
    code: str = ""
    """err: the error code."""
    text: str = ""
    """err: the message; info: the line's text."""

    def get(self, key: str, default: str = "") -> str:
        """A field's decoded value."""
        return unquote(self.fields[key]) if key in self.fields else default

    def values(self, key: str) -> list[str]:
        """A comma-separated list field, decoded item by item."""
        raw = self.fields.get(key, "")
        return [unquote(v) for v in raw.split(",")] if raw else []


class ReplyError(ValueError):
    """A reply line that is corrupt (bad or missing checksum) or not in the grammar."""


class SignedReplyError(ReplyError):
    """A signed reply reached a reader that has no key to check it."""


def parse_reply(line: bytes, guard: signing.LinkGuard | None = None) -> Reply:
    """Verify a reply line's checksum (no `guard`) or signature (`guard`: tag, link direction,
    fresh timestamp, then remembered) and split it; raises `ReplyError`."""
    line = line.strip(b"\r\n \t")
    if not line.startswith(b"$"):
        raise ReplyError(f"reply does not start with '$': {line[:40]!r}")
    if guard is not None:
        try:
            body = guard.accept(line[1:]).body
        except signing.AuthError as err:
            raise ReplyError(f"reply refused ({err.reason}): {line[:40]!r}") from None
    else:
        body, expected, _ = _split_checksum(line[1:])
        if expected is None:
            if signing.split_signed(line[1:]) is not None:
                raise SignedReplyError("the robot signs its replies: this side needs its key")
            raise ReplyError(f"reply has no checksum: {line[:40]!r}")
        if expected != checksum(body):
            raise ReplyError(f"reply checksum mismatch: {line[:40]!r}")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ReplyError(f"reply is not ASCII: {line[:40]!r}") from None
    parts = text.split(" ", 2)
    if len(parts) < 2:
        raise ReplyError(f"reply has no id: {text[:40]!r}")
    kind, request_id = parts[0], parts[1]
    rest = parts[2] if len(parts) > 2 else ""
    if kind == "err":
        code, _, message = rest.partition(" ")
        return Reply(kind=kind, id=request_id, code=code, text=message)
    if kind == "info":
        return Reply(kind=kind, id=request_id, text=rest)
    fields = {}
    for token in rest.split():
        key, sep, value = token.partition("=")
        if not sep:
            raise ReplyError(f"reply field {token[:20]!r} is not key=value")
        fields[key] = value
    return Reply(kind=kind, id=request_id, fields=fields)


# ------------------------------------------------------------------------------------------
# Fetch chunks
# ------------------------------------------------------------------------------------------


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Number of chunks a file of `size` bytes is sent in."""
    return -(-size // chunk_size)


def data_line(request_id: str, index: int, chunk: bytes) -> bytes:
    """`$data id i=K crc=<8 hex> b64=...*HH` CR LF for one chunk (CRC-32 of the raw bytes)."""
    return frame(data_body(request_id, index, chunk))


def data_body(request_id: str, index: int, chunk: bytes) -> bytes:
    """The body `data id i=K crc=<8 hex> b64=...` of one chunk's line."""
    return reply_body(
        "data",
        request_id,
        [
            ("i", index),
            ("crc", f"{binascii.crc32(chunk):08x}"),
            ("b64", base64.b64encode(chunk).decode("ascii")),
        ],
    )


def decode_chunk(reply: Reply) -> tuple[int, bytes]:
    """(index, bytes) of a `data` reply whose CRC-32 matches; raises `ReplyError` otherwise."""
    try:
        index = int(reply.get("i"))
        crc = int(reply.get("crc"), 16)
        chunk = base64.b64decode(reply.get("b64"), validate=True)
    except (KeyError, ValueError, binascii.Error) as err:
        raise ReplyError(f"malformed data reply: {err}") from None
    if binascii.crc32(chunk) != crc:
        raise ReplyError(f"chunk {index}: CRC-32 mismatch")
    return index, chunk


def chunks(
    data: bytes, start: int = 0, chunk_size: int = CHUNK_SIZE
) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of `data`'s chunks from index `start`."""
    for index in range(start, chunk_count(len(data), chunk_size)):
        yield index, data[index * chunk_size : (index + 1) * chunk_size]
