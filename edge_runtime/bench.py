"""`rescue-edge bench`: speed and memory of caption → image on this machine, printed, never judged.

Every figure is measured in one run, variants interleaved round by round so that load from other
processes hits them alike; compare variants by the printed ratios rather than across runs. The
issue's targets (int8 bundle of the full model, 2-core CPU) are printed beside the figures for
reference only.

  caption → image, 1 thread   p50/p99 for captions never seen (text encoder runs) and for a cached
                              caption (generator only)
  read-back, 1 thread         what reading a caption back adds to it: the read-back graph and the
                              decision rule on the caption's (cached) embedding, p50/p99
  batched, 2 threads          images/s for a batch of distinct unseen captions and of one caption
  serial round trip           a pty pair to the real service: ping, and `gen` minus the same work
                              done in-process (engine + PNG + atomic write)
  start-up to READY           `rescue-edge serve` in a subprocess until its sd_notify READY=1
  resident memory             that subprocess's VmRSS / VmHWM after serving requests
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import protocol
from edge_runtime.canonical import DRAW_CAPTION
from edge_runtime.machine import cpu_info

TARGETS = {
    "unseen_p50_ms": "≤ 4",
    "cached_p50_ms": "≤ 2.5",
    "unseen_p99_over_p50": "≤ 2",
    "cached_p99_over_p50": "≤ 2",
    "batch_unseen_images_per_s": "≥ 500",
    "batch_cached_images_per_s": "≥ 500",
    "serial_gen_overhead_ms": "≤ 2",
    "startup_to_ready_s": "≤ 2",
    "rss_mb": "≤ 150",
    "readback_p50_ms": "≤ 0.3",
}
_COLOURS = ("orange", "red", "blue", "green", "yellow", "white", "black", "grey")
_POSES = ("lying", "sitting", "standing", "crouching", "waving")
_TERRAIN = ("rubble", "concrete", "mud", "gravel", "a collapsed roof", "broken bricks")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Bench flags (the engine flags are added by the CLI)."""
    parser.add_argument("--iters", type=int, default=200, help="timed calls per figure")
    parser.add_argument("--batch", type=int, default=32, help="batch size for images/s")
    parser.add_argument(
        "--variants", default="",
        help="comma-separated precisions to compare (default: every variant in the bundle)",
    )  # fmt: skip
    parser.add_argument("--skip-serial", action="store_true", help="skip the pty round trip")
    parser.add_argument(
        "--skip-startup", action="store_true", help="skip the subprocess start-up/memory figure"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


def captions(count: int, offset: int = 0) -> list[str]:
    """`count` distinct rescue captions (a number makes each one unique, so none is cached)."""
    out = []
    for i in range(offset, offset + count):
        colour = _COLOURS[i % len(_COLOURS)]
        pose = _POSES[(i // 3) % len(_POSES)]
        terrain = _TERRAIN[(i // 7) % len(_TERRAIN)]
        side = "left" if i % 2 else "right"
        out.append(f"survivor in a {colour} jacket {pose} on {terrain}, {side} side, report {i}")
    return out


def _percentiles(samples: list[float]) -> dict[str, float]:
    array = np.asarray(samples)
    p50, p99 = np.percentile(array, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "mean_ms": float(array.mean())}


def _machine() -> dict[str, Any]:
    cpu = cpu_info()
    import onnxruntime as ort

    return {
        "cpu": cpu.describe(),
        "cores": cpu.logical_cpus,
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------
# Engine figures
# ------------------------------------------------------------------------------------------


def _latency(engines: dict[str, Any], iters: int) -> dict[str, dict[str, Any]]:
    """p50/p99 caption → image array on one thread, unseen and cached, variants interleaved."""
    unseen: dict[str, list[float]] = {k: [] for k in engines}
    cached: dict[str, list[float]] = {k: [] for k in engines}
    texts = captions(iters + 5)
    repeat = "survivor in an orange jacket lying on rubble, left side"
    for engine in engines.values():
        engine.generate(repeat, n=1, seed=0)  # now cached
    for i, text in enumerate(texts):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.generate(text, n=1, seed=i)
            t1 = time.perf_counter()
            engine.generate(repeat, n=1, seed=i)
            t2 = time.perf_counter()
            if i >= 5:  # warm-up
                unseen[name].append((t1 - t0) * 1000.0)
                cached[name].append((t2 - t1) * 1000.0)
    out = {}
    for name in engines:
        u, c = _percentiles(unseen[name]), _percentiles(cached[name])
        out[name] = {
            "unseen_p50_ms": u["p50_ms"],
            "unseen_p99_ms": u["p99_ms"],
            "unseen_p99_over_p50": u["p99_ms"] / u["p50_ms"],
            "cached_p50_ms": c["p50_ms"],
            "cached_p99_ms": c["p99_ms"],
            "cached_p99_over_p50": c["p99_ms"] / c["p50_ms"],
        }
    return out


def _readback(engines: dict[str, Any], iters: int) -> dict[str, dict[str, Any]]:
    """p50/p99 of the read-back alone per caption (graph + decision on a cached embedding, and
    the unknown-words check on its text), one thread, variants interleaved; engines whose bundle
    has no read-back are left out."""
    engines = {k: e for k, e in engines.items() if e.has_readback}
    times: dict[str, list[float]] = {k: [] for k in engines}
    texts = captions(min(iters, 50), offset=50_000)
    embeddings = {k: [e.embed([t]) for t in texts] for k, e in engines.items()}  # (1, E) each
    for i in range(iters + 5):
        for name, engine in engines.items():
            embedding = embeddings[name][i % len(texts)]
            t0 = time.perf_counter()
            engine.read_back(embedding)
            engine.unknown_words(texts[i % len(texts)])
            if i >= 5:  # warm-up
                times[name].append((time.perf_counter() - t0) * 1000.0)
    out = {}
    for name, samples in times.items():
        p = _percentiles(samples)
        out[name] = {"readback_p50_ms": p["p50_ms"], "readback_p99_ms": p["p99_ms"]}
    return out


def _throughput(engines: dict[str, Any], batch: int, rounds: int) -> dict[str, dict[str, float]]:
    """images/s of one batch call on the engines' threads, distinct unseen captions vs cached."""
    rates: dict[str, dict[str, list[float]]] = {k: {"unseen": [], "cached": []} for k in engines}
    repeat = "survivor in an orange jacket lying on rubble, left side"
    for r in range(rounds + 1):
        unseen_items = [
            (c, r, k) for k, c in enumerate(captions(batch, offset=100_000 + r * batch))
        ]
        cached_items = [(repeat, r, k) for k in range(batch)]
        for name, engine in engines.items():
            engine.generate(repeat, n=1, seed=0)
            t0 = time.perf_counter()
            engine.generate_batch(unseen_items)
            t1 = time.perf_counter()
            engine.generate_batch(cached_items)
            t2 = time.perf_counter()
            if r:  # the first round allocates for the new batch size
                rates[name]["unseen"].append(batch / (t1 - t0))
                rates[name]["cached"].append(batch / (t2 - t1))
    return {
        name: {
            "batch_unseen_images_per_s": statistics.median(v["unseen"]),
            "batch_cached_images_per_s": statistics.median(v["cached"]),
        }
        for name, v in rates.items()
    }


# ------------------------------------------------------------------------------------------
# Serial round trip over a pty
# ------------------------------------------------------------------------------------------


class _PtyOperator:
    """The operator end of a pty: raw request bytes in, reply lines out (no pyserial needed)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # the service's pyserial also sets raw mode; no echo before that
        self.path = os.ttyname(self.slave)
        self._buffer = bytearray()

    def request(self, line: bytes, request_id: str, timeout: float = 10.0) -> list[bytes]:
        os.write(self.master, line)
        replies = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\n" in self._buffer:
                raw, _, rest = bytes(self._buffer).partition(b"\n")
                self._buffer[:] = rest
                replies.append(raw)
                reply = protocol.parse_reply(raw)
                if reply.id == request_id and reply.kind in ("done", "err"):
                    return replies
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                self._buffer += os.read(self.master, 65536)
        raise TimeoutError(f"no reply to {request_id}")

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def _serial(engine: Any, iters: int) -> dict[str, float]:
    """ping RTT and gen RTT over a pty to an in-process service, vs the same work in-process."""
    from edge_runtime.images import OutputDir, encode_png
    from edge_runtime.service import Service, ServiceConfig

    operator = _PtyOperator()
    with tempfile.TemporaryDirectory(prefix="rescue-bench-") as tmp:
        # No fsync on either side: its variance (milliseconds on some disks) would drown the
        # link's overhead, which is what this figure isolates.
        config = ServiceConfig(port=operator.path, out_dir=Path(tmp) / "serial", durable=False)
        service = Service(engine, config)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        direct_out = OutputDir(Path(tmp) / "direct", durable=False)
        direct_out.ensure()
        caption = "survivor in an orange jacket lying on rubble, left side"
        engine.generate(caption, n=1, seed=0)
        try:
            deadline = time.monotonic() + 10
            while not service.link.is_open and time.monotonic() < deadline:
                time.sleep(0.01)
            ping, gen, direct = [], [], []
            for i in range(iters + 5):

                def over_the_link(i: int = i) -> None:
                    line = protocol.format_request(f"g{i}", "gen", caption=caption, n=1, seed=i)
                    operator.request(line, f"g{i}")

                def in_process(i: int = i) -> None:
                    # The same work without the link: engine, PNG, atomic write.
                    images = engine.generate(caption, n=1, seed=i)
                    names = direct_out.names(f"g{i}", i, [0])
                    direct_out.save([(names[0], encode_png(images[0]))])

                t0 = time.perf_counter()
                operator.request(protocol.format_request(f"p{i}", "ping"), f"p{i}")
                ping_ms = (time.perf_counter() - t0) * 1000.0
                # Alternate the order so that drift in the machine's load favours neither.
                first, second = (
                    (over_the_link, in_process) if i % 2 else (in_process, over_the_link)
                )
                t1 = time.perf_counter()
                first()
                t2 = time.perf_counter()
                second()
                t3 = time.perf_counter()
                link_ms, local_ms = (t2 - t1, t3 - t2) if i % 2 else (t3 - t2, t2 - t1)
                if i >= 5:
                    ping.append(ping_ms)
                    gen.append(link_ms * 1000.0)
                    direct.append(local_ms * 1000.0)
        finally:
            service.request_stop()
            thread.join(timeout=20)
            operator.close()
    reply_bytes = 200  # a done line of one image, roughly; request ≈ 80
    return {
        "serial_ping_p50_ms": statistics.median(ping),
        "serial_gen_p50_ms": statistics.median(gen),
        "inprocess_gen_p50_ms": statistics.median(direct),
        "serial_gen_overhead_ms": statistics.median(
            g - d for g, d in zip(gen, direct, strict=True)
        ),
        "wire_ms_at_115200": (80 + 3 + reply_bytes + 60) * 10 / 115200 * 1000.0,
    }


# ------------------------------------------------------------------------------------------
# Start-up to READY and resident memory, in a subprocess
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _notify_socket() -> Iterator[tuple[socket.socket, str]]:
    with tempfile.TemporaryDirectory(prefix="rescue-notify-") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            yield sock, path
        finally:
            sock.close()


def _proc_memory(pid: int) -> dict[str, float]:
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = float(value.split()[0]) / 1024.0  # kB → MiB
    return fields


def _startup(bundle: Path, args: argparse.Namespace, requests: int = 50) -> dict[str, float]:
    """Spawn `rescue-edge serve` on a pty; time to READY=1; memory after serving requests."""
    operator = _PtyOperator()
    with _notify_socket() as (sock, address), tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, NOTIFY_SOCKET=address, PYTHONUNBUFFERED="1")
        command = [
            sys.executable, "-m", "edge_runtime", "-q", "serve", "--serial", operator.path,
            "--bundle", str(bundle), "--out", out, "--precision", args.precision,
            "--provider", args.provider, "--threads", str(args.threads),
            "--insecure",  # start-up and memory; the signed link has its own benchmark
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        try:
            sock.settimeout(60)
            while True:
                message = sock.recv(4096).decode()
                if "READY=1" in message.split("\n"):
                    break
            ready_s = time.perf_counter() - t0
            after_ready = _proc_memory(proc.pid)
            operator.request(protocol.format_request("r0", "ping"), "r0")
            for i, text in enumerate(captions(requests)):
                line = protocol.format_request(f"m{i}", "gen", caption=text, n=4, seed=i)
                operator.request(line, f"m{i}")
            after = _proc_memory(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            operator.close()
    return {
        "startup_to_ready_s": ready_s,
        "rss_at_ready_mb": after_ready.get("VmRSS", float("nan")),
        "rss_mb": after.get("VmRSS", float("nan")),
        "peak_rss_mb": after.get("VmHWM", float("nan")),
        "exit_status": float(proc.returncode),
    }


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, bundle: Path) -> int:
    """Measure and print; the exit status is 0 whatever the numbers are."""
    from edge_runtime.bundle import load_bundle
    from edge_runtime.engine import Engine

    manifest = load_bundle(bundle, graphs=[]).manifest
    names = [v for v in args.variants.split(",") if v] or list(manifest.variants)
    if args.precision not in ("auto", *names):
        names.append(args.precision)
    report: dict[str, Any] = {"bundle": str(bundle), "name": manifest.name, **_machine()}
    progress = sys.stderr
    print(f"bench: loading {', '.join(names)} ...", file=progress)
    one = {n: Engine(bundle, precision=n, provider=args.provider, threads=1) for n in names}
    report["variants"] = {n: {} for n in names}
    # Bundles that draw what they understood (edge_runtime.canonical) are also timed drawing
    # the words, interleaved in the same run: the ratio is the price of the read-back route.
    words = {
        f"{n} words": Engine(
            bundle, precision=n, provider=args.provider, threads=1, draw=DRAW_CAPTION
        )
        for n, engine in one.items()
        if engine.draws_understood
    }
    print(f"bench: caption → image latency, {args.iters} calls each ...", file=progress)
    for name, figures in _latency({**one, **words}, args.iters).items():
        if name in one:
            report["variants"][name].update(figures)
        else:
            report["variants"][name.removesuffix(" words")].update(
                {f"words_{k}": figures[k] for k in ("unseen_p50_ms", "cached_p50_ms")}
            )
    del words
    if any(e.has_readback for e in one.values()):
        print(f"bench: read-back per caption, {args.iters} calls each ...", file=progress)
        for name, figures in _readback(one, args.iters).items():
            report["variants"][name].update(figures)
    two = {n: Engine(bundle, precision=n, provider=args.provider, threads=2) for n in names}
    print(f"bench: batch of {args.batch} on 2 threads ...", file=progress)
    for name, figures in _throughput(two, args.batch, rounds=max(3, args.iters // 40)).items():
        report["variants"][name].update(figures)
    del two
    chosen = Engine(bundle, precision=args.precision, provider=args.provider, threads=1)
    report["auto_precision"] = chosen.info.precision
    report["auto_selection_ms"] = chosen.info.selection_ms
    if not args.skip_serial:
        print("bench: serial round trip over a pty ...", file=progress)
        report["serial"] = _serial(chosen, max(20, args.iters // 4))
    if not args.skip_startup:
        print("bench: start-up to READY and memory (subprocess) ...", file=progress)
        report["startup"] = _startup(bundle, args, requests=max(5, min(50, args.iters // 4)))
    report["targets"] = TARGETS
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report, names)
    return 0


def _print_table(report: dict[str, Any], names: list[str]) -> None:
    load = report.get("loadavg_at_start")
    print(
        f"bundle {report['name']} ({report['bundle']}); {report['cpu']}, {report['cores']} cores; "
        f"onnxruntime {report['onnxruntime']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in load) if load else 'n/a'}"
    )
    variants = report["variants"]
    ratio = len(names) > 1
    header = f"{'figure':32}" + "".join(f"{n:>12}" for n in names)
    header += (f"{names[1] + '/' + names[0]:>14}" if ratio else "") + "   target"
    print(header)
    for key in variants[names[0]]:
        row = f"{key:32}" + "".join(f"{variants[n][key]:12.2f}" for n in names)
        if ratio:
            base = variants[names[0]][key]
            row += f"{variants[names[1]][key] / base:14.2f}" if base else f"{'':14}"
        print(row + f"   {TARGETS.get(key, '')}")
    measured = ", ".join(f"{k} {v:.2f}" for k, v in report["auto_selection_ms"].items())
    print(f"auto picks {report['auto_precision']} (measured ms: {measured or 'one variant'})")
    for section in ("serial", "startup"):
        for key, value in report.get(section, {}).items():
            print(f"{key:32}{value:12.2f}   {TARGETS.get(key, '')}")
