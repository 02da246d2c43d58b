"""The captioned-image HDF5 format (schema "rescue-t2i-captions", version 1): writer and reader.

Layout (documented for users in docs/DATA_FORMAT.md)::

    /                        attrs: schema, schema_version, image_size, dataset, provenance (JSON),
                                    attribute_names (JSON list), attribute_values (JSON object:
                                    name → list of value names), class_names (JSON list, optional)
    /<split>/                one group per split: "train", "test", "test_unseen", ...
        images               uint8 (N, H, W, 3) RGB, H = W = image_size          ┐ exactly one
        images_encoded       vlen uint8 (N,): PNG/JPEG bytes, decoded to H×W×3   ┘ of the two
        captions             vlen UTF-8 str (N, C): C captions per image (C fixed per split)
        class_ids            int64 (N,)
        attributes           int16 (N, A): index into attribute_values[attribute_names[a]]
                             (optional: only where attributes are known, e.g. rescue-scenes)
        names                vlen UTF-8 str (N,): source file / image id (optional)

Files are written to a temp file beside the target and renamed, so a failed write never leaves a
partial dataset.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SCHEMA = "rescue-t2i-captions"
SCHEMA_VERSION = 1


class DataError(ValueError):
    """A dataset problem; the message names the file and the key."""


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
) -> Path:
    """Write splits atomically (temp file + rename) in the schema above."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
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
            for name, split in splits.items():
                _write_split(f.create_group(name), split, image_size, f"{path}:/{name}")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_split(group: h5py.Group, split: SplitData, image_size: int, where: str) -> None:
    n = len(split.images)
    if split.images.shape[1:] != (image_size, image_size, 3) or split.images.dtype != np.uint8:
        raise DataError(
            f"{where}/images: expected uint8 (N, {image_size}, {image_size}, 3), got "
            f"{split.images.dtype} {split.images.shape}"
        )
    if len(split.captions) != n or len(split.class_ids) != n:
        raise DataError(f"{where}: {n} images but {len(split.captions)} caption lists")
    per_image = {len(c) for c in split.captions}
    if len(per_image) > 1:
        raise DataError(f"{where}/captions: images have different caption counts {per_image}")
    group.create_dataset("images", data=split.images, chunks=(min(n, 256), *split.images.shape[1:]))
    group.create_dataset(
        "captions", data=np.array(split.captions, dtype=object), dtype=h5py.string_dtype("utf-8")
    )
    group.create_dataset("class_ids", data=np.asarray(split.class_ids, dtype=np.int64))
    if split.attributes is not None:
        group.create_dataset("attributes", data=np.asarray(split.attributes, dtype=np.int16))
    if split.names is not None:
        group.create_dataset(
            "names", data=np.array(split.names, dtype=object), dtype=h5py.string_dtype("utf-8")
        )


def _json_attr(f: h5py.File, key: str, default: Any, where: str) -> Any:
    raw = f.attrs.get(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}: root attribute {key!r} is not valid JSON") from None


def open_checked(path: str | os.PathLike[str]) -> h5py.File:
    """Open a dataset file read-only, with one clear line when it is missing or not HDF5."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupted?): {err}") from None
    if f.attrs.get("schema") != SCHEMA:
        f.close()
        raise DataError(f"{path}: root attribute 'schema' is not {SCHEMA!r}")
    version = f.attrs.get("schema_version")
    if not isinstance(version, int | np.integer) or version > SCHEMA_VERSION:
        f.close()
        raise DataError(f"{path}: schema_version {version!r} is newer than this code reads")
    return f


def read_info(path: str | os.PathLike[str]) -> DatasetInfo:
    """Root attributes and split names."""
    with open_checked(path) as f:
        return DatasetInfo(
            dataset=str(f.attrs.get("dataset", "")),
            image_size=int(f.attrs["image_size"]),
            splits=sorted(f.keys()),
            attribute_names=_json_attr(f, "attribute_names", [], str(path)),
            attribute_values=_json_attr(f, "attribute_values", {}, str(path)),
            class_names=_json_attr(f, "class_names", [], str(path)),
            provenance=_json_attr(f, "provenance", {}, str(path)),
        )


def read_split(path: str | os.PathLike[str], split: str) -> SplitData:
    """Load a whole split into memory (images decoded once)."""
    with open_checked(path) as f:
        where = f"{path}:/{split}"
        if split not in f:
            raise DataError(f"{path}: no split {split!r} (has {sorted(f.keys())})")
        g = f[split]
        size = int(f.attrs["image_size"])
        try:
            if "images" in g:
                images = g["images"][()]
            elif "images_encoded" in g:
                images = np.stack(
                    [_decode(b, size, f"{where}/images_encoded[{i}]") for i, b in enumerate(g["images_encoded"])]
                )
            else:
                raise DataError(f"{where}: neither 'images' nor 'images_encoded'")
            if images.shape[1:] != (size, size, 3):
                raise DataError(f"{where}/images: shape {images.shape}, expected (N, {size}, {size}, 3)")
            captions = [[c.decode("utf-8") if isinstance(c, bytes) else c for c in row] for row in g["captions"][()]]
            class_ids = g["class_ids"][()].astype(np.int64)
            attributes = g["attributes"][()] if "attributes" in g else None
            names = (
                [n.decode("utf-8") if isinstance(n, bytes) else n for n in g["names"][()]]
                if "names" in g
                else None
            )
        except KeyError as err:
            raise DataError(f"{where}: missing dataset {err}") from None
        except OSError as err:
            raise DataError(f"{where}: unreadable (truncated file?): {err}") from None
    if len(captions) != len(images) or len(class_ids) != len(images):
        raise DataError(f"{where}: {len(images)} images, {len(captions)} captions, {len(class_ids)} class ids")
    return SplitData(images, captions, class_ids, attributes, names)


def _decode(data: np.ndarray, size: int, where: str) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.asarray(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{where}: undecodable image bytes")
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image[:, :, ::-1]  # BGR → RGB
