"""The serial service: operator requests in, images on disk and replies out, whatever the link does.

One main thread runs an event loop over the serial port (select on its descriptor and on a wake-up
pipe) and never blocks: it frames and parses lines, answers ping/status/help at once, queues
`gen` requests for a worker thread, streams `fetch` chunks only as fast as the port drains, pings
systemd's watchdog and reopens the port when it is lost. The worker thread runs the engine and
writes files. Keeping every port read and write in one thread is what lets a stalled or unplugged
link never stall the watchdog or a SIGTERM.

Protocol: `edge_runtime.protocol` and docs/PROTOCOL.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import secrets
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import serial

from edge_runtime import protocol
from edge_runtime.engine import Engine
from edge_runtime.images import OutputDir, OutputError, encode_png
from edge_runtime.protocol import Code, ProtocolError, Request
from edge_runtime.sdnotify import Notifier
from edge_runtime.stdio import BadLine
from edge_runtime.tokenizer import CaptionError

log = logging.getLogger(__name__)

_OUT_HIGH = 64 << 10
"""Stop reading requests while this many reply bytes wait for the link (backpressure)."""
_OUT_LOW = 4 << 10
"""Fetch chunks are produced only while fewer reply bytes than this are waiting."""
_MAX_TRANSFERS = 4


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
        self._outbox: deque[bytes] = deque()
        self._outbox_lock = threading.Lock()
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
        try:
            self.output.ensure()
        except OutputError as err:
            # Not fatal: the directory may appear (a mount) or be fixed; each gen reports it.
            log.warning("%s", err)

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
        finally:
            self._jobs_shutdown()
            self._worker.join(timeout=self.config.stop_timeout_s)
            self.link.close()
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
                self._error(job.request.id, Code.SHUTDOWN, "service stopping; request not run")
        while len(self._transfers) > 1:
            transfer = self._transfers.pop()
            self._error(transfer.request_id, Code.SHUTDOWN, "service stopping; fetch not run")
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
        self._feed_transfers()
        self._take_outbox()
        fd = self.link.fileno()
        reading = self.link.is_open and len(self._pending) < _OUT_HIGH
        writing = self.link.is_open and bool(self._pending)
        rlist = [self._wake_r] + ([fd] if fd is not None and reading else [])
        wlist = [fd] if fd is not None and writing else []
        timeout = self._timeout(now)
        if self.link.is_open and fd is None:
            timeout = min(timeout, 0.005)  # a port without a descriptor (loop://) is polled
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

    def _take_outbox(self) -> None:
        with self._outbox_lock:
            while self._outbox and len(self._pending) < _OUT_HIGH:
                self._pending += self._outbox.popleft()

    def _send(self, line: bytes) -> None:
        """Queue a reply line for the link (from any thread); dropped while the link is down."""
        with self._outbox_lock:
            if self.link.is_open:
                self._outbox.append(line)
            else:
                with self._counter_lock:
                    self.counters.dropped_replies += 1
        if threading.current_thread() is not threading.main_thread():
            self._wake()

    def _error(self, request_id: str, code: str, message: str) -> None:
        with self._counter_lock:
            self.counters.errors += 1
            if code == Code.BUSY:
                self.counters.busy += 1
            self.counters.last_error = code
            self.counters.last_error_message = message
            self.counters.last_error_id = request_id
            self.counters.last_error_time = self.clock()
        log.info("request %s: %s %s", request_id, code, message)
        self._send(protocol.format_error(request_id, code, message))

    # -- requests -------------------------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        for line in self._framer.feed(data):
            received = self.clock()
            with self._counter_lock:
                self.counters.requests += 1
            if line.overlong:
                self._error(
                    protocol.guess_id(line.data),
                    Code.LINE_TOO_LONG,
                    f"line longer than {self.config.max_line} bytes; discarded up to the next "
                    "line end",
                )
                continue
            try:
                request = protocol.parse_request(
                    line.data, max_line=self.config.max_line, max_images=self.config.max_images
                )
            except ProtocolError as err:
                self._error(err.request_id, err.code, err.message)
                continue
            if request is None:  # blank: the framer drops these already
                continue
            try:
                self._dispatch(request, received)
            except Exception as err:  # a bug must cost one request, never the service
                log.exception("request %s failed", request.id)
                self._error(request.id, Code.INTERNAL, f"{type(err).__name__}: {err}")

    def _dispatch(self, request: Request, received: float) -> None:
        if self._draining and request.command in ("gen", "fetch"):
            self._error(request.id, Code.SHUTDOWN, "service stopping; send again after restart")
            return
        if request.command == "ping":
            self._done(request.id, [("cmd", "ping"), ("uptime_s", self._uptime())])
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
                self._send(protocol.format_text("info", request.id, text))
            self._done(request.id, [("cmd", "status"), *fields.items()])
        elif request.command == "help":
            for text in protocol.HELP:
                self._send(
                    protocol.format_text(
                        "info", request.id, text.format(max_n=self.config.max_images)
                    )
                )
            self._done(request.id, [("cmd", "help")])
        elif request.command == "gen":
            self._queue_gen(request, received)
        elif request.command == "fetch":
            self._start_fetch(request)

    def _done(self, request_id: str, fields: list[tuple[str, Any]]) -> None:
        with self._counter_lock:
            self.counters.ok += 1
        self._send(protocol.format_reply("done", request_id, fields))

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
            )
            return
        self._send(
            protocol.format_reply(
                "ack",
                request.id,
                [("cmd", "gen"), ("n", request.n), ("seed", seed), ("ahead", ahead)],
            )
        )

    def _start_fetch(self, request: Request) -> None:
        if len(self._transfers) >= _MAX_TRANSFERS:
            self._error(
                request.id, Code.BUSY, f"{_MAX_TRANSFERS} fetches in progress; send again shortly"
            )
            return
        try:
            data = self.output.read(request.file)
        except FileNotFoundError:
            self._error(request.id, Code.NOT_FOUND, f"no result named {request.file}")
            return
        except OSError as err:
            self._error(request.id, Code.NOT_FOUND, f"cannot read {request.file}: {err.strerror}")
            return
        total = protocol.chunk_count(len(data), self.config.chunk_size)
        if request.start > 0 and request.start >= total:
            self._error(
                request.id,
                Code.BAD_ARGS,
                f"from={request.start} is past the last chunk ({total - 1}) of {request.file}",
            )
            return
        end = total if request.count is None else min(total, request.start + request.count)

        self._send(
            protocol.format_reply(
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
            )
        )
        with self._counter_lock:
            self.counters.fetches += 1
        self._transfers.append(
            _Transfer(request.id, request.file, data, request.start, end, first=request.start)
        )

    def _feed_transfers(self) -> None:
        """Turn the current fetch into data lines, only as fast as the link takes them."""
        size = self.config.chunk_size
        while self._transfers and self.link.is_open and len(self._pending) < _OUT_LOW:
            transfer = self._transfers[0]
            if transfer.next_index < transfer.end:
                k = transfer.next_index
                chunk = transfer.data[k * size : (k + 1) * size]
                self._pending += protocol.data_line(transfer.request_id, k, chunk)
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
            )

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
                self._error(job.request.id, Code.INTERNAL, f"{type(err).__name__}: {err}")
            finally:
                with self._counter_lock:
                    self._health.busy_since = None
                    self._health.inflight -= 1
                self._wake()

    def _run_job(self, job: _Job) -> None:
        request = job.request
        t0 = self.clock()
        try:
            images = self.engine.generate(request.caption, n=request.n, seed=job.seed)
        except CaptionError as err:
            self._error(request.id, Code.BAD_CAPTION, str(err))
            return
        infer_ms = (self.clock() - t0) * 1000.0
        names = []
        try:
            names = self.output.names(request.id, job.seed, range(request.n))
            saved = self.output.save(
                [(name, encode_png(image)) for name, image in zip(names, images, strict=True)]
            )
        except OutputError as err:
            self._error(request.id, Code.OUTPUT, str(err))
            return
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
                ("dir", str(self.output.path)),
            ],
        )

    # -- status ---------------------------------------------------------------------------------

    def _uptime(self) -> str:
        return f"{self.clock() - self.started:.1f}"

    def status_fields(self) -> dict[str, Any]:
        """Everything `status` replies, as ordered key → value."""
        info = self.engine.info
        cache = self.engine.cache_stats()
        with self._counter_lock:
            c = Counters(**vars(self.counters))
        fields: dict[str, Any] = {
            "bundle": info.bundle_id,
            "precision": info.precision,
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
            "out": str(self.output.path),
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
