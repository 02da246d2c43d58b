"""Partial captions in evaluation (issue 17): "stated attributes right" counts only what a caption
states, the unstated-attribute entropy on hand-made judge outputs (all the same → 0, uniform →
1), each figure names its judge, and the report shows both."""

from __future__ import annotations

import re

import numpy as np
import pytest

from train.quality import metrics as mt
from train.quality import oracle as om
from train.quality import report

SIZES = (8, 6, 3, 3, 2)
NAMES = ("colour", "terrain", "pose", "position", "helmet")


def test_entropy_is_zero_when_every_seed_agrees_and_one_when_uniform() -> None:
    seeds, n = 8, 3
    truth = np.full((n, 5), -1)
    truth[:, 0] = 2  # colour stated everywhere: never part of the entropy
    labels = np.zeros((seeds, n, 5), np.int64)
    labels[:, :, 0] = np.arange(seeds)[:, None]  # the stated colour varies: must not count
    same = mt.unstated_entropy(labels, truth, SIZES)
    assert same["per_attribute"][0] is None  # nothing leaves colour open
    assert same["per_attribute"][1:] == [0.0, 0.0, 0.0, 0.0]
    assert same["overall"] == 0.0 and same["pairs"] == 4 * n
    # Uniform: terrain 6 values over 8 seeds can not all be equally often; the bound is
    # log(min(8, 6)) = log 6, reached by a spread that uses every value (here 2,2,1,1,1,1).
    labels[:, :, 1] = np.array([0, 1, 2, 3, 4, 5, 0, 1])[:, None]
    labels[:, :, 2] = np.array([0, 1, 2, 0, 1, 2, 0, 1])[:, None]  # pose: 3,3,2 of 3
    labels[:, :, 4] = np.array([0, 1] * 4)[:, None]  # helmet: 4 and 4 of 2 values → exactly 1
    labels[:, :, 3] = np.arange(seeds)[:, None] % 3
    got = mt.unstated_entropy(labels, truth, SIZES)
    assert got["per_attribute"][4] == pytest.approx(1.0)
    expect_terrain = -(2 * 0.25 * np.log(0.25) + 4 * 0.125 * np.log(0.125)) / np.log(6)
    assert got["per_attribute"][1] == pytest.approx(expect_terrain)
    expect_pose = -(2 * 0.375 * np.log(0.375) + 0.25 * np.log(0.25)) / np.log(3)
    assert got["per_attribute"][2] == pytest.approx(expect_pose)
    assert 0.9 < got["overall"] <= 1.0
    # Exactly uniform where S = values: 8 seeds, 8 colours → 1.
    truth2 = np.full((1, 5), -1)
    labels2 = np.zeros((8, 1, 5), np.int64)
    labels2[:, 0, 0] = np.arange(8)
    assert mt.unstated_entropy(labels2, truth2, SIZES)["per_attribute"][0] == pytest.approx(1.0)
    with pytest.raises(mt.MetricUnavailableError, match="≥ 2 seeds"):
        mt.unstated_entropy(labels2[:1], truth2, SIZES)


class _Honest:
    passed = True


def _loaded(design: str = "cnn") -> om.LoadedOracle:
    network = om.build_network(
        om.OracleConfig(design=design, channels=(8, 8, 8), feature_dim=8)
    ).eval()
    return om.LoadedOracle(network, {}, _Honest(), f"{design}.pt")  # type: ignore[arg-type]


def _context(labels: np.ndarray, truth: np.ndarray, judge: bool = False) -> mt.EvalContext:
    seeds, n = labels.shape[:2]
    split = mt.SplitImages(
        name="test_phrasing",
        captions=[f"caption {i}" for i in range(n)],
        class_ids=np.arange(n),
        generated=np.zeros((seeds, n, 64, 64, 3), np.uint8),
        attributes=truth,
    )
    context = mt.EvalContext(
        splits={"test_phrasing": split},
        attribute_names=NAMES,
        oracle=_loaded(),
        judge=_loaded("judge") if judge else None,
    )
    for by in ("oracle", "judge") if judge else ("oracle",):
        # Hand-made judge outputs in place of running the networks on the images.
        context._memo[(by, "test_phrasing", "generated")] = om.Predictions(
            labels=labels.reshape(seeds * n, 5),
            confidence=np.ones((seeds * n, 5), np.float32),
            features=np.zeros((seeds * n, 8), np.float32),
        )
    return context


def test_stated_right_counts_only_stated_attributes_and_splits_partial_from_full() -> None:
    truth = np.array(
        [
            [2, -1, -1, -1, -1],  # "anyone in yellow?"
            [-1, 3, 1, -1, -1],  # terrain + pose
            [1, 1, 1, 1, 1],  # a full caption
        ]
    )
    labels = np.zeros((2, 3, 5), np.int64)
    labels[:, 0] = [2, 5, 0, 2, 1]  # colour right; the rest is the noise's business
    labels[0, 1] = [7, 3, 1, 0, 0]  # seed 0: both stated right
    labels[1, 1] = [7, 3, 2, 0, 0]  # seed 1: pose wrong
    labels[:, 2] = [1, 1, 1, 1, 0]  # full caption: helmet wrong
    (record,) = mt.run_metrics(["attributes"], _context(labels, truth))
    partial, full = record["partial"], record["full"]
    assert partial["captions"] == 2 and full["captions"] == 1
    assert partial["all_stated_correct"] == pytest.approx(3 / 4)
    assert partial["accuracy"] == {
        "colour": 1.0,
        "terrain": 1.0,
        "pose": 0.5,
        "position": None,
        "helmet": None,
    }
    assert full["all_stated_correct"] == 0.0
    assert record["all_correct"] == pytest.approx(3 / 6)  # over every caption
    assert record["stated"]["helmet"] == 1 and record["accuracy"]["helmet"] == 0.0


def test_entropy_metric_per_judge_names_the_judge_and_lands_in_the_report() -> None:
    truth = np.array([[2, -1, -1, -1, -1], [1, 1, 1, 1, 1]])
    labels = np.zeros((8, 2, 5), np.int64)
    labels[:, 0, 4] = np.arange(8) % 2  # helmet left to the noise: spread evenly
    context = _context(labels, truth, judge=True)
    records = mt.run_metrics(
        ["attributes", "attributes_judge", "unstated_entropy", "unstated_entropy_judge"], context
    )
    by = {r["metric"]: r for r in records}
    oracle, judge = by["unstated_entropy"], by["unstated_entropy_judge"]
    assert oracle["judged_by"].startswith("design cnn") and "cnn.pt" in oracle["judged_by"]
    assert judge["judged_by"].startswith("design judge")
    assert oracle["captions"] == 1 and oracle["seeds"] == 8
    assert oracle["entropy"]["helmet"] == pytest.approx(1.0)
    assert oracle["entropy"]["colour"] is None and oracle["entropy"]["terrain"] == 0.0
    assert oracle["overall"] == pytest.approx(1 / 4)
    text = report.markdown_tables(records, NAMES)
    assert "Partial captions: stated attributes right" in text
    assert "Partial captions: entropy of the unstated attributes" in text
    assert "second judge: design judge, `judge.pt`" in text
    assert "| 0.25 | ✗ |" in text  # overall 0.25 < 0.6 at 8 seeds


def test_entropy_metric_skips_a_split_without_partial_captions() -> None:
    truth = np.ones((2, 5), np.int64)
    (record,) = mt.run_metrics(["unstated_entropy"], _context(np.ones((2, 2, 5), np.int64), truth))
    assert record["skipped"] == "no partial captions"


def test_a_split_with_caption_stated_is_labelled_with_what_each_caption_states() -> None:
    from train.data.schema import SplitData
    from train.quality.evaluate import caption_classes, choose_captions

    n = 40
    rng = np.random.default_rng(0)
    attributes = np.stack([rng.integers(0, s, n) for s in SIZES], 1)
    class_ids = caption_classes(attributes, list(SIZES))
    stated = rng.integers(1, 32, (n, 3)).astype(np.uint8)
    stated[:, 0] = 31
    captions = [[f"{i}/{j}" for j in range(3)] for i in range(n)]
    images = np.zeros((n, 64, 64, 3), np.uint8)
    split = SplitData(images, captions, class_ids, attributes, caption_stated=stated)
    chosen = choose_captions(split, "test_phrasing", seed=0, sizes=list(SIZES))
    assert chosen.attributes is not None
    for i, caption in enumerate(chosen.captions):
        mask = int(stated[i, int(caption.split("/")[1])])
        for a in range(5):
            expect = attributes[i, a] if mask >> a & 1 else -1
            assert chosen.attributes[i, a] == expect
        # A full caption keeps the image's class; a partial one gets the class of what it says.
        assert (chosen.class_ids[i] == class_ids[i]) == (mask == 31)
    assert (chosen.attributes < 0).any() and (chosen.attributes >= 0).all(1).any()
    # Without the labels nothing changes: every attribute is the image's.
    plain = SplitData(images, captions, class_ids, attributes)
    assert np.array_equal(choose_captions(plain, "test", 0).attributes, attributes)


def test_entropy_of_uniform_random_readings_clears_the_target_and_constant_ones_do_not() -> None:
    """A generator drawing open attributes as the data does (uniformly) scores well above the
    0.6 target at 8 seeds; one whose noise never changes them scores 0 (docs/QUALITY.md § 2.1)."""
    rng = np.random.default_rng(0)
    n = 4000
    labels = np.stack([rng.integers(0, s, (8, n)) for s in SIZES], 2)
    truth = -np.ones((n, 5), np.int64)
    uniform = mt.unstated_entropy(labels, truth, SIZES)
    assert uniform["overall"] == pytest.approx(0.84, abs=0.01)
    assert min(uniform["per_attribute"]) > report.TARGET_UNSTATED_ENTROPY
    constant = mt.unstated_entropy(np.repeat(labels[:1], 8, axis=0), truth, SIZES)
    assert constant["overall"] == 0.0


def test_report_of_a_set_that_never_states_an_attribute_prints_a_dash() -> None:
    truth = np.array([[2, -1, -1, -1, -1], [1, -1, -1, -1, -1]])  # only colours stated
    labels = np.zeros((2, 2, 5), np.int64)
    labels[:, 0, 0] = 2
    records = mt.run_metrics(["attributes", "attributes_judge"], _context(labels, truth, True))
    text = report.markdown_tables(records, NAMES)
    assert not re.search(r"\bnan\b", text) and "| 50.0 ± 0.0 | – | – | – | – |" in text
    chart = report.attribute_chart(records)  # NaN bars drawn as empty, not a crash
    assert chart.shape == (340, 760, 3)
