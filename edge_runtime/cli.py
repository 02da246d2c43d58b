"""`rescue-edge` / `python -m edge_runtime`: the robot's command line.

  info      verify a bundle and describe it
  generate  caption → PNG files (paths printed one per line)
  serve     the serial service (--serial PORT), or one caption per stdin line (--stdin)
  client    the operator's side of the serial link: send captions, fetch the images
  keygen    write a new operator-link key file (mode 0600) for both ends of the link
  sign      sign request lines with the key, to paste into a serial terminal
  find      look for the described person in camera frames (folder, video or camera)
  bench     speed and memory figures on this machine (printed, never judged)

The bundle is --bundle, else $RESCUE_EDGE_BUNDLE, else /opt/rescue-t2i/bundle; the output
directory is --out, else $RESCUE_EDGE_OUT, else ./rescue-edge-images. Exit status: 0 done,
1 the machine failed us (output not writable, serial port gone), 2 bad input (flags, bundle,
caption); each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime import __version__, protocol, signing, tokenizer
from edge_runtime.bundle import BundleError, load_bundle
from edge_runtime.canonical import DRAW_CHOICES, DRAW_UNDERSTOOD
from edge_runtime.stdio import bounded_lines, quiet_on_closed_pipe

if TYPE_CHECKING:  # imported lazily at run time: `rescue-edge --help` stays instant
    from edge_runtime.client import OperatorClient
    from edge_runtime.engine import Engine

log = logging.getLogger("edge_runtime.cli")

BUNDLE_ENV = "RESCUE_EDGE_BUNDLE"
OUT_ENV = "RESCUE_EDGE_OUT"
DEFAULT_BUNDLE = Path("/opt/rescue-t2i/bundle")
DEFAULT_OUT = Path("rescue-edge-images")
KEY_ENV = "RESCUE_EDGE_KEY_FILE"
# Disk budget defaults (docs/PROTOCOL.md § Disk budget); the unit sets them through these.
BUDGET_ENV = {
    "max_bytes": ("RESCUE_EDGE_OUT_MAX_BYTES", "1G"),
    "max_files": ("RESCUE_EDGE_OUT_MAX_FILES", "10000"),
    "min_free": ("RESCUE_EDGE_OUT_MIN_FREE", "256M"),
}
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_CLI_IMAGES = 256


_INPUT_CODES = frozenset(
    {protocol.Code.BAD_CAPTION, protocol.Code.BAD_ARGS, protocol.Code.OFF_DOMAIN}
)
"""Robot error codes that mean the operator's input was wrong (exit 2, not 1)."""


class UsageError(ValueError):
    """A flag value that cannot work; the message names the flag."""


class _StderrHandler(logging.Handler):
    """Logs to whatever `sys.stderr` is at the time (tests swap it between calls of `main`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(level: int) -> None:
    root = logging.getLogger("edge_runtime")
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("rescue-edge: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def default_bundle() -> Path:
    """--bundle's default: $RESCUE_EDGE_BUNDLE, else /opt/rescue-t2i/bundle."""
    return Path(os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE)


def default_out() -> Path:
    """--out's default: $RESCUE_EDGE_OUT, else ./rescue-edge-images."""
    return Path(os.environ.get(OUT_ENV) or DEFAULT_OUT)


def _bundle_path(args: argparse.Namespace) -> Path:
    path = args.bundle if args.bundle is not None else default_bundle()
    if not path.exists():
        source = "--bundle" if args.bundle is not None else (
            f"${BUNDLE_ENV}" if os.environ.get(BUNDLE_ENV) else "the default bundle path"
        )  # fmt: skip
        raise BundleError(
            f"{path}: no bundle there ({source}); pass --bundle PATH or set ${BUNDLE_ENV}"
        )
    return path


def _engine(args: argparse.Namespace, *, warmup: bool = True) -> Engine:
    from edge_runtime.engine import Engine

    return Engine(
        _bundle_path(args),
        precision=args.precision,
        provider=args.provider,
        threads=args.threads,
        warmup=warmup,
        draw=getattr(args, "draw", DRAW_UNDERSTOOD),
    )


def _size(name: str, text: str, *, count: bool = False) -> int | None:
    """'512M' → 536870912 (K, M, G, T are powers of 1024); 'none' → None (no limit)."""
    value = text.strip().upper()
    if value == "NONE":
        return None
    number, unit = (value, "") if count or value[-1:].isdigit() else (value[:-1], value[-1:])
    if not number.isdigit() or unit not in _SIZE_UNITS:
        what = "a count" if count else "a size such as 512M, 2G or 100000"
        raise UsageError(f"{name}: expected {what} or 'none', got {text!r}")
    return int(number) * _SIZE_UNITS[unit]


def _budget(args: argparse.Namespace) -> Any:
    from edge_runtime.images import Budget

    values = {}
    for key, (env, default) in BUDGET_ENV.items():
        flag = f"--out-{key.replace('_', '-')}"
        given = getattr(args, f"out_{key}")
        text, source = (given, flag) if given is not None else (os.environ.get(env) or default, env)
        values[key] = _size(source, text, count=key == "max_files")
    return Budget(
        max_bytes=values["max_bytes"],
        max_files=values["max_files"],
        min_free_bytes=values["min_free"] or 0,
    )


def _service_key(args: argparse.Namespace) -> bytes | None:
    """The signing key: --key-file, else the systemd credential; None only with --insecure."""
    credential = signing.credential_path()
    if args.key_file is not None and args.insecure:
        raise UsageError("--insecure and --key-file contradict each other; pick one")
    if args.key_file is not None:
        return signing.read_key_file(args.key_file)
    if credential is not None and not args.insecure:
        # systemd keeps credentials in a directory only the unit's user can read.
        return signing.read_key_file(credential, private=False)
    if args.insecure:
        return None
    raise UsageError(
        "no operator-link key: pass --key-file PATH (from `rescue-edge keygen`), load it as "
        f"the systemd credential {signing.CREDENTIAL_NAME} (LoadCredential=), or run --insecure "
        "to accept unsigned lines from anyone in radio range"
    )


def _client_key(args: argparse.Namespace) -> bytes | None:
    path = args.key_file if args.key_file is not None else os.environ.get(KEY_ENV)
    if path and args.insecure:
        raise UsageError("--insecure and a key file contradict each other; pick one")
    if path:
        return signing.read_key_file(Path(path))
    if args.insecure:
        return None
    raise UsageError(
        f"no operator-link key: pass --key-file PATH or set ${KEY_ENV} (the robot's key), or "
        "--insecure for a robot started --insecure"
    )


def _int_in(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise UsageError(f"{name}: must be {low}..{high}, got {value}")
    return value


# ------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------


def _info(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from edge_runtime.engine import Engine, check_variants, open_session

    path = _bundle_path(args)
    bundle = load_bundle(path, open_session)
    # One real inference per variant, as the engine runs it: what `info` accepts, `serve` serves.
    ran = check_variants(bundle)
    m = bundle.manifest
    summary: dict[str, Any] = {
        "bundle": str(bundle.path),
        "name": m.name,
        "schema_version": m.schema_version,
        "model": m.model.to_dict(),
        "variants": {
            k: {
                "gate_passed": v.gate_passed,
                "quality": v.quality,
                "latency_ms": v.latency_ms,
                **({"readback": v.readback} if v.readback else {}),
                **({"frame_scorer": v.frame_scorer} if v.frame_scorer else {}),
                **({"canonical": v.canonical} if v.canonical else {}),
            }
            for k, v in m.variants.items()
        },
        "readback": m.readback.to_dict() if m.readback is not None else None,
        "search": m.search.to_dict() if m.search is not None else None,
        "graphs": {k: {"file": g.file, "size_bytes": g.size_bytes} for k, g in m.graphs.items()},
        "inference_check": ran,
        "providers_available": ort.get_available_providers(),
        "onnxruntime": ort.__version__,
    }
    if args.measure:
        engine = Engine(path, precision="auto", provider=args.provider, threads=args.threads)
        summary["measured_here"] = {
            "caption_to_image_median_ms": engine.info.selection_ms,
            "auto_picks": engine.info.precision,
            "provider": engine.info.provider,
            "threads": engine.info.threads,
        }
    print(json.dumps(summary, indent=2))
    return 0


# ------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    from edge_runtime.images import OutputDir, contact_sheet, encode_png, upscale

    _int_in("-n", args.n, 1, MAX_CLI_IMAGES)
    seed = secrets.randbelow(protocol.MAX_SEED + 1) if args.seed is None else args.seed
    _int_in("--seed", seed, 0, protocol.MAX_SEED)
    if args.upscale is not None:
        _int_in("--upscale", args.upscale, 16, 4096)
    encoded = tokenizer.encode(args.caption)  # a bad caption fails before the bundle loads
    engine = _engine(args, warmup=False)
    # What the robot understood goes to stderr before any image (stdout stays one path a line).
    understood = engine.understand(args.caption)
    if understood is not None and not args.quiet:  # -q: errors only
        print(understood.summary(), file=sys.stderr)
        for line in (understood.warning, understood.unknown_line):
            if line:
                print(line, file=sys.stderr)
        if args.strict and understood.is_off_domain:
            raise UsageError(
                f"--strict: the caption reads as nothing this robot knows (off-domain "
                f"{understood.off_domain:.2f}); no image written"
            )
    elif args.strict:
        raise UsageError(f"--strict: bundle {engine.info.bundle} has no read-back to check with")
    sys.stderr.flush()
    images = engine.generate(args.caption, n=args.n, seed=seed)  # (n, H, W, 3) uint8
    if engine.draws_understood and understood is not None and not args.quiet:
        # What each picture shows (its open attributes were chosen for it).
        drawn = engine.drawn_captions([(args.caption, seed, k) for k in range(args.n)])
        for k, caption in enumerate(drawn):
            print(f"#{k} drawn as: {caption}", file=sys.stderr)
    size = args.upscale or engine.model.image_size
    output = OutputDir(args.out if args.out is not None else default_out())
    names = output.names("cli", seed, range(args.n))
    files = [
        (name, encode_png(upscale(img, size))) for name, img in zip(names, images, strict=True)
    ]
    sheet = None
    if args.sheet:
        labels = [f"seed {seed} #{k}" for k in range(args.n)]
        # The caption as the model read it, and under it what the robot understood.
        title = encoded.text + (f"\n{understood.summary()}" if understood is not None else "")
        sheet = contact_sheet(images, title, labels, tile=max(size, 96))
        (sheet_name,) = output.names("cli", seed, ["sheet"])
        files.append((sheet_name, encode_png(sheet)))
    saved = output.save(files)
    for item in saved:
        print(item.path)
    sys.stdout.flush()
    if args.show:
        problem = _show(sheet if sheet is not None else images, size)
        if problem:
            print(f"rescue-edge: --show: {problem}; the files above were written", file=sys.stderr)
    return 0


def _gui_problem() -> str | None:
    """Why OpenCV cannot open a window here, or None when it can."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:") and line.split(":", 1)[1].strip().upper() == "NONE":
            return "this OpenCV build has no GUI (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "no display ($DISPLAY is not set)"
    return None


def _show(images: Any, size: int) -> str | None:
    import cv2
    import numpy as np

    from edge_runtime.images import upscale

    problem = _gui_problem()
    if problem:
        return problem
    if images.ndim == 4:  # (n, H, W, 3): side by side, at least 256 px tall to be seen
        tile = max(size, 256)
        images = np.concatenate([upscale(img, tile) for img in images], axis=1)
    try:
        cv2.imshow("rescue-edge", cv2.cvtColor(images, cv2.COLOR_RGB2BGR))
        cv2.waitKey(0)
        cv2.destroyAllWindows()
    except cv2.error as err:
        return f"OpenCV cannot show a window: {str(err).strip().splitlines()[-1]}"
    return None


# ------------------------------------------------------------------------------------------
# serve
# ------------------------------------------------------------------------------------------


def _find_source(args: argparse.Namespace) -> Any:
    """`serve`'s frame source for `find` (None without one): named here, never over the link."""
    from edge_runtime.find import FrameSource

    if args.find_frames is None and args.find_video is None and args.find_camera is None:
        return None
    if args.find_frames is not None and not args.find_frames.is_dir():
        raise UsageError(f"--find-frames {args.find_frames}: not a folder")
    if args.find_video is not None and not args.find_video.is_file():
        raise UsageError(f"--find-video {args.find_video}: file not found")
    if args.find_camera is not None:
        _int_in("--find-camera", args.find_camera, 0, 63)
    return FrameSource(folder=args.find_frames, video=args.find_video, camera=args.find_camera)


def _serve(args: argparse.Namespace) -> int:
    from edge_runtime.images import OutputDir
    from edge_runtime.sdnotify import Notifier
    from edge_runtime.service import Service, ServiceConfig, serve_lines

    out = args.out if args.out is not None else default_out()
    _int_in("--max-line", args.max_line, 64, 1 << 16)
    if args.stdin:
        _int_in("-n", args.n, 1, MAX_CLI_IMAGES)
        if args.seed is not None:
            _int_in("--seed", args.seed, 0, protocol.MAX_SEED)
        engine = _engine(args)
        lines = bounded_lines(sys.stdin, args.max_line)  # a huge line is never held whole
        failures = serve_lines(
            engine, OutputDir(out, durable=not args.no_fsync), lines, sys.stdout,
            n=args.n, seed=args.seed,
        )  # fmt: skip
        return 1 if failures else 0
    _int_in("--queue", args.queue, 1, 1024)
    _int_in("--max-images", args.max_images, 1, MAX_CLI_IMAGES)
    _int_in("--baud", args.baud, 50, 20_000_000)
    key = _service_key(args)
    # A dot file: never a result name, so `fetch` cannot serve it nor the disk budget prune it
    # (the unit's StateDirectory is the images folder itself).
    link_state = args.link_state or out / ".link-state"
    config = ServiceConfig(
        port=args.serial,
        out_dir=out,
        baud=args.baud,
        max_line=args.max_line,
        max_images=args.max_images,
        queue_size=args.queue,
        durable=not args.no_fsync,
        key=key,
        link_state=link_state,
        budget=_budget(args),
        delete_after_fetch=args.delete_after_fetch,
        frames=_find_source(args),
    )
    notifier = Notifier.from_env()
    engine = _engine(args)
    log.info(
        "bundle %s: precision %s on %s, %d thread(s), ready in %.0f ms%s",
        engine.info.bundle_id,
        engine.info.precision,
        engine.info.provider,
        engine.info.threads,
        engine.info.startup_ms,
        f" (measured ms: {engine.info.selection_ms})" if engine.info.selection_ms else "",
    )
    service = Service(engine, config, notifier=notifier)

    def stop(signum: int, _frame: object) -> None:
        log.info("%s: finishing the current request, then exiting", signal.Signals(signum).name)
        service.request_stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return service.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        notifier.close()


# ------------------------------------------------------------------------------------------
# client
# ------------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> int:
    from edge_runtime.client import ClientError, OperatorClient

    _int_in("-n", args.n, 1, protocol.MAX_IMAGES)
    if args.seed is not None:
        _int_in("--seed", args.seed, 0, protocol.MAX_SEED)
    out = args.out if args.out is not None else Path("received")
    _int_in("--link", args.link, 0, signing.MAX_OPERATOR_LINK)
    key = _client_key(args)
    client = OperatorClient.open(
        args.serial, args.baud, timeout=args.timeout, key=key, link=args.link
    )
    with client:
        if args.ping:
            print(f"{client.ping():.1f}")
            return 0
        if args.status:
            print(json.dumps(client.status(), indent=2))
            return 0
        if args.captions:
            for caption in args.captions:
                if args.understand:
                    _client_understand(client, caption)
                elif args.find:
                    _client_find(client, caption, args, out)
                else:
                    _client_caption(client, caption, args, out)
            return 0
        interactive = sys.stdin.isatty()
        failures = 0
        while True:
            if interactive:
                print(
                    "caption (or /understand CAPTION, /find CAPTION, /ping, /status, /help, "
                    "/quit)> ",
                    end="",
                    file=sys.stderr,
                )
                sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                if line in ("/quit", "/exit"):
                    break
                if line == "/ping":
                    print(f"{client.ping():.1f} ms")
                elif line == "/status":
                    for key, value in client.status().items():
                        print(f"{key}={value}")
                elif line == "/help":
                    print("\n".join(client.help()))
                elif line.startswith("/understand "):
                    _client_understand(client, line.removeprefix("/understand "))
                elif line.startswith("/find "):
                    _client_find(client, line.removeprefix("/find "), args, out)
                elif args.understand:
                    _client_understand(client, line)
                elif args.find:
                    _client_find(client, line, args, out)
                else:
                    _client_caption(client, line, args, out)
            except (ClientError, tokenizer.CaptionError) as err:
                failures += 1
                print(f"rescue-edge: {err}", file=sys.stderr)
            sys.stdout.flush()
        return 1 if failures else 0


def _client_caption(
    client: OperatorClient, caption: str, args: argparse.Namespace, out: Path
) -> None:
    tokenizer.encode(caption)  # refuse an empty caption here rather than over the radio
    result = client.generate(caption, n=args.n, seed=args.seed, strict=args.strict)
    if result.readback is not None and not args.quiet:
        _print_readback(result.readback)
    log.info(
        "%s: seed %d, robot %.1f ms (inference %.1f ms), round trip %.1f ms",
        result.request_id, result.seed, result.ms, result.infer_ms, result.round_trip_ms,
    )  # fmt: skip
    for name, sha in result.files:
        if args.no_fetch:
            print(name)
        else:
            print(client.fetch(name, out, sha))
        sys.stdout.flush()


def _client_find(client: OperatorClient, caption: str, args: argparse.Namespace, out: Path) -> None:
    """Serial `find`: one JSON line (frame, verdict, boxes, overlay path) on stdout."""
    tokenizer.encode(caption)
    result = client.find(caption)
    name, sha = result.overlay
    line = {
        "frame": result.frame,
        "present": result.present,
        "best": result.best,
        "threshold": result.threshold,
        "boxes": [list(box) for box in result.boxes],
        "overlay": name if args.no_fetch else str(client.fetch(name, out, sha)),
    }
    print(json.dumps(line))
    sys.stdout.flush()


def _client_understand(client: OperatorClient, caption: str) -> None:
    tokenizer.encode(caption)
    _print_readback(client.understand(caption))


def _print_readback(understood: Any) -> None:
    """The robot's read-back (a client.ReadBack) on stderr, before any image is fetched: stdout
    stays one path (or file name) a line."""
    print(understood.summary(), file=sys.stderr)
    for line in (understood.warning_line(), understood.unknown_line):
        if line:
            print(line, file=sys.stderr)
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------
# keygen and sign
# ------------------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    path: Path = args.path
    signing.write_key_file(path, signing.generate_key(), force=args.force)
    where = path.absolute()
    print(
        f"""wrote a new operator-link key to {where} (mode 0600; keep it secret)

robot (systemd): install it readable by root only, and let the unit load it as a credential:
  sudo install -D -m 0600 -o root -g root {where} /etc/rescue-t2i/operator.key
  # deploy/rescue-t2i.service: LoadCredential={signing.CREDENTIAL_NAME}:/etc/rescue-t2i/operator.key
  sudo systemctl restart rescue-t2i
robot (by hand):   rescue-edge serve --serial PORT --key-file {where}
ground station:    copy it over a trusted channel (USB stick, ssh), never over the radio, then
  rescue-edge client --serial PORT --key-file {where} --ping
  (or export {KEY_ENV}={where})
terminal (miniterm): rescue-edge sign --key-file {where} "1 status"   # paste the printed line
Both ends need the same key; a new key replaces the old on both (docs/PROTOCOL.md § Rotating)."""
    )
    return 0


def _sign(args: argparse.Namespace) -> int:
    _int_in("--link", args.link, 0, signing.MAX_OPERATOR_LINK)
    signer = signing.Signer(signing.read_key_file(args.key_file), args.link)
    lines = args.lines or (line.rstrip("\r\n") for line in sys.stdin)
    for line in lines:
        text = line.strip()
        if text.startswith("$"):
            text = text[1:]
        if not text:
            continue
        if "\r" in text or "\n" in text:
            raise UsageError("sign: one request per line")
        print(signer.sign(text).decode("utf-8"), flush=True)
    return 0


# ------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------


def _find(args: argparse.Namespace) -> int:
    """`find`: one JSON line per frame on stdout (boxes, verdict, overlay path)."""
    import resource
    import time

    from edge_runtime.find import FrameSource, FrameSourceError, find_in_frame, overlay
    from edge_runtime.images import OutputDir, encode_png

    if args.max_frames is not None:
        _int_in("--max-frames", args.max_frames, 1, 1_000_000)
    tokenizer.encode(args.caption)  # a bad caption fails before the bundle loads
    source = FrameSource(folder=args.frames, video=args.video, camera=args.camera)
    engine = _engine(args, warmup=False)
    if not engine.has_search:
        raise UsageError(
            f"bundle {engine.info.bundle} has no frame scorer (export.search adds one)"
        )
    embedding = engine.embed([args.caption])  # (1, E)
    reference = None if args.no_overlay else engine.generate(args.caption, n=1, seed=0)[0]
    output = OutputDir(args.out if args.out is not None else default_out())
    seconds, count = 0.0, 0
    try:
        for index, (frame_id, frame) in enumerate(source.frames(args.max_frames)):
            start = time.perf_counter()
            found = find_in_frame(engine, embedding, frame, frame_id)
            seconds += time.perf_counter() - start
            count += 1
            line = found.to_json()
            if not args.no_overlay:
                (name,) = output.names("find", 0, [index])
                (saved,) = output.save(
                    [(name, encode_png(overlay(frame, found, reference, args.caption)))]
                )
                line["overlay"] = str(saved.path)
            print(json.dumps(line), flush=True)
    except FrameSourceError as err:
        raise UsageError(str(err)) from None
    if count == 0:
        raise UsageError(f"{source.describe()}: no frames")
    if args.bench:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        spec = engine.manifest.search
        print(
            f"find bench: {count} frames, {count / seconds:.1f} frames/s (scorer + boxes, "
            f"{spec.frame_size}² input, precision {engine.precision}, {args.threads} thread(s)), "
            f"peak memory {peak:.0f} MiB",
            file=sys.stderr,
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from edge_runtime import bench

    return bench.run(args, _bundle_path(args))


# ------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------


def _engine_args(parser: argparse.ArgumentParser, *, precision_choices: bool = True) -> None:
    parser.add_argument(
        "--bundle", type=Path, default=None,
        help=f"bundle directory (default: ${BUNDLE_ENV}, else {DEFAULT_BUNDLE})",
    )  # fmt: skip
    parser.add_argument(
        "--precision", default="auto",
        help="variant to run: auto (measure the variants that passed export's quality gate and "
        "take the fastest), fp32, int8, ... (default auto)",
    )  # fmt: skip
    parser.add_argument(
        "--provider", default="auto",
        help="onnxruntime execution provider: auto (CUDA when present, else CPU), cpu, cuda, "
        "tensorrt, or a full provider name (default auto)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)"
    )
    parser.add_argument(
        "--draw", choices=DRAW_CHOICES, default=DRAW_UNDERSTOOD,
        help="understood: draw what the read-back understood, worded as a training caption, "
        "with each attribute the caption leaves open chosen per image (bundles without a "
        "canonical caption, and off-domain captions, draw the words); caption: draw the words "
        "themselves (default understood)",
    )  # fmt: skip


def _out_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"output directory (default: ${OUT_ENV}, else ./{DEFAULT_OUT})",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The `rescue-edge` argument parser."""
    parser = argparse.ArgumentParser(
        prog="rescue-edge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rescue-edge {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser(
        "info", help="verify a bundle (hashes, graph inputs/outputs), describe it"
    )
    info.add_argument("bundle", type=Path, nargs="?", default=None)
    info.add_argument(
        "--measure", action="store_true", help="also time each variant on this machine"
    )
    info.add_argument("--provider", default="auto", help="provider for --measure")
    info.add_argument("--threads", type=int, default=1, help="threads for --measure")
    info.set_defaults(func=_info)

    gen = sub.add_parser("generate", help="caption → PNG files; prints their paths")
    gen.add_argument("caption")
    gen.add_argument("-n", type=int, default=1, help="number of images (default 1)")
    gen.add_argument("--seed", type=int, default=None, help="noise seed (default: random)")
    _out_arg(gen)
    gen.add_argument(
        "--upscale", type=int, default=None, metavar="PX",
        help="write PX×PX images (nearest neighbour) instead of the model's size",
    )  # fmt: skip
    gen.add_argument(
        "--sheet", action="store_true", help="also write a contact sheet with the caption"
    )
    gen.add_argument("--show", action="store_true", help="display the result (needs a GUI)")
    gen.add_argument(
        "--strict", action="store_true",
        help="write no image when the caption reads as off-domain (exit 2)",
    )  # fmt: skip
    _engine_args(gen)
    gen.set_defaults(func=_generate)

    serve = sub.add_parser("serve", help="serve requests from a serial port or stdin")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--serial", metavar="PORT", help="device path or pyserial URL")
    source.add_argument(
        "--stdin", action="store_true",
        help="one caption per line; one line of tab-separated PNG paths per caption",
    )  # fmt: skip
    serve.add_argument("--baud", type=int, default=115200)
    _out_arg(serve)
    serve.add_argument("--queue", type=int, default=4, help="gen requests waiting (default 4)")
    serve.add_argument(
        "--max-line", type=int, default=protocol.MAX_LINE,
        help="longest request line in bytes, serial or --stdin (longer ones are refused unread)",
    )  # fmt: skip
    serve.add_argument("--max-images", type=int, default=protocol.MAX_IMAGES, help="largest n")
    serve.add_argument("--no-fsync", action="store_true", help="skip fsync of each image")
    serve.add_argument("-n", type=int, default=1, help="--stdin: images per caption")
    serve.add_argument("--seed", type=int, default=None, help="--stdin: seed for every line")
    serve.add_argument(
        "--key-file", type=Path, default=None, metavar="PATH",
        help=f"operator-link key (default: the systemd credential {signing.CREDENTIAL_NAME})",
    )  # fmt: skip
    serve.add_argument(
        "--insecure", action="store_true",
        help="serve without a key: anyone in radio range can command the robot",
    )  # fmt: skip
    serve.add_argument(
        "--link-state", type=Path, default=None, metavar="PATH",
        help="last timestamp per link, kept across restarts (default: OUT/.link-state)",
    )  # fmt: skip
    for key, (env, default) in BUDGET_ENV.items():
        serve.add_argument(
            f"--out-{key.replace('_', '-')}", default=None, metavar="N",
            help={
                "max_bytes": "largest total size of the images kept",
                "max_files": "most images kept",
                "min_free": "free space the filesystem keeps",
            }[key] + f"; 'none' for no limit (default ${env}, else {default})",
        )  # fmt: skip
    serve.add_argument(
        "--delete-after-fetch", action="store_true",
        help="delete an image once all its chunks were sent (a resumed fetch then fails)",
    )  # fmt: skip
    frame_source = serve.add_mutually_exclusive_group()
    frame_source.add_argument(
        "--find-frames", type=Path, default=None, metavar="DIR",
        help="frame source of serial find: the newest image in DIR (e.g. where a camera writes)",
    )  # fmt: skip
    frame_source.add_argument(
        "--find-camera", type=int, default=None, metavar="N",
        help="frame source of serial find: camera N (OpenCV)",
    )  # fmt: skip
    frame_source.add_argument(
        "--find-video", type=Path, default=None, metavar="FILE",
        help="frame source of serial find: a video's first frame (testing)",
    )  # fmt: skip
    _engine_args(serve)
    serve.set_defaults(func=_serve)

    client = sub.add_parser("client", help="operator side: send captions, fetch the images")
    client.add_argument("--serial", metavar="PORT", required=True, help="device path or URL")
    client.add_argument("--baud", type=int, default=115200)
    client.add_argument("captions", nargs="*", help="captions (default: one per stdin line)")
    client.add_argument("-n", type=int, default=1, help="images per caption")
    client.add_argument("--seed", type=int, default=None, help="seed (default: random)")
    client.add_argument(
        "--out", type=Path, default=None, help="where fetched images go (default ./received)"
    )
    client.add_argument("--no-fetch", action="store_true", help="print robot file names only")
    client.add_argument("--timeout", type=float, default=10.0, help="seconds per reply")
    client.add_argument("--ping", action="store_true", help="print a ping's round trip in ms")
    client.add_argument("--status", action="store_true", help="print the robot's status (JSON)")
    client.add_argument(
        "--understand", action="store_true",
        help="only ask what the robot reads in each caption (no image)",
    )  # fmt: skip
    client.add_argument(
        "--strict", action="store_true",
        help="the robot draws no image for a caption it reads as off-domain",
    )  # fmt: skip
    client.add_argument(
        "--find", action="store_true",
        help="look for each caption's person in the robot's camera frame (boxes + overlay)",
    )  # fmt: skip
    client.add_argument(
        "--key-file", type=Path, default=None, metavar="PATH",
        help=f"the robot's operator-link key (default ${KEY_ENV})",
    )  # fmt: skip
    client.add_argument(
        "--link", type=int, default=1, help="link id 0..127, one per ground station (default 1)"
    )
    client.add_argument(
        "--insecure", action="store_true", help="no key: talk to a robot started --insecure"
    )
    client.set_defaults(func=_client)

    keygen = sub.add_parser("keygen", help="write a new operator-link key file (mode 0600)")
    keygen.add_argument("path", type=Path, help="key file to write")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")
    keygen.set_defaults(func=_keygen)

    sign = sub.add_parser("sign", help="sign request lines to paste into a serial terminal")
    sign.add_argument("lines", nargs="*", help="request lines (default: one per stdin line)")
    sign.add_argument("--key-file", type=Path, required=True, metavar="PATH")
    sign.add_argument("--link", type=int, default=2, help="link id 0..127 (default 2)")
    sign.set_defaults(func=_sign)

    find = sub.add_parser("find", help="look for the described person in camera frames")
    find.add_argument("caption", help="the person to look for, e.g. 'a person in orange lying'")
    frames = find.add_mutually_exclusive_group(required=True)
    frames.add_argument("--frames", type=Path, metavar="DIR", help="folder of frames (by name)")
    frames.add_argument("--video", type=Path, metavar="FILE", help="video file (OpenCV)")
    frames.add_argument("--camera", type=int, metavar="N", help="camera index (OpenCV)")
    _out_arg(find)
    find.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    find.add_argument("--no-overlay", action="store_true", help="JSON lines only, no images")
    find.add_argument(
        "--bench", action="store_true", help="print frames/s and peak memory to stderr"
    )
    _engine_args(find)
    find.set_defaults(func=_find)

    from edge_runtime import bench

    bench_parser = sub.add_parser("bench", help="speed and memory on this machine (printed)")
    _engine_args(bench_parser)
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(func=_bench)
    return parser


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the command; failures become one line on stderr (see module doc)."""
    from edge_runtime.client import ClientError
    from edge_runtime.engine import EngineError
    from edge_runtime.images import OutputError

    args = build_parser().parse_args(argv)
    default_level = logging.INFO if args.command == "serve" and args.serial else logging.WARNING
    _setup_logging(
        logging.DEBUG if args.verbose else logging.ERROR if args.quiet else default_level
    )
    try:
        return int(args.func(args))
    except (
        BundleError, EngineError, UsageError, tokenizer.CaptionError, signing.KeyFileError,
    ) as err:  # fmt: skip
        print(f"rescue-edge: {err}", file=sys.stderr)
        return 2
    except ClientError as err:
        print(f"rescue-edge: {err}", file=sys.stderr)
        # The robot refused the caption or the options: bad input, as for every command.
        return 2 if err.code in _INPUT_CODES else 1
    except OutputError as err:
        print(f"rescue-edge: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rescue-edge: interrupted", file=sys.stderr)
        return 130
