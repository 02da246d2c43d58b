"""Calibration and quality data for the int8 variant: which captions, which noise, in batches.

Calibration sees whole training captions plus word prefixes of others (operators type short
commands); quality is judged on held-out captions, their prefixes and the parity captions, with
fixed noise. Every choice is seeded and recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import bundle as b
from edge_runtime import tokenizer
from export import onnx_export as ox
from export import quantize as q
from train.data import files, schema

MIN_CALIBRATION = 300

QUALITY_BATCH = 64
"""Captions (with fixed noise) in the batch on which int8 quality is measured against fp32."""

CALIBRATION_BATCH = 16

PREFIX_FRACTION = 0.25
"""Calibration also sees this many (relative to the whole captions) word prefixes of training
captions. Operators type short commands ("person in red"); training captions are all long. With
whole captions only, activation ranges of short captions were never seen and their int8 images
lost most of their fidelity; a quarter prefixes fixed it (docs/EXPORT.md § What export does,
in order)."""

NOISE_SEED = 20160517  # Reed et al.'s ICML 2016 date: any fixed seed, recorded in the manifest


@dataclass
class Captions:
    """Calibration and quality captions drawn from a dataset."""

    calibration: list[str]
    """Whole training captions (at least `MIN_CALIBRATION`)."""
    calibration_prefixes: list[str]
    """Word prefixes of other training captions (see `PREFIX_FRACTION`)."""
    quality: list[str]
    """Held-out captions, then word prefixes of held-out captions, then `PARITY_CAPTIONS`."""
    quality_attributes: np.ndarray | None
    """Attributes of the first `len(quality_attributes)` quality captions (the whole ones)."""
    source: dict[str, Any]
    path: Path
    """The dataset file."""

    @property
    def calibration_all(self) -> list[str]:
        """Everything the int8 graphs are calibrated on."""
        return self.calibration + self.calibration_prefixes


def _read_captions(path: Path, split: str) -> tuple[list[str], np.ndarray | None]:
    # Only the captions (and attributes) are needed: reading them directly, through the schema's
    # checked opener, avoids decoding every image of a large split.

    with files.open_checked(path) as f:
        if split not in f:
            raise schema.DataError(f"{path}: no split {split!r} (has {sorted(f.keys())})")
        group = f[split]
        if "captions" not in group:
            raise schema.DataError(f"{path}:/{split}: missing dataset 'captions'")
        rows = group["captions"][()]
        attributes = group["attributes"][()] if "attributes" in group else None
    captions = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for row in rows for c in row]
    per_image = rows.shape[1] if rows.ndim == 2 else 1
    if attributes is not None:
        attributes = np.repeat(attributes, per_image, axis=0)  # one row per caption
    return captions, attributes


def _encodable(captions: Sequence[str]) -> np.ndarray:
    ok = []
    for i, caption in enumerate(captions):
        try:
            tokenizer.encode(caption)
        except tokenizer.CaptionError:
            continue
        ok.append(i)
    return np.asarray(ok, dtype=np.int64)


def _word_prefix(caption: str, rng: np.random.Generator) -> str:
    words = caption.split()
    return " ".join(words[: rng.integers(1, len(words))]) if len(words) > 1 else caption


def load_captions(path: Path, calibration_size: int, quality_size: int = QUALITY_BATCH) -> Captions:
    """Calibration captions from the train split; quality captions from "test" when present."""
    info = files.read_info(path)
    train, _ = _read_captions(path, "train")
    valid = _encodable(train)
    rng = np.random.default_rng(NOISE_SEED)
    held_out = "test" in info.splits
    n_prefixes = round(calibration_size * PREFIX_FRACTION)
    need = calibration_size + (0 if held_out else quality_size)
    if len(valid) < need:
        raise schema.DataError(
            f"{path}:/train: {len(valid)} usable captions, calibration needs {need}"
        )
    picked = rng.choice(valid, size=need, replace=False)
    calibration = [train[i] for i in picked[:calibration_size]]
    prefixes = [_word_prefix(train[i], rng) for i in rng.choice(valid, size=n_prefixes)]
    if held_out:
        test, attributes = _read_captions(path, "test")
        test_valid = _encodable(test)
        if len(test_valid) < quality_size:
            raise schema.DataError(
                f"{path}:/test: {len(test_valid)} usable captions, need {quality_size}"
            )
        idx = rng.choice(test_valid, size=quality_size, replace=False)
        quality = [test[i] for i in idx]
        quality_attributes = attributes[idx] if attributes is not None else None
    else:
        quality = [train[i] for i in picked[calibration_size:]]
        quality_attributes = None
    quality_prefixes = [_word_prefix(c, rng) for c in quality[: quality_size // 4]]
    return Captions(
        calibration=calibration,
        calibration_prefixes=prefixes,
        quality=[*quality, *quality_prefixes, *ox.PARITY_CAPTIONS],
        quality_attributes=quality_attributes,
        source={
            "dataset": info.dataset,
            "file": path.name,
            "sha256": b.sha256_file(path),
            "calibration_split": "train",
            "quality_split": "test" if held_out else "train (held out from calibration)",
        },
        path=path,
    )


def calibration_feeds(noise: np.ndarray, embeddings: np.ndarray) -> list[q.Feed]:
    """Generator calibration batches: {noise, text_embedding} of `CALIBRATION_BATCH` rows."""
    return q.batched({b.NOISE: noise, b.TEXT_EMBEDDING: embeddings}, CALIBRATION_BATCH)


def _embed(session: Any, captions: Sequence[str], length: int, batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(captions), batch):
        ids, lengths = ox.example_char_ids(captions[i : i + batch], length)
        out.append(session.run([b.TEXT_EMBEDDING], {b.CHAR_IDS: ids, b.LENGTHS: lengths})[0])
    return np.concatenate(out)


def _generate(
    session: Any, noise: np.ndarray, embeddings: np.ndarray, batch: int = 16
) -> np.ndarray:
    return np.concatenate(
        [
            session.run(
                [b.IMAGE],
                {b.NOISE: noise[i : i + batch], b.TEXT_EMBEDDING: embeddings[i : i + batch]},
            )[0]
            for i in range(0, len(noise), batch)
        ]
    )
