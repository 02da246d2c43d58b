"""`rescue-edge` / `python -m edge_runtime`: the robot's command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_runtime.bundle import BundleError, load_bundle


def _open_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _info(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle, _open_session)
    m = bundle.manifest
    summary = {
        "bundle": str(bundle.path),
        "name": m.name,
        "schema_version": m.schema_version,
        "model": m.model.to_dict(),
        "variants": {
            k: {"gate_passed": v.gate_passed, "quality": v.quality, "latency_ms": v.latency_ms}
            for k, v in m.variants.items()
        },
        "graphs": {k: {"file": g.file, "size_bytes": g.size_bytes} for k, g in m.graphs.items()},
    }
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rescue-edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser(
        "info", help="verify a bundle (hashes, graph inputs/outputs) and describe it"
    )
    info.add_argument("bundle", type=Path)
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the command; errors become one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BundleError as err:
        print(f"rescue-edge: {err}", file=sys.stderr)
        return 2
