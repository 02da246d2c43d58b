"""Metrics of generated images, registered by name (stylegan3's habit): each takes an
`EvalContext` and returns JSON-able records; `python -m train evaluate --metrics NAME,...` runs
any subset, so every metric also runs on its own.

- `attributes` (oracle, labels): per-attribute accuracy and all-attributes-correct rate of the
  generated images, with the oracle's accuracy on the real images (the ceiling) and on noise
  paired with the same labels (the floor);
- `attributes_judge` (`--judge`, labels): the same, by the second judge of another design
  (train/quality/oracle.py, "Two designs"): the oracle's design is the generator's image
  encoder's, so every attribute figure is printed by both;
- partial captions (labels with unstated attributes, `-1`: `--captions` files from `python -m
  train data phrasing-captions`, the `test_phrasing` split): both attribute metrics score only
  what each caption states ("all stated attributes right", per attribute "stated attribute
  right"), overall and for the partial captions alone (`partial`);
- `unstated_entropy` (oracle) and `unstated_entropy_judge` (`--judge`): for each partial caption,
  how the judge's reading of each attribute the caption leaves open varies across the seeds —
  H(values over S seeds) / log(min(S, values of the attribute)), 0 = one value whatever the
  noise, 1 = as spread as S draws can be; mean per attribute and over every (caption, unstated
  attribute) pair (`unstated_entropy`; docs/QUALITY.md § 2.1);
- `fid` (oracle, real images): Fréchet distance in the oracle's feature space, with a
  real-vs-real baseline;
- `kid` (oracle, real images): kernel distance (unbiased MMD², cubic polynomial kernel) in the
  same space and design;
- `diversity` (≥ 2 seeds): how different one caption's images are across seeds, in oracle
  features and in pixels, against real images of one class;
- `hf_energy` (real images): mean |Laplacian| of the generated images' grey levels ÷ that of the
  real images of the same captions: speckle and fringes push it above 1, blur below;
- `r_precision` (image-text encoder): AttnGAN's R-precision, generated image → its caption among
  99 captions of other classes; marked "not independent" when the encoder is the one the
  generator trained against (`EvalContext.retrieval_independent`);
- `inception` (`--inception-weights`): Inception Score and Inception-FID (torchmetrics; CUB-style
  data).

**The paired real-vs-real design of FID/KID.** FID is biased by sample size, so a bare number says
little. Each split's real images are cut into halves A and B (fixed, seeded). The baseline is
FID(real A, real B); a generated score is FID(generated from A's captions, real B) — the same
captions and classes, the same sizes, the same reference — then the roles of A and B swap, and
generated scores are averaged over both folds and every seed. The ratio generated / baseline is
what the quality target reads ("within 3×").

**Diversity.** For each caption, the mean pairwise Euclidean distance between its images from
different seeds, in the oracle's feature space, averaged over captions; the reference is the same
statistic over real images of one class (a caption determines the class on rescue-scenes), so a
ratio near 1 means "as varied as reality", near 0 means the generator ignores its noise. The
pixel version (mean absolute difference, 0–255) needs no network at all (we ship no LPIPS:
its weights cannot be downloaded here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from train.errors import InputError, first_line
from train.quality.oracle import NOISE_FAMILIES_CHECK, noise_images, predict
from train.text.retrieval import r_precision

log = logging.getLogger(__name__)


class MetricUnavailableError(InputError):
    """A metric cannot run with what was given; the message says what is missing."""


# --------------------------------------------------------------------------------------------
# Distances between feature sets
# --------------------------------------------------------------------------------------------


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues < 0 from
    rounding are clipped)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, D) and b (M, D).

    ‖μa − μb‖² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½. The last trace is computed from the
    eigenvalues of a symmetric matrix (numpy only; no scipy.linalg.sqrtm and its complex parts).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (D, D)
    root_a = _sqrt_psd(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
    return max(value, 0.0)  # tiny negative values are rounding


def kernel_distance(
    a: np.ndarray,
    b: np.ndarray,
    *,
    subsets: int = 50,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with k(x, y) = (x·y / D + 1)³, averaged over
    random subsets; returns (mean, standard deviation over subsets)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(a)} and {len(b)}")
    d = a.shape[1]
    if m == len(a) == len(b):
        subsets = 1  # every "subset" would be the whole of both sets
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        mmd = (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def mean_pairwise_distance(groups: np.ndarray, metric: str = "l2") -> float:
    """Mean distance between members of the same group, averaged over groups.

    `groups` (G, S, ...) holds S ≥ 2 items per group; "l2" is the Euclidean distance of the
    flattened items, "l1" the mean absolute difference per element.
    """
    g = np.asarray(groups, np.float64)
    if g.ndim < 3 or g.shape[1] < 2:
        raise ValueError(f"groups must be (G, S ≥ 2, ...), got {g.shape}")
    flat = g.reshape(g.shape[0], g.shape[1], -1)  # (G, S, D)
    s = flat.shape[1]
    total = np.zeros(flat.shape[0])
    pairs = 0
    for i in range(s):
        for j in range(i + 1, s):
            diff = flat[:, i] - flat[:, j]  # (G, D)
            total += np.sqrt((diff**2).sum(1)) if metric == "l2" else np.abs(diff).mean(1)
            pairs += 1
    return float((total / pairs).mean())


def class_groups(class_ids: np.ndarray, per_group: int, seed: int = 0) -> np.ndarray:
    """Indices (G, per_group) of items sharing a class: every class with ≥ per_group items gives
    one group (a seeded choice), so real images can be compared like one caption's seeds."""
    rng = np.random.default_rng(seed)
    groups = []
    for c in np.unique(class_ids):
        members = np.flatnonzero(class_ids == c)
        if len(members) >= per_group:
            groups.append(rng.choice(members, per_group, replace=False))
    return np.array(groups, np.int64).reshape(-1, per_group)


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random partition of range(n) into halves A and B (|A| = ⌊n/2⌋)."""
    order = np.random.default_rng([seed, n]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


# --------------------------------------------------------------------------------------------
# Inception metrics (CUB-style data; optional dependency)
# --------------------------------------------------------------------------------------------


def check_inception_weights(path: str | Path) -> Path:
    """The weights file must exist and load as plain tensors (torch.load weights_only=True):
    torch-fidelity itself loads it with full unpickling, so we vet it first."""
    path = Path(path)
    if not path.is_file():
        raise MetricUnavailableError(f"--inception-weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a foreign file
        first = first_line(err)
        raise MetricUnavailableError(
            f"--inception-weights {path}: not a plain state dict (refusing to unpickle it): {first}"
        ) from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise MetricUnavailableError(
            f"--inception-weights {path}: not torch-fidelity's InceptionV3 "
            "(pt_inception-2015-12-05-6726825d.pth): no 'fc.weight'"
        )
    return path


def inception_metrics(
    real: np.ndarray, generated: np.ndarray, weights: str | Path, batch_size: int = 50
) -> dict[str, float]:
    """Inception Score of `generated` and Inception-FID against `real` (uint8 (N, H, W, 3)),
    with the standard TF-ported InceptionV3 weights from a local file (never downloaded)."""
    try:  # lazy: torchmetrics is the optional `eval` extra
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
        from torchmetrics.image.inception import InceptionScore
    except (ImportError, RuntimeError, OSError) as err:  # torchvision ABI mismatch is RuntimeError
        raise MetricUnavailableError(
            "the inception metric needs torchmetrics[image] with torch-fidelity and a torchvision "
            "built for your torch (pip install -e '.[eval]'): "
            f"{first_line(err)}"
        ) from None
    weights = str(check_inception_weights(weights))
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights)
    logits = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=["logits_unbiased"],
        feature_extractor_weights_path=weights,
    )
    score = InceptionScore(feature=logits, splits=10)

    def batches(images: np.ndarray) -> Any:
        for start in range(0, len(images), batch_size):
            yield torch.from_numpy(
                np.ascontiguousarray(images[start : start + batch_size])
            ).permute(0, 3, 1, 2)  # uint8 (b, 3, H, W): torchmetrics resizes to 299 itself

    with torch.no_grad():
        for x in batches(real):
            fid.update(x, real=True)
        for x in batches(generated):
            fid.update(x, real=False)
            score.update(x)
        is_mean, is_std = score.compute()
        return {
            "inception_score": float(is_mean),
            "inception_score_std": float(is_std),
            "fid_inception": float(fid.compute()),
        }


# --------------------------------------------------------------------------------------------
# Evaluation context and registry
# --------------------------------------------------------------------------------------------


@dataclass
class SplitImages:
    """One evaluated set: captions, what they say, the images generated for them."""

    name: str
    captions: list[str]
    """(n,) one caption per item."""
    class_ids: np.ndarray
    """int64 (n,) (rescue-scenes: the attribute combination)."""
    generated: np.ndarray
    """uint8 (S, n, H, W, 3): seed s, caption i."""
    attributes: np.ndarray | None = None
    """int (n, A) attribute labels, or None."""
    real: np.ndarray | None = None
    """uint8 (n, H, W, 3): the real image each caption describes (dataset splits), or None."""

    @property
    def seeds(self) -> int:
        return int(self.generated.shape[0])

    def __len__(self) -> int:
        return len(self.captions)


@dataclass
class EvalContext:
    """Everything a metric may use; expensive intermediate results are memoised."""

    splits: dict[str, SplitImages]
    attribute_names: tuple[str, ...] = ()
    oracle: Any = None
    """`train.quality.oracle.LoadedOracle` or None."""
    judge: Any = None
    """The second judge (a `LoadedOracle` of design "judge") or None."""
    retrieval: Any = None
    """`train.text.joint_embedding.JointEmbedding` (pretrained image-text encoder) or None."""
    retrieval_independent: bool | None = None
    """False: the generator trained against `retrieval`'s image encoder; None: unknown."""
    inception_weights: Path | None = None
    seed: int = 0
    _memo: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def predictions(self, split: str, which: str, by: str = "oracle") -> Any:
        """Predictions by the oracle (or `by="judge"`) of a split's "generated" (S·n,
        seed-major) or "real" (n) images."""
        key = (by, split, which)
        if key not in self._memo:
            s = self.splits[split]
            if which == "generated":
                images = s.generated.reshape(-1, *s.generated.shape[2:])
            elif which == "real" and s.real is not None:
                images = s.real
            else:
                raise MetricUnavailableError(f"split {split}: no {which} images")
            self._memo[key] = predict(getattr(self, by).model, images)
        return self._memo[key]


MetricFn = Callable[[EvalContext], list[dict[str, Any]]]


@dataclass(frozen=True)
class Metric:
    """A registered metric."""

    name: str
    fn: MetricFn
    needs_oracle: bool = False
    needs_judge: bool = False
    needs_real: bool = False
    needs_retrieval: bool = False
    needs_inception: bool = False
    description: str = ""


METRICS: dict[str, Metric] = {}
"""Name → metric, in registration order (the report's order)."""


def register(name: str, description: str, **needs: bool) -> Callable[[MetricFn], MetricFn]:
    """Decorator: add a metric function to `METRICS` under `name`."""

    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[name] = Metric(name, fn, description=description, **needs)
        return fn

    return wrap


def missing_requirements(metric: Metric, context: EvalContext) -> str | None:
    """Why `metric` cannot run on `context` (one phrase), or None."""
    if metric.needs_oracle and context.oracle is None:
        return "needs --oracle"
    if metric.needs_judge and context.judge is None:
        return "needs --judge (a second judge: python -m train oracle --design judge)"
    if metric.needs_retrieval and context.retrieval is None:
        return "needs an image-text encoder (--retrieval, or a GAN checkpoint carrying one)"
    if metric.needs_inception and context.inception_weights is None:
        return "needs --inception-weights (a local pt_inception-2015-12-05 file)"
    if metric.needs_real and not any(s.real is not None for s in context.splits.values()):
        return "needs real images (a dataset split, not --captions)"
    return None


def run_metrics(names: list[str], context: EvalContext) -> list[dict[str, Any]]:
    """Run the named metrics; a metric that cannot run gives one "skipped" record."""
    records: list[dict[str, Any]] = []
    for name in names:
        metric = METRICS[name]
        why = missing_requirements(metric, context)
        if why is None:
            try:
                records += metric.fn(context)
                continue
            except MetricUnavailableError as err:
                why = str(err)
        log.warning("metric %s skipped: %s", name, why)
        records.append({"metric": name, "skipped": why})
    return records


# --------------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------------


def judge_name(loaded: Any) -> str:
    """How a report names a judge: its design and file."""
    return f"design {loaded.model.config.design}, `{loaded.path}`"


@register("attributes", "oracle accuracy per attribute and all-correct rate", needs_oracle=True)
def attribute_metric(context: EvalContext) -> list[dict[str, Any]]:
    """Per split: accuracy of generated images per attribute (± std over seeds), all correct,
    oracle confidence; the real-image ceiling and the noise floor for the same labels."""
    return _attribute_records(context, "attributes", "oracle")


@register(
    "attributes_judge",
    "the same by the second judge (another design than the generator's image encoder)",
    needs_judge=True,
)
def attribute_judge_metric(context: EvalContext) -> list[dict[str, Any]]:
    """`attributes`, judged by the second judge."""
    return _attribute_records(context, "attributes_judge", "judge")


def _attribute_records(context: EvalContext, metric: str, by: str) -> list[dict[str, Any]]:
    names = context.attribute_names
    loaded = getattr(context, by)
    records = []
    for split, s in context.splits.items():
        if s.attributes is None:
            records.append({"metric": metric, "split": split, "skipped": "no labels"})
            continue
        truth = np.asarray(s.attributes, np.int64)  # (n, A); -1: the caption does not say
        stated = truth >= 0  # (n, A)
        pred = context.predictions(split, "generated", by)
        labels = pred.labels.reshape(s.seeds, len(s), -1)  # (S, n, A)
        correct = (labels == truth[None]) | ~stated[None]  # (S, n, A): unstated cannot be wrong
        per_seed = _masked_mean(correct, stated[None])  # (S, A)
        all_correct = correct.all(2).mean(1)  # (S,)
        record: dict[str, Any] = {
            "metric": metric,
            "split": split,
            "judged_by": judge_name(loaded),  # not "judge": the run header's field
            "design": loaded.model.config.design,
            "honest": loaded.honesty.passed,
            "images": int(correct.shape[0] * correct.shape[1]),
            "seeds": s.seeds,
            "accuracy": {n: float(per_seed[:, a].mean()) for a, n in enumerate(names)},
            "accuracy_std_over_seeds": {
                n: float(per_seed[:, a].std()) for a, n in enumerate(names)
            },
            "all_correct": float(all_correct.mean()),
            "all_correct_std_over_seeds": float(all_correct.std()),
            "confidence": {n: float(pred.confidence[:, a].mean()) for a, n in enumerate(names)},
            "stated": {n: int(stated[:, a].sum()) for a, n in enumerate(names)},
        }
        # Per value: which colours / terrains / ... the generator gets wrong (report chart).
        partial = ~stated.all(1)  # (n,) captions that leave something open
        if partial.any():
            record["partial"] = _stated_right(correct[:, partial], stated[partial], names)
            record["full"] = _stated_right(correct[:, ~partial], stated[~partial], names)
        record["accuracy_by_value"] = {
            n: {
                str(v): float(correct[:, truth[:, a] == v, a].mean())
                for v in np.unique(truth[:, a])
                if v >= 0
            }
            for a, n in enumerate(names)
        }
        if s.real is not None:
            real = context.predictions(split, "real", by)
            ok = (real.labels == truth) | ~stated
            record["real_accuracy"] = _per_name(_masked_mean(ok, stated), names)
            record["real_all_correct"] = float(ok.all(1).mean())
        # Noise floor: what images of nothing score against these very labels.
        noise = np.concatenate(
            [noise_images(f, max(len(s) // 3, 1), context.seed + 99) for f in NOISE_FAMILIES_CHECK]
        )
        noise_pred = predict(loaded.model, noise)
        rows = np.arange(len(noise)) % len(s)
        ok = (noise_pred.labels == truth[rows]) | ~stated[rows]
        record["noise_accuracy"] = _per_name(_masked_mean(ok, stated[rows]), names)
        record["noise_all_correct"] = float(ok.all(1).mean())
        records.append(record)
    return records


def _stated_right(
    correct: np.ndarray, stated: np.ndarray, names: tuple[str, ...]
) -> dict[str, Any]:
    """ "All stated attributes right" and per attribute "stated attribute right" of a subset of
    captions: `correct` bool (S, m, A) (unstated counted as right), `stated` bool (m, A)."""
    if not stated.shape[0]:
        return {"captions": 0}
    per_seed = _masked_mean(correct, stated[None])  # (S, A), NaN where never stated
    return {
        "captions": int(stated.shape[0]),
        "all_stated_correct": float(correct.all(2).mean()),
        "accuracy": {
            n: None if np.isnan(per_seed[:, a]).all() else float(per_seed[:, a].mean())
            for a, n in enumerate(names)
        },
        "stated": {n: int(stated[:, a].sum()) for a, n in enumerate(names)},
    }


def unstated_entropy(
    labels: np.ndarray, truth: np.ndarray, sizes: tuple[int, ...] | list[int]
) -> dict[str, Any]:
    """How a judge's reading of what captions leave open varies across seeds.

    `labels` int (S, n, A): the judge's value of each attribute for seed s of caption i;
    `truth` int (n, A), −1 where the caption does not state the attribute; `sizes` (A,) values
    per attribute. For every unstated (caption, attribute): the entropy of its S values divided
    by log(min(S, size)), the most S draws of `size` values can reach (1 = as varied as they
    can be, 0 = the same value from every seed). Returns the mean per attribute (None where no
    caption leaves it open), `overall` (the mean over every unstated pair, so each caption's
    open attribute weighs the same), and the counts.
    """
    labels = np.asarray(labels)
    seeds = labels.shape[0]
    if seeds < 2:
        raise MetricUnavailableError("unstated-attribute entropy needs ≥ 2 seeds (--seeds 8)")
    open_ = np.asarray(truth) < 0  # (n, A)
    per_attribute: list[np.ndarray] = []
    for a, size in enumerate(sizes):
        rows = np.flatnonzero(open_[:, a])
        values = labels[:, rows, a]  # (S, m)
        counts = np.stack([(values == v).sum(0) for v in range(size)], 1)  # (m, size)
        p = counts / seeds
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -(np.where(p > 0, p * np.log(p), 0.0)).sum(1)  # (m,)
        per_attribute.append(h / np.log(min(seeds, size)))
    pairs = np.concatenate(per_attribute) if per_attribute else np.zeros(0)
    return {
        "seeds": seeds,
        "per_attribute": [float(v.mean()) if len(v) else None for v in per_attribute],
        "unstated": [len(v) for v in per_attribute],
        "overall": float(pairs.mean()) if len(pairs) else None,
        "pairs": len(pairs),
    }


@register(
    "unstated_entropy",
    "partial captions: entropy across seeds of the oracle's reading of each unstated attribute",
    needs_oracle=True,
)
def unstated_entropy_metric(context: EvalContext) -> list[dict[str, Any]]:
    """`unstated_entropy` per split, judged by the oracle."""
    return _entropy_records(context, "unstated_entropy", "oracle")


@register(
    "unstated_entropy_judge",
    "the same by the second judge",
    needs_judge=True,
)
def unstated_entropy_judge_metric(context: EvalContext) -> list[dict[str, Any]]:
    """`unstated_entropy` per split, judged by the second judge."""
    return _entropy_records(context, "unstated_entropy_judge", "judge")


def _entropy_records(context: EvalContext, metric: str, by: str) -> list[dict[str, Any]]:
    names = context.attribute_names
    loaded = getattr(context, by)
    records: list[dict[str, Any]] = []
    for split, s in context.splits.items():
        truth = None if s.attributes is None else np.asarray(s.attributes, np.int64)
        if truth is None or not (truth < 0).any():
            why = "no labels" if truth is None else "no partial captions"
            records.append({"metric": metric, "split": split, "skipped": why})
            continue
        pred = context.predictions(split, "generated", by)
        labels = pred.labels.reshape(s.seeds, len(s), -1)  # (S, n, A)
        result = unstated_entropy(labels, truth, loaded.model.config.attribute_sizes)
        records.append(
            {
                "metric": metric,
                "split": split,
                "judged_by": judge_name(loaded),
                "design": loaded.model.config.design,
                "honest": loaded.honesty.passed,
                "seeds": result["seeds"],
                "captions": int((truth < 0).any(1).sum()),
                "entropy": {n: result["per_attribute"][a] for a, n in enumerate(names)},
                "unstated": {n: result["unstated"][a] for a, n in enumerate(names)},
                "overall": result["overall"],
                "pairs": result["pairs"],
            }
        )
    return records


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of `values` over axis -2 where `mask` (broadcast) holds; NaN where nothing does."""
    mask = np.broadcast_to(mask, values.shape)
    counts = mask.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (values & mask).sum(-2) / np.maximum(counts, 1), np.nan)


def _per_name(values: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    return {n: float(values[a]) for a, n in enumerate(names)}


def _paired_scores(
    context: EvalContext, metric: str, distance: Callable[[np.ndarray, np.ndarray], float]
) -> list[dict[str, Any]]:
    """The paired real-vs-real design of the module docstring, for one distance."""
    records = []
    for split, s in context.splits.items():
        if s.real is None:
            records.append({"metric": metric, "split": split, "skipped": "no real images"})
            continue
        if len(s) < 8:
            records.append({"metric": metric, "split": split, "skipped": f"{len(s)} images"})
            continue
        real = context.predictions(split, "real").features  # (n, F)
        gen = context.predictions(split, "generated").features.reshape(s.seeds, len(s), -1)
        half_a, half_b = split_halves(len(s), context.seed)
        baseline, generated = [], []
        m = min(len(half_a), len(half_b))  # equal sizes: equal bias
        for query, reference in ((half_a[:m], half_b[:m]), (half_b[:m], half_a[:m])):
            baseline.append(distance(real[query], real[reference]))
            generated += [distance(gen[k, query], real[reference]) for k in range(s.seeds)]
        value, base = float(np.mean(generated)), float(np.mean(baseline))
        records.append(
            {
                "metric": metric,
                "split": split,
                "value": value,
                "std": float(np.std(generated)),
                "baseline": base,
                "ratio": value / base if base > 0 else None,
                "excess": value - base,
                "images_per_set": int(min(len(half_a), len(half_b))),
                "evaluations": len(generated),
                "space": f"oracle penultimate ({real.shape[1]}-d)",
            }
        )
    return records


@register(
    "fid",
    "Fréchet distance in oracle feature space, paired real-vs-real baseline",
    needs_oracle=True,
    needs_real=True,
)
def fid_metric(context: EvalContext) -> list[dict[str, Any]]:
    """FID of generated vs real (oracle features) with its real-vs-real baseline."""
    return _paired_scores(context, "fid", frechet_distance)


@register(
    "kid",
    "kernel distance (MMD², cubic kernel) in oracle feature space",
    needs_oracle=True,
    needs_real=True,
)
def kid_metric(context: EvalContext) -> list[dict[str, Any]]:
    """KID of generated vs real (oracle features) with its real-vs-real baseline."""

    def kid(a: np.ndarray, b: np.ndarray) -> float:
        return kernel_distance(a, b, subsets=20, seed=context.seed)[0]

    return _paired_scores(context, "kid", kid)


@register("diversity", "spread across seeds of one caption vs real images of one class")
def diversity_metric(context: EvalContext) -> list[dict[str, Any]]:
    """Mean pairwise distance across seeds, in pixels and (with an oracle) oracle features."""
    records = []
    for split, s in context.splits.items():
        if s.seeds < 2:
            records.append({"metric": "diversity", "split": split, "skipped": "needs ≥ 2 seeds"})
            continue
        per_caption = np.swapaxes(s.generated, 0, 1)  # (n, S, H, W, 3)
        record: dict[str, Any] = {
            "metric": "diversity",
            "split": split,
            "seeds": s.seeds,
            "pixel_l1": mean_pairwise_distance(per_caption, "l1"),
        }
        # Pairs of real images of one class: the expected pairwise distance does not depend on
        # the group size, and test has ~1.4 images per class (738 classes in 1,000 images).
        groups = class_groups(s.class_ids, 2, context.seed) if s.real is not None else None
        if groups is not None and len(groups):
            record["real_pixel_l1"] = mean_pairwise_distance(s.real[groups], "l1")
            record["real_groups"] = len(groups)
            record["pixel_ratio"] = record["pixel_l1"] / max(record["real_pixel_l1"], 1e-9)
        if context.oracle is not None:
            feats = context.predictions(split, "generated").features.reshape(s.seeds, len(s), -1)
            record["feature_l2"] = mean_pairwise_distance(np.swapaxes(feats, 0, 1), "l2")
            if groups is not None and len(groups):
                real = context.predictions(split, "real").features
                record["real_feature_l2"] = mean_pairwise_distance(real[groups], "l2")
                record["feature_ratio"] = record["feature_l2"] / max(
                    record["real_feature_l2"], 1e-9
                )
        records.append(record)
    return records


def laplacian_energy(images: np.ndarray) -> float:
    """Mean |Laplacian| (3×3, 4-neighbour) of the grey levels of uint8 (N, H, W, 3) RGB images."""
    flat = np.asarray(images).reshape(-1, *np.asarray(images).shape[-3:])  # (N, H, W, 3)
    if not len(flat):
        raise ValueError("no images")
    total = 0.0
    for image in flat:
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
        total += float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())
    return total / len(flat)


@register(
    "hf_energy",
    "high-frequency energy: mean |Laplacian| of generated ÷ real (1 = as sharp as reality)",
    needs_real=True,
)
def hf_energy_metric(context: EvalContext) -> list[dict[str, Any]]:
    """Per split: mean |Laplacian| of all generated images, of the real ones, and their ratio
    (> 1: speckle or fringes the renders do not have; < 1: blur)."""
    records = []
    for split, s in context.splits.items():
        if s.real is None:
            records.append({"metric": "hf_energy", "split": split, "skipped": "no real images"})
            continue
        per_seed = [laplacian_energy(s.generated[k]) for k in range(s.seeds)]
        real = laplacian_energy(s.real)
        value = float(np.mean(per_seed))
        records.append(
            {
                "metric": "hf_energy",
                "split": split,
                "value": value,
                "std_over_seeds": float(np.std(per_seed)),
                "real": real,
                "ratio": value / real if real > 0 else None,
            }
        )
    return records


@register(
    "r_precision", "generated image → its caption among 99 of other classes", needs_retrieval=True
)
def r_precision_metric(context: EvalContext) -> list[dict[str, Any]]:
    """R-precision with the pretrained image-text encoder, per seed; real images as reference."""
    model = context.retrieval
    records = []
    for split, s in context.splits.items():
        counts = np.unique(s.class_ids, return_counts=True)[1]
        others = len(s) - int(counts.max()) if len(counts) else 0
        candidates = min(100, others + 1)
        if candidates < 2:
            records.append(
                {"metric": "r_precision", "split": split, "skipped": "all captions share one class"}
            )
            continue
        texts = model.encode_texts(s.captions).numpy()  # (n, E)
        values = []
        for k in range(s.seeds):
            images = model.encode_images(s.generated[k]).numpy()  # (n, E)
            values.append(
                r_precision(
                    images,
                    texts,
                    s.class_ids,
                    s.class_ids,
                    num_candidates=candidates,
                    seed=context.seed,
                ).value
            )
        record: dict[str, Any] = {
            "metric": "r_precision",
            "split": split,
            "value": float(np.mean(values)),
            "std_over_seeds": float(np.std(values)),
            "candidates": candidates,
            "chance": 1.0 / candidates,
            "independent": context.retrieval_independent,
        }
        if s.real is not None:
            real = model.encode_images(s.real).numpy()
            record["real_value"] = r_precision(
                real, texts, s.class_ids, s.class_ids, num_candidates=candidates, seed=context.seed
            ).value
        records.append(record)
    return records


@register(
    "inception",
    "Inception Score and Inception-FID (local weights; CUB-style data)",
    needs_inception=True,
    needs_real=True,
)
def inception_metric(context: EvalContext) -> list[dict[str, Any]]:
    """IS of the first seed's images and FID against the split's real images."""
    assert context.inception_weights is not None
    records = []
    for split, s in context.splits.items():
        if s.real is None:
            continue
        values = inception_metrics(s.real, s.generated[0], context.inception_weights)
        records.append({"metric": "inception", "split": split, **values})
    return records
