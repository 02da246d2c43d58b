"""`python -m train data synth`: render the rescue-scenes dataset into our HDF5 format.

Splits (docs/DATA_FORMAT.md):

- `train`: every class whose colour×terrain pair is not in `UNSEEN_PAIRS` (41 pairs, 738 classes),
  balanced to within one image per class;
- `test`: the same classes, different images;
- `test_unseen`: only the 7 held-out pairs (126 classes), never seen in train;
- `test_phrasing`: classes as in `test`, captions only from the held-out phrasing family
  (`train.data.phrasing`), full and partial, with per-caption `caption_stated` labels.

Image `i` of split `k` is rendered from `numpy.random.default_rng([seed, k, i, 0])` and captioned
from `default_rng([seed, k, i, 1])`, so arrays are byte-identical for a seed whatever `--workers`.
`--partial-fraction` (default `DEFAULT_PARTIAL_FRACTION`, 0.3, since issue 17: the text encoder
and the GAN learn from partial captions) replaces that share of train captions by partial ones
drawn from `default_rng([seed, k, i, 3])`, a stream of its own: at 0 no draw is made and the three
original splits are byte-identical to GENERATOR_VERSION 1's. GENERATOR_VERSION stays 1 because
what a seed *and its flags* produce did not change: the new default only changes which flags a
bare `data synth` means, and only for the train captions' mix (images, test splits and every
caption of a given partial fraction are as before); the file records its `partial_fraction` in
its provenance.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from train import options
from train.data.attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_VALUES,
    UNSEEN_PAIRS,
    Attributes,
    all_attributes,
    class_names,
    is_unseen,
)
from train.data.captions import captions_for
from train.data.convert import check_out_path
from train.data.phrasing import (
    ALL_STATED,
    Family,
    draw_stated,
    heldout_captions_for,
    phrase_for,
)
from train.data.scenes import IMAGE_SIZE, render_scene
from train.data.schema import SplitData, write_dataset
from train.options import option

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump when a change to the renderer or grammar changes the images or captions for a seed.
Adding `test_phrasing` did not: train, test and test_unseen are unchanged, and the new
split is named by `PHRASING_VERSION`."""
PHRASING_VERSION = 6
"""Bump when `train.data.phrasing` changes what a seed produces (test_phrasing, partial ones).
2: the training family gained operator forms (questions, imperatives, telegraphic clauses,
fillers) and "{c} {g}" colours, and `--free-fraction` full captions in those forms; train
captions of a partial fraction differ from 1's, `test_phrasing` is byte-identical (tested).
3: 70 % of the training family's colour slots take an xkcd-survey colour name
(`train.data.colour_names`); `test_phrasing` is still byte-identical.
4: no colour name that leans on two clothing colours ("orange red", "yellow green").
5: 30 % of the training family's colour slots say the value's own word ("red", "purple";
`phrasing.PLAIN_COLOUR_PROB`); `test_phrasing` is still byte-identical."""
DATASET_NAME = "rescue-scenes"
SPLITS: tuple[str, ...] = ("train", "test", "test_unseen", "test_phrasing")
"""In split-index order (`k` of the seed rule): new splits are appended, never inserted."""
PHRASING_SPLIT = "test_phrasing"
CAPTIONS_PER_IMAGE = 10
DEFAULT_PARTIAL_FRACTION = 0.3
"""`data synth`'s default share of partial train captions (issue 17; module docstring)."""
DEFAULT_FREE_FRACTION = 0.15
"""`data synth`'s default share of train captions that state all five attributes in the
training family's operator forms rather than the grammar's templates (PHRASING_VERSION 2)."""
# The loader must not flip (left/right is an attribute) nor random-crop (a crop shifts the figure
# across a third's boundary); see docs/DATA_FORMAT.md, "augmentation".
AUGMENTATION = {"hflip": False, "crop": False, "reason": "position is an attribute"}
_CHUNK = 200  # images per worker task: large enough to amortise pickling, small to balance load


@dataclass(frozen=True)
class SynthConfig:
    """Resolved options of one rendering run."""

    out: Path
    seed: int = 0
    train: int = 10_000
    test: int = 1_000
    test_unseen: int = 1_000
    test_phrasing: int | None = None
    """test_phrasing images; None: as many as `test` (0: no such split)."""
    workers: int = 2
    captions_per_image: int = CAPTIONS_PER_IMAGE
    partial_fraction: float = 0.0
    """Share of train captions replaced by partial ones of the training phrasing family."""
    free_fraction: float = 0.0
    """Share of train captions replaced by full ones in the training family's forms."""

    def counts(self) -> dict[str, int]:
        """Images per split, in split order (test_phrasing only when asked for)."""
        counts = {"train": self.train, "test": self.test, "test_unseen": self.test_unseen}
        phrasing = self.test if self.test_phrasing is None else self.test_phrasing
        if phrasing:
            counts[PHRASING_SPLIT] = phrasing
        return counts


def split_class_ids(split: str, count: int, seed: int) -> np.ndarray:
    """Class ids of a split's images: balanced over its class pool, shuffled, int64 (count,)."""
    unseen = split == "test_unseen"
    pool = np.array([a.class_id for a in all_attributes() if is_unseen(a) == unseen], np.int64)
    rng = np.random.default_rng([seed, SPLITS.index(split), 2])
    rounds = -(-count // len(pool)) if count else 0
    ids = np.concatenate([rng.permutation(pool) for _ in range(rounds)] or [pool[:0]])[:count]
    return ids


def render_items(
    seed: int, split: str, start: int, class_ids: np.ndarray, captions_per_image: int
) -> tuple[np.ndarray, list[list[str]]]:
    """Render images start.. of a split: uint8 (n, 64, 64, 3) and their captions."""
    images, captions, _ = render_items_stated(seed, split, start, class_ids, captions_per_image)
    return images, captions


def _partial_captions(
    attributes: Attributes,
    captions: list[str],
    rng: np.random.Generator,
    fraction: float,
    free_fraction: float = 0.0,
) -> tuple[list[str], list[int]]:
    """Replace about `fraction` of `captions` by distinct partial training-family captions and
    about `free_fraction` by full ones in the training family's forms. At `free_fraction` 0 the
    draws are exactly PHRASING_VERSION 1's."""
    out, masks = list(captions), [ALL_STATED] * len(captions)
    for j in range(len(out)):
        u = rng.random()
        if u >= fraction + free_fraction:
            continue
        full = u >= fraction
        for _ in range(20):  # a phrase may repeat one already there; redraw
            stated = frozenset(ATTRIBUTE_NAMES) if full else draw_stated(rng)
            phrase = phrase_for(attributes, stated, Family.TRAIN, rng)
            if phrase.caption not in out:
                out[j], masks[j] = phrase.caption, phrase.mask
                break
    return out, masks


def render_items_stated(
    seed: int,
    split: str,
    start: int,
    class_ids: np.ndarray,
    captions_per_image: int,
    *,
    partial_fraction: float = 0.0,
    free_fraction: float = 0.0,
) -> tuple[np.ndarray, list[list[str]], list[list[int]]]:
    """`render_items` plus each caption's `caption_stated` bitmask (ALL_STATED for full ones).

    `test_phrasing` draws held-out captions; `partial_fraction` > 0 makes partial captions in
    the other splits (the caller asks for it on train only)."""
    k = SPLITS.index(split)
    images = np.empty((len(class_ids), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    captions: list[list[str]] = []
    stated: list[list[int]] = []
    for j, class_id in enumerate(class_ids):
        attributes = Attributes.from_class_id(int(class_id))
        images[j], _ = render_scene(attributes, np.random.default_rng([seed, k, start + j, 0]))
        rng = np.random.default_rng([seed, k, start + j, 1])
        if split == PHRASING_SPLIT:
            row, masks = heldout_captions_for(attributes, captions_per_image, rng)
        else:
            row = captions_for(attributes, captions_per_image, rng)
            masks = [ALL_STATED] * len(row)
            if partial_fraction > 0 or free_fraction > 0:
                partial_rng = np.random.default_rng([seed, k, start + j, 3])
                row, masks = _partial_captions(
                    attributes, row, partial_rng, partial_fraction, free_fraction
                )
        captions.append(row)
        stated.append(masks)
    return images, captions, stated


_Task = tuple[int, str, int, np.ndarray, int, float, float]


def _render_task(args: _Task) -> tuple[np.ndarray, list[list[str]], list[list[int]]]:
    *head, fraction, free = args
    return render_items_stated(*head, partial_fraction=fraction, free_fraction=free)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # the pool is the parallelism; nested threads only contend


def synthesize(config: SynthConfig) -> dict[str, object]:
    """Render all splits and write them atomically to `config.out`; returns a summary."""
    started = time.perf_counter()
    splits: dict[str, SplitData] = {}
    tasks: list[_Task] = []
    for split, count in config.counts().items():
        ids = split_class_ids(split, count, config.seed)
        splits[split] = SplitData(
            images=np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
            captions=[],
            class_ids=ids,
            attributes=np.array(
                [Attributes.from_class_id(int(c)).indices for c in ids], np.int16
            ).reshape(count, len(ATTRIBUTE_NAMES)),
            names=[f"{split}/{i:06d}" for i in range(count)],
        )
        fraction = config.partial_fraction if split == "train" else 0.0
        free = config.free_fraction if split == "train" else 0.0
        tasks += [
            (config.seed, split, s, ids[s : s + _CHUNK], config.captions_per_image, fraction, free)
            for s in range(0, count, _CHUNK)
        ]
    total = sum(config.counts().values())
    log.info("rendering %d images with %d worker(s)", total, config.workers)
    if config.workers == 1:
        results = map(_render_task, tasks)
        pool = None
    else:
        # spawn: workers start clean (no inherited threads or locks from torch in the parent).
        pool = multiprocessing.get_context("spawn").Pool(config.workers, _worker_init)
        results = pool.imap(_render_task, tasks)
    try:
        captions: dict[str, list[list[str]]] = {s: [] for s in config.counts()}
        stated: dict[str, list[list[int]]] = {s: [] for s in config.counts()}
        for (_, split, start, ids, *_), (images, caps, masks) in zip(tasks, results, strict=True):
            splits[split].images[start : start + len(ids)] = images
            captions[split] += caps
            stated[split] += masks
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    for split, count in config.counts().items():
        splits[split].captions = captions[split]
        masks = np.asarray(stated[split], np.uint8).reshape(count, config.captions_per_image)
        # Stored only where some caption is partial: absent means "every caption states all",
        # so files without partial captions stay as GENERATOR_VERSION 1 wrote them.
        if (masks != ALL_STATED).any():
            splits[split].caption_stated = masks
    render_seconds = time.perf_counter() - started
    provenance = {
        "generator": "train.data.synth",
        "generator_version": GENERATOR_VERSION,
        "phrasing_version": PHRASING_VERSION,
        "partial_fraction": config.partial_fraction,
        "free_fraction": config.free_fraction,
        "seed": config.seed,
        "counts": config.counts(),
        "captions_per_image": config.captions_per_image,
        "unseen_pairs": [list(p) for p in UNSEEN_PAIRS],
        "image_seed_rule": "numpy.random.default_rng([seed, split_index, image_index, 0|1])",
        "split_order": list(SPLITS),
        "partial_caption_seed_rule": (
            "numpy.random.default_rng([seed, split_index, image_index, 3])"
        ),
    }
    write_dataset(
        config.out,
        splits,
        dataset=DATASET_NAME,
        image_size=IMAGE_SIZE,
        attribute_names=ATTRIBUTE_NAMES,
        attribute_values=ATTRIBUTE_VALUES,
        class_names=class_names(),
        provenance=provenance,
        augmentation=AUGMENTATION,
    )
    seconds = time.perf_counter() - started
    return {
        "out": str(config.out),
        "dataset": DATASET_NAME,
        "splits": config.counts(),
        "workers": config.workers,
        "render_seconds": round(render_seconds, 2),
        "total_seconds": round(seconds, 2),
        "images_per_second": round(total / render_seconds, 1) if render_seconds else None,
    }


@dataclass(frozen=True)
class SynthFlags:
    """The synth command line, each flag declared once (`train.options`)."""

    out: Path = option(Path("data/rescue_scenes.h5"), "output HDF5", show_default=False)
    seed: int = option(0, "dataset seed (default 0)", show_default=False, at_least=0)
    train: int = option(10_000, "train images", show_default=False, at_least=1)
    test: int = option(1_000, "test images", show_default=False, at_least=0)
    unseen: int = option(1_000, "test_unseen images", show_default=False, at_least=0)
    phrasing: int | None = option(
        None,
        "test_phrasing images (held-out phrasing family; default: as many as --test; "
        "0: no such split)",
        show_default=False,
        at_least=0,
    )
    partial_fraction: float = option(
        DEFAULT_PARTIAL_FRACTION,
        f"share of train captions that state only 1-4 attributes (default "
        f"{DEFAULT_PARTIAL_FRACTION}; 0: the grammar's full captions only)",
        show_default=False,
        at_least=0,
        at_most=1,
    )
    free_fraction: float = option(
        DEFAULT_FREE_FRACTION,
        f"share of train captions stating all five attributes in operator forms (questions, "
        f"imperatives, terse clauses) instead of the grammar's templates (default "
        f"{DEFAULT_FREE_FRACTION}; 0: none)",
        show_default=False,
        at_least=0,
        at_most=1,
    )
    # No help: the flag's name says it, and --help stays as it was.
    captions_per_image: int = option(CAPTIONS_PER_IMAGE, "", show_default=False, at_least=1)
    workers: int = option(
        min(os.cpu_count() or 1, 8),
        "render processes (default: CPU count, at most 8); output does not depend on it",
        show_default=False,
        at_least=1,
    )


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, generated from `SynthFlags` (argparse checks the ranges)."""
    p = argparse.ArgumentParser(
        prog="python -m train data synth",
        description="Render the rescue-scenes captioned-image dataset (64×64, 10 captions/image).",
    )
    return options.build_parser(SynthFlags, p, given_only=False, ranges_in_parser=True)


def main(argv: list[str] | None = None) -> int:
    """Render the dataset; print a JSON summary line on stdout."""
    args = SynthFlags(**vars(build_parser().parse_args(argv)))
    problem = check_out_path(args.out)
    if args.partial_fraction + args.free_fraction > 1:
        problem = (
            f"--partial-fraction {args.partial_fraction:g} + --free-fraction "
            f"{args.free_fraction:g} exceed 1: they are shares of the same train captions"
        )
    if problem:
        print(problem, file=sys.stderr)
        return 2
    config = SynthConfig(
        out=args.out,
        seed=args.seed,
        train=args.train,
        test=args.test,
        test_unseen=args.unseen,
        test_phrasing=args.phrasing,
        partial_fraction=args.partial_fraction,
        free_fraction=args.free_fraction,
        workers=args.workers,
        captions_per_image=args.captions_per_image,
    )
    try:
        summary = synthesize(config)
    except OSError as err:
        print(f"--out {args.out}: cannot write: {err.strerror or err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
