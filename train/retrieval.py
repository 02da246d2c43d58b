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
    from the query's; raises `ValueError` when a query has too few of them.
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
                raise ValueError(
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
