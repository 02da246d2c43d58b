from __future__ import annotations

import numpy as np
import pytest

from train.text.retrieval import (
    attribute_separation,
    partial_r_precision,
    r_precision,
    sample_candidates,
)


def _class_embeddings(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def test_retrieval_perfect_embeddings_score_one() -> None:
    labels = np.arange(300) % 150
    emb = _class_embeddings(labels, 150)
    result = r_precision(emb, emb, labels, labels)
    assert result.value == 1.0 and result.queries == 300 and result.candidates == 100


def test_retrieval_constant_embeddings_score_zero_not_chance() -> None:
    labels = np.arange(200)
    emb = np.ones((200, 8), np.float32)
    assert r_precision(emb, emb, labels, labels).value == 0.0  # ties count against the query


def test_retrieval_random_embeddings_are_near_chance() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(3000) % 500
    queries = rng.normal(size=(3000, 64)).astype(np.float32)
    pool = rng.normal(size=(3000, 64)).astype(np.float32)
    result = r_precision(queries, pool, labels, labels)
    assert 0.002 < result.value < 0.025  # chance is 0.01
    assert result.stderr == pytest.approx(np.sqrt(result.value * (1 - result.value) / 3000))


def test_retrieval_distractors_have_other_labels_and_never_repeat() -> None:
    labels = np.repeat(np.arange(40), 5)  # 200 items, 5 per label
    queries = np.arange(0, 200, 3)
    cand = sample_candidates(labels[queries], labels, queries, num_candidates=100, seed=1)
    assert cand.shape == (len(queries), 100)
    assert np.array_equal(cand[:, 0], queries)
    for row, q in zip(cand, queries, strict=True):
        assert len(set(row.tolist())) == 100
        assert np.all(labels[row[1:]] != labels[q])


def test_retrieval_is_seeded_and_true_index_maps_queries_to_pool() -> None:
    rng = np.random.default_rng(1)
    labels = np.arange(200)
    pool = rng.normal(size=(200, 16)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)  # dot product = cosine
    # Query q is a noisy copy of pool item 199 - q: only the right mapping retrieves it.
    true_index = np.arange(200)[::-1].copy()
    queries = pool[true_index] + 0.01 * rng.normal(size=(200, 16)).astype(np.float32)
    right = r_precision(queries, pool, labels[true_index], labels, true_index=true_index, seed=3)
    wrong = r_precision(queries, pool, labels[true_index], labels, seed=3)
    assert right.value == 1.0 and wrong.value < 0.1
    again = r_precision(queries, pool, labels[true_index], labels, seed=3)
    assert np.array_equal(again.hits, wrong.hits)


def test_retrieval_refuses_too_few_distractors_and_nan() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    emb = np.zeros((100, 4), np.float32)
    with pytest.raises(ValueError, match="only 50 pool items"):
        r_precision(emb, emb, labels, labels)
    emb[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        r_precision(emb, emb, np.arange(100), np.arange(100), num_candidates=10)


def _scenes(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Images with two binary attributes and a 3-valued one, every combination 5 times."""
    rng = np.random.default_rng(seed)
    grid = np.array([(a, b, c) for a in range(2) for b in range(2) for c in range(3)])
    attributes = np.repeat(grid, 5, axis=0)  # (60, 3)
    image_of_query = np.repeat(np.arange(len(attributes)), 2)  # two captions per image
    return attributes, image_of_query, rng


def test_attribute_separation_sees_an_attribute_the_embedding_ignores() -> None:
    attributes, image_of_query, rng = _scenes()
    # Attributes 0 and 2 get their own directions; attribute 1 (think: the helmet) none.
    directions = rng.normal(size=(8, 16))
    per_image = directions[attributes[:, 0]] + directions[2 + attributes[:, 2]]
    queries = per_image[image_of_query] + 0.05 * rng.normal(size=(len(image_of_query), 16))
    separated = attribute_separation(queries, image_of_query, attributes)
    assert separated.shape == (3,)
    assert separated[0] == 1.0 and separated[2] == 1.0
    assert 0.2 < separated[1] < 0.8  # a coin flip between two identical prototypes

    # Encode it too, and it is separated as well.
    queries += 0.5 * directions[5 + attributes[image_of_query, 1]]
    assert attribute_separation(queries, image_of_query, attributes).tolist() == [1.0, 1.0, 1.0]


def test_attribute_separation_leaves_the_query_image_out_and_skips_lone_combinations() -> None:
    # One image per combination: leaving the query's image out leaves no prototype of its own,
    # so nothing can be tested (not a perfect score from comparing a caption with itself).
    attributes = np.array([(a, b) for a in range(2) for b in range(2)])
    queries = np.eye(4)
    result = attribute_separation(queries, np.arange(4), attributes)
    assert np.isnan(result).all()


def _one_hots(attributes: np.ndarray, sizes: tuple[int, ...], mask: np.ndarray) -> np.ndarray:
    """(N, sum(sizes)): one-hot of each attribute whose bit is set in the row's mask."""
    blocks = []
    for a, size in enumerate(sizes):
        on = ((mask >> a) & 1).astype(np.float32)[:, None]
        blocks.append(np.eye(size, dtype=np.float32)[attributes[:, a]] * on)
    return np.concatenate(blocks, axis=1)


def test_partial_r_precision_counts_only_distractors_that_contradict_a_stated_attribute() -> None:
    rng = np.random.default_rng(0)
    sizes = (8, 6, 3)
    attributes = np.stack([rng.integers(0, s, 600) for s in sizes], 1)
    images = _one_hots(attributes, sizes, np.full(600, 7))
    true_index = rng.integers(0, 600, 400)
    stated = rng.integers(1, 7, 400)  # 1..6: partial masks over three attributes
    # A caption that encodes exactly what it states scores its image highest against every
    # image contradicting it; images that agree on all it states tie with the true one.
    queries = _one_hots(attributes[true_index], sizes, stated)
    partial = partial_r_precision(
        queries, images, stated, attributes, true_index=true_index, num_candidates=20
    )
    assert partial.value == 1.0 and partial.queries == 400
    classes = attributes @ np.array([18, 3, 1])
    plain = r_precision(queries, images, classes[true_index], classes, true_index=true_index,
                        num_candidates=20)  # fmt: skip
    assert plain.value < 0.5  # the class-id protocol punishes what the caption never said


def test_partial_r_precision_rejects_masks_outside_the_attributes() -> None:
    emb = np.eye(4, dtype=np.float32)
    attributes = np.zeros((4, 2), np.int64)
    with pytest.raises(ValueError, match="bitmasks"):
        partial_r_precision(emb, emb, [4, 1, 1, 1], attributes, true_index=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="bitmasks"):
        partial_r_precision(emb, emb, [0, 1, 1, 1], attributes, true_index=[0, 1, 2, 3])
