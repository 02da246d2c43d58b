"""`python -m train data phrasing-captions`: a split's captions as an evaluation captions file.

Writes the JSON-lines format `python -m train evaluate --captions FILE.jsonl` reads, one line
per caption: `{"caption": …, "attributes": {stated attributes only}, "stated": [names],
"image": "test_phrasing/000012"}`. Unstated attributes are left out, so the evaluator scores
"all stated attributes right" and leaves the rest to the noise (docs/DATA_FORMAT.md § Operator
phrasing). The captions are the split's own (`test_phrasing` by default), chosen `--per-image`
per image by a seeded draw, so a file and the split it came from always agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.atomic import write_text
from train import options
from train.data.attributes import ATTRIBUTE_NAMES
from train.data.convert import check_out_path
from train.data.phrasing import ALL_STATED, stated_names
from train.data.schema import DataError, read_info, read_split
from train.options import REQUIRED, option

KINDS = ("all", "full", "partial")


def caption_lines(
    data: Path, split: str, per_image: int, seed: int, kind: str = "all"
) -> list[dict[str, object]]:
    """One labelled record per chosen caption of `split` (see the module docstring)."""
    info = read_info(data)
    if info.attribute_names != list(ATTRIBUTE_NAMES):
        raise DataError(
            f"{data}: attribute_names {info.attribute_names} are not rescue-scenes' "
            f"{list(ATTRIBUTE_NAMES)}; only labelled rescue-scenes files can be exported"
        )
    if split not in info.splits:
        raise DataError(f"{data}: no split {split!r} (has {info.splits}; `data synth` renders it)")
    part = read_split(data, split)
    if part.attributes is None:
        raise DataError(f"{data}:/{split}: missing dataset 'attributes'")
    captions_per_image = len(part.captions[0]) if part.captions else 0
    stated = part.caption_stated
    if stated is None:  # a split without the extension states everything in every caption
        stated = np.full((len(part), captions_per_image), ALL_STATED, np.uint8)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    lines: list[dict[str, object]] = []
    for i, row in enumerate(part.captions):
        candidates = [
            j
            for j in range(len(row))
            if kind == "all" or (kind == "full") == (int(stated[i, j]) == ALL_STATED)
        ]
        take = rng.permutation(candidates)[:per_image] if candidates else []
        for j in sorted(int(t) for t in take):
            names = stated_names(int(stated[i, j]))
            values = {
                name: info.attribute_values[name][int(part.attributes[i, a])]
                for a, name in enumerate(ATTRIBUTE_NAMES)
                if name in names
            }
            lines.append(
                {
                    "caption": row[j],
                    "attributes": values,
                    "stated": [n for n in ATTRIBUTE_NAMES if n in names],
                    "image": part.names[i] if part.names else f"{split}/{i:06d}",
                }
            )
    return lines


@dataclass(frozen=True, kw_only=True)
class PhrasingCaptionsFlags:
    """The command line, each flag declared once (`train.options`); keyword-only, so the
    required --out stays where --help has always listed it."""

    data: Path = option(Path("data/rescue_scenes.h5"), "HDF5 file", show_default=False)
    split: str = option("test_phrasing", "split (default test_phrasing)", show_default=False)
    out: Path = option(REQUIRED, "captions file to write (.jsonl)", required=True)
    per_image: int = option(
        1, "captions per image (seeded choice; default 1)", show_default=False, at_least=1
    )
    kind: str = option("all", "full, partial or all captions", show_default=False, choices=KINDS)
    seed: int = option(0, "choice seed", show_default=False, at_least=0)


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, generated from `PhrasingCaptionsFlags` (argparse checks ranges)."""
    p = argparse.ArgumentParser(
        prog="python -m train data phrasing-captions",
        description="Export a split's labelled captions (default test_phrasing) as JSON lines "
        "for `python -m train evaluate --captions`.",
    )
    return options.build_parser(PhrasingCaptionsFlags, p, given_only=False, ranges_in_parser=True)


def main(argv: list[str] | None = None) -> int:
    """Write the file; print a JSON summary line; exit 1 with one line on a bad dataset."""
    args = PhrasingCaptionsFlags(**vars(build_parser().parse_args(argv)))
    problem = check_out_path(args.out)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        lines = caption_lines(args.data, args.split, args.per_image, args.seed, args.kind)
    except DataError as err:
        print(str(err), file=sys.stderr)
        return 1
    if not lines:
        print(f"{args.data}:/{args.split}: no {args.kind} captions to export", file=sys.stderr)
        return 1
    try:
        write_text(args.out, "".join(json.dumps(line) + "\n" for line in lines))
    except OSError as err:
        print(f"--out {args.out}: cannot write: {err.strerror or err}", file=sys.stderr)
        return 1
    partial = sum(len(line["stated"]) < len(ATTRIBUTE_NAMES) for line in lines)  # type: ignore[arg-type]
    print(
        json.dumps(
            {"out": str(args.out), "split": args.split, "captions": len(lines), "partial": partial}
        )
    )
    return 0
