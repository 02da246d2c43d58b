"""The read-back's decision rule: the read-back graph's probabilities → what the robot understood.

One implementation, used by the engine on the robot and by export's fp32-vs-int8 gate, so the
gate judges exactly the decisions the robot will make (docs/PROTOCOL.md § Read-back; the same
rule as docs/TEXT_ENCODER.md § Read-back):

- per attribute, the most probable class of its block; "not stated" (`NOT_STATED`, printed "?")
  when that is the block's last class; on an exact tie the earlier class wins (numpy's argmax);
- the confidence is the winning class's probability;
- off-domain when the off-domain probability is strictly above the manifest's
  `off_domain_threshold` (0.5 unless export recorded another).

numpy only: it runs on the robot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.bundle import NOT_STATED, ReadBackSpec

CONFIDENCE_DIGITS = 2
"""Confidences are shown and sent with two decimals (0.98): the operator reads them, and the reply
on the link stays short."""
WARNING_OFF_DOMAIN = "off-domain"
WARNING_NOTHING_STATED = "nothing-stated"
WARNINGS = (WARNING_OFF_DOMAIN, WARNING_NOTHING_STATED)
"""Values of the reply field `warning` (docs/PROTOCOL.md § Read-back)."""


@dataclass(frozen=True)
class AttributeReading:
    """One attribute as read back from a caption."""

    name: str
    value: str
    """A value name from the manifest, or `NOT_STATED`."""
    confidence: float
    """Probability of the winning class (for `NOT_STATED`: that the caption leaves it open)."""

    @property
    def stated(self) -> bool:
        return self.value != NOT_STATED


@dataclass(frozen=True)
class Understood:
    """What the robot understood from one caption."""

    attributes: tuple[AttributeReading, ...]
    off_domain: float
    """Probability that the caption describes nothing the robot knows."""
    off_domain_threshold: float
    unknown_words: tuple[str, ...] = ()
    """The caption's words the text encoder never learnt from (`edge_runtime.vocabulary`)."""

    @property
    def is_off_domain(self) -> bool:
        return self.off_domain > self.off_domain_threshold

    @property
    def nothing_stated(self) -> bool:
        return not any(a.stated for a in self.attributes)

    @property
    def warning(self) -> str | None:
        """One line for the operator when the picture is unlikely to be what they meant."""
        return warning_text(warning_code(self), self.off_domain)

    def summary(self) -> str:
        """`understood as: colour=red (0.98) terrain=? (0.91) ...`."""
        return summary(self.attributes)

    @property
    def unknown_line(self) -> str | None:
        """`not in the robot's vocabulary: tangerine, drifts`, or None."""
        return unknown_text(self.unknown_words)


def unknown_text(words: tuple[str, ...]) -> str | None:
    """The operator's line naming the words the robot never learnt (None: there are none)."""
    if not words:
        return None
    return "not in the robot's vocabulary: " + ", ".join(words)


def summary(attributes: tuple[AttributeReading, ...]) -> str:
    """`understood as: colour=red (0.98) terrain=? (0.91) ...`, as `generate`, the client and the
    demo print it."""
    return "understood as: " + " ".join(
        f"{a.name}={a.value} ({a.confidence:.{CONFIDENCE_DIGITS}f})" for a in attributes
    )


def warning_text(code: str | None, off_domain: float) -> str | None:
    """The operator's warning line for a `warning_code` (None: no warning)."""
    if code == WARNING_OFF_DOMAIN:
        return (
            f"warning: the caption reads as nothing this robot knows (off-domain "
            f"{off_domain:.{CONFIDENCE_DIGITS}f}); the picture will not mean much"
        )
    if code == WARNING_NOTHING_STATED:
        return (
            "warning: the caption states none of the attributes this robot knows; "
            "the picture leaves every one to chance"
        )
    return None


def decide(probs: np.ndarray, off_domain: float, spec: ReadBackSpec) -> Understood:
    """One caption's read-back graph outputs — `probs` (Σ(n_a + 1),), `off_domain` scalar — →
    `Understood` by the rule in this module's docstring."""
    readings = []
    start = 0
    for (name, values), size in zip(spec.attributes, spec.block_sizes, strict=True):
        block = probs[start : start + size]  # (n_a + 1,)
        start += size
        winner = int(np.argmax(block))
        value = NOT_STATED if winner == len(values) else values[winner]
        readings.append(AttributeReading(name, value, _probability(block[winner])))
    return Understood(tuple(readings), _probability(off_domain), spec.off_domain_threshold)


def decision_indices(probs: np.ndarray, off_domain: np.ndarray, spec: ReadBackSpec) -> np.ndarray:
    """Batch form of `decide` for comparing two graphs: (B, Σ(n_a + 1)), (B,) → (B, A + 1) int,
    per attribute the winning class index (n_a = not stated), then 1 if off-domain else 0."""
    columns = []
    start = 0
    for size in spec.block_sizes:
        columns.append(np.argmax(probs[:, start : start + size], axis=1))
        start += size
    columns.append((off_domain > spec.off_domain_threshold).astype(np.int64))
    return np.stack(columns, axis=1)


def _probability(value: float | np.floating) -> float:
    # A graph may emit NaN or a value a hair outside [0, 1] (float rounding of a softmax): what
    # the operator sees is always a probability.
    number = float(value)
    if not np.isfinite(number):
        return 0.0
    return min(1.0, max(0.0, number))


def warning_code(understood: Understood) -> str | None:
    """The reply's `warning` value: off-domain first (it says more), else nothing-stated."""
    if understood.is_off_domain:
        return WARNING_OFF_DOMAIN
    if understood.nothing_stated:
        return WARNING_NOTHING_STATED
    return None


def reply_fields(understood: Understood) -> list[tuple[str, object]]:
    """The read-back's fields of a `gen` or `understand` reply: `understood` (a list of
    `name:value:confidence`), `off_domain` and, when there are, `warning` and `unknown` (the
    words the robot never learnt). Bounded by the manifest's limits (≤ 16 attributes, labels ≤
    24 characters) and `vocabulary.MAX_REPORTED`: under 1.2 KiB."""
    fields: list[tuple[str, object]] = [
        (
            "understood",
            [
                f"{a.name}:{a.value}:{a.confidence:.{CONFIDENCE_DIGITS}f}"
                for a in understood.attributes
            ],
        ),
        ("off_domain", f"{understood.off_domain:.{CONFIDENCE_DIGITS}f}"),
    ]
    code = warning_code(understood)
    if code is not None:
        fields.append(("warning", code))
    if understood.unknown_words:
        # ≤ MAX_REPORTED words of ≤ 32 letters a–z: nothing the link escapes, under 200 bytes.
        fields.append(("unknown", list(understood.unknown_words)))
    return fields
