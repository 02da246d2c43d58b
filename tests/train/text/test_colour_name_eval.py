"""The read-back of the xkcd survey's colour names, as eval-text measures it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from train import models
from train.data import phrasing
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES
from train.data.colour_names import COMMONEST, LEXICON_COLOURS, has_colour_word
from train.text import colour_name_eval
from train.text import readback as rb

NAMES = {"red": ("mahogany", "brick red"), "blue": ("cobalt blue", "cerulean")}
COLOUR = ATTRIBUTE_NAMES.index("colour")


@pytest.mark.parametrize("kind", colour_name_eval.KINDS)
def test_commands_name_their_colour_and_state_what_their_mask_says(kind: str) -> None:
    captions, used, truth, stated = colour_name_eval.commands(NAMES, kind, 300, seed=3)
    assert len(captions) == len(used) == len(truth) == len(stated) == 300
    for caption, name, values, mask in zip(captions, used, truth, stated, strict=True):
        colour = ATTRIBUTE_VALUES["colour"][values[COLOUR]]
        assert name in NAMES[colour] and name in caption
        names = phrasing.stated_names(int(mask))
        assert "colour" in names
        assert (names == {"colour"}) == (kind == "colour only")
    assert {n for names in NAMES.values() for n in names} == set(used)  # every name drawn
    again = colour_name_eval.commands(NAMES, kind, 300, seed=3)
    assert again[0] == captions and (again[2] == truth).all()
    with pytest.raises(ValueError, match="kind"):
        colour_name_eval.commands(NAMES, "whispered", 3, seed=0)


def test_records_judge_by_the_labels_and_split_names_by_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fake robot that reads every attribute right, except a standalone colour name: "?".
    monkeypatch.setattr(colour_name_eval, "COMMANDS_PER_KIND", 200)
    sizes = [len(ATTRIBUTE_VALUES[n]) for n in ATTRIBUTE_NAMES]
    heads = models.ReadBack(rb.default_config(4, sizes))
    kinds = iter(colour_name_eval.KINDS)

    def encode(texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), 4))

    def decide(_: Any, embeddings: np.ndarray) -> np.ndarray:
        _, used, truth, _ = colour_name_eval.commands(NAMES, next(kinds), 200, seed=0)
        chosen = np.concatenate([truth, np.zeros((len(truth), 1), np.int64)], axis=1)
        standalone = np.array([not has_colour_word(n) for n in used])
        chosen[standalone, COLOUR] = sizes[COLOUR]
        return chosen

    monkeypatch.setattr(colour_name_eval, "decide_embeddings", decide)
    records = colour_name_eval.records(encode, heads, seed=0, sets={"trained": NAMES})
    by = {(r["kind"], r["form"]): r for r in records}
    assert set(by) == {(k, f) for k in colour_name_eval.KINDS
                       for f in ("with a colour word", "standalone")}  # fmt: skip
    for (kind, form), r in by.items():
        leaning = form == "with a colour word"
        assert r["colour_right"] == (1.0 if leaning else 0.0)
        assert r["colour_unstated"] == (0.0 if leaning else 1.0)
        assert r["others_right"] == (None if kind == "colour only" else 1.0)
        assert r["flagged"] == 0.0 and r["distinct_names"] == 2
    assert sum(r["commands"] for r in records) == 400
    # Another dataset's attributes: nothing to measure.
    other = models.ReadBack(rb.default_config(4, (3, 3)))
    assert colour_name_eval.records(encode, other, seed=0, sets={"trained": NAMES}) == []


def test_rare_names_never_reached_training() -> None:
    pytest.importorskip("matplotlib", reason="the `lexicon` extra derives the rare names")
    survey = colour_name_eval.xkcd_survey()
    sets = colour_name_eval.name_sets()
    assert sets["trained"] == dict(LEXICON_COLOURS)
    rare = {n for names in sets["rare"].values() for n in names}
    trained = {n for names in LEXICON_COLOURS.values() for n in names}
    commonest = set(list(survey)[-COMMONEST:])
    assert len(rare) > 100 and not rare & trained and not rare & commonest
    assert set(sets["rare"]) <= set(ATTRIBUTE_VALUES["colour"])


def test_plain_words_are_measured_and_the_worst_colour_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A robot that misses only "red" scores 7/8 on the mean; the record names red at 0 %
    (the plain "red" defect, docs/TEXT_ENCODER.md § The first word)."""
    plain = colour_name_eval.name_sets()["plain"]
    assert plain == {v: (v,) for v in ATTRIBUTE_VALUES["colour"]}
    monkeypatch.setattr(colour_name_eval, "COMMANDS_PER_KIND", 400)
    sizes = [len(ATTRIBUTE_VALUES[n]) for n in ATTRIBUTE_NAMES]
    kinds = iter(colour_name_eval.KINDS)

    def decide(_: Any, embeddings: np.ndarray) -> np.ndarray:
        _, _, truth, _ = colour_name_eval.commands(plain, next(kinds), 400, seed=0)
        chosen = np.concatenate([truth, np.zeros((len(truth), 1), np.int64)], axis=1)
        red = truth[:, COLOUR] == ATTRIBUTE_VALUES["colour"].index("red")
        chosen[red, COLOUR] = sizes[COLOUR]
        return chosen

    monkeypatch.setattr(colour_name_eval, "decide_embeddings", decide)
    heads = models.ReadBack(rb.default_config(4, sizes))
    records = colour_name_eval.records(
        lambda texts: np.zeros((len(texts), 4)), heads, seed=0, sets={"plain": plain}
    )
    assert [r["form"] for r in records] == ["with a colour word"] * 2
    for r in records:
        assert r["worst_colour"] == "red" and r["worst_colour_right"] == 0.0
        assert 0.8 < r["colour_right"] < 0.95 and r["distinct_names"] == 8
