"""The rescue-scenes attribute vocabulary and the caption grammar (pure: numpy only)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edge_runtime import tokenizer
from train.data.attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_VALUES,
    NUM_CLASSES,
    UNSEEN_PAIRS,
    Attributes,
    all_attributes,
    class_names,
)
from train.data.captions import caption_for, captions_for


def test_attributes_class_id_round_trips_for_every_class() -> None:
    combos = all_attributes()
    assert len(combos) == NUM_CLASSES == 8 * 6 * 3 * 3 * 2
    for class_id, a in enumerate(combos):
        assert a.class_id == class_id
        assert Attributes.from_class_id(class_id) == a
        assert Attributes.from_indices(a.indices) == a
    assert len(set(class_names())) == NUM_CLASSES


def test_attributes_order_is_the_documented_contract() -> None:
    assert ATTRIBUTE_NAMES == ("colour", "terrain", "pose", "position", "helmet")
    assert ATTRIBUTE_VALUES["helmet"] == ("no", "yes")
    assert Attributes("red", "rubble", "standing", "left", "no").class_id == 0
    assert Attributes("red", "rubble", "standing", "left", "yes").class_id == 1
    assert Attributes("black", "mud", "lying", "right", "yes").class_id == NUM_CLASSES - 1


def test_attributes_reject_unknown_values_naming_the_attribute() -> None:
    with pytest.raises(ValueError, match="'colour': unknown value 'pink'"):
        Attributes("pink", "rubble", "standing", "left", "no")
    with pytest.raises(ValueError, match="out of range"):
        Attributes.from_class_id(NUM_CLASSES)


def test_unseen_pairs_are_fixed_and_leave_every_colour_and_terrain_in_train() -> None:
    pairs = set(UNSEEN_PAIRS)
    assert len(pairs) == 7
    assert 0.13 < len(pairs) / 48 < 0.17
    seen = {(c, t) for c in ATTRIBUTE_VALUES["colour"] for t in ATTRIBUTE_VALUES["terrain"]}
    seen -= pairs
    assert {c for c, _ in seen} == set(ATTRIBUTE_VALUES["colour"])
    assert {t for _, t in seen} == set(ATTRIBUTE_VALUES["terrain"])


# An independent keyword reader (not the grammar's tables) for what a caption says.
_KEYWORDS = {
    "colour": {
        "red": {"red", "scarlet"}, "orange": {"orange"}, "yellow": {"yellow"},
        "green": {"green"}, "blue": {"blue"}, "purple": {"purple", "violet"},
        "white": {"white"}, "black": {"black"},
    },
    "terrain": {
        "rubble": {"rubble", "debris", "concrete"}, "grass": {"grass", "grassy", "lawn", "meadow"},
        "sand": {"sand", "sandy", "dunes"}, "snow": {"snow", "snowy", "snowfield"},
        "water": {"water", "flood", "flooded", "floodwater"}, "mud": {"mud", "muddy"},
    },
    "pose": {
        "standing": {"standing", "upright", "feet"}, "sitting": {"sitting", "seated"},
        "lying": {"lying", "stretched", "prone"},
    },
    "position": {
        "left": {"left"}, "center": {"center", "centre", "middle", "centered"},
        "right": {"right"},
    },
}  # fmt: skip


def _read_caption(caption: str) -> dict[str, str]:
    words = set(re.findall(r"[a-z]+", caption))
    found = {}
    for name, values in _KEYWORDS.items():
        hits = [value for value, keys in values.items() if words & keys]
        assert len(hits) == 1, f"{name} in {caption!r}: {hits}"
        found[name] = hits[0]
    assert words & {"helmet", "hat", "helmeted", "bareheaded", "helmetless", "hatted"}, caption
    negative = words & {"no", "not", "without", "off", "bareheaded", "helmetless"}
    found["helmet"] = "no" if negative else "yes"
    return found


def test_caption_for_names_all_five_attributes_of_every_class() -> None:
    rng = np.random.default_rng(0)
    for a in all_attributes():
        for _ in range(3):
            caption = caption_for(a, rng)
            assert _read_caption(caption) == {n: getattr(a, n) for n in ATTRIBUTE_NAMES}


def test_caption_for_fits_the_tokenizer_alphabet_and_length() -> None:
    rng = np.random.default_rng(1)
    alphabet = set(tokenizer.ALPHABET)
    for a in all_attributes()[::7]:
        caption = caption_for(a, rng)
        assert set(caption) <= alphabet, caption
        assert tokenizer.normalize(caption) == caption  # nothing folded, dropped or cut


def test_captions_for_are_distinct_varied_and_deterministic() -> None:
    a = Attributes("orange", "rubble", "lying", "left", "no")
    first = captions_for(a, 10, np.random.default_rng(5))
    assert first == captions_for(a, 10, np.random.default_rng(5))
    assert len(set(first)) == 10
    assert first != captions_for(a, 10, np.random.default_rng(6))
    # Word order varies: the colour is not always mentioned at the same word position.
    many = captions_for(a, 200, np.random.default_rng(7))
    positions = {c.split().index("orange") for c in many if "orange" in c.split()}
    assert len(positions) >= 5
