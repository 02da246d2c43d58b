"""Operator phrasing: partial captions, the held-out family, their labels."""

from __future__ import annotations

import hashlib
import re
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime import tokenizer
from train.data import phrasing
from train.data.attributes import ATTRIBUTE_NAMES, all_attributes
from train.data.captions import caption_for
from train.data.phrasing import Family, phrase_for, read_back
from train.text import off_domain

ATTRIBUTES = all_attributes()
SUBSETS = [
    frozenset(c) for k in range(1, len(ATTRIBUTE_NAMES)) for c in combinations(ATTRIBUTE_NAMES, k)
]


def _sample(family: Family, count: int, seed: int) -> list[phrasing.Phrase]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        a = ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
        stated = ATTRIBUTE_NAMES if i % 5 == 0 else phrasing.draw_stated(rng)
        out.append(phrase_for(a, stated, family, rng))
    return out


def _words(phrases: list[str]) -> set[str]:
    return {w for p in phrases for w in re.findall(r"[a-z]+", p.lower())}


@pytest.fixture(scope="module")
def training_output() -> list[str]:
    """What training can see: the grammar's full captions and training-family partial ones."""
    rng = np.random.default_rng(11)
    full = [caption_for(ATTRIBUTES[int(rng.integers(864))], rng) for _ in range(4000)]
    partial = [
        phrasing.training_caption(ATTRIBUTES[int(rng.integers(864))], rng, 1.0)[0]
        for _ in range(4000)
    ]
    terse = [
        phrasing.terse_phrase(
            ATTRIBUTES[int(rng.integers(864))], phrasing.draw_terse_stated(rng), rng
        ).caption
        for _ in range(2000)
    ]
    return full + partial + terse + [p.caption for p in _sample(Family.TRAIN, 2000, 12)]


def test_phrasing_training_family_uses_only_training_tags() -> None:
    for p in _sample(Family.TRAIN, 3000, 1):
        assert all(t.endswith(":train") for t in p.tags), (p.caption, p.tags)


def test_phrasing_heldout_captions_always_use_a_heldout_form_and_often_heldout_words() -> None:
    sample = _sample(Family.HELDOUT, 3000, 2)
    assert all("form:heldout" in p.tags for p in sample)
    word_tags = [t for p in sample for t in p.tags if not t.startswith(("form:", "filler:"))]
    share = sum(t.endswith(":heldout") for t in word_tags) / len(word_tags)
    assert 0.5 < share < 0.9  # HELDOUT_WORD_PROB = 0.7, with an operator's plain words beside
    assert any("filler:heldout" in p.tags for p in sample)


def test_phrasing_no_heldout_phrase_appears_in_training_output(training_output: list[str]) -> None:
    text = "\n".join(training_output)
    found = [
        phrase
        for phrase in phrasing.heldout_phrases()
        if re.search(rf"(?<![a-z-]){re.escape(phrase)}(?![a-z-])", text)
    ]
    assert not found, f"held-out phrases occur in training output: {found}"
    # Held-out forms leave marks of their own no training caption carries: their openers,
    # verbs and separators (training has questions, imperatives and terse clauses of its own).
    held_out_marks = r"\b(show me|anyone|someone|get me a picture of|i need|draw me|give me)\b"
    assert not re.search(held_out_marks, text)
    assert not re.search(r"\w - \w|; |need eyes on", text)


def test_phrasing_training_family_speaks_like_an_operator_too(training_output: list[str]) -> None:
    """Questions, imperatives, terse clauses, fillers and "blue jacket"-style colours reach
    training (PHRASING_VERSION 2), in words of their own."""
    sample = _sample(Family.TRAIN, 3000, 13)
    assert any("filler:train" in p.tags for p in sample)
    text = "\n".join(training_output)
    for mark in ("?", "can you spot a ", "look for a ", " / ", " and ", "base here: ", " pls"):
        assert mark in text, mark
    colour_garment = (
        r"(^|\n)(red|scarlet|orange|yellow|green|blue|purple|violet|white|black) "
        r"(jacket|coat|shirt|hoodie|raincoat|jumpsuit|sweater|parka|outfit)"
    )
    assert re.search(colour_garment, text)


def test_phrasing_training_family_says_the_plain_colour_word_often() -> None:
    """PHRASING_VERSION 5: about `PLAIN_COLOUR_PROB` of training-family colour slots say the
    value's own word ("red", not "scarlet", "dark red" or "mahogany"): before it, a bare "red"
    was a sixteenth of them and "red jacket" read colour "?"."""
    modified = sorted(
        {p for ps in phrasing.value_phrases()["colour"].values() for p in ps if " " in p},
        key=len,
        reverse=True,
    )
    rng = np.random.default_rng(31)
    for value in ("red", "purple", "blue"):
        plain = 0
        for _ in range(2000):
            start = int(rng.integers(864))
            a = next(x for x in ATTRIBUTES[start:] + ATTRIBUTES if x.colour == value)
            caption = phrase_for(a, {"colour"}, Family.TRAIN, rng).caption
            for phrase in modified:  # "dark red" is not the plain word
                caption = caption.replace(phrase, "#")
            plain += bool(re.search(rf"\b{value}\b", caption))
        assert plain / 2000 > phrasing.PLAIN_COLOUR_PROB - 0.04, (value, plain)


def test_phrasing_version_6_words_stay_clear_of_the_heldout_only_words() -> None:
    """PHRASING_VERSION 6 broadened the training tables; none of its phrases may use a word
    that only the held-out tables have, or `test_phrasing` would stop measuring unseen words.
    (The string-level test above checks whole held-out phrases in training output.)"""
    heldout_only = phrasing.heldout_only_words()
    assert {"crouched", "river", "none", "mustard", "wreckage", "hatless"} <= heldout_only
    added = _words(phrasing.training_v6_phrases())
    assert not added & heldout_only, sorted(added & heldout_only)


def test_phrasing_version_6_words_are_no_off_domain_words_and_reach_training() -> None:
    """A word the off-domain generator also uses ("park", "pond") would teach the read-back
    heads that it is and is not rescue language at once."""
    fresh = _words(phrasing.training_v6_phrases()) - _words(phrasing.version_5_training_phrases())
    off_domain_words = _words(off_domain.vocabulary())
    assert len(fresh) > 50
    assert not fresh & off_domain_words, sorted(fresh & off_domain_words)
    text = "\n".join(p.caption for p in _sample(Family.TRAIN, 3000, 21))
    reached = [p for p in phrasing.training_v6_phrases() if p in text]
    assert len(reached) > len(phrasing.training_v6_phrases()) // 2
    heldout_text = "\n".join(p.caption for p in _sample(Family.HELDOUT, 3000, 21))
    assert not [p for p in phrasing.training_v6_phrases() if f" {p}" in heldout_text]


def test_phrasing_test_split_wording_is_unchanged_since_phrasing_version_1() -> None:
    """Broadening the training family must not move `test_phrasing`: the held-out captions of
    a fixed seed are pinned (hash taken before PHRASING_VERSION 2)."""
    digest = hashlib.sha256()
    for i in range(0, 864, 7):
        captions, masks = phrasing.heldout_captions_for(
            ATTRIBUTES[i], 10, np.random.default_rng([0, 3, i, 1])
        )
        digest.update(("\n".join(captions) + repr(masks)).encode())
    assert digest.hexdigest() == (
        "69770846dd88912c33e4471abf27cc0c3943d32b49006c5dcec85c0c4d3668e1"
    )


def test_phrasing_heldout_output_does_use_the_heldout_phrases() -> None:
    text = "\n".join(p.caption for p in _sample(Family.HELDOUT, 6000, 3))
    used = [p for p in phrasing.heldout_phrases() if p in text]
    assert len(used) >= 0.9 * len(phrasing.heldout_phrases())
    assert "?" in text and "show me" in text and "helmet: none" in text


@pytest.mark.parametrize("family", list(Family))
def test_phrasing_partial_captions_state_exactly_the_labelled_attributes(family: Family) -> None:
    rng = np.random.default_rng(4)
    for stated in [*SUBSETS, frozenset(ATTRIBUTE_NAMES)]:
        for _ in range(30):
            a = ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
            p = phrase_for(a, stated, family, rng)
            assert p.stated == stated
            assert read_back(p.caption) == {n: getattr(a, n) for n in stated}, p.caption


def test_phrasing_terse_commands_are_bare_clauses_stating_exactly_their_labels() -> None:
    rng = np.random.default_rng(21)
    sizes = []
    seen = set()
    for _ in range(3000):
        a = ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
        stated = phrasing.draw_terse_stated(rng)
        p = phrasing.terse_phrase(a, stated, rng)
        assert 1 <= len(p.stated) <= phrasing.TERSE_MAX_STATED and p.stated == stated
        assert p.family is Family.TRAIN and all(t.endswith(":train") for t in p.tags), p.tags
        assert read_back(p.caption) == {n: getattr(a, n) for n in stated}, p.caption
        tokenizer.encode(p.caption)
        sizes.append(len(stated))
        seen.add(p.caption)
    assert set(sizes) == {1, 2}
    # The commonest way to state a colour alone: "blue jacket", no person, no article.
    assert seen & {"blue jacket", "red coat", "black shirt", "green hoodie", "white parka"}
    assert not any(c.startswith(("a ", "an ")) for c in seen)
    with pytest.raises(ValueError, match="non-empty"):
        phrasing.terse_phrase(ATTRIBUTES[0], [], rng)


def test_phrasing_captions_fit_the_tokenizer() -> None:
    for p in _sample(Family.HELDOUT, 2000, 5) + _sample(Family.TRAIN, 2000, 6):
        assert tokenizer.encode(p.caption).text == p.caption
        assert len(p.caption) <= tokenizer.MAX_LENGTH


def test_phrasing_draw_stated_covers_every_partial_subset() -> None:
    rng = np.random.default_rng(7)
    drawn = {phrasing.draw_stated(rng) for _ in range(3000)}
    assert drawn == set(SUBSETS)


def test_phrasing_stated_mask_round_trips_in_attribute_order() -> None:
    assert phrasing.stated_mask({"colour"}) == 1 and phrasing.stated_mask({"helmet"}) == 16
    assert phrasing.stated_mask(ATTRIBUTE_NAMES) == phrasing.ALL_STATED == 31
    for s in SUBSETS:
        assert phrasing.stated_names(phrasing.stated_mask(s)) == s


def test_phrasing_is_a_pure_function_of_the_rng() -> None:
    a = ATTRIBUTES[100]
    stated = {"colour", "pose"}
    one = [phrase_for(a, stated, Family.HELDOUT, np.random.default_rng(s)) for s in range(20)]
    two = [phrase_for(a, stated, Family.HELDOUT, np.random.default_rng(s)) for s in range(20)]
    assert one == two and len({p.caption for p in one}) > 10


def test_phrasing_rejects_an_empty_or_unknown_stated_set() -> None:
    with pytest.raises(ValueError, match="non-empty subset"):
        phrase_for(ATTRIBUTES[0], set(), Family.TRAIN, np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-empty subset"):
        phrase_for(ATTRIBUTES[0], {"hat"}, Family.TRAIN, np.random.default_rng(0))


def test_phrasing_read_back_refuses_a_contradiction_and_reads_nothing_off_domain() -> None:
    with pytest.raises(ValueError, match="colour"):
        read_back("a man in red and blue")
    assert read_back("draw a cat on a sofa") == {}
    assert read_back("no hard hat on them") == {"helmet": "no"}
    assert read_back("hard hat on") == {"helmet": "yes"}


def test_phrasing_heldout_captions_for_an_image_are_distinct_with_masks() -> None:
    captions, masks = phrasing.heldout_captions_for(ATTRIBUTES[5], 10, np.random.default_rng(8))
    assert len(set(captions)) == 10 and len(masks) == 10
    for caption, mask in zip(captions, masks, strict=True):
        assert phrasing.stated_mask(read_back(caption)) == mask, caption


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    class_id=st.integers(0, 863),
    mask=st.integers(1, 31),
    family=st.sampled_from(list(Family)),
)
def test_phrasing_any_draw_reads_back_as_its_labels(
    seed: int, class_id: int, mask: int, family: Family
) -> None:
    a = ATTRIBUTES[class_id]
    p = phrase_for(a, phrasing.stated_names(mask), family, np.random.default_rng(seed))
    assert p.mask == mask
    assert read_back(p.caption) == {n: getattr(a, n) for n in p.stated}, p.caption
