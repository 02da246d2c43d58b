"""The serial service: operator requests in, images on disk and replies out, whatever the link does.

One main thread runs an event loop over the serial port (select on its descriptor and on a wake-up
pipe) and never blocks: it frames and parses lines, answers ping/status/help at once, queues
`gen` requests for a worker thread, streams `fetch` chunks only as fast as the port drains, pings
systemd's watchdog and reopens the port when it is lost. The worker thread runs the engine and
writes files. Keeping every port read and write in one thread is what lets a stalled or unplugged
link never stall the watchdog or a SIGTERM.

With a key, every line must be signed (`edge_runtime.signing`); every resource a line can
consume is budgeted: replies to lines that fail before authentication share a small slice of the
link's byte rate and are coalesced when they burst, the outbox is bounded, log lines for bad input
are rate-limited, and the output directory has a disk budget.

Protocol: `edge_runtime.protocol` and docs/PROTOCOL.md (§ Signed lines, § Fair use, § Disk budget).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import queue
import secrets
import select
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import serial

from edge_runtime import protocol, readback, signing
from edge_runtime.engine import Engine
from edge_runtime.find import FrameSource, FrameSourceError, find_in_frame, overlay
from edge_runtime.images import (
    NO_SUCH_IMAGE,
    Budget,
    OutputDir,
    OutputError,
    Usage,
    encode_png,
    safe_tag,
    write_atomic,
)
from edge_runtime.protocol import Code, ProtocolError, Request
from edge_runtime.sdnotify import Notifier
from edge_runtime.stdio import BadLine
from edge_runtime.tokenizer import CaptionError

log = logging.getLogger(__name__)

_OUT_HIGH = 64 << 10
"""Stop reading requests while this many reply bytes wait for the link (backpressure)."""
_OUT_LOW = 1 << 10
"""Fetch chunks are produced only while fewer reply bytes than this wait, here and in the
driver, and no other reply is queued: a ping waits behind at most about one chunk."""
_OUTBOX_MAX = 256 << 10
"""Reply bytes queued beyond `_pending`; more are dropped and counted (never unbounded)."""
_MAX_TRANSFERS = 4
_JUNK_BURST_S = 2.0
"""The junk reply bucket holds this many seconds of its share (a short burst answered at once)."""
_LINK_STATE_SAVE_S = 1.0
"""Save the link timestamps at most this often (`signing.LinkGuard.load_json`'s margin covers
lines accepted between saves)."""


@dataclass(frozen=True)
class ServiceConfig:
    """How the service talks and where it writes."""

    port: str
    """Serial device path (re-opened by name after an unplug, so a udev symlink keeps working)
    or a pyserial URL (socket://host:port, rfc2217://..., loop://)."""
    out_dir: Path
    baud: int = 115200
    max_line: int = protocol.MAX_LINE
    max_images: int = protocol.MAX_IMAGES
    queue_size: int = 4
    """`gen` requests waiting for the worker beyond the one it runs; more get BUSY."""
    chunk_size: int = protocol.CHUNK_SIZE
    reconnect_max_s: float = 2.0
    """Longest wait between attempts to reopen a lost port (backoff doubles from 50 ms)."""
    stop_timeout_s: float = 15.0
    """After SIGTERM, the longest wait for the current request's replies to drain."""
    durable: bool = True
    """fsync each image before renaming it into place (survives a power cut)."""
    key: bytes | None = field(default=None, repr=False)
    """The shared signing key; None: insecure (lines and replies unsigned)."""
    link_state: Path | None = None
    """Where the last timestamp of each link is kept across restarts (None: memory only)."""
    budget: Budget = field(default_factory=Budget)
    delete_after_fetch: bool = False
    """Delete a result once all of its chunks were sent."""
    frames: FrameSource | None = None
    """Where `find` takes its frame (a folder's newest image, a camera): named at start, never
    over the link. None: `find` answers NO_SEARCH."""
    junk_share: float | None = 0.05
    """Share of the link's byte rate (baud / 10) for replies to lines that fail before they are
    authenticated (all failing lines when insecure); None: unlimited."""


@dataclass
class Counters:
    """What `status` reports."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    busy: int = 0
    images: int = 0
    fetches: int = 0
    connects: int = 0
    reconnects: int = 0
    link_losses: int = 0
    dropped_replies: int = 0
    rejected: int = 0
    """Lines that failed authentication (unsigned, forged, replayed, stale)."""
    coalesced: int = 0
    """Bad lines answered by a shared (coalesced) error instead of their own."""
    pruned: int = 0
    """Results deleted to keep the output directory within its budget."""
    last_error: str = ""
    """Code of the last error reply (or LINK for a lost port); empty when none yet."""
    last_error_message: str = ""
    last_error_id: str = ""
    last_error_time: float = 0.0


@dataclass
class _Job:
    request: Request
    seed: int
    received: float


@dataclass
class _Transfer:
    request_id: str
    name: str
    data: bytes
    next_index: int
    end: int
    """One past the last chunk index to send."""
    first: int = 0
    total: int = 0
    link: int | None = None


@dataclass
class _Outgoing:
    """A reply body waiting to be framed; it is signed when it enters the write buffer, so
    timestamps increase in the order the bytes go out."""

    body: bytes
    link: int | None
    """The request's link (None: unsigned or unattributable)."""


class _TokenBucket:
    """`rate` bytes per second, at most `burst` saved up (six lines; no library needed)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, cost: float, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class _LogLimiter:
    """At most `burst` log lines per `period` seconds; the next line reports what was skipped,
    so a 2-byte line can never buy a log line. (The stdlib's logging has no rate limit, and a
    `logging.Filter` could not count what it drops into the next record.)"""

    def __init__(self, clock: Callable[[], float], burst: int = 5, period: float = 10.0) -> None:
        self.clock, self.burst, self.period = clock, burst, period
        self.window_start = -period
        self.in_window = 0
        self.suppressed = 0

    def log(self, level: int, message: str, *args: object) -> None:
        now = self.clock()
        if now - self.window_start >= self.period:
            self.window_start, self.in_window = now, 0
        if self.in_window >= self.burst:
            self.suppressed += 1
            return
        self.in_window += 1
        if self.suppressed:
            message += " (%d similar lines suppressed)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        log.log(level, message, *args)


@dataclass
class _Health:
    busy_since: float | None = None
    """When the worker started its current job (None: idle); the watchdog checks it."""
    inflight: int = 0
    """`gen` jobs accepted and not yet finished (queued or running)."""


class Link:
    """The serial port, opened by name and reopened with backoff after it is lost."""

    def __init__(self, port: str, baud: int, reconnect_max_s: float) -> None:
        self.port_name = port
        self.baud = baud
        self.reconnect_max_s = reconnect_max_s
        self.port: serial.SerialBase | None = None
        self.next_attempt = 0.0
        self._delay = 0.05
        self._warned = False

    @property
    def is_open(self) -> bool:
        """Whether the port is open."""
        return self.port is not None

    def try_open(self, now: float) -> bool:
        """One attempt to open the port; on failure schedule the next with backoff."""
        try:
            port = serial.serial_for_url(
                self.port_name, baudrate=self.baud, timeout=0, write_timeout=0, do_not_open=True
            )
            if isinstance(port, serial.Serial):
                port.exclusive = True  # a second service on the same radio would garble both
            port.open()
            if isinstance(port, serial.Serial):
                _exclusive(port)
        except (serial.SerialException, OSError, ValueError) as err:
            if not self._warned:
                log.warning("serial %s: cannot open (%s); retrying", self.port_name, err)
                self._warned = True
            self.next_attempt = now + self._delay
            self._delay = min(self._delay * 2, self.reconnect_max_s)
            return False
        self.port = port
        self._delay = 0.05
        self._warned = False
        log.info("serial %s: open at %d baud", self.port_name, self.baud)
        return True

    def close(self) -> None:
        """Close the port (errors ignored: it may already be gone)."""
        if self.port is not None:
            if isinstance(self.port, serial.Serial) and self.port.is_open:
                # TIOCEXCL outlives our descriptor while anything else holds the tty open:
                # lift it, or this service's own restart would get EBUSY.
                with contextlib.suppress(Exception):
                    fcntl.ioctl(self.port.fileno(), getattr(termios, "TIOCNXCL", 0x540D))
            with contextlib.suppress(Exception):
                self.port.close()
            self.port = None

    def fileno(self) -> int | None:
        """The descriptor of a local serial device, or None for ports that are polled."""
        # Only pyserial's native class reads and writes that descriptor directly; URL handlers
        # (rfc2217://, socket://, loop://) add their own framing or threads, so they are polled.
        if isinstance(self.port, serial.Serial) and self.port.is_open:
            return self.port.fileno()
        return None

    def write_some(self, data: bytearray) -> int:
        """Write what the port takes now without blocking; returns the byte count."""
        fd = self.fileno()
        if fd is None:
            return self.port.write(bytes(data)) or 0  # type: ignore[union-attr]
        try:
            # os.write, not Serial.write: with write_timeout=0 pyserial retries EAGAIN in a loop.
            return os.write(fd, data)
        except BlockingIOError:
            return 0


def _exclusive(port: serial.Serial) -> None:
    """TIOCEXCL: the kernel refuses any further open of the tty (EBUSY) while it is ours.

    pyserial's `exclusive` is an advisory flock that another process simply ignores, and then
    it can inject replies and read requests. Root (CAP_SYS_ADMIN) still gets in.
    """
    request = getattr(termios, "TIOCEXCL", None)
    if request is None:  # pragma: no cover - every Linux and BSD has it
        return
    try:
        fcntl.ioctl(port.fileno(), request)
    except OSError as err:  # e.g. not a tty at all (a FIFO in a test rig)
        log.warning("serial %s: TIOCEXCL refused (%s); others may open it", port.port, err)


class Service:
    """The serial request/reply service around one `Engine`."""

    def __init__(
        self,
        engine: Engine,
        config: ServiceConfig,
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.config = config
        self.notifier = notifier or Notifier(None)
        self.clock = clock
        self.output = OutputDir(config.out_dir, durable=config.durable)
        self.counters = Counters()
        self.started = clock()
        self.link = Link(config.port, config.baud, config.reconnect_max_s)
        self._framer = protocol.LineFramer(config.max_line)
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=config.queue_size)
        self._counter_lock = threading.Lock()
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_bytes = 0
        self._outbox_lock = threading.Lock()
        self.guard = signing.LinkGuard(config.key) if config.key is not None else None
        self._signer = (
            signing.Signer(config.key, signing.ANY_LINK) if config.key is not None else None
        )
        self._link_state_saved = clock()
        self._link_state_dirty = False
        self._load_link_state()
        share = config.junk_share
        rate = float("inf") if share is None else config.baud / 10 * share
        self._junk_bucket = _TokenBucket(rate, rate * _JUNK_BURST_S, clock())
        self._junk_pending = 0
        self._junk_last = ("", "")
        self._bad_input_log = _LogLimiter(clock)
        self._usage_lock = threading.Lock()
        self._usage = Usage(0, 0, 0, 0)
        self._pending = bytearray()
        self._transfers: deque[_Transfer] = deque()
        self._health = _Health()
        self._stop = threading.Event()
        self._draining = False
        self._stuck_reported = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._worker = threading.Thread(target=self._work, name="rescue-edge-worker", daemon=True)
        # Opened on the first `find` and kept open (a camera costs up to seconds to open); closed
        # when `run` ends.
        self._frames = config.frames.open_latest() if config.frames is not None else None
        try:
            self.output.ensure()
        except OutputError as err:
            # Not fatal: the directory may appear (a mount) or be fixed; each gen reports it.
            log.warning("%s", err)
        self._refresh_usage()
        if self.guard is None:
            log.warning("no key: lines and replies are NOT authenticated (--insecure)")

    # -- control --------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does): finish the current request, then return."""
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def run(self) -> int:
        """Serve until `request_stop`; returns the exit status (0)."""
        self._worker.start()
        # One attempt before READY: when the device is there, READY means the link is up too.
        self._connect(self.clock())
        link = "up" if self.link.is_open else "waiting for the device"
        self.notifier.ready(
            f"serving {self.config.port} ({link}), precision {self.engine.precision}"
        )
        drain_deadline = float("inf")
        try:
            while True:
                now = self.clock()
                if self._stop.is_set() and not self._draining:
                    drain_deadline = now + self.config.stop_timeout_s
                    self._begin_drain()
                if self._draining and self._drained():
                    break
                if now > drain_deadline:
                    log.warning("stop: replies still pending after %.0f s; exiting anyway",
                                self.config.stop_timeout_s)  # fmt: skip
                    break
                if not self.link.is_open and now >= self.link.next_attempt:
                    self._connect(now)
                self._watchdog(now)
                self._step(now)
                self._save_link_state(now)
        finally:
            self._jobs_shutdown()
            self._worker.join(timeout=self.config.stop_timeout_s)
            if self._frames is not None:
                self._frames.close()
            self.link.close()
            self._save_link_state(self.clock(), force=True)
            os.close(self._wake_r)
            os.close(self._wake_w)
            log.info("stopped: %s", self.status_fields())
        return 0

    def _begin_drain(self) -> None:
        log.info("stop requested: finishing the current request")
        self.notifier.stopping()
        self._draining = True
        # Requests accepted but not started are refused, so their senders know to resend.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                with self._counter_lock:
                    self._health.inflight -= 1
                self._error(
                    job.request.id, Code.SHUTDOWN, "service stopping; request not run",
                    job.request.link,
                )  # fmt: skip
        while len(self._transfers) > 1:
            transfer = self._transfers.pop()
            self._error(
                transfer.request_id, Code.SHUTDOWN, "service stopping; fetch not run",
                transfer.link,
            )  # fmt: skip
        self._jobs_shutdown()

    def _jobs_shutdown(self) -> None:
        with contextlib.suppress(queue.Full):
            self._jobs.put_nowait(None)

    def _drained(self) -> bool:
        with self._counter_lock:
            worker_idle = self._health.inflight == 0 or not self._worker.is_alive()
        with self._outbox_lock:
            outbox_empty = not self._outbox
        return (
            worker_idle
            and not self._transfers
            and outbox_empty
            and (not self._pending or not self.link.is_open)
        )

    def _connect(self, now: float) -> None:
        if self.link.try_open(now):
            self._framer = protocol.LineFramer(self.config.max_line)
            with self._counter_lock:
                if self.counters.connects:
                    self.counters.reconnects += 1
                self.counters.connects += 1

    def _lost(self, err: Exception) -> None:
        log.warning("serial %s: link lost (%s); reconnecting", self.config.port, err)
        self.link.close()
        self.link.next_attempt = self.clock()
        with self._outbox_lock:
            dropped = len(self._outbox) + (1 if self._pending else 0)
            self._outbox.clear()
            self._outbox_bytes = 0
        self._pending.clear()
        for transfer in self._transfers:
            log.info("fetch %s by %s cut at chunk %d", transfer.name, transfer.request_id,
                     transfer.next_index)  # fmt: skip
        self._transfers.clear()
        with self._counter_lock:
            self.counters.link_losses += 1
            self.counters.dropped_replies += dropped
            self.counters.last_error = "LINK"
            self.counters.last_error_message = str(err)
            self.counters.last_error_id = protocol.NO_ID
            self.counters.last_error_time = self.clock()

    def _watchdog(self, now: float) -> None:
        if not self.notifier.watchdog_due(now):
            return
        busy_since = self._health.busy_since
        limit = max(2 * self.notifier.watchdog_interval_s, 1.0)
        stuck = busy_since is not None and now - busy_since > limit
        if self._worker.is_alive() and not stuck:
            self.notifier.watchdog(now)
            self._stuck_reported = False
        elif not self._stuck_reported:
            # systemd restarts a service that misses its pings: that is the point.
            self._stuck_reported = True
            log.error("worker hung (busy %.1f s) or dead: withholding watchdog pings",
                      now - busy_since if busy_since is not None else 0.0)  # fmt: skip

    # -- event loop -----------------------------------------------------------------------------

    def _timeout(self, now: float) -> float:
        timeout = 0.5
        if self.notifier.watchdog_interval_s:
            timeout = min(timeout, self.notifier.watchdog_interval_s / 2)
        if not self.link.is_open:
            timeout = min(timeout, max(0.0, self.link.next_attempt - now))
        return timeout

    def _step(self, now: float) -> None:
        """Wait for the port, the worker or a signal (bounded by the next timer), then act."""
        self._flush_junk(now)
        self._take_outbox()
        self._feed_transfers()
        fd = self.link.fileno()
        reading = self.link.is_open and len(self._pending) < _OUT_HIGH
        writing = self.link.is_open and bool(self._pending)
        rlist = [self._wake_r] + ([fd] if fd is not None and reading else [])
        wlist = [fd] if fd is not None and writing else []
        timeout = self._timeout(now)
        if self.link.is_open and fd is None:
            timeout = min(timeout, 0.005)  # a port without a descriptor (loop://) is polled
        if self._junk_pending or (self._transfers and not writing):
            timeout = min(timeout, 0.02)  # a coalesced error or the next chunk is due soon
        try:
            readable, _, _ = select.select(rlist, wlist, [], timeout)
        except (OSError, ValueError) as err:  # the port's descriptor died under us
            self._lost(err)
            return
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        if not self.link.is_open:
            return
        try:
            if reading and (fd is None or fd in readable):
                data = self.link.port.read(4096)  # type: ignore[union-attr]
                if data:
                    self._on_bytes(data)
            self._take_outbox()
            if self._pending:
                del self._pending[: self.link.write_some(self._pending)]
        except (serial.SerialException, OSError) as err:
            self._lost(err)

    def _frame(self, item: _Outgoing) -> bytes:
        """The line for a reply body: signed on the request's reply link, or checksummed."""
        if self._signer is None or self.guard is None:
            return protocol.frame(item.body)
        link = signing.ANY_LINK if item.link is None else item.link | signing.REPLY_BIT
        # Never older than a line we accepted: the operator's clock may be ahead of ours.
        return self._signer.sign(item.body, link, floor=self.guard.high_water) + b"\r\n"

    def _take_outbox(self) -> None:
        with self._outbox_lock:
            while self._outbox and len(self._pending) < _OUT_HIGH:
                item = self._outbox.popleft()
                self._outbox_bytes -= len(item.body)
                self._pending += self._frame(item)

    def _send(self, body: bytes, link: int | None = None) -> None:
        """Queue a reply body for the link (from any thread); dropped while the link is down or
        when the outbox is full."""
        with self._outbox_lock:
            if self.link.is_open and self._outbox_bytes + len(body) <= _OUTBOX_MAX:
                self._outbox.append(_Outgoing(body, link))
                self._outbox_bytes += len(body)
            else:
                with self._counter_lock:
                    self.counters.dropped_replies += 1
        if threading.current_thread() is not threading.main_thread():
            self._wake()

    def _note_error(self, request_id: str, code: str, message: str) -> None:
        with self._counter_lock:
            self.counters.errors += 1
            if code == Code.BUSY:
                self.counters.busy += 1
            self.counters.last_error = code
            self.counters.last_error_message = message
            self.counters.last_error_id = request_id
            self.counters.last_error_time = self.clock()

    def _error(self, request_id: str, code: str, message: str, link: int | None = None) -> None:
        """An error for a request that was read (authenticated when there is a key)."""
        self._note_error(request_id, code, message)
        log.info("request %s: %s %s", request_id, code, message)
        self._send(protocol.error_body(request_id, code, message), link)

    # -- lines that fail before they are authenticated ------------------------------------------

    def _reject(self, request_id: str, code: str, message: str) -> None:
        """A line nobody vouches for: one short error, from the junk share of the link's byte
        rate; over the share, errors are counted and answered by one coalesced line later."""
        self._note_error(request_id, code, message)
        if code == Code.AUTH:
            with self._counter_lock:
                self.counters.rejected += 1
        self._bad_input_log.log(logging.INFO, "bad line (id %s): %s %s", request_id, code, message)
        if not self._junk_pending:
            body = protocol.error_body(request_id, code, message)
            if self._junk_bucket.take(self._reply_cost(body), self.clock()):
                self._send(body)
                return
        self._junk_pending += 1
        self._junk_last = (code, message)

    def _reply_cost(self, body: bytes) -> int:
        # '$', '*', CR LF and the signature or checksum digits.
        return len(body) + 4 + (signing.SIGNATURE_CHARS if self.guard is not None else 2)

    def _flush_junk(self, now: float) -> None:
        if not self._junk_pending:
            return
        code, message = self._junk_last
        body = protocol.error_body(
            protocol.NO_ID, code, f"{self._junk_pending} bad lines; last: {message}"
        )
        if self._junk_bucket.take(self._reply_cost(body), now):
            with self._counter_lock:
                self.counters.coalesced += self._junk_pending
            self._junk_pending = 0
            self._send(body)

    def _authenticate(self, data: bytes) -> Request | None:
        """The request in a framed line, or None when it was answered (or blank) already."""
        stripped = data.strip(b" \t")
        if not stripped:
            return None
        inner = stripped[1:] if stripped.startswith(b"$") else stripped
        if self.guard is None:
            if signing.split_signed(inner) is not None:
                self._reject(protocol.guess_id(data), Code.AUTH, signing.NO_KEY)
                return None
            try:
                return protocol.parse_request(
                    data, max_line=self.config.max_line, max_images=self.config.max_images
                )
            except ProtocolError as err:
                self._reject(err.request_id, err.code, err.message)
                return None
        try:
            parts = self.guard.accept(inner)
        except signing.AuthError as err:
            if err.reason == signing.UNSIGNED and self._unsigned_ping(data):
                return None
            self._reject(protocol.guess_id(data), Code.AUTH, err.reason)
            return None
        self._link_state_dirty = True
        try:
            request = protocol.parse_request(
                parts.body,
                max_line=self.config.max_line,
                max_images=self.config.max_images,
                authenticated=True,
            )
        except ProtocolError as err:
            self._error(err.request_id, err.code, err.message, parts.link)
            return None
        return None if request is None else dataclasses.replace(request, link=parts.link)

    def _unsigned_ping(self, data: bytes) -> bool:
        """Answer an unsigned `ping` (liveness from a bare terminal; it reveals nothing the
        radio's carrier does not): a bare signed `done`, from the junk share."""
        try:
            request = protocol.parse_request(data, max_line=self.config.max_line)
        except ProtocolError:
            return False
        if request is None or request.command != "ping":
            return False
        body = protocol.reply_body("done", request.id, [("cmd", "ping")])
        if self._junk_bucket.take(self._reply_cost(body), self.clock()):
            with self._counter_lock:
                self.counters.ok += 1
            self._send(body)
        return True

    # -- link state -----------------------------------------------------------------------------

    def _load_link_state(self) -> None:
        path = self.config.link_state
        if self.guard is None or path is None or not path.exists():
            return
        try:
            self.guard.load_json(path.read_text(encoding="ascii"))
        except (OSError, ValueError, UnicodeDecodeError) as err:
            # Starting without it reopens only the old-line replay window a save closes.
            log.warning("link state %s unreadable (%s); starting without it", path, err)

    def _save_link_state(self, now: float, *, force: bool = False) -> None:
        path = self.config.link_state
        if self.guard is None or path is None or not self._link_state_dirty:
            return
        if not force and now - self._link_state_saved < _LINK_STATE_SAVE_S:
            return
        try:
            write_atomic(path, self.guard.to_json().encode("ascii"), durable=self.config.durable)
        except OutputError as err:
            self._bad_input_log.log(logging.WARNING, "link state: %s", str(err))
        self._link_state_saved = now
        self._link_state_dirty = False

    # -- requests -------------------------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        for line in self._framer.feed(data):
            received = self.clock()
            with self._counter_lock:
                self.counters.requests += 1
            if line.overlong:
                self._reject(
                    protocol.guess_id(line.data),
                    Code.LINE_TOO_LONG,
                    f"line longer than {self.config.max_line} bytes; discarded up to the next "
                    "line end",
                )
                continue
            request = self._authenticate(line.data)
            if request is None:  # answered already, or blank
                continue
            try:
                self._dispatch(request, received)
            except Exception as err:  # a bug must cost one request, never the service
                log.exception("request %s failed", request.id)
                self._error(request.id, Code.INTERNAL, f"{type(err).__name__}: {err}", request.link)

    def _dispatch(self, request: Request, received: float) -> None:
        link = request.link
        if self._draining and request.command in ("gen", "fetch", "find"):
            self._error(
                request.id, Code.SHUTDOWN, "service stopping; send again after restart", link
            )
            return
        if request.command == "ping":
            self._done(request.id, [("cmd", "ping"), ("uptime_s", self._uptime())], link)
        elif request.command == "status":
            fields = self.status_fields()
            if fields["last_error"] != "none":
                # The message is for people: one readable line rather than a percent-encoded field.
                with self._counter_lock:
                    text = (
                        f"last error {fields['last_error_age_s']} s ago, request "
                        f"{self.counters.last_error_id}: {self.counters.last_error} "
                        f"{self.counters.last_error_message}"
                    )
                self._send(protocol.text_body("info", request.id, text), link)
            self._done(request.id, [("cmd", "status"), *fields.items()], link)
        elif request.command == "help":
            for text in protocol.HELP:
                self._send(
                    protocol.text_body(
                        "info", request.id, text.format(max_n=self.config.max_images)
                    ),
                    link,
                )
            self._done(request.id, [("cmd", "help")], link)
        elif request.command == "gen":
            self._queue_gen(request, received)
        elif request.command == "understand":
            self._understand(request)
        elif request.command == "find":
            if not self.engine.has_search:
                self._error(
                    request.id, Code.NO_SEARCH, "this robot's bundle has no frame scorer",
                    request.link,
                )  # fmt: skip
            elif self.config.frames is None:
                self._error(
                    request.id, Code.NO_SEARCH, "this robot was started without a frame source",
                    request.link,
                )  # fmt: skip
            else:
                self._queue_gen(request, received)
        elif request.command == "fetch":
            self._start_fetch(request)

    def _done(self, request_id: str, fields: list[tuple[str, Any]], link: int | None) -> None:
        with self._counter_lock:
            self.counters.ok += 1
        self._send(protocol.reply_body("done", request_id, fields), link)

    def _understand(self, request: Request) -> None:
        # Answered at once, not queued behind images: one text-encoder run (cached after) plus the
        # read-back, milliseconds, so the operator can check a caption before paying for a picture.
        try:
            understood = self.engine.understand(request.caption)
        except CaptionError as err:
            self._error(request.id, Code.BAD_CAPTION, str(err), request.link)
            return
        if understood is None:
            self._error(
                request.id, Code.NO_READBACK, "this robot's bundle has no read-back", request.link
            )
            return
        self._done(
            request.id, [("cmd", "understand"), *readback.reply_fields(understood)], request.link
        )

    def _queue_gen(self, request: Request, received: float) -> None:
        seed = (
            request.seed if request.seed is not None else secrets.randbelow(protocol.MAX_SEED + 1)
        )
        try:
            with self._counter_lock:
                self._jobs.put_nowait(_Job(request, seed, received))
                ahead = self._health.inflight
                self._health.inflight += 1
        except queue.Full:
            self._error(
                request.id,
                Code.BUSY,
                f"queue full ({self.config.queue_size} waiting); send again shortly",
                request.link,
            )
            return
        fields: list[tuple[str, Any]] = [("cmd", "find"), ("ahead", ahead)]
        if request.command == "gen":
            fields = [("cmd", "gen"), ("n", request.n), ("seed", seed), ("ahead", ahead)]
        self._send(
            protocol.reply_body("ack", request.id, fields),
            request.link,
        )

    def _start_fetch(self, request: Request) -> None:
        link = request.link
        if len(self._transfers) >= _MAX_TRANSFERS:
            self._error(
                request.id,
                Code.BUSY,
                f"{_MAX_TRANSFERS} fetches in progress; send again shortly",
                link,
            )
            return
        try:
            data = self.output.read(request.file)
        except OSError:
            # One wording for missing, linked, special and foreign files (images.NO_SUCH_IMAGE).
            self._error(request.id, Code.NOT_FOUND, f"{NO_SUCH_IMAGE}: {request.file}", link)
            return
        total = protocol.chunk_count(len(data), self.config.chunk_size)
        if request.start > 0 and request.start >= total:
            self._error(
                request.id,
                Code.BAD_ARGS,
                f"from={request.start} is past the last chunk ({total - 1}) of {request.file}",
                link,
            )
            return
        end = total if request.count is None else min(total, request.start + request.count)

        self._send(
            protocol.reply_body(
                "ack",
                request.id,
                [
                    ("cmd", "fetch"),
                    ("file", request.file),
                    ("bytes", len(data)),
                    ("chunk", self.config.chunk_size),
                    ("chunks", total),
                    ("from", request.start),
                    ("count", end - request.start),
                    ("sha256", hashlib.sha256(data).hexdigest()),
                ],
            ),
            link,
        )
        with self._counter_lock:
            self.counters.fetches += 1
        start = request.start
        self._transfers.append(
            _Transfer(request.id, request.file, data, start, end, start, total, link)
        )

    def _driver_backlog(self) -> int:
        """Bytes written to the port but still in the driver's output queue (TIOCOUTQ)."""
        port = self.link.port
        if not isinstance(port, serial.Serial):
            return 0
        try:
            return int(port.out_waiting)
        except (OSError, serial.SerialException, ValueError):
            return 0

    def _feed_transfers(self) -> None:
        """Turn the current fetch into data lines, only as fast as the link takes them, and
        only while no other reply waits: ping and status overtake bulk data."""
        size = self.config.chunk_size
        while (
            self._transfers
            and self.link.is_open
            and not self._outbox
            and len(self._pending) < _OUT_LOW
            and self._driver_backlog() < _OUT_LOW
        ):
            transfer = self._transfers[0]
            if transfer.next_index < transfer.end:
                k = transfer.next_index
                chunk = transfer.data[k * size : (k + 1) * size]
                body = protocol.data_body(transfer.request_id, k, chunk)
                self._pending += self._frame(_Outgoing(body, transfer.link))
                transfer.next_index += 1
                continue
            self._transfers.popleft()
            self._done(
                transfer.request_id,
                [
                    ("cmd", "fetch"),
                    ("file", transfer.name),
                    ("from", transfer.first),
                    ("count", transfer.end - transfer.first),
                ],
                transfer.link,
            )
            if transfer.end == transfer.total:
                self._fetched(transfer)

    def _fetched(self, transfer: _Transfer) -> None:
        """The last chunk of a result went out: mark it (pruned first), or delete it."""
        if self.config.delete_after_fetch and transfer.first == 0:
            self.output.delete(transfer.name)
        else:
            self.output.mark_fetched(transfer.name)
        self._refresh_usage()

    # -- worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._health.busy_since = self.clock()
            try:
                self._run_job(job)
            except Exception as err:  # the worker must survive any single request
                log.exception("request %s failed", job.request.id)
                self._error(
                    job.request.id, Code.INTERNAL, f"{type(err).__name__}: {err}", job.request.link
                )
            finally:
                with self._counter_lock:
                    self._health.busy_since = None
                    self._health.inflight -= 1
                self._wake()

    def _run_find(self, job: _Job) -> None:
        """`find`: the frame source's latest frame scored against the caption; boxes in the
        reply, the overlay (frame, heat map, boxes, reference picture) saved as a result."""
        request = job.request
        assert self._frames is not None  # checked before queueing
        spec = self.engine.manifest.search
        t0 = self.clock()
        try:
            embedding = self.engine.embed([request.caption])
            frame_id, frame = self._frames.latest()
            found = find_in_frame(self.engine, embedding, frame, frame_id)
            reference = self.engine.generate(request.caption, n=1, seed=0)[0]
        except CaptionError as err:
            self._error(request.id, Code.BAD_CAPTION, str(err), request.link)
            return
        except FrameSourceError as err:
            # The reason names robot paths: logged here, not sent over the link.
            log.warning("find %s: %s", request.id, err)
            self._error(
                request.id, Code.NO_SEARCH, "no frame from the frame source (see the robot's log)",
                request.link,
            )  # fmt: skip
            return
        infer_ms = (self.clock() - t0) * 1000.0
        top_k = request.top_k or spec.top_k
        try:
            (name,) = self.output.names(request.id, 0, ["find"])
            files = [(name, encode_png(overlay(frame, found, reference, request.caption)))]
            pruned = self.output.make_room([len(data) for _, data in files], self.config.budget)
            if pruned:
                with self._counter_lock:
                    self.counters.pruned += len(pruned)
            saved = self.output.save(files)
        except OutputError as err:
            self._refresh_usage()
            message = str(err).replace(str(self.output.path), "<out>")
            self._error(request.id, Code.OUTPUT, message, request.link)
            return
        self._refresh_usage()
        dets = found.detections[:top_k]
        self._done(
            request.id,
            [
                ("cmd", "find"),
                ("frame", safe_tag(frame_id, 48)),
                ("present", int(found.present)),
                ("best", f"{dets[0].score:.3f}" if dets else "0"),
                ("threshold", f"{spec.threshold:.3f}"),
                (
                    "boxes",
                    [f"{d.x0:.0f}:{d.y0:.0f}:{d.x1:.0f}:{d.y1:.0f}:{d.score:.3f}" for d in dets],
                ),
                ("ms", f"{(self.clock() - job.received) * 1000.0:.1f}"),
                ("infer_ms", f"{infer_ms:.1f}"),
                ("files", [s.name for s in saved]),
                ("sha256", [s.sha256 for s in saved]),
            ],
            request.link,
        )

    def _run_job(self, job: _Job) -> None:
        request = job.request
        if request.command == "find":
            self._run_find(job)
            return
        t0 = self.clock()
        try:
            understood = self.engine.understand(request.caption)
            if request.strict and understood is None:
                self._error(
                    request.id,
                    Code.NO_READBACK,
                    "strict=1 needs a read-back, this robot's bundle has none; no image made",
                    request.link,
                )
                return
            if request.strict and understood is not None and understood.is_off_domain:
                self._error(
                    request.id,
                    Code.OFF_DOMAIN,
                    f"the caption reads as nothing this robot knows (off_domain "
                    f"{understood.off_domain:.2f}); no image made (send without strict=1 to "
                    "draw it anyway)",
                    request.link,
                )
                return
            images = self.engine.generate(request.caption, n=request.n, seed=job.seed)
        except CaptionError as err:
            self._error(request.id, Code.BAD_CAPTION, str(err), request.link)
            return
        infer_ms = (self.clock() - t0) * 1000.0
        try:
            names = self.output.names(request.id, job.seed, range(request.n))
            files = [(name, encode_png(image)) for name, image in zip(names, images, strict=True)]
            pruned = self.output.make_room([len(data) for _, data in files], self.config.budget)
            if pruned:
                with self._counter_lock:
                    self.counters.pruned += len(pruned)
                log.info("disk budget: deleted %d oldest image(s)", len(pruned))
            saved = self.output.save(files)
        except OutputError as err:
            self._refresh_usage()
            # Replies name nothing outside the output directory: no absolute paths.
            message = str(err).replace(str(self.output.path), "<out>")
            self._error(request.id, Code.OUTPUT, message, request.link)
            return
        self._refresh_usage()
        with self._counter_lock:
            self.counters.images += len(saved)
        self._done(
            request.id,
            [
                ("cmd", "gen"),
                ("n", request.n),
                ("seed", job.seed),
                ("ms", f"{(self.clock() - job.received) * 1000.0:.1f}"),
                ("infer_ms", f"{infer_ms:.1f}"),
                ("files", [s.name for s in saved]),
                ("sha256", [s.sha256 for s in saved]),
                *(readback.reply_fields(understood) if understood is not None else []),
            ],
            request.link,
        )

    # -- status ---------------------------------------------------------------------------------

    def _uptime(self) -> str:
        return f"{self.clock() - self.started:.1f}"

    def _refresh_usage(self) -> None:
        usage = self.output.usage()
        with self._usage_lock:
            self._usage = usage

    def status_fields(self) -> dict[str, Any]:
        """Everything `status` replies, as ordered key → value."""
        info = self.engine.info
        cache = self.engine.cache_stats()
        with self._counter_lock:
            c = Counters(**vars(self.counters))
        with self._usage_lock:
            usage = self._usage
        budget = self.config.budget
        fields: dict[str, Any] = {
            "bundle": info.bundle_id,
            "precision": info.precision,
            "readback": "yes" if self.engine.has_readback else "no",
            "provider": info.provider,
            "threads": info.threads,
            "uptime_s": self._uptime(),
            "requests": c.requests,
            "ok": c.ok,
            "errors": c.errors,
            "busy": c.busy,
            "images": c.images,
            "fetches": c.fetches,
            "queue": self._jobs.qsize(),
            "queue_max": self.config.queue_size,
            "link": "up" if self.link.is_open else "down",
            "reconnects": c.reconnects,
            "link_losses": c.link_losses,
            "dropped": c.dropped_replies,
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "auth": "signed" if self.guard is not None else "insecure",
            "rejected": c.rejected,
            "coalesced": c.coalesced,
            "disk_files": usage.files,
            "disk_bytes": usage.bytes,
            "disk_fetched": usage.fetched,
            "disk_free": usage.free_bytes,
            "disk_max_bytes": budget.max_bytes if budget.max_bytes is not None else "none",
            "disk_max_files": budget.max_files if budget.max_files is not None else "none",
            "disk_min_free": budget.min_free_bytes,
            "pruned": c.pruned,
            "last_error": c.last_error or "none",
        }
        if c.last_error:
            fields["last_error_age_s"] = f"{self.clock() - c.last_error_time:.1f}"
        return fields


# ------------------------------------------------------------------------------------------
# serve --stdin: one caption per line, one reply line per caption (like piper)
# ------------------------------------------------------------------------------------------


def serve_lines(
    engine: Engine,
    output: OutputDir,
    lines: Iterable[str | BadLine],  # edge_runtime.stdio.bounded_lines
    out: IO[str],
    *,
    n: int = 1,
    seed: int | None = None,
    tag: str = "stdin",
) -> int:
    """For each caption line: write n PNGs and print their paths (tab-separated) on one line;
    a bad caption prints an empty line (so replies stay one per input line) and a reason on
    stderr. Returns the number of failed lines."""
    failures = 0
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, BadLine):
            failures += 1
            log.error("line %d: %s", number, raw.reason)
            out.write("\n")
            out.flush()
            continue
        caption = raw.rstrip("\r\n")
        if not caption.strip():
            continue
        line_seed = seed if seed is not None else secrets.randbelow(protocol.MAX_SEED + 1)
        try:
            images = engine.generate(caption, n=n, seed=line_seed)
            names = output.names(f"{tag}{number}", line_seed, range(n))
            saved = output.save(
                [(nm, encode_png(im)) for nm, im in zip(names, images, strict=True)]
            )
        except (CaptionError, OutputError) as err:
            failures += 1
            log.error("line %d: %s", number, err)
            out.write("\n")
            out.flush()
            continue
        out.write("\t".join(str(s.path) for s in saved) + "\n")
        out.flush()
    return failures
