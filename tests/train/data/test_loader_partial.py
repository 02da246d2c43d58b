"""The GAN-CLS loader on splits with partial captions (`caption_stated`, issue 17): a sample's K
captions state one thing, wrong captions contradict the real image on a stated attribute (hard
negatives and the wrong-image form too), and a split whose captions are all full draws exactly
as one without the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from train.data import loader as ld
from train.data import schema
from train.data.schema import DataError, SplitData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FULL = 0b111


def _partial_split(
    n: int = 300, captions: int = 6, fraction: float = 0.6, seed: int = 0
) -> SplitData:
    """A 3×3×2 attribute grid (class id = combination) whose captions state a random non-empty
    subset with probability `fraction`, one-attribute captions being the most common."""
    rng = np.random.default_rng(seed)
    attributes = np.stack(
        [rng.integers(0, 3, n), rng.integers(0, 3, n), rng.integers(0, 2, n)], axis=1
    ).astype(np.int16)
    class_ids = (attributes[:, 0] * 3 + attributes[:, 1]) * 2 + attributes[:, 2]
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    stated = np.full((n, captions), FULL, np.uint8)
    partial = rng.random((n, captions)) < fraction
    stated[partial] = rng.choice([1, 2, 4, 1, 2, 4, 3, 5, 6], partial.sum())
    caps = [
        [f"image {i} caption {j} states {stated[i, j]}" for j in range(captions)] for i in range(n)
    ]
    return SplitData(images, caps, class_ids.astype(np.int64), attributes, caption_stated=stated)


def _diff_bits(attributes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    differ = attributes[a] != attributes[b]  # (N, A)
    return (differ * (1 << np.arange(attributes.shape[1]))).sum(1)


@pytest.mark.parametrize("hard_fraction", [0.0, 0.5, 1.0])
def test_wrong_captions_contradict_the_real_image_on_a_stated_attribute(
    hard_fraction: float,
) -> None:
    split = _partial_split()
    config = ld.LoaderConfig(batch_size=10, hard_negative_fraction=hard_fraction)
    dataset = ld.GanClsDataset.from_split(split, config)
    everyone = np.arange(len(split))
    # The rule has work to do: with the full-caption rule (a random caption of a random other
    # class) a good share of wrong captions would state only what the real image also has.
    naive = np.random.default_rng(1).integers(0, 6, len(split))
    naive_wrong = ld.WrongClassSampler(split.class_ids).draw(np.random.default_rng(2))
    naive_ok = split.caption_stated[naive_wrong, naive] & _diff_bits(
        split.attributes, everyone, naive_wrong
    )
    assert (naive_ok == 0).mean() > 0.05

    for epoch in range(3):
        draws = dataset.draws(epoch)
        diff = _diff_bits(split.attributes, everyone, draws.wrong)
        masks = split.caption_stated[draws.wrong[:, None], draws.wrong_captions]  # (N, K)
        assert (masks == draws.wrong_stated[:, None]).all()  # one mask per wrong sample
        assert ((draws.wrong_stated & diff) != 0).all()  # every one contradicts
        assert (split.class_ids[draws.wrong] != split.class_ids).all()
        hard = draws.hard_negative
        assert hard.mean() == pytest.approx(hard_fraction, abs=0.1)
        # Hard negatives still differ in exactly one attribute, and their caption states it.
        assert (np.bitwise_count(diff[hard].astype(np.uint8)) == 1).all()
        assert ((draws.wrong_stated[hard] & diff[hard]) == diff[hard]).all()
        assert (draws.wrong_stated != FULL).any()  # partial wrong captions are used too


def test_wrong_images_are_contradicted_by_the_right_caption() -> None:
    """Reed's code form (a wrong image with the right text): the right caption must state an
    attribute the wrong image lacks."""
    split = _partial_split()
    config = ld.LoaderConfig(batch_size=10, wrong_images=True, hard_negative_fraction=0.5)
    draws = ld.GanClsDataset.from_split(split, config).draws(0)
    diff = _diff_bits(split.attributes, np.arange(len(split)), draws.wrong)
    assert ((draws.stated & diff) != 0).all()
    assert (draws.stated != FULL).any()


def test_a_samples_captions_state_one_thing_and_partial_ones_come_alone() -> None:
    split = _partial_split(fraction=0.4)
    config = ld.LoaderConfig(batch_size=10, captions_per_sample=4)
    loader = ld.GanClsLoader(ld.GanClsDataset.from_split(split, config))
    seen = []
    for batch in loader.batches(0):
        assert batch.stated is not None
        masks = split.caption_stated[batch.indices.numpy()[:, None], batch.captions.numpy()]
        assert (masks == batch.stated.numpy()[:, None]).all()
        seen += batch.stated.tolist()
    # The first caption is uniform, so samples are partial as often as captions are.
    assert np.mean(np.array(seen) != FULL) == pytest.approx(
        (split.caption_stated != FULL).mean(), abs=0.08
    )


def test_all_full_caption_stated_draws_exactly_as_a_split_without_it() -> None:
    split = _partial_split(fraction=0.0)
    plain = SplitData(split.images, split.captions, split.class_ids, split.attributes)
    for fraction in (0.0, 0.5):
        config = ld.LoaderConfig(batch_size=10, hard_negative_fraction=fraction)
        a = ld.GanClsDataset.from_split(split, config).draws(1)
        b = ld.GanClsDataset.from_split(plain, config).draws(1)
        assert b.stated is None and a.stated is not None
        for name in ("crop_yx", "captions", "wrong", "wrong_captions", "partner"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(a.partner_captions, b.partner_captions)
        assert np.array_equal(a.hard_negative, b.hard_negative)


def test_rare_contradictions_are_found_by_the_exhaustive_search_and_none_is_one_line() -> None:
    # Every caption states attribute 1 only; only image 0 has value 1 there, so for every other
    # image the one contradicting wrong sample is image 0 (random redraws rarely hit it).
    n = 200
    attributes = np.zeros((n, 2), np.int16)
    attributes[:, 0] = np.arange(n) % 4
    attributes[0, 1] = 1
    class_ids = (attributes[:, 0] * 2 + attributes[:, 1]).astype(np.int64)
    stated = np.full((n, 3), 2, np.uint8)
    images = np.zeros((n, 64, 64, 3), np.uint8)
    caps = [[f"{i} {j}" for j in range(3)] for i in range(n)]
    split = SplitData(images, caps, class_ids, attributes, caption_stated=stated)
    draws = ld.GanClsDataset.from_split(
        split, ld.LoaderConfig(batch_size=4, captions_per_sample=2)
    ).draws(0)
    assert (draws.wrong[1:] == 0).all()
    assert (attributes[draws.wrong[0], 1] == 0).all()

    stated[0] = 1  # now nothing can contradict images with value 0 of attribute 1
    split = SplitData(images, caps, class_ids, attributes, caption_stated=stated)
    dataset = ld.GanClsDataset.from_split(
        split, ld.LoaderConfig(batch_size=4, captions_per_sample=2)
    )
    with pytest.raises(DataError, match=r"^dataset: image \d+: no image of another class has a "):
        dataset.draws(0)


def test_partial_captions_without_attributes_are_refused_in_one_line() -> None:
    split = _partial_split(n=20)
    split = SplitData(
        split.images, split.captions, split.class_ids, caption_stated=split.caption_stated
    )
    with pytest.raises(DataError, match=r"^dataset/caption_stated: partial captions need"):
        ld.GanClsDataset.from_split(split, ld.LoaderConfig(batch_size=4))


def test_lazy_mode_reads_caption_stated_like_memory_mode(tmp_path: Path) -> None:
    split = _partial_split(n=60)
    path = schema.write_dataset(
        tmp_path / "p.h5", {"train": split}, dataset="grid", image_size=64,
        attribute_names=("a", "b", "c"),
        attribute_values={"a": ("0", "1", "2"), "b": ("0", "1", "2"), "c": ("0", "1")},
    )  # fmt: skip
    config = ld.LoaderConfig(batch_size=6, hard_negative_fraction=0.5)
    memory, _ = ld.GanClsDataset.open(path, "train", config)
    lazy, _ = ld.GanClsDataset.open(
        path, "train", ld.LoaderConfig(**{**config.__dict__, "lazy": True})
    )
    a, b = memory.draws(0), lazy.draws(0)
    for name in ("captions", "wrong", "wrong_captions", "stated", "wrong_stated"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    batch = next(ld.GanClsLoader(lazy).batches(0))
    assert batch.stated is not None and len(batch.stated) == 6
