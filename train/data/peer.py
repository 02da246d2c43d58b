"""The peer GAN-CLS layout (`birds.hdf5` / `flowers.hdf5` of the widely used PyTorch
Text-to-Image-Synthesis code): read directly, or `python -m train data import-peer` to our schema.

That layout, as its `convert_cub_to_hd5_script.py` writes it::

    /train | /valid | /test                     split groups
        /<image name>_<c>                       one group per (image, drawn caption), c = 0..4
            name         str      image name (file stem), e.g. "Black_Footed_Albatross_0046_18"
            img          opaque   the original full-size JPEG bytes (np.void)
            embeddings   float32  (1024,) Reed's char-CNN-RNN embedding of this caption (ignored)
            class        str      class folder, e.g. "001.Black_footed_Albatross" / "class_00001"
            txt          str      one caption (with its trailing newline)

Each image has 5 entries whose captions were drawn *with replacement* from its 10, so about 18 %
of entries repeat an (image, caption) pair already present. We de-duplicate: entries are grouped
by image `name` (falling back to the group key without its `_<c>` suffix), the image is decoded
once and resized to 76×76, and the image's distinct captions are kept in first-seen order and
cycled to pad to C (default: the most distinct captions any image of the split has, ≤ 5), with
`caption_counts` recording how many are distinct. Class ids: the first integer in the class
string minus one (CUB's "001.…" → 0, Oxford's "class_00001" → 0), so they agree with our CUB and
Oxford converters; when class strings carry no number, their sorted order over all splits.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from train import options
from train.data import guard
from train.data.convert import (
    DEFAULT_IMAGE_SIZE,
    REAL_AUGMENTATION,
    ConverterFlags,
    ItemError,
    Problems,
    UsageError,
    load_source_image,
    pad_captions,
    parallel_map,
    run_converter,
)
from train.data.schema import (
    DataError,
    DatasetInfo,
    SplitData,
    damaged_file_guard,
    write_dataset,
)
from train.errors import first_line
from train.options import REQUIRED, option

log = logging.getLogger(__name__)

LAYOUT = "gan-cls-peer"
_SUFFIX = re.compile(r"_\d+$")
_NUMBER = re.compile(r"(\d+)")


def is_peer_layout(f: h5py.File) -> bool:
    """True when `f` looks like a peer GAN-CLS file: split groups of groups holding img + txt."""
    if "schema" in f.attrs:
        return False
    for split in f.values():
        if not isinstance(split, h5py.Group):
            return False
        for entry in split.values():
            return isinstance(entry, h5py.Group) and "img" in entry and "txt" in entry
    return False


def _key(key: str | bytes) -> str:
    """A link name as text (h5py returns bytes for names that are not valid UTF-8)."""
    return key if isinstance(key, str) else key.decode("utf-8", "replace")


def _image_name(key: str, entry: h5py.Group, where: str) -> str:
    if "name" in entry:
        return _text(entry, "name", where)
    return _SUFFIX.sub("", key)


def _scalar(entry: h5py.Group, key: str, where: str) -> object:
    obj = entry.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise ItemError(f"{where}/{key}", "missing dataset" if obj is None else "not a dataset")
    try:
        value = obj[()]
    except (OSError, RuntimeError, TypeError, ValueError) as err:
        first = first_line(err)
        raise ItemError(f"{where}/{key}", "unreadable (truncated file?)", first) from None
    if isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.item()
    return value


def _text(entry: h5py.Group, key: str, where: str) -> str:
    value = _scalar(entry, key, where)
    if isinstance(value, np.ndarray) and value.dtype.kind in "SU" and value.size == 1:
        value = value.item()
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            reason = "caption not UTF-8" if key == "txt" else "text not UTF-8"
            raise ItemError(f"{where}/{key}", reason, f"byte {err.start}") from None
    if isinstance(value, str):
        return value
    raise ItemError(f"{where}/{key}", "not text", type(value).__name__)


def _image_bytes(entry: h5py.Group, where: str) -> bytes:
    value = _scalar(entry, "img", where)
    if isinstance(value, np.void | np.ndarray | bytes | np.bytes_):
        return value.tobytes() if not isinstance(value, bytes) else value
    raise ItemError(f"{where}/img", "not image bytes", type(value).__name__)


@dataclass
class _Image:
    name: str
    first_key: str
    data: bytes
    class_name: str
    captions: list[str] = field(default_factory=list)


def _class_id(class_name: str) -> int | None:
    match = _NUMBER.search(class_name)
    return int(match.group(1)) - 1 if match and int(match.group(1)) >= 1 else None


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with damaged_file_guard(str(path)):
        f = guard.open_hdf5(path)  # hostile-file checks before any payload byte is read
    try:
        with damaged_file_guard(str(path)):
            looks_right = is_peer_layout(f)
    except DataError:
        f.close()
        raise
    if not looks_right:
        f.close()
        raise DataError(
            f"{path}: not the GAN-CLS peer layout (expected split groups of entries with "
            "'img' and 'txt' datasets)"
        )
    return f


def _collect(
    f: h5py.File, path: Path, split: str, problems: Problems
) -> tuple[list[_Image], int, int]:
    """Group a split's entries by image; returns images, entries read, duplicate entries."""
    if split not in f or not isinstance(f[split], h5py.Group):
        raise DataError(f"{path}: no split {split!r} (has {sorted(f.keys())})")
    images: dict[str, _Image] = {}
    entries = duplicates = 0
    for raw_key, entry in f[split].items():
        key = _key(raw_key)
        where = f"{path}:/{split}/{key}"
        entries += 1
        try:
            if not isinstance(entry, h5py.Group):
                raise ItemError(where, "wrong layout", "expected a group with img/txt/class")
            name = _image_name(key, entry, where)
            caption = _text(entry, "txt", where).strip()
            if not caption:
                raise ItemError(f"{where}/txt", "empty caption")
            class_name = _text(entry, "class", where).strip()
            image = images.get(name)
            if not isinstance(entry.get("img"), h5py.Dataset):
                # Only the first entry's bytes are read (all entries of an image carry the same
                # JPEG), but every entry must have them: otherwise the layout is not the peer one.
                raise ItemError(f"{where}/img", "missing dataset")
            if image is None:
                images[name] = image = _Image(name, key, _image_bytes(entry, where), class_name)
            elif class_name != image.class_name:
                raise ItemError(
                    f"{where}/class",
                    "conflicting entries",
                    f"{class_name!r} but {image.first_key} says {image.class_name!r}",
                )
            if caption in image.captions:
                duplicates += 1
            else:
                image.captions.append(caption)
        except ItemError as err:
            problems.handle(err)
    return list(images.values()), entries, duplicates


def read_peer_split(
    path: str | Path,
    split: str,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    captions_per_image: int | None = None,
    skip_bad: bool = False,
    workers: int = 1,
) -> SplitData:
    """One split of a peer file, de-duplicated: one row per image, captions merged and padded."""
    data, _, _ = read_peer(
        path,
        [split],
        image_size=image_size,
        captions_per_image=captions_per_image,
        problems=Problems(skip_bad),
        workers=workers,
    )
    return data[split]


def read_peer(
    path: str | Path,
    splits: list[str] | None = None,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    captions_per_image: int | None = None,
    problems: Problems | None = None,
    workers: int = 1,
) -> tuple[dict[str, SplitData], list[str], dict[str, dict[str, int]]]:
    """Splits of a peer file (default all), the class names by id, and per-split counts
    (entries, duplicate entries merged, images kept)."""
    path = Path(path)
    problems = problems or Problems(False)
    collected: dict[str, list[_Image]] = {}
    stats: dict[str, dict[str, int]] = {}
    with _open(path) as f, damaged_file_guard(str(path)):
        for split in splits or sorted(f.keys()):
            images, entries, duplicates = _collect(f, path, split, problems)
            collected[split] = images
            stats[split] = {"entries": entries, "duplicate_entries": duplicates}
        names = {im.class_name for images in collected.values() for im in images}
        numbered = {n: _class_id(n) for n in names}
        if all(v is not None for v in numbered.values()):
            class_id = numbered
        else:  # no numbers in the class strings: sorted order over the whole file
            order = sorted(_all_class_names(f, path))
            class_id = {n: order.index(n) for n in names}
    data = {}
    for split, images in collected.items():
        data[split] = _decode_split(
            path,
            split,
            images,
            class_id=class_id,
            image_size=image_size,
            captions_per_image=captions_per_image,
            problems=problems,
            workers=workers,
        )
        stats[split]["images"] = len(data[split])
        log.info(
            "%s:/%s: %d entries → %d images (%d duplicate entries merged)",
            path, split, stats[split]["entries"], len(data[split]),
            stats[split]["duplicate_entries"],
        )  # fmt: skip
    size = max(class_id.values(), default=-1) + 1
    by_id = {v: n for n, v in class_id.items()}
    return data, [by_id.get(i, "") for i in range(size)], stats


def _decode_split(
    path: Path,
    split: str,
    images: list[_Image],
    *,
    class_id: dict[str, int],
    image_size: int,
    captions_per_image: int | None,
    problems: Problems,
    workers: int,
) -> SplitData:
    def decode(image: _Image) -> np.ndarray | ItemError:
        try:
            where = f"{path}:/{split}/{image.first_key}/img"
            return load_source_image(image.data, where, image_size)
        except ItemError as err:
            return err

    pixels, kept = [], []
    for image, result in zip(images, parallel_map(decode, images, workers), strict=True):
        if isinstance(result, ItemError):
            problems.handle(result)
            continue
        pixels.append(result)
        kept.append(image)
    count = captions_per_image or max((len(im.captions) for im in kept), default=1)
    padded = [pad_captions(im.captions, count) for im in kept]
    return SplitData(
        images=np.stack(pixels) if pixels else np.empty((0, image_size, image_size, 3), np.uint8),
        captions=[c for c, _ in padded],
        class_ids=np.array([class_id[im.class_name] for im in kept], np.int64),
        names=[im.name for im in kept],
        caption_counts=np.array([n for _, n in padded], np.int16),
    )


def _all_class_names(f: h5py.File, path: Path) -> set[str]:
    names = set()
    for split, group in f.items():
        for key, entry in group.items():
            names.add(_text(entry, "class", f"{path}:/{split}/{key}").strip())
    return names


def peer_info(path: str | Path) -> DatasetInfo:
    """Split names and distinct-image counts of a peer file (from its group keys only)."""
    path = Path(path)
    with _open(path) as f, damaged_file_guard(str(path)):
        splits = sorted(f.keys())
        sizes = {s: len({_SUFFIX.sub("", _key(k)) for k in f[s]}) for s in splits}
    return DatasetInfo(
        dataset=path.stem,
        image_size=DEFAULT_IMAGE_SIZE,
        splits=splits,
        provenance={"source_layout": LAYOUT, "source": str(path)},
        augmentation=dict(REAL_AUGMENTATION),
        split_sizes=sizes,
        layout=LAYOUT,
    )


@dataclass(frozen=True, kw_only=True)
class PeerFlags(ConverterFlags):
    """The import-peer command line: the converters' shared flags, the source and --splits."""

    out: Path = option(Path("data/peer.h5"), "output HDF5 file", show_default=False)
    source: Path = option(
        REQUIRED, "peer-layout HDF5 file (birds.hdf5, flowers.hdf5)", positional=True
    )
    splits: tuple[str, ...] | None = option(
        None, "splits to convert (default: all in the file)", show_default=False, nargs="+"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, generated from `PeerFlags` (argparse checks the ranges)."""
    p = argparse.ArgumentParser(
        prog="python -m train data import-peer",
        description="Convert a GAN-CLS peer-layout birds.hdf5/flowers.hdf5 to our HDF5 schema "
        "(one row per image, duplicate entries merged, images pre-resized).",
    )
    return options.build_parser(PeerFlags, p, given_only=False, ranges_in_parser=True)


def main(argv: list[str] | None = None) -> int:
    """Convert; print a JSON summary line on stdout."""
    given = vars(build_parser().parse_args(argv))
    if given["splits"] is not None:  # nargs="+" parses to a list; the flags are frozen
        given["splits"] = tuple(given["splits"])
    args = PeerFlags(**given)
    problems = Problems(args.skip_bad)

    def convert(started: float) -> dict[str, object]:
        info = peer_info(args.source)
        splits = args.splits or info.splits
        missing = [s for s in splits if s not in info.splits]
        if missing:
            raise UsageError(
                f"--splits: {args.source} has no split {missing[0]!r} (has {info.splits})"
            )
        data, class_names, stats = read_peer(
            args.source,
            splits,
            image_size=args.image_size,
            captions_per_image=args.captions_per_image,
            problems=problems,
            workers=args.workers,
        )
        write_dataset(
            args.out,
            data,
            dataset=args.source.stem,
            image_size=args.image_size,
            class_names=class_names,
            provenance={
                "converter": "train.data.peer",
                "source": str(args.source),
                "source_layout": LAYOUT,
                "split_stats": stats,
                "skipped": problems.summary(),
            },
            augmentation=REAL_AUGMENTATION,
            image_encoding="png" if args.encode_png else None,
        )
        return {
            "out": str(args.out),
            "splits": {s: len(d) for s, d in data.items()},
            "merged_duplicate_entries": sum(s["duplicate_entries"] for s in stats.values()),
            "skipped": problems.skipped,
            "skipped_by_reason": problems.summary(),
            "seconds": round(time.perf_counter() - started, 2),
        }

    return run_converter(args.out, convert)
