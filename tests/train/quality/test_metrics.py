"""FID/KID and the other evaluation metrics on hand-built data with known answers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from train.quality import metrics as mt
from train.quality import oracle as om


def _gaussian(n: int, d: int, mean: float = 0.0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return mean + scale * np.random.default_rng(seed).standard_normal((n, d))


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    a = _gaussian(500, 32)
    assert mt.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Also for a rank-deficient covariance (fewer samples than dimensions).
    b = _gaussian(20, 64, seed=1)
    assert mt.frechet_distance(b, b) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_the_closed_form_for_gaussians() -> None:
    # N(0, I) vs N(μ·1, 4I) in d dims: ‖μ‖²·d + d·(1 + 4 − 2·2) = d·(μ² + 1).
    d, mu = 8, 0.5
    a = _gaussian(20_000, d, seed=1)
    b = _gaussian(20_000, d, mean=mu, scale=2.0, seed=2)
    assert mt.frechet_distance(a, b) == pytest.approx(d * (mu**2 + 1), rel=0.03)


def test_frechet_distance_grows_with_added_noise() -> None:
    a = _gaussian(1000, 16)
    rng = np.random.default_rng(5)
    values = [mt.frechet_distance(a, a + s * rng.standard_normal(a.shape)) for s in (0, 0.3, 1, 3)]
    assert values[0] == pytest.approx(0.0, abs=1e-8)
    assert values == sorted(values) and values[-1] > 10 * values[1]


def test_fid_in_oracle_space_is_zero_for_a_set_and_grows_with_image_noise() -> None:
    # The evaluate path: images → oracle features → FID. Real renders, an untrained oracle
    # (its features still respond to pixels), increasing pixel noise.
    from train.data.attributes import Attributes
    from train.data.synth import render_items

    ids = np.array([Attributes.from_class_id(i * 7).class_id for i in range(96)])
    images, _ = render_items(0, "test", 0, ids, 1)
    torch.manual_seed(0)
    oracle = om.AttributeOracle(om.OracleConfig(feature_dim=16)).eval()
    clean = om.predict(oracle, images).features
    assert mt.frechet_distance(clean, clean) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    values = []
    for sigma in (4, 16, 64):
        noisy = np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)
        values.append(mt.frechet_distance(clean, om.predict(oracle, noisy).features))
    assert 0 < values[0] < values[1] < values[2]


def test_kernel_distance_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    a, b = _gaussian(400, 16, seed=1), _gaussian(400, 16, seed=2)
    same, same_std = mt.kernel_distance(a, b, subsets=10, subset_size=200)
    shifted, _ = mt.kernel_distance(a, b + 1.0, subsets=10, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3  # unbiased: zero in expectation
    assert shifted > 10 * max(abs(same), 1e-3)


def test_mean_pairwise_distance_on_known_groups() -> None:
    # One group of 3 points on a line at 0, 3, 6 (1-d): distances 3, 6, 3 → mean 4.
    groups = np.array([[[0.0], [3.0], [6.0]], [[1.0], [1.0], [1.0]]])  # (G=2, S=3, 1)
    assert mt.mean_pairwise_distance(groups, "l2") == pytest.approx((4.0 + 0.0) / 2)
    assert mt.mean_pairwise_distance(groups, "l1") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="S ≥ 2"):
        mt.mean_pairwise_distance(np.zeros((3, 1, 4)))


def test_class_groups_and_split_halves() -> None:
    ids = np.array([0, 0, 0, 1, 2, 2, 3])
    groups = mt.class_groups(ids, 2, seed=0)
    assert groups.shape == (2, 2)  # classes 0 and 2 have ≥ 2 members
    assert all(len(set(ids[g])) == 1 for g in groups)
    a, b = mt.split_halves(11, seed=0)
    assert len(a) == 5 and len(b) == 6 and not set(a) & set(b)
    assert np.array_equal(a, mt.split_halves(11, seed=0)[0])


def _context(seeds: int = 2, n: int = 12) -> mt.EvalContext:
    rng = np.random.default_rng(0)
    split = mt.SplitImages(
        name="test",
        captions=[f"caption {i}" for i in range(n)],
        class_ids=np.arange(n) % 4,
        generated=rng.integers(0, 256, (seeds, n, 64, 64, 3), dtype=np.uint8),
        real=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
    )
    return mt.EvalContext(splits={"test": split})


def test_run_metrics_skips_what_cannot_run_with_the_reason() -> None:
    records = mt.run_metrics(["fid", "r_precision", "inception", "diversity"], _context())
    skipped = {r["metric"]: r["skipped"] for r in records if "skipped" in r}
    assert "--oracle" in skipped["fid"]
    assert "--retrieval" in skipped["r_precision"]
    assert "--inception-weights" in skipped["inception"]
    diversity = next(r for r in records if r["metric"] == "diversity")
    # Uniform random images: ≈ 85 grey levels apart on average, like the "real" ones here.
    assert 70 < diversity["pixel_l1"] < 100 and 0.8 < diversity["pixel_ratio"] < 1.2


def test_diversity_of_identical_seeds_is_zero() -> None:
    context = _context()
    s = context.splits["test"]
    s.generated[1] = s.generated[0]  # the generator ignored its noise
    (record,) = mt.run_metrics(["diversity"], context)
    assert record["pixel_l1"] == 0.0


def test_inception_metric_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(mt.MetricUnavailableError, match="no such file"):
        mt.check_inception_weights(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(mt.MetricUnavailableError, match="not a plain state dict"):
        mt.check_inception_weights(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(mt.MetricUnavailableError, match=r"fc\.weight"):
        mt.check_inception_weights(wrong)
    images = np.zeros((4, 64, 64, 3), np.uint8)
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        # Without the optional `eval` extra the message says how to get it.
        with pytest.raises(mt.MetricUnavailableError, match=r"\.\[eval\]"):
            mt.inception_metrics(images, images, wrong)


def _hf_ratio(real: np.ndarray, generated: np.ndarray) -> float:
    split = mt.SplitImages(
        "test", ["c"] * len(real), np.arange(len(real)), generated[None], None, real
    )
    (record,) = mt.hf_energy_metric(mt.EvalContext(splits={"test": split}))
    return record["ratio"]


def test_hf_energy_ratio_is_one_for_real_above_for_speckle_below_for_blur() -> None:
    real = om.noise_images("smooth", 12, seed=1)  # colour blobs: some edges, no speckle
    assert _hf_ratio(real, real.copy()) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    speckled = np.clip(real + rng.normal(0, 12, real.shape), 0, 255).astype(np.uint8)
    assert _hf_ratio(real, speckled) > 1.5
    blurred = np.stack([cv2.GaussianBlur(x, (5, 5), 1.5) for x in real])
    assert _hf_ratio(real, blurred) < 0.8
    # A flat grey image has no high-frequency energy at all.
    assert mt.laplacian_energy(np.full((2, 64, 64, 3), 90, np.uint8)) == 0.0
