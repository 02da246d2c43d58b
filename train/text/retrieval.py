"""R-precision: does the true item outscore 99 candidates that belong to other classes?

AttnGAN's R-precision (Xu et al. 2018) with R = 1: each query (a caption, or a generated image) is
scored against its one true item and `num_candidates - 1` distractors drawn from items whose label
differs (rescue-scenes: any attribute differs, i.e. a different class id; CUB: a different
species), and it counts as retrieved when the true item scores strictly highest. Ties count
against the query, so a collapsed embedding scores 0, not chance. Chance is 1 / num_candidates.

The function is modality-agnostic: text → image retrieval of the text encoder (eval-text) passes
caption embeddings as queries and real image embeddings as the pool; the GAN's R-precision passes
generated-image embeddings as queries and caption embeddings as the pool. Scores are dot products
of the given embeddings (the encoders L2-normalise their outputs when trained with InfoNCE, so
there the dot product is the cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from train.errors import ConfigError


@dataclass(frozen=True)
class RPrecision:
    """Result of one R-precision measurement."""

    value: float
    """Fraction of queries whose true item scored strictly highest among its candidates."""
    queries: int
    candidates: int
    """Candidates per query, the true one included."""
    hits: np.ndarray
    """bool (queries,): which queries were retrieved."""

    @property
    def stderr(self) -> float:
        """Binomial standard error of `value`."""
        return float(np.sqrt(self.value * (1.0 - self.value) / max(self.queries, 1)))


def sample_candidates(
    query_labels: Sequence[int] | np.ndarray,
    pool_labels: Sequence[int] | np.ndarray,
    true_index: Sequence[int] | np.ndarray,
    num_candidates: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """Candidate pool indices (Q, num_candidates): column 0 the true item, then distractors.

    Distractors are drawn without replacement, uniformly among pool items whose label differs
    from the query's; raises `ConfigError` when a query has too few of them.
    """
    query_labels = np.asarray(query_labels).astype(np.int64, copy=False)
    pool_labels = np.asarray(pool_labels).astype(np.int64, copy=False)
    true_index = np.asarray(true_index).astype(np.int64, copy=False)
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be at least 2, got {num_candidates}")
    if query_labels.shape != true_index.shape or query_labels.ndim != 1:
        raise ValueError("query_labels and true_index must be 1-D and of equal length")
    rng = np.random.default_rng(seed)
    out = np.empty((len(query_labels), num_candidates), dtype=np.int64)
    out[:, 0] = true_index
    allowed: dict[int, np.ndarray] = {}
    for q, label in enumerate(query_labels.tolist()):
        if label not in allowed:
            allowed[label] = np.flatnonzero(pool_labels != label)
            if len(allowed[label]) < num_candidates - 1:
                raise ConfigError(
                    f"label {label}: only {len(allowed[label])} pool items of other labels, "
                    f"{num_candidates - 1} distractors needed"
                )
        out[q, 1:] = rng.choice(allowed[label], num_candidates - 1, replace=False)
    return out


def r_precision(
    query_embeddings: np.ndarray,
    pool_embeddings: np.ndarray,
    query_labels: Sequence[int] | np.ndarray,
    pool_labels: Sequence[int] | np.ndarray,
    *,
    true_index: Sequence[int] | np.ndarray | None = None,
    num_candidates: int = 100,
    seed: int = 0,
    chunk: int = 1024,
) -> RPrecision:
    """R-precision of queries (Q, E) against a pool (P, E); `true_index[q]` is q's pool item.

    `true_index` defaults to `arange(Q)` (query q belongs to pool item q). Accepts numpy arrays
    or anything `np.asarray` takes (CPU torch tensors included).
    """
    queries = np.asarray(query_embeddings, dtype=np.float32)
    pool = np.asarray(pool_embeddings, dtype=np.float32)
    if queries.ndim != 2 or pool.ndim != 2 or queries.shape[1] != pool.shape[1]:
        raise ValueError(
            f"embeddings must be (Q, E) and (P, E), got {queries.shape} and {pool.shape}"
        )
    if true_index is None:
        true_index = np.arange(len(queries))
    if not np.all(np.isfinite(queries)) or not np.all(np.isfinite(pool)):
        raise ValueError("embeddings contain NaN or infinity")
    candidates = sample_candidates(query_labels, pool_labels, true_index, num_candidates, seed)
    hits = np.empty(len(queries), dtype=bool)
    # Scores against the whole pool per chunk of queries, then gathered: the (Q, C, E) tensor of
    # candidate embeddings would be Q·C·E floats (4 GB for 10k captions).
    for start in range(0, len(queries), chunk):
        stop = start + chunk
        scores = queries[start:stop] @ pool.T  # (chunk, P)
        picked = np.take_along_axis(scores, candidates[start:stop], axis=1)  # (chunk, C)
        hits[start:stop] = np.all(picked[:, :1] > picked[:, 1:], axis=1)
    return RPrecision(
        value=float(hits.mean()) if len(hits) else 0.0,
        queries=len(hits),
        candidates=num_candidates,
        hits=hits,
    )


def attribute_separation(
    query_embeddings: np.ndarray,
    query_image: np.ndarray,
    image_attributes: np.ndarray,
) -> np.ndarray:
    """Per attribute, how often a caption is nearer its own attribute combination than to every
    combination that differs from it in that attribute alone.

    R-precision's random distractors almost never include the same scene with only the helmet
    changed, so an encoder can score a high R-precision while blurring one attribute; a GAN
    conditioned on it cannot draw what the embedding does not tell apart. Here each
    combination's prototype is the normalised mean of its captions' embeddings, leaving out the
    query's own image (so a query is never compared with itself); combinations present in only
    one image are skipped.

    `query_embeddings` (Q, E), `query_image` (Q,) image index per query, `image_attributes`
    (N, A) value indices. Returns float (A,): the fraction of eligible queries separated, NaN for
    an attribute no query could be tested on.
    """
    q = query_embeddings / np.maximum(
        np.linalg.norm(query_embeddings, axis=1, keepdims=True), 1e-12
    )
    attributes = np.asarray(image_attributes, dtype=np.int64)  # (N, A)
    combos, combo_of_image = np.unique(attributes, axis=0, return_inverse=True)
    combo_of_image = combo_of_image.reshape(-1)
    image_of_query = np.asarray(query_image, dtype=np.int64)
    combo_of_query = combo_of_image[image_of_query]  # (Q,)
    # Per-image mean of its queries, then per-combination sums of those (unit) means.
    per_image = np.zeros((len(attributes), q.shape[1]))
    np.add.at(per_image, image_of_query, q)
    has_query = np.zeros(len(attributes), dtype=bool)
    has_query[image_of_query] = True
    per_image[has_query] /= np.linalg.norm(per_image[has_query], axis=1, keepdims=True)
    sums = np.zeros((len(combos), q.shape[1]))
    np.add.at(sums, combo_of_image[has_query], per_image[has_query])
    counts = np.bincount(combo_of_image[has_query], minlength=len(combos))
    index = {tuple(row): c for c, row in enumerate(combos.tolist())}
    # Rival prototypes use every image, so they are computed once; (K, E), zero rows = no images.
    full = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    values_per_attribute = combos.max(axis=0) + 1  # (A,)
    # rivals[c][a]: the combinations with queries that differ from c in attribute a alone.
    rivals = [
        [
            [
                r
                for v in range(int(values_per_attribute[a]))
                if (r := index.get((*row[:a], v, *row[a + 1 :]))) is not None
                and r != c
                and counts[r] > 0
            ]
            for a in range(attributes.shape[1])
        ]
        for c, row in enumerate(combos.tolist())
    ]

    separated = np.zeros(attributes.shape[1])
    tested = np.zeros(attributes.shape[1])
    for k in range(len(q)):
        image, combo = int(image_of_query[k]), int(combo_of_query[k])
        if counts[combo] < 2:
            continue  # the query's own image is the only one: no prototype without it
        own = sums[combo] - per_image[image]  # leave the query's own image out
        own_score = float(q[k] @ (own / max(float(np.linalg.norm(own)), 1e-12)))
        for a, others in enumerate(rivals[combo]):
            if others:
                tested[a] += 1
                separated[a] += bool((full[others] @ q[k] < own_score).all())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tested > 0, separated / np.maximum(tested, 1), np.nan)


def partial_r_precision(
    query_embeddings: np.ndarray,
    pool_embeddings: np.ndarray,
    query_stated: Sequence[int] | np.ndarray,
    pool_attributes: np.ndarray,
    *,
    true_index: Sequence[int] | np.ndarray,
    num_candidates: int = 100,
    seed: int = 0,
) -> RPrecision:
    """R-precision of captions that state only some attributes (docs/TEXT_ENCODER.md).

    `query_stated[q]` is q's bitmask over the attribute columns of `pool_attributes` (N, A).
    A distractor must contradict the caption in at least one *stated* attribute: an image that
    differs only in what the caption leaves open fits the caption as well as the true one, so
    it cannot count against it. Queries are grouped by mask; each group is `r_precision` with
    labels = the pool's attributes projected onto the stated columns.
    """
    queries = np.asarray(query_embeddings, dtype=np.float32)
    stated = np.asarray(query_stated, dtype=np.int64)
    attributes = np.asarray(pool_attributes, dtype=np.int64)
    true_index = np.asarray(true_index, dtype=np.int64)
    if stated.shape != (len(queries),) or true_index.shape != (len(queries),):
        raise ValueError("query_stated and true_index must be (Q,) like the queries")
    if attributes.ndim != 2 or np.any(stated < 1) or np.any(stated >> attributes.shape[1]):
        raise ValueError("query_stated must be non-empty bitmasks over pool_attributes' columns")
    base = int(attributes.max(initial=0)) + 1
    hits = np.zeros(len(queries), dtype=bool)
    for mask in np.unique(stated).tolist():
        picked = np.flatnonzero(stated == mask)
        labels = np.zeros(len(attributes), dtype=np.int64)
        for a in range(attributes.shape[1]):
            if mask >> a & 1:
                labels = labels * base + attributes[:, a]  # (N,): id of the stated values
        result = r_precision(
            queries[picked],
            pool_embeddings,
            labels[true_index[picked]],
            labels,
            true_index=true_index[picked],
            num_candidates=num_candidates,
            seed=seed + mask,
        )
        hits[picked] = result.hits
    return RPrecision(
        value=float(hits.mean()) if len(hits) else 0.0,
        queries=len(hits),
        candidates=num_candidates,
        hits=hits,
    )
