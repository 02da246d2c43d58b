"""Draw what the robot understood (issue 17): a caption's read-back → a training caption.

The generator draws grammar captions well and words it never learnt, or a half description,
badly: on the 5,059-step recipe bundle of docs/QUALITY.md § 3.18 "green jacket" was read back
right (colour=green, the rest "?") and drawn in black, eight times out of eight, in water each
time. So the robot draws the read-back instead of the words: the values it understood go into
the bundle's canonical caption (`bundle.CanonicalSpec`, written by export from the training
grammar), and each value the caption leaves open is chosen per image, uniformly among the
combinations the training data shows (the `excluded` ones never are), so the pictures of a half
description vary where it leaves room, as the data does. The picture then shows exactly what the
reply's read-back says, and a misreading is one the operator has already been told about.

The choice is a function of (normalised caption, seed, image index) alone, like the noise
(docs/PROTOCOL.md § Determinism): sha256 of the three seeds a `random.Random` per image, so an
image does not depend on the batch it was drawn in. Stdlib only: it runs on the robot.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Iterator, Sequence

from edge_runtime.bundle import NOT_STATED, CanonicalSpec, ReadBackSpec

DRAW_UNDERSTOOD = "understood"
"""Draw the caption's read-back through the bundle's canonical caption (`edge_runtime.canonical`),
open attributes chosen per image; bundles without a canonical caption draw the caption itself."""
DRAW_CAPTION = "caption"
"""Draw the operator's caption itself (its embedding goes to the generator unchanged)."""
DRAW_CHOICES = (DRAW_UNDERSTOOD, DRAW_CAPTION)
MAX_DRAWS = 64
"""Redraws of the open values that land on an excluded combination; after that the last draw
stands (only a spec that excludes nearly everything gets there; export's never does)."""


def open_values_for(text: str, seed: int, index: int) -> random.Random:
    """The generator of image `index`'s open values (sha256, not `hash()`: the same on every
    robot and every run)."""
    digest = hashlib.sha256(f"{text}\0{seed}\0{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def choose(
    spec: ReadBackSpec,
    understood: Sequence[str],
    text: str,
    seed: int,
    index: int,
) -> tuple[int, ...]:
    """Value index per attribute: the understood value, or for `NOT_STATED` one drawn for image
    (`text`, `seed`, `index`) so that no `excluded` combination results (rejection sampling:
    uniform over the allowed combinations, as the training data's classes are)."""
    canonical = spec.canonical
    assert canonical is not None
    sizes = [len(values) for _, values in spec.attributes]
    fixed = [
        None if value == NOT_STATED else list(values).index(value)
        for value, (_, values) in zip(understood, spec.attributes, strict=True)
    ]
    # A combination the operator asked for in full is drawn as asked: only those with an open
    # attribute constrain the draw.
    avoid = [c for c in canonical.excluded if any(fixed[a] is None for a, _ in c)]
    rng = open_values_for(text, seed, index)
    chosen: tuple[int, ...] = ()
    for _ in range(MAX_DRAWS):
        chosen = tuple(
            v if v is not None else rng.randrange(n) for v, n in zip(fixed, sizes, strict=True)
        )
        if not any(_matches(chosen, combination) for combination in avoid):
            break
    return chosen


def _matches(chosen: tuple[int, ...], combination: tuple[tuple[int, int], ...]) -> bool:
    return all(chosen[a] == v for a, v in combination)


def render(spec: ReadBackSpec, chosen: Sequence[int]) -> str:
    """The canonical caption of one value per attribute."""
    canonical: CanonicalSpec | None = spec.canonical
    assert canonical is not None
    caption = canonical.template
    for (name, _), phrases, v in zip(spec.attributes, canonical.phrases, chosen, strict=True):
        caption = caption.replace("{" + name + "}", phrases[v], 1)
    return caption


def class_count(spec: ReadBackSpec) -> int:
    """Combinations of one value per attribute: the canonical table's rows."""
    return math.prod(len(values) for _, values in spec.attributes)


def class_index(spec: ReadBackSpec, chosen: Sequence[int]) -> int:
    """One value index per attribute → its row of the canonical table (`bundle.CLASS_INDEX`):
    mixed radix, the first attribute most significant, as `itertools.product` enumerates."""
    index = 0
    for (_, values), v in zip(spec.attributes, chosen, strict=True):
        index = index * len(values) + v
    return index


def combinations(spec: ReadBackSpec) -> Iterator[tuple[int, ...]]:
    """Every combination in `class_index` order (what export's table holds row by row)."""
    return itertools.product(*(range(len(values)) for _, values in spec.attributes))
