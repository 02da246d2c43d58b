from __future__ import annotations

import re

import numpy as np
import pytest

from edge_runtime import tokenizer
from train.text import perturb

CAPTION = "a survivor in an orange jacket lying on rubble at the left, no helmet"
CLAUSES = "left side: a hiker in green clothes lying down, hard hat on, still visible"


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (Levenshtein plus adjacent transposition)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


@pytest.mark.parametrize("seed", range(20))
def test_perturb_typo_each_word_makes_exactly_one_edit_per_word(seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = ["a", "survivor", "in", "an", "orange", "jacket,", "help!", "deep", "snow:", "feet"]
    out = [perturb.typo_each_word(w, rng) for w in words]
    for before, after in zip(words, out, strict=True):
        core_before, core_after = re.sub(r"\W", "", before), re.sub(r"\W", "", after)
        assert _edit_distance(core_before, core_after) == 1, (before, after)
        assert re.sub(r"\w", "", before) == re.sub(r"\w", "", after)  # punctuation untouched


def test_perturb_typo_rate_zero_changes_nothing() -> None:
    assert perturb.typo_each_word(CAPTION, np.random.default_rng(0), rate=0.0) == CAPTION


def test_perturb_shuffle_clauses_reorders_the_same_clauses() -> None:
    for seed in range(10):
        out = perturb.shuffle_clauses(CLAUSES, np.random.default_rng(seed))
        clauses = re.split(r"\s*[,;:]\s*", CLAUSES)
        assert sorted(out.split(", ")) == sorted(clauses)
        assert out.split(", ") != clauses
    assert perturb.shuffle_clauses("one clause only", np.random.default_rng(0)) == (
        "one clause only"
    )


def test_perturb_upper_case_is_invisible_to_the_tokenizer() -> None:
    assert tokenizer.encode(perturb.upper_case(CAPTION)) == tokenizer.encode(CAPTION)


def test_perturb_extra_punctuation_only_adds_marks() -> None:
    for seed in range(10):
        out = perturb.extra_punctuation(CAPTION, np.random.default_rng(seed))
        assert _words(out) == _words(CAPTION)
        assert len(out) > len(CAPTION)
        assert out[-1] in "!?.,;-"


def test_perturb_every_perturbation_is_seeded() -> None:
    for name, fn in perturb.PERTURBATIONS.items():
        a = fn(CLAUSES, np.random.default_rng(7))
        b = fn(CLAUSES, np.random.default_rng(7))
        assert a == b, name
        if name != "upper":
            assert a != CLAUSES, name


def test_perturb_augment_with_zero_probabilities_is_identity() -> None:
    off = perturb.AugmentConfig(
        typo_prob=0.0, shuffle_prob=0.0, punctuation_prob=0.0, doubled_prob=0.0, joined_prob=0.0
    )
    rng = np.random.default_rng(0)
    assert all(perturb.augment(CAPTION, rng, off) == CAPTION for _ in range(20))


def test_perturb_augment_varies_captions_and_keeps_them_encodable() -> None:
    rng = np.random.default_rng(0)
    outs = [perturb.augment(CLAUSES, rng, perturb.AugmentConfig()) for _ in range(200)]
    assert len(set(outs)) > 100
    assert sum(o == CLAUSES for o in outs) > 10  # some captions stay clean
    for out in outs:
        tokenizer.encode(out)


def test_perturb_augment_config_rejects_bad_probability() -> None:
    with pytest.raises(ValueError, match="shuffle_prob"):
        perturb.AugmentConfig(shuffle_prob=1.5)


@pytest.mark.parametrize("seed", range(10))
def test_perturb_doubled_letters_only_doubles_letters(seed: int) -> None:
    out = perturb.doubled_letters(CAPTION, np.random.default_rng(seed))
    assert out != CAPTION and len(out) > len(CAPTION)
    assert re.sub(r"([a-z])\1", r"\1", out) == re.sub(r"([a-z])\1", r"\1", CAPTION)
    for before, after in zip(_words(CAPTION), _words(out), strict=True):
        assert len(after) - len(before) in (0, 1)


@pytest.mark.parametrize("seed", range(10))
def test_perturb_missing_spaces_only_drops_spaces(seed: int) -> None:
    out = perturb.missing_spaces(CAPTION, np.random.default_rng(seed))
    assert out.replace(" ", "") == CAPTION.replace(" ", "")
    assert 0 < CAPTION.count(" ") - out.count(" ") < CAPTION.count(" ")
    assert perturb.missing_spaces("mud", np.random.default_rng(seed)) == "mud"
