"""Shared machinery of the converters (CUB-200-2011, Oxford-102, peer GAN-CLS files).

Images are stored pre-resized to `DEFAULT_IMAGE_SIZE` = 76 (Reed et al.'s load size), so a loader
only random-crops 64×64 and flips, and never decodes a full-size JPEG during training. Captions are
stored `captions_per_image` per image: a source image with fewer distinct captions repeats them
cyclically and records how many were distinct in `caption_counts`.

Bad items raise `ItemError` (a `DataError` with a short `reason`); with `--skip-bad` a converter
counts them by reason instead and reports the counts in its summary.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from train.data import guard
from train.data.schema import DataError, SplitData, decode_image, write_dataset
from train.options import option

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 76
MIN_SOURCE_SIDE = 16
"""Source images smaller than this on a side are rejected as wrong-size (thumbnails, 1×1 pixels)."""
BBOX_SCALE = 1.5
"""Bounding-box crop: a square of this many times the box's longer side (as StackGAN crops CUB)."""
REAL_AUGMENTATION = {"hflip": True, "crop": True, "crop_size": 64}
"""Reed's recipe for photographs: stored at 76, random 64×64 crop, horizontal flip."""

T = TypeVar("T")
R = TypeVar("R")


class ItemError(DataError):
    """One bad source item; `reason` is a short category counted by --skip-bad."""

    def __init__(self, where: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{where}: {reason}{': ' + detail if detail else ''}")
        self.reason = reason


class Problems:
    """Either raise on the first bad item, or (skip_bad) count bad items by reason."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.counts: Counter[str] = Counter()

    def handle(self, err: ItemError) -> None:
        """Raise `err`, or record it when skipping bad items."""
        if not self.skip_bad:
            raise err
        self.counts[err.reason] += 1
        log.warning("skipped: %s", err)

    @property
    def skipped(self) -> int:
        """Number of items skipped."""
        return sum(self.counts.values())

    def summary(self) -> dict[str, int]:
        """Skipped items by reason."""
        return dict(sorted(self.counts.items()))


def read_text_lines(path: Path, where: str | None = None) -> list[str]:
    """Non-blank, stripped lines of a UTF-8 text file; ItemError naming the file otherwise."""
    where = where or str(path)
    try:
        data = guard.read_regular(path)  # no FIFO, device or oversized file
    except DataError as err:
        raise ItemError(where, "unreadable file", str(err).removeprefix(f"{path}: ")) from None
    except FileNotFoundError:
        raise ItemError(where, "missing file") from None
    except OSError as err:
        raise ItemError(where, "unreadable file", err.strerror or str(err)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ItemError(where, "not UTF-8", f"byte {err.start} (line {line})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_caption_file(path: Path) -> list[str]:
    """Captions of one image, one per line (Reed's text_c10 format)."""
    if not path.is_file():
        raise ItemError(str(path), "missing caption file")
    try:
        captions = read_text_lines(path)
    except ItemError as err:
        if err.reason == "not UTF-8":
            raise ItemError(str(path), "caption not UTF-8", str(err).split(": ", 2)[-1]) from None
        raise
    if not captions:
        raise ItemError(str(path), "empty caption file")
    return captions


def pad_captions(captions: Sequence[str], count: int) -> tuple[list[str], int]:
    """Distinct captions (first occurrence order), cycled or cut to `count`; and how many are
    distinct (capped at `count`)."""
    distinct = list(dict.fromkeys(c.strip() for c in captions if c.strip()))
    if not distinct:
        raise ValueError("no captions")
    kept = distinct[:count]
    return [kept[i % len(kept)] for i in range(count)], len(kept)


def square_box(
    box: tuple[float, float, float, float], width: int, height: int, scale: float = BBOX_SCALE
) -> tuple[int, int, int, int]:
    """A square (x0, y0, x1, y1) of `scale`× the box's longer side, centred on the box, moved and
    shrunk to lie inside the image."""
    x, y, w, h = box
    side = min(max(w, h) * scale, width, height)
    cx, cy = x + w / 2, y + h / 2
    x0 = min(max(cx - side / 2, 0), width - side)
    y0 = min(max(cy - side / 2, 0), height - side)
    return round(x0), round(y0), round(x0 + side), round(y0 + side)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (H, W, 3) to (size, size, 3), ignoring aspect as Reed's and the peer code do."""
    h, w = image.shape[:2]
    # INTER_AREA averages when shrinking (no aliasing); it is bilinear when enlarging, where cubic
    # keeps edges sharper.
    shrinking = h >= size and w >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def load_source_image(
    data: bytes | np.ndarray | Path,
    where: str,
    size: int,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Decode a source image (file or bytes), optionally crop around `box` (x, y, w, h), and
    resize to uint8 (size, size, 3) RGB."""
    if isinstance(data, Path):
        try:
            data = guard.read_regular(data)  # no FIFO, device or oversized file
        except DataError as err:
            detail = str(err).split(": ", 1)[-1]
            raise ItemError(where, "unreadable image file", detail) from None
        except FileNotFoundError:
            raise ItemError(where, "missing image file") from None
        except OSError as err:
            raise ItemError(where, "unreadable image file", err.strerror or str(err)) from None
    try:
        image = decode_image(data, where)
    except DataError as err:
        raise ItemError(where, "undecodable image", str(err).split(": ", 1)[-1]) from None
    h, w = image.shape[:2]
    if min(h, w) < MIN_SOURCE_SIDE:
        raise ItemError(where, "image too small", f"{w}×{h}, need ≥ {MIN_SOURCE_SIDE} px a side")
    if box is not None:
        bx, by, bw, bh = box
        if bw <= 0 or bh <= 0 or bx >= w or by >= h or bx + bw <= 0 or by + bh <= 0:
            raise ItemError(where, "bounding box outside image", f"{box} in {w}×{h}")
        x0, y0, x1, y1 = square_box(box, w, h)
        image = image[y0:y1, x0:x1]
    return resize_square(image, size)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`map` over threads, in order. OpenCV's decode and resize release the GIL, so threads
    parallelise image work without pickling images between processes."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(fn, items, chunksize=1)


@dataclass(frozen=True)
class ConverterFlags:
    """Flags every converter shares, each declared once (`train.options`). A converter's flags
    dataclass adds its own and redeclares `out` with its default file (a redeclared field keeps
    its place, so --help lists the shared flags in this order)."""

    out: Path = option(Path("data/converted.h5"), "output HDF5 file", show_default=False)
    image_size: int = option(
        DEFAULT_IMAGE_SIZE,
        f"stored side length (default {DEFAULT_IMAGE_SIZE}: the loader random-crops 64)",
        show_default=False,
        at_least=MIN_SOURCE_SIDE,
    )
    captions_per_image: int | None = option(
        None,
        "captions stored per image (default: the most any image has; fewer are cycled)",
        show_default=False,
        at_least=1,
    )
    skip_bad: bool = option(
        False,
        "skip and count bad items (missing/undecodable images, bad captions) instead of "
        "stopping at the first",
        show_default=False,
        store_true=True,
    )
    encode_png: bool = option(
        False,
        "store images as lossless PNG bytes (smaller file, slower first read)",
        show_default=False,
        store_true=True,
    )
    workers: int = option(
        min(os.cpu_count() or 1, 8),
        "decode threads (default: CPU count, at most 8)",
        show_default=False,
        at_least=1,
    )


class UsageError(DataError):
    """A flag that does not fit the source (exit status 2, like argparse's own errors)."""


def run_converter(out: Path, convert: Callable[[float], dict[str, object]]) -> int:
    """What every converter's `main` does around its own work: check --out before any work,
    run `convert(started)` (a `time.perf_counter()` start) for the JSON summary line on stdout;
    one line on stderr and exit 2 for a bad flag, 1 for bad data, nothing written."""
    problem = check_out_path(out)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        summary = convert(time.perf_counter())
    except UsageError as err:
        print(str(err), file=sys.stderr)
        return 2
    except DataError as err:
        print(str(err), file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def check_out_path(out: Path) -> str | None:
    """A one-line problem with --out (checked before any work), or None; creates its folder."""
    if out.is_dir():
        return f"--out {out}: is a directory; give a file path"
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"--out {out}: cannot create directory {parent}: {err.strerror or err}"
    if not os.access(parent, os.W_OK):
        return f"--out {out}: directory {parent} is not writable"
    return None


# ---------------------------------------------------------------------------------------------
# Directory datasets (CUB-200-2011, Oxford-102): items → splits → our HDF5


@dataclass(frozen=True)
class SourceItem:
    """One image of a directory dataset and where its captions live."""

    split: str
    class_id: int
    name: str
    image: Path
    captions: Path
    box: tuple[float, float, float, float] | None = None


def read_table(path: Path, types: Sequence[type], what: str) -> list[tuple]:
    """Whitespace-separated rows of a metadata file, each converted by `types`; a DataError naming
    file and line for a missing file or a malformed row. The last column takes the rest of the line
    when its type is str (class names may not contain spaces, but be lenient)."""
    if not path.is_file():
        raise DataError(f"{path}: missing ({what})")
    try:
        lines = read_text_lines(path)
    except ItemError as err:
        raise DataError(str(err)) from None
    rows = []
    for number, line in enumerate(lines, 1):
        parts = line.split(maxsplit=len(types) - 1)
        try:
            if len(parts) != len(types):
                raise ValueError
            rows.append(tuple(t(p) for t, p in zip(types, parts, strict=True)))
        except ValueError:
            names = " ".join(t.__name__ for t in types)
            raise DataError(
                f"{path}:{number}: malformed line {line[:60]!r} (expected: {names})"
            ) from None
    return rows


def read_class_list(path: Path) -> list[str]:
    """Class names of a Reed split file (trainvalclasses.txt / testclasses.txt), one per line."""
    if not path.is_file():
        raise DataError(f"{path}: missing (Reed's class split file)")
    try:
        return read_text_lines(path)
    except ItemError as err:
        raise DataError(str(err)) from None


def find_class_split_dir(explicit: Path | None, captions: Path) -> Path:
    """--class-split-dir, else the caption folder's parent (cvpr2016_cub/), else the folder."""
    if explicit is not None:
        return explicit
    for candidate in (captions.parent, captions):
        if (candidate / "trainvalclasses.txt").is_file():
            return candidate
    return captions.parent


def limit_items(items: list[SourceItem], limit: int | None) -> list[SourceItem]:
    """At most `limit` items per split, taken round-robin over classes (so a small limit still
    covers many classes), keeping source order within a class."""
    if limit is None:
        return items
    out: list[SourceItem] = []
    for split in dict.fromkeys(i.split for i in items):
        by_class: dict[int, list[SourceItem]] = {}
        for item in items:
            if item.split == split:
                by_class.setdefault(item.class_id, []).append(item)
        queues = [by_class[c] for c in sorted(by_class)]
        taken, depth = 0, 0
        while taken < limit and any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q) and taken < limit:
                    out.append(q[depth])
                    taken += 1
            depth += 1
    return out


def build_splits(
    items: Sequence[SourceItem],
    *,
    image_size: int,
    captions_per_image: int | None,
    problems: Problems,
    workers: int,
) -> dict[str, SplitData]:
    """Load, crop, resize and caption every item; bad items raise or are counted (`problems`)."""

    def load(item: SourceItem) -> tuple[np.ndarray, list[str]] | ItemError:
        try:
            captions = read_caption_file(item.captions)
            return load_source_image(item.image, str(item.image), image_size, item.box), captions
        except ItemError as err:
            return err

    kept: dict[str, list[tuple[SourceItem, np.ndarray, list[str]]]] = {}
    for item, result in zip(items, parallel_map(load, items, workers), strict=True):
        if isinstance(result, ItemError):
            problems.handle(result)
            continue
        kept.setdefault(item.split, []).append((item, *result))
    splits = {}
    for split, rows in kept.items():
        count = captions_per_image or max(len(c) for _, _, c in rows)
        padded = [pad_captions(c, count) for _, _, c in rows]
        splits[split] = SplitData(
            images=np.stack([image for _, image, _ in rows]),
            captions=[c for c, _ in padded],
            class_ids=np.array([item.class_id for item, _, _ in rows], np.int64),
            names=[item.name for item, _, _ in rows],
            caption_counts=np.array([n for _, n in padded], np.int16),
        )
    return splits


def write_converted(
    args: ConverterFlags,
    items: Sequence[SourceItem],
    *,
    dataset: str,
    class_names: Sequence[str],
    provenance: dict[str, object],
    started: float,
) -> dict[str, object]:
    """Build the splits of `items`, write them atomically to args.out; returns the summary."""
    problems = Problems(args.skip_bad)
    splits = build_splits(
        items,
        image_size=args.image_size,
        captions_per_image=args.captions_per_image,
        problems=problems,
        workers=args.workers,
    )
    wanted = list(dict.fromkeys(i.split for i in items))
    empty = [s for s in wanted if s not in splits]
    if empty:
        raise DataError(f"{args.out}: every image of split {empty[0]!r} was bad; nothing written")
    write_dataset(
        args.out,
        splits,
        dataset=dataset,
        image_size=args.image_size,
        class_names=class_names,
        provenance={**provenance, "skipped": problems.summary()},
        augmentation=REAL_AUGMENTATION,
        image_encoding="png" if args.encode_png else None,
    )
    return {
        "out": str(args.out),
        "dataset": dataset,
        "splits": {s: len(d) for s, d in splits.items()},
        "captions_per_image": {s: len(d.captions[0]) for s, d in splits.items()},
        "skipped": problems.skipped,
        "skipped_by_reason": problems.summary(),
        "seconds": round(time.perf_counter() - started, 2),
    }
