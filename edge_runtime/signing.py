"""Signed operator lines: a shared key, a link id, a monotonic timestamp and a truncated HMAC.

The design follows MAVLink 2 message signing (docs/PROTOCOL.md § Signed lines), adapted to a
text line protocol. A signed line is the checksummed line with 28 more hex digits after the
checksum's `*`::

    $<body>*<LL><TTTTTTTTTTTT><SSSSSSSSSSSSSSSS>
             link  timestamp      tag

- `LL`: the link id, 0x00-0x7F for operator → robot lines; the robot answers link L on
  L | 0x80 and on 0xFF for lines it could not attribute to a link. The direction bit keeps a
  reply from ever being accepted as a request (and the other way round).
- `T…`: 48 bits, 10 µs units since 2015-01-01 00:00 UTC (MAVLink's epoch and unit), strictly
  increasing per link.
- `S…`: the first 64 bits of HMAC-SHA-256(key, everything between `$` and the tag). MAVLink
  keeps 48 bits to fit a binary frame; a text line pays two characters per byte anyway, and four
  more characters buy a 65,536-fold margin against forgery by trial.

The hash is stdlib `hmac`/`hashlib`: no dependency, constant-time comparison included. The
receiver keeps the last timestamp per link (`LinkGuard`) and refuses anything not newer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime import atomic

KEY_BYTES = 32
TAG_BYTES = 8
EPOCH_2015 = 1420070400
"""2015-01-01 00:00:00 UTC as a Unix time (MAVLink's signing epoch)."""
TICKS_PER_S = 100_000
"""Timestamp unit: 10 µs."""
MAX_TIMESTAMP = (1 << 48) - 1
STALE_WINDOW = 60 * TICKS_PER_S
"""A link never seen before is accepted when its timestamp is at most this much older than the
newest timestamp accepted on any link (MAVLink's one-minute rule)."""
REPLY_BIT = 0x80
"""Set in the link id of every robot → operator line."""
ANY_LINK = 0xFF
"""The link id of replies to lines that carried no valid link (unsigned, forged, broken)."""
MAX_OPERATOR_LINK = 0x7F
SIGNATURE_CHARS = 2 + 12 + 2 * TAG_BYTES
"""Hex digits after `*` on a signed line: link, timestamp, tag."""
CREDENTIAL_NAME = "operator-key"
"""The systemd credential name (`LoadCredential=operator-key:/etc/rescue-t2i/operator.key`)."""

_SIGNED_RE = re.compile(rb"\*([0-9A-Fa-f]{2})([0-9A-Fa-f]{12})([0-9A-Fa-f]{16})\Z")


class KeyFileError(Exception):
    """A key file that cannot be used; one line naming the file."""


class AuthError(Exception):
    """A line that fails authentication; `reason` is the short text of the `AUTH` error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Reasons, shared by the robot's error replies and the client's messages (and the docs' table).
UNSIGNED = "unsigned"
BAD_TAG = "bad signature"
STALE = "replayed or stale"
WRONG_DIRECTION = "wrong link direction"
NO_KEY = "robot has no key"


def now_ticks(clock: float | None = None) -> int:
    """The current time as a signing timestamp (10 µs since 2015-01-01 UTC)."""
    seconds = time.time() if clock is None else clock
    return max(0, min(MAX_TIMESTAMP, int((seconds - EPOCH_2015) * TICKS_PER_S)))


def tag(key: bytes, signed_text: bytes) -> str:
    """The 16 hex digits (upper case) of the truncated HMAC-SHA-256 of `signed_text`."""
    return hmac.new(key, signed_text, hashlib.sha256).digest()[:TAG_BYTES].hex().upper()


@dataclass(frozen=True)
class Signed:
    """The parts of a signed line."""

    body: bytes
    """The line between `$` and `*` (what the checksum would cover)."""
    link: int
    timestamp: int
    tag: str


def split_signed(line: bytes) -> Signed | None:
    """The signature parts of `line` (without `$` and terminator), or None when it has none."""
    match = _SIGNED_RE.search(line)
    if match is None:
        return None
    return Signed(
        body=line[: match.start()],
        link=int(match.group(1), 16),
        timestamp=int(match.group(2), 16),
        tag=match.group(3).decode("ascii"),
    )


def verify_tag(key: bytes, line: bytes, parts: Signed) -> bool:
    """Whether `parts.tag` is the tag of `line` (without `$`) under `key` (constant time)."""
    signed_text = line[: len(line) - 2 * TAG_BYTES]
    # Exact, upper case as sent: a line is accepted in exactly one spelling.
    return hmac.compare_digest(tag(key, signed_text), parts.tag)


def sign_body(key: bytes, body: str | bytes, link: int, timestamp: int) -> bytes:
    """`$<body>*<LL><T…><S…>` (no terminator) for a body of ASCII or UTF-8 text."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    if not 0 <= link <= 0xFF or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"link {link} or timestamp {timestamp} out of range")
    signed_text = raw + b"*%02X%012X" % (link, timestamp)
    return b"$" + signed_text + tag(key, signed_text).encode("ascii")


@dataclass
class Signer:
    """Signs outgoing lines on one link with strictly increasing timestamps."""

    key: bytes = field(repr=False)  # never in a log line
    link: int
    last: int = 0
    clock: Callable[[], float] | None = field(default=None, repr=False)
    """A Unix-time clock (tests); None: `time.time`."""

    def next_timestamp(self, floor: int = 0) -> int:
        """A timestamp newer than every one issued before and than `floor`."""
        now = now_ticks(self.clock() if self.clock is not None else None)
        self.last = min(MAX_TIMESTAMP, max(now, self.last + 1, floor + 1))
        return self.last

    def sign(self, body: str | bytes, link: int | None = None, floor: int = 0) -> bytes:
        """The signed line (no terminator), on `link` (default: this signer's link)."""
        return sign_body(self.key, body, self.link if link is None else link,
                         self.next_timestamp(floor))  # fmt: skip


class LinkGuard:
    """The receiver's memory: the last timestamp accepted per link id (MAVLink's replay rule).

    A line is accepted when its tag verifies and its timestamp is newer than the last one
    accepted on its link; on a link not seen before, when it is at most `STALE_WINDOW` older than
    the newest timestamp accepted on any link. `accept` raises `AuthError` otherwise.
    """

    def __init__(
        self, key: bytes, *, links: Collection[int] = range(MAX_OPERATOR_LINK + 1)
    ) -> None:
        self.key = key
        self.links = links
        self.last: dict[int, int] = {}
        self.high_water = 0
        """The newest timestamp accepted on any link (also the floor for new links)."""

    def check(self, line: bytes) -> Signed:
        """Verify a line (without `$` and terminator) without recording it; raises `AuthError`."""
        parts = split_signed(line)
        if parts is None:
            raise AuthError(UNSIGNED)
        if not verify_tag(self.key, line, parts):
            raise AuthError(BAD_TAG)
        if parts.link not in self.links:
            raise AuthError(WRONG_DIRECTION)
        last = self.last.get(parts.link)
        if last is not None:
            if parts.timestamp <= last:
                raise AuthError(STALE)
        elif parts.timestamp + STALE_WINDOW < self.high_water:
            raise AuthError(STALE)
        return parts

    def accept(self, line: bytes) -> Signed:
        """`check`, then remember the line's timestamp for its link."""
        parts = self.check(line)
        self.last[parts.link] = parts.timestamp
        self.high_water = max(self.high_water, parts.timestamp)
        return parts

    # -- persistence: a restart must not reopen the replay window -------------------------------

    def to_json(self) -> str:
        """The state as a small JSON document."""
        return json.dumps({"version": 1, "last": {str(k): v for k, v in self.last.items()}})

    def load_json(self, text: str, *, margin: int = 2 * TICKS_PER_S) -> None:
        """Restore saved state. Lines accepted after the last save are not in it, so every link's
        floor is raised by `margin` (the save interval and some): their replays stay refused."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not a link-state file (version 1)")
        last = data.get("last")
        if not isinstance(last, dict):
            raise ValueError("link-state file has no 'last' object")
        for link_text, value in last.items():
            link = int(link_text)
            if link not in self.links or not isinstance(value, int):
                raise ValueError(f"link-state entry {link_text!r} is not a link timestamp")
            self.last[link] = min(MAX_TIMESTAMP, value + margin)
        if self.last:
            self.high_water = max(self.last.values())


# ------------------------------------------------------------------------------------------
# Key files
# ------------------------------------------------------------------------------------------


def generate_key() -> bytes:
    """A fresh 32-byte key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def key_text(key: bytes) -> str:
    """The key file's content: 64 lower-case hex digits and a newline (copyable by hand)."""
    return key.hex() + "\n"


def write_key_file(path: Path, key: bytes, *, force: bool = False) -> None:
    """Write `key` to `path` with mode 0600, atomically (temp file + rename); refuses to
    replace an existing file unless `force`. Raises `KeyFileError` naming the path."""
    if path.exists() and not force:
        raise KeyFileError(f"{path}: exists; pass --force to replace it (then both ends need it)")
    try:
        with atomic.atomic_path(path) as tmp:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(tmp, flags, 0o600)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                os.write(fd, key_text(key).encode("ascii"))
            finally:
                os.close(fd)
    except OSError as err:
        raise KeyFileError(f"cannot write key file {path}: {err.strerror or err}") from None


def read_key_file(path: Path, *, private: bool = True) -> bytes:
    """The 32-byte key in `path` (64 hex digits); with `private`, refuses a file others may
    read or write. Raises `KeyFileError` naming the file and the problem."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise KeyFileError(f"key file {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path}: not a regular file")
        if private and info.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it; "
                f"chmod 600 {path}"
            )
        raw = os.read(fd, 4 * KEY_BYTES + 1)
    finally:
        os.close(fd)
    text = raw.decode("ascii", "replace").strip()
    if len(text) != 2 * KEY_BYTES or not re.fullmatch(r"[0-9A-Fa-f]+", text):
        raise KeyFileError(
            f"key file {path}: expected {2 * KEY_BYTES} hex digits (from rescue-edge keygen)"
        )
    return bytes.fromhex(text)


def credential_path() -> Path | None:
    """The systemd credential's path when the unit loaded one (`LoadCredential=`), else None."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / CREDENTIAL_NAME
    return path if path.exists() else None
