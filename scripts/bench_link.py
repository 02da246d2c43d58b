"""Benchmarks of the signed operator link; they measure and print, never judge.

    python scripts/bench_link.py overhead [--iters 2000]
        signing cost per request: the pure functions, and a signed vs an unsigned ping round trip
        over real pty pairs (interleaved), with the real service on the tiny bundle
    python scripts/bench_link.py junk [--seconds 300] [--baud 115200] [--share 0.2]
        an attacker sends junk at 20 % of the link's byte rate into a link emulated at 115200
        baud (both directions rate-limited, whole lines interleaved as on a packet radio); the
        operator pings every 0.5 s and runs gen + fetch every 30 s: ping p50/p99/max, outcomes
    python scripts/bench_link.py flood [--seconds 600] [--max-bytes 4M] [--max-files 200]
        an operator floods `gen n=16` back to back (pty at full speed, harsher than a radio);
        the output directory is sampled every 0.2 s against its budget and free-space floor

Figures go to docs/PROTOCOL.md § Measured, with the CPU this prints.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_runtime import signing  # noqa: E402
from edge_runtime.client import ClientError, OperatorClient  # noqa: E402
from edge_runtime.engine import Engine  # noqa: E402
from edge_runtime.images import Budget, OutputDir  # noqa: E402
from edge_runtime.machine import cpu_info  # noqa: E402
from edge_runtime.service import Service, ServiceConfig  # noqa: E402

TINY = ROOT / "tests" / "fixtures" / "tiny_bundle"
CAPTION = "survivor in an orange jacket lying on rubble, left side"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (
        f"n={len(ordered)} p50={at(0.5):.2f} p90={at(0.9):.2f} p99={at(0.99):.2f} "
        f"max={ordered[-1]:.2f}"
    )


@contextlib.contextmanager
def service_on(port: str, out: Path, engine: Engine, **overrides: object) -> Iterator[Service]:
    config = ServiceConfig(port=port, out_dir=out, durable=False, **overrides)  # type: ignore[arg-type]
    service = Service(engine, config)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not service.link.is_open and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield service
    finally:
        service.request_stop()
        thread.join(timeout=30)


def pty_pair() -> tuple[int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    os.close(slave)  # the service opens it by name
    return master, path


# ------------------------------------------------------------------------------------------
# overhead
# ------------------------------------------------------------------------------------------


def bench_overhead(args: argparse.Namespace) -> None:
    key = signing.generate_key()
    body = "c1a2 gen n=2 seed=42 -- survivor in an orange jacket lying on rubble, left side"
    signer = signing.Signer(key, 1)
    guard = signing.LinkGuard(key)
    reply_signer = signing.Signer(key, 0x81)
    reply_guard = signing.LinkGuard(key, links={0x81})
    reply = "done c1a2 cmd=ping uptime_s=12.3"
    t0 = time.perf_counter()
    for _ in range(args.iters):
        guard.accept(signer.sign(body)[1:])
        reply_guard.accept(reply_signer.sign(reply)[1:])
    pure_us = (time.perf_counter() - t0) / args.iters * 1e6
    print(f"pure: sign + verify of a request and of its reply: {pure_us:.1f} µs per request")

    engine = Engine(TINY, precision="fp32", threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        signed_master, signed_path = pty_pair()
        plain_master, plain_path = pty_pair()
        with (
            service_on(signed_path, Path(tmp) / "a", engine, key=key),
            service_on(plain_path, Path(tmp) / "b", engine, junk_share=None),
        ):
            signed_client = OperatorClient(_port_on_master(signed_master), key=key, timeout=5)
            plain_client = OperatorClient(_port_on_master(plain_master), timeout=5)
            for client in (signed_client, plain_client):
                for _ in range(20):
                    client.ping()  # warm up
            signed_ms, plain_ms = [], []
            for i in range(args.iters // 4):
                pair = (signed_client, plain_client) if i % 2 else (plain_client, signed_client)
                for client in pair:
                    (signed_ms if client is signed_client else plain_ms).append(client.ping())
    print(f"ping round trip, signed   (ms): {percentiles(signed_ms)}")
    print(f"ping round trip, unsigned (ms): {percentiles(plain_ms)}")
    diff = statistics.median(signed_ms) - statistics.median(plain_ms)
    print(f"signed overhead, median difference: {diff * 1000:.0f} µs per request")


class _MasterPort:
    """A minimal pyserial-like port on a pty master (the operator's end)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.timeout = 0.05
        self.port = f"pty-master-{fd}"
        os.set_blocking(fd, False)

    @property
    def in_waiting(self) -> int:
        return 4096

    def read(self, size: int) -> bytes:
        import select

        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            return b""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return b""

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                time.sleep(0.001)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.fd)


def _port_on_master(fd: int) -> _MasterPort:
    return _MasterPort(fd)


# ------------------------------------------------------------------------------------------
# junk: a rate-limited "air" between the operator, the attacker and the robot
# ------------------------------------------------------------------------------------------


class Air:
    """Relays whole lines operator+attacker → robot and bytes robot → operator, each direction
    limited to baud/10 bytes per second (8N1), as a half-duplex radio would carry them."""

    def __init__(self, robot_master: int, operator_master: int, baud: int) -> None:
        self.robot, self.operator = robot_master, operator_master
        self.rate = baud / 10
        self.attacker: queue.Queue[bytes] = queue.Queue()
        self.stop = threading.Event()
        self.sent_up = {"operator": 0, "attacker": 0}
        for fd in (robot_master, operator_master):
            os.set_blocking(fd, False)
        self.threads = [
            threading.Thread(target=self._up, daemon=True),
            threading.Thread(target=self._down, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _paced_write(self, fd: int, data: bytes, clock: list[float]) -> None:
        # Each byte occupies 1/rate seconds of air time in this direction.
        start = max(time.monotonic(), clock[0])
        clock[0] = start + len(data) / self.rate
        delay = clock[0] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        view = memoryview(data)
        while view and not self.stop.is_set():
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                time.sleep(0.001)

    def _up(self) -> None:
        import select

        clock = [0.0]
        pending = bytearray()
        while not self.stop.is_set():
            ready, _, _ = select.select([self.operator], [], [], 0.005)
            if ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    pending += os.read(self.operator, 4096)
            # Whole operator lines first, then one attacker line: packets share the channel.
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                self.sent_up["operator"] += len(line) + 1
                self._paced_write(self.robot, line + b"\n", clock)
            with contextlib.suppress(queue.Empty):
                junk = self.attacker.get_nowait()
                self.sent_up["attacker"] += len(junk)
                self._paced_write(self.robot, junk, clock)

    def _down(self) -> None:
        import select

        clock = [0.0]
        while not self.stop.is_set():
            ready, _, _ = select.select([self.robot], [], [], 0.05)
            if ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    self._paced_write(self.operator, os.read(self.robot, 256), clock)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=2)


def _junk_line(rng: random.Random, recorded: list[bytes]) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:  # unsigned requests
        return (
            rng.choice([b"1 status", b"2 help", b"3 gen n=16 survivor", b"x fetch a.png"]) + b"\r\n"
        )
    if kind == 1:  # forged signatures
        body = b"%d gen n=16 survivor on rubble" % rng.randrange(1000)
        tag = bytes(rng.randrange(256) for _ in range(8)).hex().upper().encode()
        return b"$" + body + b"*01%012X" % signing.now_ticks() + tag + b"\r\n"
    if kind == 2 and recorded:  # replays of the operator's own lines
        return rng.choice(recorded)
    if kind == 3:  # noise
        return bytes(rng.randrange(32, 127) for _ in range(rng.randrange(4, 60))) + b"\r\n"
    return b"h help\r\n"  # the reply-amplification favourite


def bench_junk(args: argparse.Namespace) -> None:
    key = signing.generate_key()
    engine = Engine(TINY, precision="fp32", threads=1)
    rng = random.Random(18)
    with tempfile.TemporaryDirectory() as tmp:
        robot_master, robot_path = pty_pair()
        operator_master, operator_slave, operator_slave_path = _operator_pty()
        air = Air(robot_master, operator_master, args.baud)
        recorded: list[bytes] = []
        with service_on(robot_path, Path(tmp) / "out", engine, key=key, baud=args.baud) as service:
            client = OperatorClient.open(operator_slave_path, args.baud, key=key, timeout=5.0)
            original_send = client._send

            def recording_send(line: bytes) -> None:
                recorded.append(line)  # what an eavesdropper records, for the replay junk
                original_send(line)

            client._send = recording_send  # type: ignore[method-assign]
            stop = threading.Event()

            def attacker() -> None:
                budget_rate = args.share * args.baud / 10
                next_time = time.monotonic()
                while not stop.is_set():
                    line = _junk_line(rng, recorded[-50:])
                    air.attacker.put(line)
                    next_time += len(line) / budget_rate
                    time.sleep(max(0.0, next_time - time.monotonic()))

            attack = threading.Thread(target=attacker, daemon=True)
            attack.start()
            pings: list[float] = []
            failures: list[str] = []
            jobs = {"gen+fetch ok": 0, "gen+fetch failed": 0}
            start = time.monotonic()
            next_job = start + 5
            while time.monotonic() - start < args.seconds:
                try:
                    pings.append(client.ping())
                except ClientError as err:
                    failures.append(str(err))
                if time.monotonic() >= next_job:
                    next_job += 30
                    try:
                        client.generate_and_fetch(CAPTION, Path(tmp) / "got", n=1)
                        jobs["gen+fetch ok"] += 1
                    except ClientError as err:
                        jobs["gen+fetch failed"] += 1
                        failures.append(str(err))
                time.sleep(0.5)
            stop.set()
            elapsed = time.monotonic() - start
            status = service.status_fields()
            client.close()
        air.close()
        os.close(operator_slave)
    print(f"link emulated at {args.baud} baud ({args.baud / 10:.0f} B/s each way), {elapsed:.0f} s")
    print(
        f"attacker: {air.sent_up['attacker']} bytes = {air.sent_up['attacker'] / elapsed:.0f} B/s "
        f"({air.sent_up['attacker'] / elapsed / (args.baud / 10) * 100:.1f} % of the link); "
        f"operator: {air.sent_up['operator'] / elapsed:.0f} B/s"
    )
    print(f"operator signed ping round trip (ms): {percentiles(pings)}")
    print(f"ping failures: {len(failures)}; {jobs}")
    for failure in failures[:5]:
        print(f"  {failure}")
    print(
        "robot: rejected={rejected} coalesced={coalesced} errors={errors} ok={ok} "
        "dropped={dropped}".format(**status)
    )


def _operator_pty() -> tuple[int, int, str]:
    """(master, slave, slave path): the slave stays open here so the line never hangs up."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


# ------------------------------------------------------------------------------------------
# flood: gen n=16 back to back against the disk budget
# ------------------------------------------------------------------------------------------


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].isalpha() else int(text)


def bench_flood(args: argparse.Namespace) -> None:
    key = signing.generate_key()
    engine = Engine(TINY, precision="fp32", threads=1)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        # "below:3M": a floor 3 MiB under the free space now, so the floor is what binds.
        floor = (
            OutputDir(tmp).free_bytes() - _size(args.min_free.split(":", 1)[1])
            if args.min_free.startswith("below:")
            else _size(args.min_free)
        )
        budget = Budget(
            max_bytes=_size(args.max_bytes), max_files=args.max_files, min_free_bytes=floor
        )
        out = Path(tmp) / "out"
        robot_master, robot_path = pty_pair()
        with service_on(robot_path, out, engine, key=key, budget=budget) as service:
            client = OperatorClient(_port_on_master(robot_master), key=key, timeout=30, retries=50)
            stop = threading.Event()
            worst = {"bytes": 0, "files": 0, "min_free": 1 << 62, "samples": 0}
            output = OutputDir(out)

            def sample() -> None:
                while not stop.is_set():
                    usage = output.usage()
                    if usage.bytes > worst["bytes"]:
                        worst["at_max"] = usage  # type: ignore[assignment]
                    worst["bytes"] = max(worst["bytes"], usage.bytes)
                    worst["files"] = max(worst["files"], usage.files)
                    worst["min_free"] = min(worst["min_free"], usage.free_bytes)
                    worst["samples"] += 1
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            done = 0
            refused: dict[str, int] = {}
            start = time.monotonic()
            seed = 0
            while time.monotonic() - start < args.seconds:
                seed += 1
                try:
                    client.generate(CAPTION, n=16, seed=seed)
                    done += 1
                except ClientError as err:  # e.g. OUTPUT: the floor cannot be kept
                    refused[err.code] = refused.get(err.code, 0) + 1
            elapsed = time.monotonic() - start
            t0 = time.perf_counter()
            result = client.generate(CAPTION, n=1, seed=10**6)
            name, digest = result.files[0]
            client.fetch(name, Path(tmp) / "got", digest)
            next_ms = (time.perf_counter() - t0) * 1000
            stop.set()
            sampler.join()
            status = service.status_fields()
    print(f"flood: {done} × gen n=16 in {elapsed:.0f} s ({done * 16 / elapsed:.0f} images/s)")
    print(f"refused: {refused or 'none'}")
    print(
        f"budget: max_bytes={budget.max_bytes} max_files={budget.max_files} "
        f"min_free={budget.min_free_bytes}"
    )
    print(
        f"worst seen in {worst['samples']} samples: bytes={worst['bytes']} files={worst['files']} "
        f"lowest free={worst['min_free']} (floor {budget.min_free_bytes}; "
        f"{'kept' if worst['min_free'] >= budget.min_free_bytes else 'BROKEN'})"
    )
    # A directory scan racing the writer can list a file deleted and one created meanwhile:
    # bytes/files are upper bounds; free space (statvfs) is exact.
    print(f"the sample with the most bytes (an upper bound): {worst.get('at_max')}")
    print(f"robot: images={status['images']} pruned={status['pruned']} busy={status['busy']}")
    print(f"the operator's next gen + fetch: done in {next_ms:.1f} ms ({name})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    overhead = sub.add_parser("overhead")
    overhead.add_argument("--iters", type=int, default=2000)
    junk = sub.add_parser("junk")
    junk.add_argument("--seconds", type=float, default=300)
    junk.add_argument("--baud", type=int, default=115200)
    junk.add_argument("--share", type=float, default=0.2)
    flood = sub.add_parser("flood")
    flood.add_argument("--seconds", type=float, default=600)
    flood.add_argument("--max-bytes", default="4M")
    flood.add_argument("--max-files", type=int, default=200)
    flood.add_argument("--min-free", default="256M", help="a size, or below:SIZE (free now − SIZE)")
    flood.add_argument("--dir", default=None, help="where the output folder goes (e.g. a tmpfs)")
    args = parser.parse_args()
    print(f"CPU: {cpu_info().describe()}; Python {platform.python_version()}")
    {"overhead": bench_overhead, "junk": bench_junk, "flood": bench_flood}[args.mode](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
