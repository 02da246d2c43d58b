"""`python -m export` / `rescue-export`: a GAN checkpoint → a verified ONNX bundle.

    python -m export --checkpoint runs/gan/checkpoint.pt --out bundles/rescue --quantize

Flags are checked before any work; every expected failure (missing or corrupted checkpoint,
dataset problem, parity or quality-gate failure, existing output) is one line on stderr and a
non-zero exit, and leaves any existing bundle untouched. On success the bundle's path is the only
line on stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from edge_runtime.stdio import quiet_on_closed_pipe
from train.cli import missing_extra

log = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_FAILED = 1


class _UsageError(Exception):
    """A flag argparse rejected; `main` prints it as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (no usage block) and lets `main` return 2."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    # Lazy: these import torch, and main first says which extra is missing on a robot install.
    from export.calibration import MIN_CALIBRATION
    from export.pipeline import DEFAULT_FP32_FORM, DEFAULT_SUBPIXEL
    from export.prepare import GENERATOR_FORMS, SUBPIXEL_FORMS

    p = _Parser(
        prog="rescue-export",
        description="Export a GAN checkpoint to a verified ONNX bundle "
        "(fp32, plus int8 with --quantize).",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="GAN checkpoint (kind 'gan')")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    p.add_argument("--quantize", action="store_true", help="also build and gate the int8 variant")
    p.add_argument(
        "--data",
        type=Path,
        help="dataset HDF5 whose train captions calibrate int8 "
        "(default: the checkpoint's config['data'])",
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument(
        "--allow-lossy",
        action="store_true",
        help="ship an int8 variant that fails the quality gate (marked gate_passed=false)",
    )
    p.add_argument(
        "--oracle",
        type=Path,
        help="attribute-oracle checkpoint: record its accuracy on int8 vs fp32",
    )
    p.add_argument(
        "--force-oracle",
        action="store_true",
        help="use an --oracle that fails its honesty checks (recorded in the manifest)",
    )
    p.add_argument("--name", help="bundle name in the manifest (default: the --out directory name)")
    p.add_argument(
        "--subpixel",
        choices=SUBPIXEL_FORMS,
        default=DEFAULT_SUBPIXEL,
        help=f"sub-pixel rewrite of the int8 generator (default {DEFAULT_SUBPIXEL}, "
        "the fastest measured)",
    )
    p.add_argument(
        "--fp32-form",
        choices=GENERATOR_FORMS,
        default=DEFAULT_FP32_FORM,
        help=f"form of the fp32 generator (default {DEFAULT_FP32_FORM}: batch norm folded, "
        "transposed convolutions kept, the fastest fp32 measured)",
    )
    p.add_argument(
        "--calibration-size",
        type=int,
        default=512,
        help=f"training captions for int8 calibration (at least {MIN_CALIBRATION})",
    )
    p.add_argument(
        "--min-psnr", type=float, default=30.0, help="quality gate: PSNR of int8 vs fp32 in dB"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _validate(args: argparse.Namespace) -> str | None:
    """The first flag problem, as one line, or None."""
    from export.calibration import MIN_CALIBRATION  # lazy: imports torch (see build_parser)

    if not args.checkpoint.is_file():
        return f"--checkpoint {args.checkpoint}: file not found"
    if args.out.exists() and not args.force:
        return f"--out {args.out}: already exists (use --force to replace it)"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out}: exists and is not a directory"
    if args.data is not None and not args.data.is_file():
        return f"--data {args.data}: file not found"
    if args.data is not None and not args.quantize:
        return "--data is only used with --quantize"
    if args.allow_lossy and not args.quantize:
        return "--allow-lossy is only used with --quantize"
    if args.oracle is not None and not args.quantize:
        return "--oracle is only used with --quantize"
    if args.force_oracle and args.oracle is None:
        return "--force-oracle is only used with --oracle"
    if args.oracle is not None and not args.oracle.is_file():
        return f"--oracle {args.oracle}: file not found"
    if args.calibration_size < MIN_CALIBRATION:
        return f"--calibration-size {args.calibration_size}: at least {MIN_CALIBRATION} captions"
    if not 0 < args.min_psnr < 100:
        return f"--min-psnr {args.min_psnr}: must be between 0 and 100 dB"
    return None


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    """Parse flags, export, print the bundle path; one error line and non-zero on failure."""
    problem = missing_extra("rescue-export", "export", ("torch", "onnx", "h5py"))
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(f"rescue-export: error: {err} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    problem = _validate(args)
    if problem:
        print(f"rescue-export: error: {problem}", file=sys.stderr)
        return EXIT_USAGE

    # Lazy like build_parser's: torch and onnx load after the missing-extra check in main.
    from export.errors import ExportError
    from export.pipeline import ExportOptions, export_bundle
    from train.errors import BAD_INPUT, first_line

    options = ExportOptions(
        checkpoint=args.checkpoint,
        out=args.out,
        quantize=args.quantize,
        data=args.data,
        force=args.force,
        allow_lossy=args.allow_lossy,
        oracle=args.oracle,
        force_oracle=args.force_oracle,
        name=args.name,
        subpixel=args.subpixel,
        fp32_form=args.fp32_form,
        calibration_size=args.calibration_size,
        min_psnr_db=args.min_psnr,
    )
    try:
        export_bundle(options)
    except (*BAD_INPUT, ExportError) as err:
        print(f"rescue-export: error: {first_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    print(args.out)
    return 0
