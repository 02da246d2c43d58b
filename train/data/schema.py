"""The captioned-image HDF5 format (schema "rescue-t2i-captions", version 1): writer and reader.

Layout (documented for users in docs/DATA_FORMAT.md)::

    /                        attrs: schema, schema_version, image_size, dataset, provenance (JSON),
                                    attribute_names (JSON list), attribute_values (JSON object:
                                    name → list of value names), class_names (JSON list, optional),
                                    augmentation (JSON object, optional: what a loader may do)
    /<split>/                one group per split: "train", "test", "test_unseen", ...
        images               uint8 (N, H, W, 3) RGB, H = W = image_size          ┐ exactly one
        images_encoded       vlen uint8 (N,): PNG/JPEG bytes, decoding to H×W×3  ┘ of the two
        captions             vlen UTF-8 str (N, C): C captions per image (C fixed per split)
        caption_counts       int16 (N,): distinct captions before padding to C (optional)
        class_ids            int64 (N,)
        attributes           int16 (N, A): index into attribute_values[attribute_names[a]]
                             (optional: only where attributes are known, e.g. rescue-scenes)
        names                vlen UTF-8 str (N,): source file / image id (optional)
        caption_stated       uint8 (N, C): bit a set = caption states attribute_names[a]
                             (optional extension; absent = every caption states all)

Files are written to a temp file beside the target and renamed, so a failed write never leaves a
partial dataset. Every reader error is a `DataError` whose one-line message names the file and the
key (and the index or byte where that helps).

This module is our schema only and imports no converter. `train.data.files` reads any file we
accept (ours, or a peer GAN-CLS `birds.hdf5` converted in memory); use it where a user names a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from edge_runtime.atomic import atomic_path
from train.data import guard
from train.data.guard import DataError  # defined in guard (below schema) so guard can raise it
from train.errors import first_line

SCHEMA = "rescue-t2i-captions"
SCHEMA_VERSION = 1
MAX_IMAGE_SIZE = 1024
"""Larger image_size values are treated as corruption (a 64×64 model stores 64 or 76)."""


@dataclass
class SplitData:
    """One split held in memory."""

    images: np.ndarray
    """uint8 (N, H, W, 3) RGB."""
    captions: list[list[str]]
    """N lists of C captions."""
    class_ids: np.ndarray
    """int64 (N,)."""
    attributes: np.ndarray | None = None
    """int16 (N, A) indices into the dataset's attribute values, or None."""
    names: list[str] | None = None
    """Per-image source names, or None."""
    caption_counts: np.ndarray | None = None
    """int16 (N,): captions[i][:caption_counts[i]] are distinct, the rest repeat them to pad to C
    (sources with fewer captions for some images); None when all C are distinct."""
    caption_stated: np.ndarray | None = None
    """uint8 (N, C): bit a of [i, j] set when caption j of image i states attribute a (in
    `attribute_names` order); None when every caption states every attribute. An optional
    extension of schema v1: readers that do not know it ignore it (docs/DATA_FORMAT.md)."""

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class DatasetInfo:
    """Root attributes of a dataset file."""

    dataset: str
    image_size: int
    splits: list[str]
    attribute_names: list[str] = field(default_factory=list)
    attribute_values: dict[str, list[str]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    augmentation: dict[str, Any] = field(default_factory=dict)
    """What a loader may do to images, e.g. {"hflip": false, "crop": false}; {} = no constraint."""
    split_sizes: dict[str, int] = field(default_factory=dict)
    """Images per split (for the peer layout: distinct images, after de-duplication)."""
    layout: str = SCHEMA
    """SCHEMA for our files, `train.data.peer.LAYOUT` for a peer GAN-CLS file."""


# ---------------------------------------------------------------------------------------------
# Writing


def write_dataset(
    path: str | os.PathLike[str],
    splits: Mapping[str, SplitData],
    *,
    dataset: str,
    image_size: int,
    attribute_names: Sequence[str] = (),
    attribute_values: Mapping[str, Sequence[str]] | None = None,
    class_names: Sequence[str] = (),
    provenance: Mapping[str, Any] | None = None,
    augmentation: Mapping[str, Any] | None = None,
    image_encoding: str | None = None,
) -> Path:
    """Write splits atomically (temp file + rename) in the schema above.

    `image_encoding` None stores raw uint8 `images` (fastest to read); "png" stores lossless
    `images_encoded` (smaller for real photos).
    """
    if image_encoding not in (None, "png"):
        raise ValueError(f"image_encoding must be None or 'png', got {image_encoding!r}")
    path = Path(path)
    with atomic_path(path, make_parents=True) as tmp, h5py.File(tmp, "x") as f:
        f.attrs["schema"] = SCHEMA
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["dataset"] = dataset
        f.attrs["image_size"] = image_size
        f.attrs["attribute_names"] = json.dumps(list(attribute_names))
        f.attrs["attribute_values"] = json.dumps(
            {k: list(v) for k, v in (attribute_values or {}).items()}
        )
        f.attrs["class_names"] = json.dumps(list(class_names))
        f.attrs["provenance"] = json.dumps(dict(provenance or {}))
        f.attrs["augmentation"] = json.dumps(dict(augmentation or {}))
        for name, split in splits.items():
            _write_split(f.create_group(name), split, image_size, f"{path}:/{name}", image_encoding)
    return path


def _write_split(
    group: h5py.Group, split: SplitData, image_size: int, where: str, encoding: str | None
) -> None:
    n = len(split.images)
    if split.images.shape[1:] != (image_size, image_size, 3) or split.images.dtype != np.uint8:
        raise DataError(
            f"{where}/images: expected uint8 (N, {image_size}, {image_size}, 3), got "
            f"{split.images.dtype} {split.images.shape}"
        )
    if len(split.captions) != n or len(split.class_ids) != n:
        raise DataError(
            f"{where}: {n} images but {len(split.captions)} caption lists and "
            f"{len(split.class_ids)} class ids"
        )
    per_image = {len(c) for c in split.captions}
    if len(per_image) > 1:
        raise DataError(f"{where}/captions: images have different caption counts {per_image}")
    if per_image == {0}:
        raise DataError(f"{where}/captions: images have no captions")
    for i, row in enumerate(split.captions):
        for j, caption in enumerate(row):
            if not isinstance(caption, str) or not caption.strip():
                raise DataError(f"{where}/captions[{i}][{j}]: empty or not a string: {caption!r}")
    if encoding is None:
        chunk = (max(min(n, 256), 1), *split.images.shape[1:])
        group.create_dataset("images", data=split.images, chunks=chunk if n else None)
    else:
        encoded = group.create_dataset("images_encoded", (n,), dtype=h5py.vlen_dtype(np.uint8))
        for i, image in enumerate(split.images):
            ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
            assert ok, "PNG encoding of a uint8 image cannot fail"
            encoded[i] = data.ravel()
    captions = np.array(split.captions, dtype=object).reshape(n, max(per_image, default=1))
    group.create_dataset("captions", data=captions, dtype=h5py.string_dtype("utf-8"))
    group.create_dataset("class_ids", data=np.asarray(split.class_ids, dtype=np.int64))
    if split.caption_counts is not None:
        counts = np.asarray(split.caption_counts, dtype=np.int16)
        if counts.shape != (n,) or (n and (counts.min() < 1 or counts.max() > captions.shape[1])):
            raise DataError(f"{where}/caption_counts: expected (N,) values in 1..C")
        group.create_dataset("caption_counts", data=counts)
    if split.attributes is not None:
        group.create_dataset("attributes", data=np.asarray(split.attributes, dtype=np.int16))
    if split.caption_stated is not None:
        stated = np.asarray(split.caption_stated)
        if stated.shape != captions.shape or not np.issubdtype(stated.dtype, np.integer):
            raise DataError(f"{where}/caption_stated: expected integer {captions.shape}")
        if stated.size and (stated.min() < 1 or stated.max() > 255):
            raise DataError(f"{where}/caption_stated: values must be bitmasks in 1..255")
        group.create_dataset("caption_stated", data=stated.astype(np.uint8))
    if split.names is not None:
        group.create_dataset(
            "names", data=np.array(split.names, dtype=object), dtype=h5py.string_dtype("utf-8")
        )


# ---------------------------------------------------------------------------------------------
# Reading


def _json_attr(f: h5py.File, key: str, default: Any, where: str) -> Any:
    raw = f.attrs.get(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except (TypeError, ValueError, RecursionError):  # RecursionError: "[[[[..." 100k deep
        raise DataError(f"{where}: root attribute {key!r} is not valid JSON") from None


@contextmanager
def damaged_file_guard(where: str) -> Iterator[None]:
    """Turn HDF5's low-level failures on a damaged file (bad index, heap or link names) into one
    `DataError` line; a damaged file can fail in any h5py call, not only in data reads."""
    try:
        yield
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as err:
        # TypeError/ValueError too: h5py raises them for corrupted type records ("Unknown string
        # encoding"). The message keeps the original text in case it is our bug after all.
        raise DataError(
            f"{where}: unreadable (truncated or corrupted file?): {type(err).__name__}: "
            f"{first_line(err)}"
        ) from None


def open_hdf5(path: Path) -> h5py.File:
    """Open any HDF5 file read-only, with one clear line when it is missing or not HDF5."""
    if not path.exists():
        raise DataError(f"{path}: dataset file not found")
    with damaged_file_guard(str(path)):
        return guard.open_hdf5(path)  # hostile-file checks before any payload byte is read


def _check_ours(f: h5py.File, path: Path) -> None:
    schema = f.attrs.get("schema")
    if schema != SCHEMA:
        raise DataError(f"{path}: root attribute 'schema' is {schema!r}, expected {SCHEMA!r}")
    version = _plain(f.attrs.get("schema_version"))
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {version!r} is not one this code reads (1)")
    size = _plain(f.attrs.get("image_size"))
    if not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise DataError(
            f"{path}: root attribute 'image_size' is {size!r}, expected an integer in "
            f"1..{MAX_IMAGE_SIZE}"
        )


def _plain(value: object) -> object:
    """numpy scalars → Python scalars, so messages read 9 rather than np.int64(9)."""
    return value.item() if isinstance(value, np.generic) else value


def open_checked(path: str | os.PathLike[str]) -> h5py.File:
    """Open a dataset file read-only, with one clear line when it is missing or not ours."""
    path = Path(path)
    f = open_hdf5(path)
    try:
        with damaged_file_guard(str(path)):
            _check_ours(f, path)
    except BaseException:
        f.close()
        raise
    return f


def read_info(path: str | os.PathLike[str]) -> DatasetInfo:
    """Root attributes and split names of a file in our schema."""
    path = Path(path)
    with open_hdf5(path) as f, damaged_file_guard(str(path)):
        _check_ours(f, path)
        where = str(path)
        splits = sorted(k for k in f if isinstance(f[k], h5py.Group))
        sizes = {}
        for s in splits:
            ids = f[s].get("class_ids")
            sizes[s] = int(ids.shape[0]) if isinstance(ids, h5py.Dataset) and ids.ndim == 1 else 0
        return DatasetInfo(
            dataset=str(f.attrs.get("dataset", "")),
            image_size=int(f.attrs["image_size"]),
            splits=splits,
            attribute_names=_json_attr(f, "attribute_names", [], where),
            attribute_values=_json_attr(f, "attribute_values", {}, where),
            class_names=_json_attr(f, "class_names", [], where),
            provenance=_json_attr(f, "provenance", {}, where),
            augmentation=_json_attr(f, "augmentation", {}, where),
            split_sizes=sizes,
        )


def read_split(path: str | os.PathLike[str], split: str) -> SplitData:
    """Load a whole split into memory (images decoded once), validating every field."""
    path = Path(path)
    with open_hdf5(path) as f, damaged_file_guard(f"{path}:/{split}"):
        return _read_split(f, path, split)


def _read_split(f: h5py.File, path: Path, split: str) -> SplitData:
    """read_split on an open file."""
    _check_ours(f, path)
    where = f"{path}:/{split}"
    if split not in f or not isinstance(f[split], h5py.Group):
        splits = sorted(k for k in f if isinstance(f[k], h5py.Group))
        raise DataError(f"{path}: no split {split!r} (has {splits})")
    g = f[split]
    size = int(f.attrs["image_size"])
    attribute_names = _json_attr(f, "attribute_names", [], str(path))
    attribute_values = _json_attr(f, "attribute_values", {}, str(path))
    images = _read_images(g, size, where)
    n = len(images)
    captions = _read_captions(g, n, where)
    class_ids = _read_dataset(g, "class_ids", where)
    if class_ids.shape != (n,) or not np.issubdtype(class_ids.dtype, np.integer):
        raise DataError(
            f"{where}/class_ids: expected integer ({n},), got {class_ids.dtype} {class_ids.shape}"
        )
    attributes = None
    if "attributes" in g:
        attributes = _read_dataset(g, "attributes", where)
        _check_attributes(attributes, n, attribute_names, attribute_values, where)
    names = None
    if "names" in g:
        raw = _read_dataset(g, "names", where)
        if raw.shape != (n,):
            raise DataError(f"{where}/names: expected ({n},), got {raw.shape}")
        names = [_decode_text(v, f"{where}/names[{i}]") for i, v in enumerate(raw)]
    counts = None
    if "caption_counts" in g:
        counts = _read_dataset(g, "caption_counts", where).astype(np.int16)
        c = len(captions[0]) if captions else 0
        if counts.shape != (n,) or (n and (counts.min() < 1 or counts.max() > c)):
            raise DataError(f"{where}/caption_counts: expected ({n},) values in 1..{c}")
    stated = None
    if "caption_stated" in g:
        stated = _read_stated(g, n, len(captions[0]) if captions else 0, attribute_names, where)
    return SplitData(
        images, captions, class_ids.astype(np.int64), attributes, names, counts, stated
    )


def _read_stated(
    g: h5py.Group, n: int, c: int, attribute_names: list[str], where: str
) -> np.ndarray:
    """The optional caption_stated bitmasks, declared shape checked before the read."""
    if isinstance(g["caption_stated"], h5py.Dataset):
        guard.expect(g["caption_stated"], f"{where}/caption_stated", "ui", (n, c))
    stated = _read_dataset(g, "caption_stated", where)
    if stated.shape != (n, c):
        raise DataError(f"{where}/caption_stated: expected ({n}, {c}), got {stated.shape}")
    limit = (1 << len(attribute_names)) - 1 if attribute_names else 255
    if stated.size and (stated.min() < 1 or stated.max() > limit):
        bad = np.argwhere((stated < 1) | (stated > limit))[0]
        raise DataError(
            f"{where}/caption_stated[{bad[0]}][{bad[1]}]: {int(stated[tuple(bad)])} is not a "
            f"non-empty bitmask over {len(attribute_names)} attributes (1..{limit})"
        )
    return stated.astype(np.uint8)


def _read_dataset(g: h5py.Group, key: str, where: str) -> np.ndarray:
    if key not in g:
        raise DataError(f"{where}: missing dataset {key!r}")
    obj = g[key]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{where}/{key}: is a group, expected a dataset")
    try:
        return obj[()]
    except (OSError, RuntimeError, TypeError, ValueError) as err:
        raise DataError(
            f"{where}/{key}: unreadable (truncated or corrupted file?): {first_line(err)}"
        ) from None


def _read_images(g: h5py.Group, size: int, where: str) -> np.ndarray:
    if "images" in g:
        declared = g["images"]  # checked before reading: its metadata, not its payload
        if isinstance(declared, h5py.Dataset) and (
            declared.dtype != np.uint8 or declared.shape[1:] != (size, size, 3)
        ):
            raise DataError(
                f"{where}/images: expected uint8 (N, {size}, {size}, 3) (image_size {size}), "
                f"got {declared.dtype} {declared.shape}"
            )
        return _read_dataset(g, "images", where)
    if "images_encoded" in g:
        if isinstance(g["images_encoded"], h5py.Dataset):
            guard.expect(g["images_encoded"], f"{where}/images_encoded", "O", (None,))
        encoded = _read_dataset(g, "images_encoded", where)
        if encoded.ndim != 1:
            raise DataError(f"{where}/images_encoded: expected (N,), got {encoded.shape}")
        images = np.empty((len(encoded), size, size, 3), np.uint8)
        for i, data in enumerate(encoded):
            images[i] = decode_image(data, f"{where}/images_encoded[{i}]", size=size)
        return images
    raise DataError(f"{where}: neither 'images' nor 'images_encoded'")


def _decode_text(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{where}: not valid UTF-8 (byte {err.start})") from None
    raise DataError(f"{where}: expected text, got {type(value).__name__}")


def _read_captions(g: h5py.Group, n: int, where: str) -> list[list[str]]:
    raw = _read_dataset(g, "captions", where)
    if raw.ndim != 2 or raw.shape[0] != n or raw.shape[1] < 1:
        raise DataError(f"{where}/captions: expected ({n}, C) with C ≥ 1, got {raw.shape}")
    captions = []
    for i, row in enumerate(raw):
        texts = []
        for j, value in enumerate(row):
            text = _decode_text(value, f"{where}/captions[{i}][{j}]")
            if not text.strip():
                raise DataError(f"{where}/captions[{i}][{j}]: empty caption")
            texts.append(text)
        captions.append(texts)
    return captions


def _check_attributes(
    attributes: np.ndarray,
    n: int,
    names: list[str],
    values: dict[str, list[str]],
    where: str,
) -> None:
    a = len(names) if names else attributes.shape[-1] if attributes.ndim == 2 else -1
    if attributes.shape != (n, a) or not np.issubdtype(attributes.dtype, np.integer):
        raise DataError(
            f"{where}/attributes: expected integer ({n}, {a}), got {attributes.dtype} "
            f"{attributes.shape}"
        )
    for k, name in enumerate(names):
        count = len(values.get(name, ()))
        column = attributes[:, k]
        if count and n and (column.min() < 0 or column.max() >= count):
            bad = int(np.flatnonzero((column < 0) | (column >= count))[0])
            raise DataError(
                f"{where}/attributes[{bad}][{k}]: {name} index {int(column[bad])} outside "
                f"0..{count - 1}"
            )


def decode_image(data: np.ndarray | bytes, where: str, *, size: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 (H, W, 3) RGB; with `size`, require H = W = size."""
    buffer = np.frombuffer(bytes(data), np.uint8) if isinstance(data, bytes) else data
    buffer = np.asarray(buffer, dtype=np.uint8).ravel()
    if buffer.size:
        guard.check_image_header(buffer, where, size)  # a 1 MB PNG may decode to gigabytes
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise DataError(f"{where}: undecodable image bytes ({buffer.size} bytes)")
    if size is not None and image.shape[:2] != (size, size):
        raise DataError(
            f"{where}: image is {image.shape[1]}×{image.shape[0]}, expected {size}×{size} "
            "(the file's image_size)"
        )
    return np.ascontiguousarray(image[:, :, ::-1])  # BGR → RGB


def _decode(data: np.ndarray | bytes, size: int, where: str) -> np.ndarray:
    """Kept for callers of the first schema version (train.data.loader): `decode_image` with a
    required size."""
    return decode_image(data, where, size=size)
