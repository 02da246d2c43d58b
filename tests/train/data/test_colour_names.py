"""The training lexicon's colour names: the committed table, its rule and its boundaries."""

from __future__ import annotations

import re

import numpy as np
import pytest

from train.data import colour_names, phrasing
from train.data.attributes import ATTRIBUTE_VALUES, all_attributes
from train.data.colour_names import LEXICON_COLOURS, classify, derive
from train.data.phrasing import Family, phrase_for, read_back
from train.text import off_domain

EXCLUDED = phrasing.lexicon_excluded_words(off_domain.vocabulary())


def test_colour_names_committed_table_is_the_derivation_from_the_xkcd_survey() -> None:
    pytest.importorskip("matplotlib", reason="the `lexicon` extra re-derives the table")
    derived = colour_names.derive_from_xkcd(EXCLUDED)
    assert derived == LEXICON_COLOURS, "re-run `python scripts/derive_colour_names.py`"


def test_colour_names_are_many_and_name_only_clothing_colours() -> None:
    assert set(LEXICON_COLOURS) <= set(ATTRIBUTE_VALUES["colour"])
    names = [n for ns in LEXICON_COLOURS.values() for n in ns]
    assert len(names) == len(set(names)) >= 85
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)*", n) for n in names)
    # Spot checks a person would agree with, one per value.
    for value, name in [
        ("red", "brick red"), ("orange", "pale orange"), ("yellow", "goldenrod"),
        ("green", "hunter green"), ("blue", "cobalt blue"), ("purple", "aubergine"),
    ]:  # fmt: skip
        assert name in LEXICON_COLOURS[value]


def test_colour_names_share_no_word_with_heldout_phrases_or_other_attributes() -> None:
    assert {"crimson", "navy", "sky", "lime", "snow", "sandy", "apple", "forest"} <= EXCLUDED
    assert not {"red", "blue", "dark"} & EXCLUDED  # colour words and free modifiers stay
    words = {w for ns in LEXICON_COLOURS.values() for n in ns for w in n.split()}
    assert not words & EXCLUDED
    heldout_words = {w for p in phrasing.heldout_phrases() for w in re.findall(r"[a-z]+", p)}
    colour_words = {w for ws in phrasing.COLOUR_WORDS.values() for p in ws for w in p.split()}
    assert not (words & heldout_words) - colour_words


@pytest.mark.parametrize(
    ("words", "rgb", "expected"),
    [
        (("cobalt", "blue"), (3, 10, 167), "blue"),
        (("light", "blue"), (149, 208, 252), "blue"),  # a pastel named by its colour word
        (("mango",), (255, 166, 43), "orange"),  # saturated, no colour word: the hue decides
        (("salmon",), (255, 121, 108), None),  # unsaturated without a colour word: between
        (("orange", "red"), (253, 65, 30), None),  # two clothing colours in one name
        (("reddish", "orange"), (243, 115, 20), None),  # … also as a "-dish" word
        (("blood", "red"), (152, 0, 2), "red"),  # one colour word, and the hue agrees
        (("light", "orange"), (253, 170, 72), "orange"),
        (("pinkish", "red"), (241, 12, 69), None),  # a category we do not render
        (("dusty", "pink"), (213, 138, 148), None),
        (("eggshell",), (255, 255, 212), None),  # achromatic: only "white"/"black" names
        (("off", "white"), (255, 255, 228), "white"),
        (("chocolate",), (210, 105, 30), None),  # a dark orange is a brown
        (("teal", "green"), (37, 163, 111), None),
        (("hot", "pink"), (255, 2, 141), None),
    ],
)
def test_colour_names_rule(words: tuple[str, ...], rgb: tuple[int, int, int], expected) -> None:
    assert classify(words, rgb) == expected


def test_colour_names_survey_order_is_rarest_first_so_commonest_keeps_the_last() -> None:
    pytest.importorskip("matplotlib", reason="the `lexicon` extra re-derives the table")
    survey = list(colour_names.xkcd_survey())
    assert len(survey) == 949
    assert survey[-3:] == ["blue", "green", "purple"]  # the survey's three commonest names
    common = {
        "cobalt blue": (3, 10, 167),
        "mango": (255, 166, 43),
    }  # survey order: cobalt blue rarer
    assert derive(common, (), commonest=1) == {"orange": ("mango",)}
    assert derive(common, ()) == {"blue": ("cobalt blue",), "orange": ("mango",)}


def test_colour_names_derive_drops_unfit_run_together_and_excluded_names() -> None:
    survey = {
        "cobalt blue": (3, 10, 167),
        "greenblue": (35, 196, 139),  # two colour words run together
        "piss yellow": (221, 214, 24),
        "robin's egg": (109, 237, 253),  # not plain words
        "navy blue": (0, 17, 70),  # "navy" is a held-out word
        "blue": (3, 67, 223),  # the grammar's own word
    }
    assert derive(survey, {"navy"}) == {"blue": ("cobalt blue",)}


def test_colour_names_reach_training_captions_with_right_labels() -> None:
    rng = np.random.default_rng(5)
    attributes = all_attributes()
    names = {n for ns in LEXICON_COLOURS.values() for n in ns}
    seen = 0
    for _ in range(3000):
        a = attributes[int(rng.integers(len(attributes)))]
        p = phrase_for(a, {"colour"}, Family.TRAIN, rng)
        used = [n for n in names if re.search(rf"(?<![a-z-]){n}(?![a-z-])", p.caption)]
        if used and a.colour in LEXICON_COLOURS:
            seen += 1
            assert read_back(p.caption) == {"colour": a.colour}, p.caption
            assert max(used, key=len) in LEXICON_COLOURS[a.colour], p.caption
    # LEXICON_PROB 0.7 of the slots not given the plain word (PLAIN_COLOUR_PROB 0.3) of the six
    # values with lexicon names: about 3000 · 6/8 · 0.7 · 0.7 = 1100, plus the grammar's own
    # phrases the survey also has ("bright red", "royal blue").
    assert 1000 < seen < 1800


def test_colour_names_never_reach_the_heldout_family() -> None:
    """`test_phrasing` is pinned byte for byte (test_phrasing.py); a lexicon-only name never
    appears in it, so the split measures the same words before and after PHRASING_VERSION 3."""
    rng = np.random.default_rng(9)
    attributes = all_attributes()
    grammar = {p for ps in phrasing.TRAIN_COLOURS.values() for p in ps}
    grammar |= {w for p in grammar for w in p.split()}  # "royal" of "royal blue"
    lexicon_only = {n for ns in LEXICON_COLOURS.values() for n in ns} - grammar
    text = "\n".join(
        phrasing.heldout_phrase(attributes[int(rng.integers(len(attributes)))], rng).caption
        for _ in range(3000)
    )
    assert not [n for n in lexicon_only if re.search(rf"(?<![a-z-]){n}(?![a-z-])", text)]
