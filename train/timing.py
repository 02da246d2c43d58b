"""Round-robin timing: variants compared in one run, as ratios, never as pass/fail.

The one home of this timer: export's speed tables and the GAN training benchmark use it.

On a shared machine absolute times drift with load; running the variants round-robin (A B C A B C
...) exposes them to the same drift, so their ratios stay meaningful even when the milliseconds
do not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    rounds: int = 20,
    warmup: int = 3,
    repeat: int = 1,
) -> dict[str, float]:
    """Median milliseconds per call of each variant, timed round-robin over `rounds` rounds.

    Each round times `repeat` back-to-back calls per variant (for calls too short for the clock).
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(repeat):
                fn()
            samples[name].append((time.perf_counter() - start) * 1000.0 / repeat)
    return {name: float(np.median(times)) for name, times in samples.items()}
