"""GAN-CLS batches: augmented real images, captions, a wrong-class sample and a GAN-INT partner.

Each sample of a batch carries (all indices into the split):

- the real image, augmented as in Reed et al. 2016 (resize to 76, random 64×64 crop, horizontal
  flip, scaled to [-1, 1]) unless the dataset forbids it (rescue-scenes stores
  `augmentation = {"hflip": false, "crop": false}` because left/right position is an attribute);
- K distinct caption indices of that image, whose embeddings the trainer averages (Reed: K = 4;
  an image with fewer distinct captions, `caption_counts[i]` < K, cycles through its own);
- a *wrong* sample drawn uniformly from the images of a **different class**, always, with its own
  K captions (and, on request, its augmented image): the mismatched pair of GAN-CLS. A share
  (`hard_negative_fraction`) of them are *hard negatives* instead: an image whose attributes
  differ from the real one's in exactly one (`train.data.twins.AttributeTwins`), so the mismatch
  task cannot be solved by the 3–4 attributes a random other class usually differs in;
  datasets without attributes (CUB, Oxford) keep random other classes;
- a GAN-INT *partner*: a different image with K captions, to interpolate embeddings with.

Partial captions (the split has `caption_stated`, issue 17): a sample's K captions all state the
same attributes — the first is drawn as usual, the others among the image's captions with its
mask — so a partial caption reaches the generator alone rather than averaged into a full one,
and the batch carries that mask (`GanClsBatch.stated`). A wrong caption must contradict the real
image: it must state at least one attribute on which the wrong image differs from the real one
("in red" is a right caption for every red image, whatever class it is); wrong samples whose
captions cannot are redrawn from a stream of their own (`[seed, e, 2]`), and with
`wrong_images` the right caption must state such an attribute instead. Splits without
`caption_stated` never reach this code: their batches are bit-for-bit the same as before.
docs/GAN_TRAINING.md § Partial captions.

Randomness is stateless: the draws for epoch e come from `numpy.random.default_rng([seed, e])`
over the whole split and are looked up by dataset index (the hard-negative choices from a second
stream, `[seed, e, 1]`, so the other draws are the same with and without them). So a batch
depends only on (seed, epoch, indices): any world size yields the same samples (sharded like
`DistributedSampler`, which we use), and resuming mid-epoch needs only the epoch and the batch
position, no generator state.

Two storage modes with the same batches:

- in memory (default): images decoded once and resized to the load size up front; a batch is one
  vectorised gather (crop and flip folded into the index arrays); its speed:
  `python -m train.gan.bench --loader-only`, docs/GAN_TRAINING.md § Data;
- lazy (`lazy=True`): HDF5 read per batch for data that does not fit in memory. The file is
  opened on first use in each process and the handle is dropped when the dataset is pickled, so
  each DataLoader worker opens its own (h5py handles must not cross a fork).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from train.data import files, schema
from train.data.schema import DataError, SplitData
from train.data.twins import AttributeTwins

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderConfig:
    """How batches are drawn; the defaults are Reed's."""

    batch_size: int = 64
    """Samples per batch *per process*."""
    captions_per_sample: int = 4
    """K distinct captions of the image whose embeddings are averaged (Reed averaged 4)."""
    load_size: int = 76
    """Images are resized to this before the random crop (Reed: 76)."""
    crop_size: int = 64
    crop: bool = True
    """Random crop_size crop of the load_size image; without it images are resized to crop_size."""
    flip: bool = True
    """Horizontal flip with probability ½."""
    wrong_images: bool = False
    """Also return the augmented image of each wrong sample (Reed's form of the mismatch term)."""
    seed: int = 0
    lazy: bool = False
    """Read images from the HDF5 file per batch instead of holding them in memory."""
    workers: int = 0
    """DataLoader worker processes (lazy mode; in memory a batch is a single gather)."""
    hard_negative_fraction: float = 0.0
    """Share of wrong samples drawn among the attribute twins of the real image (differing in
    exactly one attribute) rather than among all other classes; needs per-image attributes."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.captions_per_sample < 1:
            raise ValueError(f"captions_per_sample must be ≥ 1, got {self.captions_per_sample}")
        if not 0.0 <= self.hard_negative_fraction <= 1.0:
            raise ValueError(
                f"hard_negative_fraction must be in [0, 1], got {self.hard_negative_fraction}"
            )
        if self.crop and self.load_size < self.crop_size:
            raise ValueError(f"load_size {self.load_size} is smaller than crop {self.crop_size}")

    @property
    def stored_size(self) -> int:
        """Side of the images held before cropping."""
        return self.load_size if self.crop else self.crop_size


@dataclass
class GanClsBatch:
    """One batch; B samples, K captions each. Tensors are CPU until `.to(device)`."""

    images: torch.Tensor
    """float32 (B, 3, 64, 64) in [-1, 1], channels-last memory layout."""
    indices: torch.Tensor
    """int64 (B,) dataset index of each real image."""
    class_ids: torch.Tensor
    """int64 (B,)."""
    captions: torch.Tensor
    """int64 (B, K) caption indices (0..C-1) of each real image."""
    wrong_indices: torch.Tensor
    """int64 (B,) a sample of another class, for the mismatched pair."""
    wrong_class_ids: torch.Tensor
    """int64 (B,), never equal to `class_ids`."""
    wrong_captions: torch.Tensor
    """int64 (B, K) caption indices of the wrong sample."""
    partner_indices: torch.Tensor
    """int64 (B,) a different image whose captions GAN-INT interpolates towards."""
    partner_captions: torch.Tensor
    """int64 (B, K)."""
    wrong_images: torch.Tensor | None = None
    """float32 (B, 3, 64, 64) augmented wrong images when `LoaderConfig.wrong_images`."""
    stated: torch.Tensor | None = None
    """int64 (B,) `caption_stated` bitmask shared by each sample's K captions; None for splits
    without partial captions (every caption states everything)."""

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GanClsBatch:
        """Every tensor moved to `device`."""
        moved = {
            f.name: None if v is None else v.to(device, non_blocking=non_blocking)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return GanClsBatch(**moved)

    def pin_memory(self) -> GanClsBatch:
        """Used by DataLoader(pin_memory=True)."""
        pinned = {
            f.name: None if v is None else v.pin_memory()
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return GanClsBatch(**pinned)


@dataclass(frozen=True)
class EpochDraws:
    """Every random choice of one epoch, indexed by dataset index (N,)."""

    crop_yx: np.ndarray
    """int (N, 2) crop offsets of the real image."""
    flip: np.ndarray
    """bool (N,)."""
    captions: np.ndarray
    """int (N, K)."""
    wrong: np.ndarray
    """int (N,) index of a sample of another class."""
    wrong_captions: np.ndarray
    wrong_crop_yx: np.ndarray
    wrong_flip: np.ndarray
    hard_negative: np.ndarray
    """bool (N,): `wrong` is an attribute twin of the sample (differs in one attribute)."""
    partner: np.ndarray
    """int (N,) index of a different image."""
    partner_captions: np.ndarray
    stated: np.ndarray | None = None
    """int (N,) bitmask the sample's K captions state (None: the split has no partial ones)."""
    wrong_stated: np.ndarray | None = None
    """int (N,) bitmask the wrong sample's K captions state."""


MAX_WRONG_REDRAWS = 16
"""Vectorised redraw rounds for wrong samples whose captions cannot contradict the real image;
the few left after them (a split of nearly all one-attribute captions) get an exhaustive search."""


def difference_bits(attributes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64 (M,): bit k set where images a and b (int (M,)) differ in attribute k."""
    differ = attributes[a] != attributes[b]  # (M, A)
    return (differ.astype(np.int64) << np.arange(attributes.shape[1])).sum(1)


class WrongClassSampler:
    """Uniform draws among the samples whose class differs from a given sample's, vectorised.

    Samples are ordered by class; for a sample of class c (occupying positions
    [start_c, start_c + n_c) of that order) a uniform r in [0, N − n_c) maps to position r, or
    r + n_c when r falls at or after start_c — skipping exactly the own-class block.
    """

    def __init__(self, class_ids: np.ndarray, where: str = "dataset") -> None:
        class_ids = np.asarray(class_ids)
        self.order = np.argsort(class_ids, kind="stable")
        classes, starts, counts = np.unique(
            class_ids[self.order], return_index=True, return_counts=True
        )
        if len(classes) < 2:
            raise DataError(
                f"{where}: GAN-CLS needs images of at least 2 classes for mismatched pairs, "
                f"found {len(classes)}"
            )
        own = np.searchsorted(classes, class_ids)
        self.start = starts[own]
        self.count = counts[own]
        self.others = len(class_ids) - self.count

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One wrong-class index per sample: int64 (N,)."""
        r = np.minimum(
            (rng.random(len(self.others)) * self.others).astype(np.int64), self.others - 1
        )
        position = r + np.where(r >= self.start, self.count, 0)
        return self.order[position]


def crop_flip(images: np.ndarray, crop_yx: np.ndarray, flip: np.ndarray, size: int) -> np.ndarray:
    """Per-sample crop and horizontal flip as one gather: (B, L, L, 3) → (B, size, size, 3)."""
    b, side = images.shape[0], images.shape[1]
    offsets = np.arange(size)
    rows = crop_yx[:, :1] + offsets  # (B, size)
    cols = crop_yx[:, 1:] + offsets  # (B, size)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    # Flat pixel index (B, size, size) into the (B·L·L, 3) pixel rows: a single np.take is
    # several times faster than three-array fancy indexing.
    pixel = (np.arange(b)[:, None, None] * side + rows[:, :, None]) * side + cols[:, None, :]
    flat = np.take(images.reshape(-1, 3), pixel.reshape(-1), axis=0)
    return flat.reshape(b, size, size, 3)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float32 (B, 3, H, W) in [-1, 1], channels-last (no layout copy)."""
    # numpy rather than torch for the conversion: single-threaded, so it neither waits on nor
    # spins against the trainer's OpenMP threads (torch's conversion was far slower under load).
    scaled = np.multiply(images, np.float32(1 / 127.5), dtype=np.float32)
    scaled -= 1.0
    # Permuting NHWC is exactly the channels-last layout, which the convolutions prefer on CPU.
    return torch.from_numpy(scaled).permute(0, 3, 1, 2)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (N, H, W, 3) to (N, size, size, 3): bilinear up (as Reed), area down."""
    if images.shape[1:3] == (size, size):
        return images

    interpolation = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_LINEAR
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = cv2.resize(image, (size, size), interpolation=interpolation)
    return out


def dataset_augmentation(path: str | Path) -> dict[str, Any]:
    """The dataset's own limits on augmentation (root attribute `augmentation`), {} if none."""
    return dict(getattr(files.read_info(path), "augmentation", {}) or {})


def apply_dataset_limits(
    config: LoaderConfig, augmentation: dict[str, Any], where: str
) -> LoaderConfig:
    """Switch off flips/crops the dataset forbids (e.g. position is an attribute), saying so."""
    changes: dict[str, bool] = {}
    reason = augmentation.get("reason", "the dataset says so")
    if config.flip and augmentation.get("hflip") is False:
        changes["flip"] = False
    if config.crop and augmentation.get("crop") is False:
        changes["crop"] = False
    if changes:
        log.info("%s: no %s (%s)", where, " / ".join(changes), reason)
        config = LoaderConfig(**{**config.__dict__, **changes})
    return config


class _LazyImages:
    """Images read from HDF5 per batch; the handle is opened on first use in each process."""

    def __init__(self, path: Path, split: str, image_size: int, count: int) -> None:
        self.path, self.split, self.image_size, self.count = path, split, image_size, count
        self._file: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # h5py handles are not picklable and must not be shared across forked workers.
        return {**self.__dict__, "_file": None}

    def _group(self) -> Any:
        if self._file is None:
            self._file = files.open_checked(self.path)
        return self._file[self.split]

    def take(self, indices: np.ndarray, size: int) -> np.ndarray:
        """uint8 (B, size, size, 3) for dataset indices in any order (duplicates allowed)."""
        unique, inverse = np.unique(indices, return_inverse=True)
        group = self._group()
        where = f"{self.path}:/{self.split}"
        try:
            if "images" in group:
                raw = group["images"][unique]  # h5py fancy reads need increasing indices
            else:
                encoded = group["images_encoded"]
                raw = np.stack(
                    [
                        schema.decode_image(
                            encoded[i], f"{where}/images_encoded[{i}]", size=self.image_size
                        )
                        for i in unique
                    ]
                )
        except OSError as err:
            raise DataError(f"{where}: unreadable (truncated file?): {err}") from None
        return resize_images(raw, size)[inverse]


class GanClsDataset(Dataset):
    """Map-style dataset whose `__getitems__` returns a whole `GanClsBatch` (vectorised)."""

    def __init__(
        self,
        class_ids: np.ndarray,
        captions_per_image: int,
        config: LoaderConfig,
        *,
        images: np.ndarray | None = None,
        lazy_images: _LazyImages | None = None,
        caption_counts: np.ndarray | None = None,
        attributes: np.ndarray | None = None,
        caption_stated: np.ndarray | None = None,
        where: str = "dataset",
    ) -> None:
        self.config = config
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.num_captions = captions_per_image
        # Distinct captions per image (docs/DATA_FORMAT.md: the rest of the row repeats them).
        self.caption_counts = (
            np.full(len(self.class_ids), captions_per_image, dtype=np.int64)
            if caption_counts is None
            else np.asarray(caption_counts, dtype=np.int64)
        )
        # bool (N, C) or None: which of each image's distinct captions the sampler may pick
        # (`keep_full_captions`); None = every distinct caption.
        self.caption_filter: np.ndarray | None = None
        self.where = where
        if config.captions_per_sample > captions_per_image:
            raise DataError(
                f"{where}: {captions_per_image} captions per image, fewer than the "
                f"{config.captions_per_sample} to average per sample"
            )
        if len(self.class_ids) < 2:
            raise DataError(
                f"{where}: GAN-CLS needs at least 2 images, found {len(self.class_ids)}"
            )
        self.wrong_sampler = WrongClassSampler(self.class_ids, where)
        self.attributes = None if attributes is None else np.asarray(attributes, np.int64)
        self.caption_stated: np.ndarray | None = None
        if caption_stated is not None:
            if self.attributes is None:
                raise DataError(
                    f"{where}/caption_stated: partial captions need per-image 'attributes' "
                    "(to tell a wrong caption that contradicts an image from one that does not)"
                )
            self.caption_stated = np.asarray(caption_stated, np.int64)  # (N, C)
        self.twins: AttributeTwins | None = None
        if config.hard_negative_fraction > 0:
            if attributes is None:
                log.info(
                    "%s: no per-image attributes; hard-negative wrong captions fall back to "
                    "random other classes",
                    where,
                )
            else:
                self.twins = AttributeTwins(attributes)
        size = config.stored_size
        self.images = None if images is None else resize_images(images, size)
        self.lazy_images = lazy_images
        self.epoch = 0
        self._draws: tuple[int, EpochDraws] | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_split(
        cls, split: SplitData, config: LoaderConfig, where: str = "dataset"
    ) -> GanClsDataset:
        """In-memory dataset over a `SplitData` (images decoded once, resized once)."""
        per_image = {len(c) for c in split.captions}
        if len(per_image) != 1:
            raise DataError(f"{where}: images have different caption counts {sorted(per_image)}")
        return cls(
            split.class_ids, per_image.pop(), config, images=split.images, where=where,
            caption_counts=getattr(split, "caption_counts", None),
            attributes=getattr(split, "attributes", None),
            caption_stated=getattr(split, "caption_stated", None),
        )  # fmt: skip

    @classmethod
    def open(
        cls, path: str | Path, split: str, config: LoaderConfig
    ) -> tuple[GanClsDataset, list[list[str]]]:
        """Dataset over `path:/split` in memory or lazily, and the split's captions."""
        path = Path(path)
        where = f"{path}:/{split}"
        config = apply_dataset_limits(config, dataset_augmentation(path), str(path))
        if not config.lazy:
            data = files.read_split(path, split)
            return cls.from_split(data, config, where), data.captions
        with files.open_checked(path) as f:
            if split not in f:
                raise DataError(f"{path}: no split {split!r} (has {sorted(f.keys())})")
            group = f[split]
            try:
                captions = [
                    [c.decode("utf-8") if isinstance(c, bytes) else c for c in row]
                    for row in group["captions"][()]
                ]
                class_ids = group["class_ids"][()].astype(np.int64)
                counts = group["caption_counts"][()] if "caption_counts" in group else None
                attributes = group["attributes"][()] if "attributes" in group else None
                stated = None
                if "caption_stated" in group:
                    # Validated exactly as read_split validates it (declared shape, masks).
                    stated = schema._read_stated(
                        group, len(class_ids), len(captions[0]) if captions else 0,
                        list(files.read_info(path).attribute_names), where,
                    )  # fmt: skip
                if "images" not in group and "images_encoded" not in group:
                    raise DataError(f"{where}: neither 'images' nor 'images_encoded'")
            except KeyError as err:
                raise DataError(f"{where}: missing dataset {err}") from None
            image_size = int(f.attrs["image_size"])
        if len(captions) != len(class_ids):
            raise DataError(f"{where}: {len(captions)} caption rows but {len(class_ids)} class ids")
        lazy = _LazyImages(path, split, image_size, len(class_ids))
        dataset = cls(
            class_ids, len(captions[0]) if captions else 0, config, lazy_images=lazy,
            caption_counts=counts, attributes=attributes, caption_stated=stated, where=where,
        )  # fmt: skip
        return dataset, captions

    # -- sampling ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.class_ids)

    def limit_captions(self, count: int) -> None:
        """Use only the first `count` captions of every image (fewer captions to embed)."""
        if count < self.config.captions_per_sample:
            raise DataError(
                f"{self.where}: keeping {count} captions per image leaves fewer than the "
                f"{self.config.captions_per_sample} to average per sample"
            )
        self.num_captions = min(self.num_captions, count)
        self.caption_counts = np.minimum(self.caption_counts, self.num_captions)
        if self.caption_stated is not None:
            self.caption_stated = self.caption_stated[:, : self.num_captions]
        if self.caption_filter is not None:
            self.caption_filter = self.caption_filter[:, : self.num_captions]
        self._draws = None

    def full_captions_first(self) -> np.ndarray | None:
        """Reorder each image's distinct captions so that those stating every attribute come
        first (stable), so that `limit_captions(n)` keeps an image's first n *full* captions
        under `--partial-captions skip`. Returns the new column order (N, C) to apply to the
        caption texts, or None when the split has no partial captions (nothing moves)."""
        full = self._full_captions()
        if full is None:
            return None
        columns = np.arange(self.num_captions)[None, :]
        # Sort keys: the distinct full ones, the distinct partial ones, then the repeats.
        rank = np.where(columns < self.caption_counts[:, None], 0, 2) + ~full
        order = np.argsort(rank, axis=1, kind="stable")  # (N, C)
        self.caption_stated = np.take_along_axis(self.caption_stated, order, axis=1)
        self._draws = None
        return order

    def keep_full_captions(self) -> int:
        """Pick only captions that state every attribute (`--partial-captions skip`); the split
        then trains as one without partial captions. Returns how many captions are left out.

        Why: the robot draws the read-back's canonical caption, always a full one
        (edge_runtime/canonical.py), and the partial captions' weaker supervision slows the
        generator per step (docs/QUALITY.md § 3.19); the text encoder still learns from them.
        """
        full = self._full_captions()
        if full is None:
            return 0
        distinct = np.arange(self.num_captions)[None, :] < self.caption_counts[:, None]
        keep = distinct & full  # (N, C)
        bare = np.flatnonzero(~keep.any(1))
        if len(bare):
            raise DataError(
                f"{self.where}: image {int(bare[0])} ({len(bare)} in all) has no caption stating "
                "every attribute, which --partial-captions skip needs"
            )
        self.caption_filter = keep
        self.caption_stated = None
        self._draws = None
        return int(distinct.sum() - keep.sum())

    def _full_captions(self) -> np.ndarray | None:
        """bool (N, C): the captions stating every attribute; None without `caption_stated`."""
        if self.caption_stated is None:
            return None
        assert self.attributes is not None  # checked with caption_stated in __init__
        return self.caption_stated == (1 << self.attributes.shape[1]) - 1

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the next batches use."""
        self.epoch = epoch

    def draws(self, epoch: int) -> EpochDraws:
        """All random choices of `epoch` (cached for the current epoch)."""
        if self._draws is not None and self._draws[0] == epoch:
            return self._draws[1]
        c = self.config
        n, k = len(self), c.captions_per_sample
        rng = np.random.default_rng([c.seed, epoch])
        span = c.load_size - c.crop_size + 1 if c.crop else 1

        eligible = np.arange(self.num_captions)[None, :] < self.caption_counts[:, None]  # (N, C)
        if self.caption_filter is not None:
            eligible = eligible & self.caption_filter
        counts = eligible.sum(1)  # (N,)

        def caption_picks(images: np.ndarray | None = None) -> np.ndarray:
            # K distinct captions of each of `images` (int (N,); default: image i for row i):
            # the first K of a random permutation of its eligible ones (cycled when fewer).
            rows = np.arange(n) if images is None else images
            keys = np.where(eligible[rows], rng.random((n, self.num_captions)), 2.0)
            order = np.argsort(keys, axis=1)  # (N, C), the eligible ones first
            cycle = np.arange(k)[None, :] % counts[rows][:, None]
            return np.take_along_axis(order, cycle, axis=1)  # (N, K)

        def flips() -> np.ndarray:
            return rng.random(n) < 0.5 if c.flip else np.zeros(n, dtype=bool)

        if self.caption_stated is not None:
            # Partial captions: the same draws from the same stream, grouped by what the
            # captions state and with wrong samples that contradict (module docstring).
            draws = self._stated_draws(epoch, rng, span, flips)
            self._draws = (epoch, draws)
            return draws
        crop_yx, flip, captions = rng.integers(0, span, (n, 2)), flips(), caption_picks()
        wrong = self.wrong_sampler.draw(rng)
        hard = self._hard_negatives(epoch)
        wrong = np.where(hard >= 0, hard, wrong)
        wrong_captions = caption_picks(wrong)
        wrong_crop_yx, wrong_flip = rng.integers(0, span, (n, 2)), flips()
        # i + 1 + U{0..N-2} mod N: uniform over every image except i itself.
        partner = (np.arange(n) + 1 + rng.integers(0, n - 1, n)) % n
        draws = EpochDraws(
            crop_yx=crop_yx,
            flip=flip,
            captions=captions,
            wrong=wrong,
            wrong_captions=wrong_captions,
            wrong_crop_yx=wrong_crop_yx,
            wrong_flip=wrong_flip,
            hard_negative=hard >= 0,
            partner=partner,
            partner_captions=caption_picks(partner),
        )
        self._draws = (epoch, draws)
        return draws

    # -- partial captions (caption_stated) -----------------------------------------------------

    def _grouped_picks(
        self, keys: np.ndarray, rows: np.ndarray, need: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """K captions of each image `rows[i]` (int (M,)) that all state the same attributes,
        and that mask: the first is the lowest random key (`keys` (M, C)) among the image's
        distinct captions stating at least one bit of `need[i]` (any caption if None), the
        others the next lowest with the first's mask (cycled when fewer). Every row must have
        an eligible caption (the wrong-sample redraws make sure). → int (M, K), int (M,)."""
        assert self.caption_stated is not None
        k = self.config.captions_per_sample
        stated = self.caption_stated[rows]  # (M, C)
        valid = np.arange(self.num_captions)[None, :] < self.caption_counts[rows][:, None]
        if need is not None:
            valid &= (stated & need[:, None]) != 0
        first = np.argmin(np.where(valid, keys, 2.0), axis=1)  # (M,)
        mask = stated[np.arange(len(rows)), first]  # (M,)
        same = valid & (stated == mask[:, None])  # (M, C), includes `first`
        order = np.argsort(np.where(same, keys, 2.0), axis=1)  # the same-mask ones first
        picks = np.take_along_axis(order, np.arange(k)[None, :] % same.sum(1)[:, None], axis=1)
        return picks, mask

    def _contradicts(
        self, real: np.ndarray, wrong: np.ndarray, right_mask: np.ndarray
    ) -> np.ndarray:
        """bool (M,): the mismatched pair of sample `real` and image `wrong` really is one —
        some caption of `wrong` states an attribute the two images differ in (or, when D sees
        the wrong image with the right text, the right captions state one)."""
        assert self.attributes is not None and self.caption_stated is not None
        diff = difference_bits(self.attributes, real, wrong)  # (M,)
        if self.config.wrong_images:
            return (right_mask & diff) != 0
        stated = self.caption_stated[wrong]  # (M, C)
        valid = np.arange(self.num_captions)[None, :] < self.caption_counts[wrong][:, None]
        return (((stated & diff[:, None]) != 0) & valid).any(1)

    def _stated_draws(
        self, epoch: int, rng: np.random.Generator, span: int, flips: Any
    ) -> EpochDraws:
        """`draws` for a split with partial captions: every draw of the full-caption path from
        the same stream in the same order, then repairs from streams of their own."""
        n, c = len(self), self.config
        everyone = np.arange(n)
        crop_yx, flip = rng.integers(0, span, (n, 2)), flips()
        captions, stated = self._grouped_picks(rng.random((n, self.num_captions)), everyone)
        wrong = self.wrong_sampler.draw(rng)
        hard = self._hard_negatives(epoch)
        wrong = np.where(hard >= 0, hard, wrong)
        wrong_keys = rng.random((n, self.num_captions))
        wrong_crop_yx, wrong_flip = rng.integers(0, span, (n, 2)), flips()
        partner = (everyone + 1 + rng.integers(0, n - 1, n)) % n
        partner_captions, _ = self._grouped_picks(rng.random((n, self.num_captions)), partner)

        wrong, hard_negative = self._redraw_wrong(epoch, wrong, hard >= 0, stated)
        need = None if c.wrong_images else difference_bits(self.attributes, everyone, wrong)
        wrong_captions, wrong_stated = self._grouped_picks(wrong_keys, wrong, need)
        return EpochDraws(
            crop_yx=crop_yx, flip=flip, captions=captions, wrong=wrong,
            wrong_captions=wrong_captions, wrong_crop_yx=wrong_crop_yx, wrong_flip=wrong_flip,
            hard_negative=hard_negative, partner=partner, partner_captions=partner_captions,
            stated=stated, wrong_stated=wrong_stated,
        )  # fmt: skip

    def _redraw_wrong(
        self, epoch: int, wrong: np.ndarray, hard: np.ndarray, stated: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Wrong samples redrawn until each contradicts its real image (`_contradicts`): hard
        negatives among the image's twins, the others among all other classes; what the
        vectorised rounds leave gets an exhaustive search. → (wrong, hard) int/bool (N,)."""
        wrong, hard = wrong.copy(), hard.copy()
        everyone = np.arange(len(self))
        bad = np.flatnonzero(~self._contradicts(everyone, wrong, stated))
        rng = np.random.default_rng([self.config.seed, epoch, 2])
        for _ in range(MAX_WRONG_REDRAWS):
            if not len(bad):
                break
            other = self.wrong_sampler.draw(rng)[bad]
            if self.twins is not None:
                twin = self.twins.draw(bad, rng)
                keep = hard[bad] & (twin >= 0)
                keep &= self.class_ids[np.maximum(twin, 0)] != self.class_ids[bad]
                other = np.where(keep, twin, other)
                hard[bad] = keep
            wrong[bad] = other
            bad = bad[~self._contradicts(bad, wrong[bad], stated[bad])]
        for i in bad.tolist():
            hard[i] = False
            wrong[i] = self._any_contradicting(i, int(stated[i]), rng)
        return wrong, hard

    def _any_contradicting(self, image: int, right_mask: int, rng: np.random.Generator) -> int:
        """A uniform choice among every image of another class that can contradict `image`."""
        others = np.flatnonzero(self.class_ids != self.class_ids[image])
        ok = self._contradicts(
            np.full(len(others), image), others, np.full(len(others), right_mask)
        )
        candidates = others[ok]
        if not len(candidates):
            raise DataError(
                f"{self.where}: image {image}: no image of another class has a caption stating "
                "an attribute it differs in, so GAN-CLS has no wrong caption for it"
            )
        return int(candidates[int(rng.integers(len(candidates)))])

    def _hard_negatives(self, epoch: int) -> np.ndarray:
        """int64 (N,): an attribute twin of another class for the samples chosen to get a hard
        negative this epoch, −1 elsewhere (and everywhere without attributes)."""
        n = len(self)
        if self.twins is None:
            return np.full(n, -1, dtype=np.int64)
        # Its own stream: the other draws of the epoch do not depend on the fraction.
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        chosen = rng.random(n) < self.config.hard_negative_fraction
        twin = self.twins.draw(np.arange(n), rng)
        # A twin shares the class only where the class ids do not encode every attribute.
        ok = chosen & (twin >= 0)
        ok &= self.class_ids[np.maximum(twin, 0)] != self.class_ids
        return np.where(ok, twin, -1)

    def _images(self, indices: np.ndarray) -> np.ndarray:
        if self.images is not None:
            return self.images[indices]
        assert self.lazy_images is not None
        return self.lazy_images.take(indices, self.config.stored_size)

    def __getitems__(self, indices: Sequence[int]) -> GanClsBatch:
        idx = np.asarray(indices, dtype=np.int64)
        d = self.draws(self.epoch)
        size = self.config.crop_size
        real = crop_flip(self._images(idx), d.crop_yx[idx], d.flip[idx], size)
        wrong = d.wrong[idx]
        wrong_images = None
        if self.config.wrong_images:
            wrong_images = to_model_range(
                crop_flip(self._images(wrong), d.wrong_crop_yx[idx], d.wrong_flip[idx], size)
            )
        return GanClsBatch(
            images=to_model_range(real),
            indices=torch.from_numpy(idx),
            class_ids=torch.from_numpy(self.class_ids[idx]),
            captions=torch.from_numpy(d.captions[idx]),
            wrong_indices=torch.from_numpy(wrong),
            wrong_class_ids=torch.from_numpy(self.class_ids[wrong]),
            wrong_captions=torch.from_numpy(d.wrong_captions[idx]),
            partner_indices=torch.from_numpy(d.partner[idx]),
            partner_captions=torch.from_numpy(d.partner_captions[idx]),
            wrong_images=wrong_images,
            stated=None if d.stated is None else torch.from_numpy(d.stated[idx].astype(np.int64)),
        )

    def __getitem__(self, index: int) -> GanClsBatch:
        return self.__getitems__([index])


def _identity(batch: GanClsBatch) -> GanClsBatch:
    return batch


class GanClsLoader:
    """Batches of one rank for one epoch, resumable at any batch.

    Sharding is `DistributedSampler`'s (shuffle with `seed + epoch`, rank r takes every
    world_size-th index), so rank r's j-th batch is part of the single-process j-th batch of the
    global size `batch_size × world_size`.
    """

    def __init__(
        self, dataset: GanClsDataset, rank: int = 0, world_size: int = 1, pin_memory: bool = False
    ) -> None:
        self.dataset = dataset
        self.config = dataset.config
        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True,
            seed=self.config.seed, drop_last=True,
        )  # fmt: skip
        self.pin_memory = pin_memory
        self.steps_per_epoch = len(self.sampler) // self.config.batch_size
        if self.steps_per_epoch < 1:
            raise DataError(
                f"{dataset.where}: {len(dataset)} images make no full batch of "
                f"{self.config.batch_size} × {world_size} process(es)"
            )

    def batches(self, epoch: int, start: int = 0) -> Iterator[GanClsBatch]:
        """Batches `start`, `start` + 1, ... of `epoch` (drop-last)."""
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        indices = list(self.sampler)
        b = self.config.batch_size
        plan = [indices[i * b : (i + 1) * b] for i in range(start, self.steps_per_epoch)]
        if self.config.workers == 0:
            for batch in plan:
                out = self.dataset.__getitems__(batch)
                yield out.pin_memory() if self.pin_memory else out
            return
        # Workers get a pickled copy of the dataset per epoch (persistent_workers would freeze
        # the epoch set above); lazy mode reopens the HDF5 file in each of them.
        loader = DataLoader(
            self.dataset, batch_sampler=plan, num_workers=self.config.workers,
            collate_fn=_identity, pin_memory=self.pin_memory, prefetch_factor=4,
        )  # fmt: skip
        yield from loader
