"""`python -m train data info FILE [--verify]`: describe a dataset file as one JSON object.

Works on our schema and on peer GAN-CLS files. `--verify` loads every split through the same
reader training uses, so any bad record (undecodable image, non-UTF-8 or empty caption, wrong
size, truncated data) is reported as one line naming the file and key, with exit status 1.

`--verify` reads in a child process: a few damaged structures make libhdf5 itself crash (a
segmentation fault, which no Python code can catch) or hang (docs/DATA_FORMAT.md). In the child
that becomes one line naming the file and the signal, or the time limit, instead of a dead or
stuck command — what an operator checking a file of unknown origin needs.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train import options
from train.data.files import read_info, read_split
from train.data.schema import DataError
from train.options import REQUIRED, option


def describe(path: Path, verify: bool) -> dict[str, object]:
    """The JSON-able description of a dataset file."""
    info = read_info(path)
    splits: dict[str, dict[str, object]] = {
        s: {"images": info.split_sizes.get(s)} for s in info.splits
    }
    if verify:
        for name in info.splits:
            split = read_split(path, name)
            counts = split.caption_counts
            splits[name] = {
                "images": len(split),
                "captions_per_image": len(split.captions[0]) if len(split) else 0,
                "distinct_captions_min": int(counts.min()) if counts is not None and len(split)
                else None,
                "classes": int(np.unique(split.class_ids).size),
                "has_attributes": split.attributes is not None,
                # caption_stated: how many captions leave some attribute unstated.
                "partial_captions": None if split.caption_stated is None
                else int((split.caption_stated != (1 << len(info.attribute_names)) - 1).sum()),
                "image_mean_rgb": [round(float(v), 1) for v in split.images.mean((0, 1, 2))]
                if len(split)
                else None,
            }  # fmt: skip
    return {
        "path": str(path),
        "layout": info.layout,
        "dataset": info.dataset,
        "image_size": info.image_size,
        "splits": splits,
        "num_classes": len(info.class_names) or None,
        "attribute_names": info.attribute_names,
        "attribute_values": info.attribute_values,
        "augmentation": info.augmentation,
        "provenance": info.provenance,
        "verified": verify,
    }


VERIFY_TIMEOUT_S = 600.0
"""Default limit of `--verify`: reading CUB-sized files takes seconds; a hang takes forever."""


def _child_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "train.data.info", "--verify", "--in-process", str(path)]


def verify_isolated(path: Path, timeout_s: float = VERIFY_TIMEOUT_S) -> dict[str, object]:
    """`describe(path, verify=True)` in a child process; a crash or hang is a `DataError`."""
    try:
        done = subprocess.run(
            _child_command(path), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise DataError(
            f"{path}: verification did not finish in {timeout_s:g} s (libhdf5 hangs on some "
            "damaged structures; if the file is only very large, raise --timeout)"
        ) from None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        raise DataError(
            f"{path}: libhdf5 crashed ({name}) while reading the file: it is damaged; "
            "do not train on it"
        )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [
            f"verification failed (exit {done.returncode})"
        ]
        raise DataError(lines[-1] if lines[-1].startswith(str(path)) else f"{path}: {lines[-1]}")
    return json.loads(done.stdout)


@dataclass(frozen=True)
class InfoFlags:
    """The info command line, each argument declared once (`train.options`)."""

    path: Path = option(REQUIRED, "dataset HDF5 file (ours or a peer birds.hdf5)", positional=True)
    verify: bool = option(
        False, "read and validate every record", show_default=False, store_true=True
    )
    timeout: float = option(
        VERIFY_TIMEOUT_S,
        f"seconds --verify may take (default {VERIFY_TIMEOUT_S:g})",
        show_default=False,
        above=0,
    )
    in_process: bool = option(False, argparse.SUPPRESS, show_default=False, store_true=True)
    """The child of `verify_isolated`: reads here, in this process (hidden from --help)."""


def build_parser() -> argparse.ArgumentParser:
    """The info arguments, generated from `InfoFlags` (argparse checks the ranges)."""
    p = argparse.ArgumentParser(prog="python -m train data info", description=__doc__)
    return options.build_parser(InfoFlags, p, given_only=False, ranges_in_parser=True)


def main(argv: list[str] | None = None) -> int:
    """Print the description; exit 1 with one line on a bad file."""
    args = InfoFlags(**vars(build_parser().parse_args(argv)))
    try:
        if args.verify and not args.in_process:
            description = verify_isolated(args.path, args.timeout)
        else:
            description = describe(args.path, args.verify)
    except DataError as err:
        print(str(err), file=sys.stderr)
        return 1
    print(json.dumps(description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
