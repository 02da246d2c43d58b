"""The GAN-CLS loader: wrong-class draws, partners, Reed's augmentation, determinism, sharding,
lazy HDF5 mode and its bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from train.data import loader as ld
from train.data import schema
from train.data.schema import DataError, SplitData
from train.data.twins import AttributeTwins

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _split(n: int = 40, classes: int = 5, captions: int = 5, size: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    class_ids = rng.integers(0, classes, n)
    class_ids[:classes] = np.arange(classes)  # every class present
    caps = [[f"image {i} caption {j}" for j in range(captions)] for i in range(n)]
    return SplitData(images=images, captions=caps, class_ids=class_ids)


def _all_batches(loader: ld.GanClsLoader, epoch: int) -> list[ld.GanClsBatch]:
    return list(loader.batches(epoch))


@pytest.mark.parametrize(
    "class_ids",
    [
        np.array([0] * 95 + [1] * 5),  # one dominant class: same-class draws would be likely
        np.array([0, 1] * 20),
        np.arange(30) % 7,
    ],
)
def test_wrong_class_sampler_never_draws_the_same_class(class_ids: np.ndarray) -> None:
    sampler = ld.WrongClassSampler(class_ids)
    rng = np.random.default_rng(0)
    for _ in range(200):
        wrong = sampler.draw(rng)
        assert (class_ids[wrong] != class_ids).all()


def test_wrong_class_sampler_is_uniform_over_other_class_images() -> None:
    class_ids = np.array([0, 0, 0, 1, 2, 2])
    sampler = ld.WrongClassSampler(class_ids)
    rng = np.random.default_rng(1)
    draws = np.stack([sampler.draw(rng) for _ in range(6000)])  # (6000, 6)
    counts = np.bincount(draws[:, 0], minlength=6)  # sample 0 (class 0): images 3, 4, 5
    assert counts[:3].sum() == 0
    assert np.allclose(counts[3:] / 6000, 1 / 3, atol=0.03)


def test_loader_batches_carry_wrong_class_partner_and_distinct_captions() -> None:
    split = _split()
    dataset = ld.GanClsDataset.from_split(
        split, ld.LoaderConfig(batch_size=8, captions_per_sample=3)
    )
    for epoch in range(5):
        for batch in ld.GanClsLoader(dataset).batches(epoch):
            assert (batch.wrong_class_ids != batch.class_ids).all()
            assert torch.equal(
                batch.wrong_class_ids, torch.from_numpy(split.class_ids)[batch.wrong_indices]
            )
            assert (batch.partner_indices != batch.indices).all()
            for caps in (batch.captions, batch.wrong_captions, batch.partner_captions):
                assert caps.shape == (8, 3) and caps.min() >= 0 and caps.max() < 5
                assert all(len(set(row.tolist())) == 3 for row in caps)


def test_loader_caption_picks_stay_among_each_images_distinct_captions() -> None:
    split = _split(n=12, captions=5)
    counts = np.array([5, 4, 3, 2, 1, 5, 4, 3, 2, 1, 5, 5])
    config = ld.LoaderConfig(batch_size=4, captions_per_sample=3)
    dataset = ld.GanClsDataset(
        split.class_ids, 5, config, images=split.images, caption_counts=counts
    )
    for epoch in range(20):
        picks = dataset.draws(epoch).captions  # (12, 3)
        for i, row in enumerate(picks):
            assert (row < counts[i]).all()
            assert len(set(row.tolist())) == min(3, counts[i])


def test_loader_limit_captions_keeps_the_first_n_of_each_image() -> None:
    split = _split(n=12, captions=5)
    dataset = ld.GanClsDataset.from_split(
        split, ld.LoaderConfig(batch_size=4, captions_per_sample=2)
    )
    dataset.limit_captions(3)
    for epoch in range(10):
        draws = dataset.draws(epoch)
        for picks in (draws.captions, draws.wrong_captions, draws.partner_captions):
            assert picks.max() < 3
    with pytest.raises(DataError, match="leaves fewer than the 2"):
        dataset.limit_captions(1)


def test_loader_augmentation_is_reed_resize_crop_flip_in_minus_one_one() -> None:
    split = _split(n=16)
    config = ld.LoaderConfig(batch_size=16, captions_per_sample=1)
    dataset = ld.GanClsDataset.from_split(split, config)
    batch = dataset.__getitems__(list(range(16)))
    draws = dataset.draws(0)
    assert batch.images.shape == (16, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    flips = 0
    for i in range(16):
        big = cv2.resize(split.images[i], (76, 76), interpolation=cv2.INTER_LINEAR)
        y, x = draws.crop_yx[i]
        assert 0 <= y <= 12 and 0 <= x <= 12
        crop = big[y : y + 64, x : x + 64]
        if draws.flip[i]:
            crop = crop[:, ::-1]
            flips += 1
        expected = torch.from_numpy(crop.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
        torch.testing.assert_close(batch.images[i], expected)
    assert 0 < flips < 16


def test_loader_images_stored_at_load_size_are_cropped_directly() -> None:
    split = _split(n=8, size=76)
    dataset = ld.GanClsDataset.from_split(
        split, ld.LoaderConfig(batch_size=8, captions_per_sample=1, flip=False)
    )
    batch = dataset.__getitems__([3])
    y, x = dataset.draws(0).crop_yx[3]
    expected = split.images[3, y : y + 64, x : x + 64].astype(np.float32) / 127.5 - 1
    torch.testing.assert_close(batch.images[0], torch.from_numpy(expected).permute(2, 0, 1))


def test_loader_deterministic_given_seed_and_epoch() -> None:
    split = _split()

    def run(seed: int, epoch: int) -> list[ld.GanClsBatch]:
        config = ld.LoaderConfig(batch_size=8, captions_per_sample=2, seed=seed)
        return _all_batches(ld.GanClsLoader(ld.GanClsDataset.from_split(split, config)), epoch)

    a, b = run(3, 0), run(3, 0)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.wrong_indices, y.wrong_indices)
        assert torch.equal(x.captions, y.captions)
    assert not torch.equal(a[0].indices, run(4, 0)[0].indices)
    assert not torch.equal(a[0].indices, run(3, 1)[0].indices)


def test_loader_shards_over_ranks_like_one_process_with_the_global_batch() -> None:
    split = _split(n=48)
    config_1 = ld.LoaderConfig(batch_size=8, captions_per_sample=2)
    config_2 = ld.LoaderConfig(batch_size=4, captions_per_sample=2)
    single = _all_batches(ld.GanClsLoader(ld.GanClsDataset.from_split(split, config_1)), 2)
    ranks = [
        _all_batches(ld.GanClsLoader(ld.GanClsDataset.from_split(split, config_2), r, 2), 2)
        for r in range(2)
    ]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 6
    for j, whole in enumerate(single):
        for r in range(2):
            part = ranks[r][j]
            # Rank r holds rows r, r + 2, ... of the global batch, sample for sample identical.
            assert torch.equal(part.indices, whole.indices[r::2])
            assert torch.equal(part.images, whole.images[r::2])
            assert torch.equal(part.wrong_indices, whole.wrong_indices[r::2])
            assert torch.equal(part.partner_captions, whole.partner_captions[r::2])


def test_loader_resumes_mid_epoch_with_the_same_batches() -> None:
    loader = ld.GanClsLoader(
        ld.GanClsDataset.from_split(_split(), ld.LoaderConfig(batch_size=8, captions_per_sample=2))
    )
    full = _all_batches(loader, 1)
    tail = list(loader.batches(1, start=3))
    assert len(tail) == len(full) - 3
    for a, b in zip(full[3:], tail, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)


def _write(path: Path, split: SplitData, **kw) -> Path:  # type: ignore[no-untyped-def]
    return schema.write_dataset(path, {"train": split}, dataset="test", image_size=64, **kw)


@pytest.mark.parametrize("encoding", [None, "png"])
def test_loader_lazy_hdf5_mode_equals_memory_mode_with_workers(
    tmp_path: Path, encoding: str | None
) -> None:
    split = _split(n=32)
    path = _write(tmp_path / "d.h5", split, image_encoding=encoding)
    config = ld.LoaderConfig(batch_size=8, captions_per_sample=2, wrong_images=True)
    memory, _ = ld.GanClsDataset.open(path, "train", config)
    lazy, captions = ld.GanClsDataset.open(
        path, "train", ld.LoaderConfig(**{**config.__dict__, "lazy": True, "workers": 1})
    )
    assert captions == split.captions and memory.images is not None and lazy.images is None
    a = _all_batches(ld.GanClsLoader(memory), 0)
    b = _all_batches(ld.GanClsLoader(lazy), 0)  # one worker process reopens the file
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.wrong_images, y.wrong_images)
        assert torch.equal(x.indices, y.indices)
    # The open handle is not pickled (DataLoader workers each open their own).
    lazy.__getitems__([0, 1])
    assert lazy.lazy_images._file is not None
    clone = pickle.loads(pickle.dumps(lazy))
    assert clone.lazy_images._file is None
    assert torch.equal(clone.__getitems__([5]).images, lazy.__getitems__([5]).images)


def test_loader_honours_dataset_augmentation_limits(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.h5",
        _split(n=16),
        augmentation={"hflip": False, "crop": False, "reason": "position is an attribute"},
    )
    dataset, _ = ld.GanClsDataset.open(
        path, "train", ld.LoaderConfig(batch_size=8, captions_per_sample=1)
    )
    assert not dataset.config.flip and not dataset.config.crop
    batch = dataset.__getitems__(list(range(16)))
    expected = torch.from_numpy(_split(n=16).images.astype(np.float32) / 127.5 - 1).permute(
        0, 3, 1, 2
    )
    torch.testing.assert_close(batch.images, expected)


@pytest.mark.parametrize(
    ("split", "config", "message"),
    [
        (
            _split(n=10, classes=1),
            ld.LoaderConfig(batch_size=2, captions_per_sample=1),
            "at least 2 classes",
        ),
        (
            _split(n=10, captions=2),
            ld.LoaderConfig(batch_size=2, captions_per_sample=4),
            "2 captions per image, fewer than the 4",
        ),
        (
            _split(n=10),
            ld.LoaderConfig(batch_size=16, captions_per_sample=1),
            "no full batch of 16",
        ),
    ],
)
def test_loader_bad_input_is_one_line(
    split: SplitData, config: ld.LoaderConfig, message: str
) -> None:
    with pytest.raises(DataError, match=message) as info:
        ld.GanClsLoader(ld.GanClsDataset.from_split(split, config, "d.h5:/train"))
    assert "d.h5:/train" in str(info.value) and "\n" not in str(info.value)


def test_loader_missing_split_and_file_name_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.h5", _split(n=8))
    with pytest.raises(DataError, match=r"d\.h5: no split 'test'"):
        ld.GanClsDataset.open(path, "test", ld.LoaderConfig(lazy=True))
    with pytest.raises(DataError, match="not found"):
        ld.GanClsDataset.open(tmp_path / "missing.h5", "train", ld.LoaderConfig())


def _attribute_split(n: int = 300, seed: int = 0) -> SplitData:
    """Images of a 3×3×2 attribute grid whose class id encodes every attribute."""
    rng = np.random.default_rng(seed)
    attributes = np.stack(
        [rng.integers(0, 3, n), rng.integers(0, 3, n), rng.integers(0, 2, n)], axis=1
    ).astype(np.int16)
    class_ids = (attributes[:, 0] * 3 + attributes[:, 1]) * 2 + attributes[:, 2]
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    caps = [[f"image {i} caption {j}" for j in range(4)] for i in range(n)]
    return SplitData(images, caps, class_ids.astype(np.int64), attributes)


def test_twins_draw_differs_in_exactly_one_attribute_and_covers_every_attribute() -> None:
    split = _attribute_split()
    twins = AttributeTwins(split.attributes)
    drawn = twins.draw(np.arange(len(split)), np.random.default_rng(3))
    assert (drawn >= 0).all()
    differing = (split.attributes[drawn] != split.attributes).sum(axis=1)
    assert (differing == 1).all()
    # Attribute first, uniformly: each of the 3 attributes decides about a third of the draws.
    which = np.argmax(split.attributes[drawn] != split.attributes, axis=1)
    assert np.allclose(np.bincount(which, minlength=3) / len(split), 1 / 3, atol=0.08)
    # No twin in the set: −1.
    lonely = AttributeTwins(np.array([[0, 0], [1, 1]], dtype=np.int16))
    assert (lonely.draw(np.arange(2), np.random.default_rng(0)) == -1).all()


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_loader_hard_negatives_differ_in_exactly_one_attribute(fraction: float) -> None:
    split = _attribute_split()
    config = ld.LoaderConfig(batch_size=10, hard_negative_fraction=fraction)
    dataset = ld.GanClsDataset.from_split(split, config)
    draws = dataset.draws(0)
    hard = draws.hard_negative
    assert hard.mean() == pytest.approx(fraction, abs=0.08)
    differing = (split.attributes[draws.wrong] != split.attributes).sum(axis=1)
    assert (differing[hard] == 1).all()
    assert (split.class_ids[draws.wrong] != split.class_ids).all()  # still another class
    # Random other classes differ in more attributes on average than the hard share.
    if fraction < 1:
        assert differing[~hard].mean() > 1.3
    # The other draws of the epoch do not depend on the fraction (a second random stream).
    plain = ld.GanClsDataset.from_split(split, ld.LoaderConfig(batch_size=10)).draws(0)
    assert np.array_equal(plain.captions, draws.captions)
    assert np.array_equal(plain.partner, draws.partner)
    assert np.array_equal(plain.wrong[~hard], draws.wrong[~hard])


def test_loader_hard_negatives_deterministic_and_sharded_like_one_process() -> None:
    split = _attribute_split()
    config = ld.LoaderConfig(batch_size=10, hard_negative_fraction=0.5)
    one = ld.GanClsLoader(ld.GanClsDataset.from_split(split, config))
    again = ld.GanClsLoader(ld.GanClsDataset.from_split(split, config))
    for a, b in zip(_all_batches(one, 2), _all_batches(again, 2), strict=True):
        assert torch.equal(a.wrong_indices, b.wrong_indices)
    config = ld.LoaderConfig(batch_size=5, hard_negative_fraction=0.5)
    ranks = [ld.GanClsLoader(ld.GanClsDataset.from_split(split, config), r, 2) for r in (0, 1)]
    global_batch = next(one.batches(1))
    parts = [next(r.batches(1)) for r in ranks]
    pairs = [zip(p.indices, p.wrong_indices, strict=True) for p in parts]
    merged = {int(i): int(w) for part in pairs for i, w in part}
    whole = zip(global_batch.indices, global_batch.wrong_indices, strict=True)
    assert merged == {int(i): int(w) for i, w in whole}


def test_loader_hard_negatives_without_attributes_fall_back_to_random_classes() -> None:
    split = _split()
    config = ld.LoaderConfig(batch_size=8, hard_negative_fraction=1.0)
    draws = ld.GanClsDataset.from_split(split, config).draws(0)
    assert not draws.hard_negative.any()
    assert (split.class_ids[draws.wrong] != split.class_ids).all()
    plain = ld.GanClsDataset.from_split(split, ld.LoaderConfig(batch_size=8)).draws(0)
    assert np.array_equal(plain.wrong, draws.wrong)


def test_loader_hard_negatives_read_attributes_in_lazy_mode_too(tmp_path: Path) -> None:
    split = _attribute_split(n=60)
    path = schema.write_dataset(
        tmp_path / "a.h5", {"train": split}, dataset="grid", image_size=64,
        attribute_names=("a", "b", "c"),
        attribute_values={"a": ("0", "1", "2"), "b": ("0", "1", "2"), "c": ("0", "1")},
    )  # fmt: skip
    config = ld.LoaderConfig(batch_size=6, hard_negative_fraction=0.5)
    memory, _ = ld.GanClsDataset.open(path, "train", config)
    lazy, _ = ld.GanClsDataset.open(
        path, "train", ld.LoaderConfig(**{**config.__dict__, "lazy": True})
    )
    assert lazy.twins is not None and memory.twins is not None
    assert np.array_equal(memory.draws(0).wrong, lazy.draws(0).wrong)
    assert memory.draws(0).hard_negative.any()
