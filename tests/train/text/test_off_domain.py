"""The off-domain training generator and the committed held-out list (issue 17)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import tokenizer
from train.data import captions as grammar
from train.data import phrasing
from train.text import off_domain


def _generated(count: int = 30_000) -> set[str]:
    lines: set[str] = set()
    for seed in range(3):
        lines.update(off_domain.off_domain_batch(np.random.default_rng(seed), count // 3))
    return lines


def test_eval_list_is_large_and_never_generated() -> None:
    held_out = off_domain.eval_sentences()
    assert len(held_out) >= 130
    assert len(set(held_out)) == len(held_out)
    overlap = set(held_out) & _generated()
    assert not overlap, sorted(overlap)[:5]
    for line in held_out:
        tokenizer.encode(line)  # every line reaches the encoder


def test_eval_list_lines_are_no_template_of_the_generator() -> None:
    # Stronger than sampling: no held-out line matches any generator template with any words.
    slots = {
        "style": off_domain.STYLES, "colour": off_domain.COLOURS, "thing": off_domain.THINGS,
        "animal": off_domain.ANIMALS, "animal_verb": off_domain.VERBS_ANIMAL,
        "place": off_domain.PLACES, "verb": off_domain.VERBS_THING, "topic": off_domain.TOPICS,
        "day": off_domain.DAYS, "food": off_domain.FOODS, "scenery": off_domain.SCENERY,
        "nature": off_domain.NATURE, "time": off_domain.TIMES, "city": off_domain.CITIES,
        "name": off_domain.NAMES, "gadget": off_domain.GADGETS, "problem": off_domain.PROBLEMS,
        "vehicle": off_domain.VEHICLES,
    }  # fmt: skip
    patterns = []
    for template in off_domain._TEMPLATES:
        pattern = re.escape(template)
        for name, words in slots.items():
            pattern = pattern.replace(
                re.escape("{" + name + "}"), "(" + "|".join(map(re.escape, words)) + ")"
            )
        assert "{" not in pattern, template
        patterns.append(re.compile(rf"^{pattern}(\?|!|\.| please| thanks)?$"))
    for line in off_domain.eval_sentences():
        assert not any(p.match(line) for p in patterns), line
        assert line not in off_domain.WORDS


def test_generated_lines_are_varied_encodable_and_include_junk() -> None:
    lines = off_domain.off_domain_batch(np.random.default_rng(0), 2000)
    assert len(set(lines)) > 1500
    for line in lines:
        tokenizer.encode(line)  # never empty after normalisation
    assert any(line.replace(" ", "").isdigit() for line in lines)
    assert any(line in off_domain.WORDS for line in lines)


def test_generator_vocabulary_names_no_person_garment_or_scene_of_the_grammar() -> None:
    # Colours may appear (on things); words that make a line a rescue caption may not.
    forbidden = set(grammar.PEOPLE) | set(grammar.GARMENTS)
    forbidden |= set(phrasing.TRAIN_PEOPLE) | set(phrasing.TRAIN_GARMENTS)
    forbidden |= set(phrasing.HELDOUT_PEOPLE) | set(phrasing.HELDOUT_GARMENTS)
    forbidden |= {"helmet", "hard hat", "rubble", "snow", "mud", "sand", "grass", "lying",
                  "sitting", "standing", "left", "right", "center", "centre"}  # fmt: skip
    vocabulary = " ".join(
        " ".join(words)
        for words in (
            off_domain.THINGS, off_domain.ANIMALS, off_domain.PLACES, off_domain.SCENERY,
            off_domain.VERBS_THING, off_domain.VERBS_ANIMAL, off_domain.STYLES,
            off_domain.TOPICS, off_domain.DAYS, off_domain.FOODS, off_domain.WORDS,
            off_domain.NATURE, off_domain.TIMES, off_domain.CITIES, off_domain.NAMES,
            off_domain.GADGETS, off_domain.PROBLEMS, off_domain.VEHICLES, off_domain._TEMPLATES,
        )
    )  # fmt: skip
    for word in forbidden:
        assert not re.search(rf"\b{re.escape(word)}\b", vocabulary), word


def test_eval_list_ships_as_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[3]
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = project["tool"]["setuptools"]["package-data"]["train.text"]
    assert off_domain.EVAL_FILE in shipped
    assert (root / "train" / "text" / off_domain.EVAL_FILE).is_file()
