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
from typing import TYPE_CHECKING, NoReturn

from edge_runtime.stdio import quiet_on_closed_pipe
from train import options
from train.cli import missing_extra
from train.errors import BAD_INPUT, ConfigError, first_line

if TYPE_CHECKING:
    from export.pipeline import ExportFlags

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
    """The command-line flags, generated from `ExportFlags`, then `-v` (logging, not export)."""
    # Lazy: these import torch, and main first says which extra is missing on a robot install.
    from export.pipeline import ExportFlags

    p = _Parser(
        prog="rescue-export",
        description="Export a GAN checkpoint to a verified ONNX bundle "
        "(fp32, plus int8 with --quantize).",
    )
    options.build_parser(ExportFlags, p, given_only=False)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _check_flags(flags: ExportFlags) -> None:
    """Raise `ConfigError` naming the first flag problem: declared ranges, then files and
    combinations, all before any work."""
    options.check_ranges(flags)
    if not flags.checkpoint.is_file():
        raise ConfigError(f"--checkpoint {flags.checkpoint}: file not found")
    if flags.out.exists() and not flags.force:
        raise ConfigError(f"--out {flags.out}: already exists (use --force to replace it)")
    if flags.out.exists() and not flags.out.is_dir():
        raise ConfigError(f"--out {flags.out}: exists and is not a directory")
    if flags.data is not None and not flags.data.is_file():
        raise ConfigError(f"--data {flags.data}: file not found")
    if flags.data is not None and not flags.quantize:
        raise ConfigError("--data is only used with --quantize")
    if flags.allow_lossy and not flags.quantize:
        raise ConfigError("--allow-lossy is only used with --quantize")
    if flags.oracle is not None and not flags.quantize:
        raise ConfigError("--oracle is only used with --quantize")
    if flags.force_oracle and flags.oracle is None:
        raise ConfigError("--force-oracle is only used with --oracle")
    if flags.oracle is not None and not flags.oracle.is_file():
        raise ConfigError(f"--oracle {flags.oracle}: file not found")


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
    verbose = vars(args).pop("verbose")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Lazy like build_parser's: torch and onnx load after the missing-extra check in main.
    from export.errors import ExportError
    from export.pipeline import ExportFlags, export_bundle

    flags = ExportFlags(**vars(args))
    try:
        _check_flags(flags)
    except ConfigError as err:
        print(f"rescue-export: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        export_bundle(flags.to_options())
    except (*BAD_INPUT, ExportError) as err:
        print(f"rescue-export: error: {first_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    print(args.out)
    return 0
