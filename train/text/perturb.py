"""Caption perturbations: how operators really type, for evaluation and for training augmentation.

Six perturbations, each a pure function of (text, rng) so evaluation is reproducible from a seed:

- `typo_each_word`: one random character edit (delete, insert, substitute or swap two neighbours)
  in *every* word — far harsher than real typing, which is why it is the robustness target.
- `shuffle_clauses`: the comma/colon/semicolon-separated clauses in a different order.
- `upper_case`: the whole caption in capitals. The shared tokenizer lower-cases, so this one is
  a no-op by construction; it is evaluated anyway so the table shows that, not assumes it.
- `extra_punctuation`: stray marks ("!", "...", "?!", ...) after some words and at the end.
- `doubled_letters`: a key held too long — one letter doubled in about a third of the words.
- `missing_spaces`: a space bar missed — about a third of the spaces dropped ("inthe mud").

The last two model operators typing under stress (docs/DATA_FORMAT.md § Operator phrasing);
`augment` uses them too (issue 17), drawn after the others so that a config without them
(`doubled_prob` = `joined_prob` = 0, as saved before they existed) draws exactly as before.

`augment` draws a random mix of them for training (Reed trained on clean captions only; without
augmentation a char-CNN trained on a small grammar has never seen a misspelt word. Trained with
it, the default encoder loses 2 points to `typo_each_word` on test and 8 on test_unseen,
docs/TEXT_ENCODER.md; without it was not re-measured at the final configuration). Case changes
are not used for training: they cannot change the ids.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[A-Za-z]+")
_CLAUSE_SEPARATORS = re.compile(r"\s*[,;:]\s*")
_LETTERS = string.ascii_lowercase
_MARKS = ("!", "?", ".", ",", "...", "!!", "?!", ";", " -", "!!!")


def _edit_word(word: str, rng: np.random.Generator) -> str:
    """One random character edit: delete, insert, substitute or swap two neighbours."""
    n = len(word)
    op = int(rng.integers(4 if n >= 2 else 3))
    i = int(rng.integers(n))
    letter = _LETTERS[int(rng.integers(26))]
    if op == 0:  # delete
        return word[:i] + word[i + 1 :]
    if op == 1:  # insert before position i (or at the end)
        j = int(rng.integers(n + 1))
        return word[:j] + letter + word[j:]
    if op == 2:  # substitute with a different letter
        return word[:i] + _other_letter(word[i], rng) + word[i + 1 :]
    i = int(rng.integers(n - 1))  # swap neighbours i and i+1
    swapped = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    # Swapping equal letters ("ee") changes nothing; an edit must edit, so substitute instead.
    return swapped if swapped != word else word[:i] + _other_letter(word[i], rng) + word[i + 1 :]


def _other_letter(letter: str, rng: np.random.Generator) -> str:
    """A random lower-case letter different from `letter` (case-insensitively)."""
    pick = _LETTERS[int(rng.integers(25))]
    return pick if pick != letter.lower() else "z"


def typo_each_word(text: str, rng: np.random.Generator, rate: float = 1.0) -> str:
    """One random character edit in every word (or in each word with probability `rate`)."""

    def edit(match: re.Match[str]) -> str:
        word = match.group(0)
        return _edit_word(word, rng) if rate >= 1.0 or rng.random() < rate else word

    return _WORD.sub(edit, text)


def shuffle_clauses(text: str, rng: np.random.Generator) -> str:
    """Clauses (split at , ; :) in a new random order, joined with ", "."""
    clauses = [c for c in _CLAUSE_SEPARATORS.split(text.strip()) if c]
    if len(clauses) < 2:
        return text
    order = np.arange(len(clauses))
    # A permutation equal to the original order is redrawn: the perturbation should perturb.
    for _ in range(8):
        order = rng.permutation(len(clauses))
        if np.any(order != np.arange(len(clauses))):
            break
    return ", ".join(clauses[i] for i in order)


def upper_case(text: str, rng: np.random.Generator | None = None) -> str:
    """The caption in capitals (`rng` unused; same signature as the others)."""
    del rng
    return text.upper()


def extra_punctuation(text: str, rng: np.random.Generator, rate: float = 0.3) -> str:
    """Stray punctuation after about `rate` of the words, and always some at the end."""

    def mark(match: re.Match[str]) -> str:
        if rng.random() < rate:
            return match.group(0) + _MARKS[int(rng.integers(len(_MARKS)))]
        return match.group(0)

    return _WORD.sub(mark, text).rstrip() + _MARKS[int(rng.integers(len(_MARKS)))]


def doubled_letters(text: str, rng: np.random.Generator, rate: float = 0.35) -> str:
    """One letter doubled in each word with probability `rate`, and in at least one word."""
    words = list(_WORD.finditer(text))
    if not words:
        return text
    chosen = {i for i in range(len(words)) if rng.random() < rate}
    chosen = chosen or {int(rng.integers(len(words)))}
    out, last = [], 0
    for i, match in enumerate(words):
        word = match.group(0)
        if i in chosen:
            k = int(rng.integers(len(word)))
            word = word[: k + 1] + word[k] + word[k + 1 :]
        out += [text[last : match.start()], word]
        last = match.end()
    return "".join([*out, text[last:]])


def missing_spaces(text: str, rng: np.random.Generator, rate: float = 0.3) -> str:
    """Each space dropped with probability `rate`, and at least one (if there is one)."""
    spaces = [i for i, c in enumerate(text) if c == " "]
    if not spaces:
        return text
    drop = {i for i in spaces if rng.random() < rate} or {spaces[int(rng.integers(len(spaces)))]}
    return "".join(c for i, c in enumerate(text) if i not in drop)


PERTURBATIONS: dict[str, Callable[[str, np.random.Generator], str]] = {
    "typos": typo_each_word,
    "shuffled": shuffle_clauses,
    "upper": upper_case,
    "punctuation": extra_punctuation,
    "doubled": doubled_letters,
    "joined": missing_spaces,
}
"""Evaluation perturbations by name (the names used in eval-text's results)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time caption augmentation; each probability is per caption, drawn independently."""

    typo_prob: float = 0.6
    """Probability that a caption gets typos at all."""
    typo_rate_min: float = 0.5
    typo_rate_max: float = 1.0
    """Such a caption gets an edit in each word with a rate drawn uniformly from [min, max]."""
    shuffle_prob: float = 0.3
    """Probability of shuffling the clauses."""
    punctuation_prob: float = 0.3
    """Probability of stray punctuation."""
    doubled_prob: float = 0.15
    """Probability of doubled letters (`doubled_letters`)."""
    joined_prob: float = 0.15
    """Probability of missing spaces (`missing_spaces`)."""

    def __post_init__(self) -> None:
        for name in (
            "typo_prob",
            "typo_rate_min",
            "typo_rate_max",
            "shuffle_prob",
            "punctuation_prob",
            "doubled_prob",
            "joined_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {value}")
        if self.typo_rate_min > self.typo_rate_max:
            raise ValueError("augment.typo_rate_min exceeds augment.typo_rate_max")


def augment(
    text: str, rng: np.random.Generator, config: AugmentConfig, strength: float = 1.0
) -> str:
    """A randomly perturbed copy of `text` for training (may be unchanged).

    `strength` in [0, 1] scales every probability (the trainer ramps it up over the run).
    """
    if rng.random() < config.shuffle_prob * strength:
        text = shuffle_clauses(text, rng)
    if rng.random() < config.typo_prob * strength:
        text = typo_each_word(
            text, rng, rate=float(rng.uniform(config.typo_rate_min, config.typo_rate_max))
        )
    if rng.random() < config.punctuation_prob * strength:
        text = extra_punctuation(text, rng)
    # Drawn only when configured: a config without them consumes the generator as before.
    if config.doubled_prob > 0 and rng.random() < config.doubled_prob * strength:
        text = doubled_letters(text, rng)
    if config.joined_prob > 0 and rng.random() < config.joined_prob * strength:
        text = missing_spaces(text, rng)
    return text
