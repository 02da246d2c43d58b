"""Attribute twins: for an image, the images whose attributes differ from its own in exactly one.

Shared by the text encoder's pretraining (twins in every batch, docs/TEXT_ENCODER.md § Objective)
and the GAN loader's hard-negative wrong captions (docs/GAN_TRAINING.md § Data): in both, a random
partner of another rescue-scenes class differs in 3–4 of 5 attributes, so what tells it apart is
too easy to learn and the single attributes (helmet, pose) are never the deciding difference.
"""

from __future__ import annotations

import numpy as np


class AttributeTwins:
    """For an image, the images whose attributes differ from its own in exactly one attribute.

    `attributes` is int (N, A), one row of value indices per image.
    """

    def __init__(self, attributes: np.ndarray) -> None:
        rows = np.asarray(attributes, dtype=np.int64)  # (N, A)
        combos, inverse = np.unique(rows, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        self.combo_of = inverse  # (N,): which attribute combination each image has
        self.images_of = [np.flatnonzero(inverse == c) for c in range(len(combos))]
        index = {tuple(row): c for c, row in enumerate(combos.tolist())}
        values = [np.unique(rows[:, a]).tolist() for a in range(rows.shape[1])]
        # neighbours[c][a]: combinations that differ from c in attribute a only (present in N).
        self.neighbours: list[list[list[int]]] = []
        for row in combos.tolist():
            per_attribute = []
            for a, choices in enumerate(values):
                found = [index.get((*row[:a], v, *row[a + 1 :])) for v in choices if v != row[a]]
                per_attribute.append([c for c in found if c is not None])
            self.neighbours.append([n for n in per_attribute if n])
        self._tables: tuple[np.ndarray, ...] | None = None

    def twin(self, image: int, rng: np.random.Generator) -> int | None:
        """A random image differing from `image` in one attribute (attribute drawn uniformly)."""
        options = self.neighbours[self.combo_of[image]]
        if not options:
            return None
        combos = options[int(rng.integers(len(options)))]
        images = self.images_of[combos[int(rng.integers(len(combos)))]]
        return int(images[int(rng.integers(len(images)))])

    def _padded(self) -> tuple[np.ndarray, ...]:
        """Padded tables for `draw`: (groups per combo, combos per group, the combos, image
        order by combo, first position of each combo, images per combo)."""
        if self._tables is None:
            k = len(self.neighbours)
            attrs = max((len(g) for g in self.neighbours), default=0) or 1
            width = max((len(c) for g in self.neighbours for c in g), default=0) or 1
            groups = np.array([len(g) for g in self.neighbours], dtype=np.int64)  # (K,)
            sizes = np.zeros((k, attrs), dtype=np.int64)  # (K, A')
            table = np.zeros((k, attrs, width), dtype=np.int64)  # (K, A', V)
            for c, per_attribute in enumerate(self.neighbours):
                for a, combos in enumerate(per_attribute):
                    sizes[c, a] = len(combos)
                    table[c, a, : len(combos)] = combos
            order = np.argsort(self.combo_of, kind="stable")
            counts = np.array([len(i) for i in self.images_of], dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self._tables = (groups, sizes, table, order, starts, counts)
        return self._tables

    def draw(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One twin per image, vectorised, distributed as `twin` (attribute, then value, then
        image, each uniform): int64 (M,), −1 where an image has no twin in the set."""
        groups, sizes, table, order, starts, counts = self._padded()
        combo = self.combo_of[np.asarray(images, dtype=np.int64)]  # (M,)
        u = rng.random((3, len(combo)))
        has = groups[combo] > 0
        count = groups[combo]
        group = np.minimum((u[0] * count).astype(np.int64), np.maximum(count - 1, 0))
        size = sizes[combo, group]
        pick = np.minimum((u[1] * size).astype(np.int64), np.maximum(size - 1, 0))
        other = table[combo, group, pick]  # (M,) the twin combination
        n = counts[other]
        position = starts[other] + np.minimum((u[2] * n).astype(np.int64), n - 1)
        return np.where(has, order[position], -1)
