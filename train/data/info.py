"""`python -m train data info FILE [--verify]`: describe a dataset file as one JSON object.

Works on our schema and on peer GAN-CLS files. `--verify` loads every split through the same
reader training uses, so any bad record (undecodable image, non-UTF-8 or empty caption, wrong
size, truncated data) is reported as one line naming the file and key, with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from train.data.schema import DataError, read_info, read_split


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


def main(argv: list[str] | None = None) -> int:
    """Print the description; exit 1 with one line on a bad file."""
    p = argparse.ArgumentParser(prog="python -m train data info", description=__doc__)
    p.add_argument("path", type=Path, help="dataset HDF5 file (ours or a peer birds.hdf5)")
    p.add_argument("--verify", action="store_true", help="read and validate every record")
    args = p.parse_args(argv)
    try:
        description = describe(args.path, args.verify)
    except DataError as err:
        print(str(err), file=sys.stderr)
        return 1
    print(json.dumps(description))
    return 0
