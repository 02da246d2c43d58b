"""Writing small rescue-scenes files for tests, laid out as `data synth` writes them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_rescue_scenes(path: Path, splits: Mapping[str, Any]) -> Path:
    """`splits` (name → `SplitData`) as a rescue-scenes HDF5 file with the attribute tables."""
    from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES
    from train.data.schema import write_dataset

    return write_dataset(
        path, splits, dataset="rescue-scenes", image_size=64,
        attribute_names=ATTRIBUTE_NAMES, attribute_values=ATTRIBUTE_VALUES,
    )  # fmt: skip
