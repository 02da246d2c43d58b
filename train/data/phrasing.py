"""Operator phrasing: partial captions and a held-out phrasing family.

Operators do not speak the training grammar (`train.data.captions`): they state one to four
attributes ("anyone in yellow?", "figure collapsed in the mud", "red top, near the left edge") in
words and orders the grammar never produced. This module renders such captions with labels
saying which attributes they state, in two families that never share a form or a synonym:

- `Family.TRAIN`: the grammar's own tables plus more synonyms, in the grammar's forms (subject
  first, an optional "find"/"search for" prefix, the radio-style comma list, a position label
  before a colon) and, since PHRASING_VERSION 2, in operator forms of its own — questions,
  imperatives, telegraphic clauses ("blue jacket and lying down"), filler words — whose fixed
  words (openers, verbs, separators, fillers) the held-out family never uses. Operators speak
  that way; a robot that never saw a question or a bare "red top" reads one as nothing it knows
  (docs/TEXT_ENCODER.md § Operator forms). Full training captions stay `captions.caption_for`'s,
  byte for byte; free-form full ones are `--free-fraction`'s (train.data.synth).
- `Family.HELDOUT`: forms the grammar never uses — questions, "show me …" imperatives,
  telegraphic clauses without a subject ("red top, near the left edge"), "helmet: none"-style
  slot labels, filler words ("uh", "copy that", "please", "over") and free clause orders — with
  synonyms of their own (each slot takes a held-out synonym with probability `HELDOUT_WORD_PROB`,
  else a training one: an operator still says "red" and "left"). It renders only into the
  `test_phrasing` split, so evaluation measures generalisation to wording, not memory of it.

Every lexicon item and form is tagged with its family and every rendered caption reports the
tags it used (`Phrase.tags`), so a test proves no held-out item reaches training output; the
held-out synonym tables are literal strings, so a second test checks that at the string level.

Lexicon: hand-curated, except colours. WordNet would be the obvious source, but `wn` and NLTK's
`wordnet` both download their data at run time (not allowed here) and no well-kept PyPI wheel
ships it; its synsets also cross our value boundaries ("red" → "reddish", "carmine", "Red"; "lie"
→ "lie down", "rest"), and a synonym that names another value would corrupt a label. Colours
have a resource that fits: the xkcd colour survey's names with their RGB values, shipped in
matplotlib's wheel; `train.data.colour_names` maps 90 of the 300 commonest (96 in
PHRASING_VERSION 3) to the six chromatic clothing colours by a fixed rule, and since
PHRASING_VERSION 3, 70 % of the training family's colour slots that do not say the plain word
(30 % do since PHRASING_VERSION 5: "red", "purple") take one ("cobalt blue jacket", "anyone in
mahogany?"). None shares a word with a held-out phrase.
docs/DATA_FORMAT.md § Operator phrasing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, Attributes
from train.data.captions import (
    COLOUR_WORDS,
    GARMENTS,
    HELMET_PHRASES,
    HELMET_TAGS,
    PEOPLE,
    POSE_PHRASES,
    POSITION_LABELS,
    POSITION_PHRASES,
    PREFIXES,
    TERRAIN_PHRASES,
    caption_for,
)
from train.data.colour_names import LEXICON_COLOURS


class Family(str, Enum):
    """Which phrasing family a form, synonym or caption belongs to."""

    TRAIN = "train"
    HELDOUT = "heldout"


HELDOUT_WORD_PROB = 0.7
"""Chance that a held-out caption's slot takes a held-out synonym rather than a training one."""
FULL_CAPTION_PROB = 0.4
"""Share of full (all five attributes) captions among `test_phrasing`'s captions."""
LEXICON_PROB = 0.7
"""Chance that a training-family colour slot not given the plain word (`PLAIN_COLOUR_PROB`)
names its colour from the xkcd survey's names (`colour_names.LEXICON_COLOURS`, since
PHRASING_VERSION 3) rather than the grammar's few words."""
PLAIN_COLOUR_PROB = 0.3
"""Chance (PHRASING_VERSION 5, drawn before `LEXICON_PROB`) that a training-family colour slot
says the value's own word ("red", "purple"): the word operators use most. Without it the bare
"red" was the rarest colour word of the train split ("scarlet" and the survey's names take its
share) and "red coat", "anyone in red?" read colour "?" (docs/TEXT_ENCODER.md § The first
word)."""
ALL_STATED = (1 << len(ATTRIBUTE_NAMES)) - 1
"""The `caption_stated` bitmask of a caption that states every attribute."""

# --------------------------------------------------------------------------------------------
# Lexicon: value → phrases, per family. "inline" phrases follow a subject ("a man <in red>");
# "terse" phrases stand alone as a clause ("red top", "helmet: none").
# --------------------------------------------------------------------------------------------

_TRAIN_COLOURS_EXTRA: dict[str, tuple[str, ...]] = {
    "red": ("bright red", "dark red", "blood red"),
    "orange": ("bright orange", "safety orange", "dark orange"),
    "yellow": ("bright yellow", "golden yellow", "pale yellow"),
    "green": ("dark green", "forest green", "bright green"),
    "blue": ("dark blue", "royal blue", "light blue"),
    "purple": ("deep purple", "dark purple", "plum"),
    "white": ("pure white", "bright white", "plain white"),
    "black": ("all black", "solid black", "dark black"),
}
HELDOUT_COLOURS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "cherry red"), "orange": ("tangerine", "hi-vis orange"),
    "yellow": ("mustard", "lemon yellow"), "green": ("lime green", "emerald"),
    "blue": ("navy", "sky blue"), "purple": ("lilac", "mauve"),
    "white": ("off-white", "ivory"), "black": ("jet black", "pitch black"),
}  # fmt: skip
_TRAIN_GARMENTS_EXTRA: tuple[str, ...] = (
    "pullover", "overcoat", "cardigan", "blouse", "smock", "uniform", "boiler suit", "poncho",
    "gilet", "waterproof",
)  # fmt: skip
HELDOUT_GARMENTS: tuple[str, ...] = (
    "top", "vest", "windbreaker", "fleece", "anorak", "tracksuit", "overalls", "cagoule",
    "hi-vis", "coverall", "shell jacket",
)  # fmt: skip
_TRAIN_PEOPLE_EXTRA: tuple[str, ...] = (
    "adult", "resident", "rescuer", "stranded person", "missing person", "injured person",
    "local", "traveller", "passer-by", "villager",
)  # fmt: skip
HELDOUT_PEOPLE: tuple[str, ...] = (
    "subject", "patient", "climber", "walker", "evacuee", "guy", "lady", "fella", "occupant",
    "straggler", "target", "bloke",
)  # fmt: skip

_TRAIN_TERRAIN_EXTRA: dict[str, tuple[str, ...]] = {
    "rubble": ("on the rubble", "in a collapsed building", "on debris", "among broken bricks"),
    "grass": ("on grassland", "in a field", "on green grass", "in a pasture"),
    "sand": ("on a beach", "in the desert", "on the sand dunes", "on dry sand"),
    "snow": ("on the snow", "on a snowy slope", "in fresh snow", "on packed snow"),
    "water": ("in the flood", "in murky water", "in a flooded street", "standing in water"),
    "mud": ("on mud", "in a muddy field", "in the mire", "on a mudflat"),
}
HELDOUT_TERRAIN: dict[str, tuple[str, ...]] = {
    "rubble": ("in the wreckage", "on a debris pile", "amid collapsed masonry"),
    "grass": ("on the turf", "in tall weeds", "in a grass field"),
    "sand": ("in the sand dunes", "on the shore sand", "in a sandpit"),
    "snow": ("in a snowdrift", "in the drifts", "on snow-covered ground"),
    "water": ("waist-deep in water", "in the river", "in the floodwaters"),
    "mud": ("in the muck", "stuck in the mud", "in a mudslide"),
}
_TRAIN_POSE_EXTRA: dict[str, tuple[str, ...]] = {
    "standing": ("standing still", "standing upright", "on foot", "standing firm"),
    "sitting": ("sitting still", "sitting on the ground", "seated on the ground", "sat"),
    "lying": ("lying still", "lying on the ground", "lying on their side", "laid flat"),
}
HELDOUT_POSES: dict[str, tuple[str, ...]] = {
    "standing": ("up and walking", "standing tall", "up on two feet"),
    "sitting": ("sat down", "crouched", "propped up"),
    "lying": ("face down", "passed out", "sprawled out", "flat on their back"),
}
_TRAIN_POSITION_EXTRA: dict[str, tuple[str, ...]] = {
    "left": ("on the left hand side",), "center": ("in the centre of the image",),
    "right": ("on the right hand side",),
}  # fmt: skip
HELDOUT_POSITIONS: dict[str, tuple[str, ...]] = {
    "left": ("near the left edge", "far left", "over on the left", "left-hand side"),
    "center": ("dead center", "middle of the shot", "straight ahead", "centre of the picture"),
    "right": ("near the right edge", "far right", "over on the right", "right-hand side"),
}
HELDOUT_HELMET_INLINE: dict[str, tuple[str, ...]] = {
    "yes": ("with a hard hat strapped on", "with head protection", "wearing headgear"),
    "no": ("with a bare head", "with no head protection", "without headgear", "hatless"),
}
HELDOUT_HELMET_TERSE: dict[str, tuple[str, ...]] = {
    "yes": ("helmet: yes", "hard hat: on", "helmet on head"),
    "no": ("helmet: none", "no hard hat on them", "hard hat: none", "helmet: no"),
}
HELDOUT_FILLER_PREFIXES: tuple[str, ...] = ("uh, ", "um, ", "ok so ", "copy that, ", "robot, ")
HELDOUT_FILLER_SUFFIXES: tuple[str, ...] = (", please", ", over", " asap", ", thanks")


# PHRASING_VERSION 6: more of the ways operators word each value, in the training family only
# (the held-out family's fallback stays version 5's tables, `_HELDOUT_FALLBACK`, so
# `test_phrasing` renders byte for byte as before). None uses a word that only the held-out
# tables have ("river", "crouched", "none": `heldout_only_words`, tested) or a word of the
# off-domain generator ("park", "lake": tested), so `test_phrasing` still measures words the
# encoder never saw. Negations now also follow their noun ("helmet missing", "hard hat
# removed"), as operators say them; the grammar only ever put them first ("no helmet").
_TRAIN_TERRAIN_V6: dict[str, tuple[str, ...]] = {
    "rubble": ("in the ruins", "on a rubble heap", "amongst debris", "in a demolished building",
               "on shattered concrete", "on a heap of bricks", "among fallen beams",
               "in the remains of a building", "on a debris field"),
    "grass": ("on the lawn", "in overgrown grass", "on a grassy slope", "on the grass verge",
              "in a hayfield", "on rough grassland", "in a grassy meadow", "on short grass"),
    "sand": ("on a sandbank", "on the beach sand", "in a sandy desert", "on a sand bar",
             "on the coast", "on a dune", "on sandy soil", "in the desert sand"),
    "snow": ("in a snowbank", "on icy snow", "in the blizzard", "on a snowy field",
             "in knee-deep snow", "on snowy terrain", "in powdery snow", "in the snowfall"),
    "water": ("in a flooded ditch", "in a stream", "in a water channel", "wading in water",
              "in deep water", "in rising water", "in flooded fields", "in the floods",
              "submerged in water"),
    "mud": ("in the sludge", "in a bog", "in the swamp", "in a marsh", "on a muddy slope",
            "in sticky mud", "in wet earth", "in the slurry", "sunk in mud"),
}  # fmt: skip
_TRAIN_POSE_V6: dict[str, tuple[str, ...]] = {
    "standing": ("stood", "stood up", "standing idle", "still standing", "erect",
                 "waving both arms", "on both feet", "stood upright", "standing waiting"),
    "sitting": ("sat up", "seated upright", "sitting cross-legged", "squatting", "hunched",
                "hunched forward", "perched", "in a seated position", "resting on their bottom"),
    "lying": ("unconscious", "knocked out", "unresponsive", "prostrate", "flat out",
              "on their stomach", "on their front", "laid out", "supine", "lying prone"),
}  # fmt: skip
_TRAIN_POSITION_V6: dict[str, tuple[str, ...]] = {
    "left": ("toward the left", "at the left of the frame", "in the left part of the image",
             "on the left flank", "leftmost"),
    "center": ("mid-frame", "centre frame", "central", "in the middle third",
               "halfway across the image"),
    "right": ("toward the right", "at the right of the frame", "in the right part of the image",
              "on the right flank", "rightmost"),
}  # fmt: skip
_TRAIN_POSITION_LABELS_V6: dict[str, tuple[str, ...]] = {
    "left": ("left part", "leftmost"), "center": ("central", "mid-frame"),
    "right": ("right part", "rightmost"),
}  # fmt: skip
_TRAIN_HELMET_V6: dict[str, tuple[str, ...]] = {
    "yes": ("in a crash helmet", "with a safety hat", "wearing a work helmet", "in a helmet",
            "has a hard hat", "helmet fitted", "helmet still fitted"),
    "no": ("helmet missing", "helmet not worn", "hard hat removed", "helmet removed",
           "without any helmet", "not in a helmet", "hard hat off", "missing a helmet",
           "unhelmeted", "with no headwear", "no helmet visible"),
}  # fmt: skip


@dataclass(frozen=True)
class _Table:
    """One attribute's phrases for one family: value → inline phrases, value → terse phrases."""

    inline: Mapping[str, tuple[str, ...]]
    terse: Mapping[str, tuple[str, ...]]


def _merge(*tables: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    keys = tables[0].keys()
    return {k: tuple(p for t in tables for p in t.get(k, ())) for k in keys}


TRAIN_COLOURS = _merge(COLOUR_WORDS, _TRAIN_COLOURS_EXTRA)
TRAIN_GARMENTS = GARMENTS + _TRAIN_GARMENTS_EXTRA
TRAIN_PEOPLE = PEOPLE + _TRAIN_PEOPLE_EXTRA
# What a held-out caption says where it keeps a training word (1 − HELDOUT_WORD_PROB of its
# slots): version 5's training tables, frozen so that `test_phrasing` never moves.
_HELDOUT_FALLBACK: dict[str, _Table] = {
    "terrain": _Table(
        _merge(TERRAIN_PHRASES, _TRAIN_TERRAIN_EXTRA), _merge(TERRAIN_PHRASES, _TRAIN_TERRAIN_EXTRA)
    ),
    "pose": _Table(
        _merge(POSE_PHRASES, _TRAIN_POSE_EXTRA), _merge(POSE_PHRASES, _TRAIN_POSE_EXTRA)
    ),
    "position": _Table(_merge(POSITION_PHRASES, _TRAIN_POSITION_EXTRA), POSITION_LABELS),
    "helmet": _Table(HELMET_PHRASES, HELMET_TAGS),
}
_TABLES: dict[Family, dict[str, _Table]] = {
    Family.TRAIN: {
        name: _Table(
            _merge(_HELDOUT_FALLBACK[name].inline, inline),
            _merge(_HELDOUT_FALLBACK[name].terse, terse),
        )
        for name, inline, terse in (
            ("terrain", _TRAIN_TERRAIN_V6, _TRAIN_TERRAIN_V6),
            ("pose", _TRAIN_POSE_V6, _TRAIN_POSE_V6),
            ("position", _TRAIN_POSITION_V6, _TRAIN_POSITION_LABELS_V6),
            ("helmet", _TRAIN_HELMET_V6, _TRAIN_HELMET_V6),
        )
    },
    Family.HELDOUT: {
        "terrain": _Table(HELDOUT_TERRAIN, HELDOUT_TERRAIN),
        "pose": _Table(HELDOUT_POSES, HELDOUT_POSES),
        "position": _Table(HELDOUT_POSITIONS, HELDOUT_POSITIONS),
        "helmet": _Table(HELDOUT_HELMET_INLINE, HELDOUT_HELMET_TERSE),
    },
}

for _family in Family:
    for _name, _table in _TABLES[_family].items():
        assert set(_table.inline) == set(_table.terse) == set(ATTRIBUTE_VALUES[_name])
assert set(HELDOUT_COLOURS) == set(TRAIN_COLOURS) == set(ATTRIBUTE_VALUES["colour"])


def heldout_phrases() -> list[str]:
    """Every literal held-out synonym and filler (for the no-overlap test and documentation)."""
    phrases: list[str] = [w for ws in HELDOUT_COLOURS.values() for w in ws]
    phrases += [*HELDOUT_GARMENTS, *HELDOUT_PEOPLE]
    for table in _TABLES[Family.HELDOUT].values():
        phrases += [p for ps in (*table.inline.values(), *table.terse.values()) for p in ps]
    phrases += [p.strip(" ,") for p in (*HELDOUT_FILLER_PREFIXES, *HELDOUT_FILLER_SUFFIXES)]
    phrases += [p.strip() for _, p in _HELDOUT_COLOUR_MARKERS]
    return list(dict.fromkeys(phrases))


def heldout_value_phrases() -> dict[str, dict[str, tuple[str, ...]]]:
    """attribute → value → the held-out phrases that state it (colour: the bare held-out colour
    words): what `eval-text` looks for to tell a held-out word from a held-out form."""
    out: dict[str, dict[str, tuple[str, ...]]] = {"colour": dict(HELDOUT_COLOURS)}
    for name, table in _TABLES[Family.HELDOUT].items():
        out[name] = {
            v: tuple(dict.fromkeys((*table.inline[v], *table.terse[v]))) for v in table.inline
        }
    return out


def _words(phrases: Iterable[str]) -> set[str]:
    return {w for p in phrases for w in re.findall(r"[a-z]+", p.lower())}


def version_5_training_phrases() -> list[str]:
    """Every phrase the training family's tables had in PHRASING_VERSION 5 (the held-out
    family's fallback, `_HELDOUT_FALLBACK`), its colour words, colour names, garments, people."""
    trained = [p for t in _HELDOUT_FALLBACK.values() for d in (t.inline, t.terse) for ps in
               d.values() for p in ps]  # fmt: skip
    trained += [p for ps in TRAIN_COLOURS.values() for p in ps] + [*TRAIN_GARMENTS, *TRAIN_PEOPLE]
    return trained + [p for ps in LEXICON_COLOURS.values() for p in ps]


def heldout_only_words() -> frozenset[str]:
    """Words of the held-out tables that version 5's training tables never used ("crouched",
    "river", "none"): what keeps `test_phrasing` a test of unseen words. Later training words
    must stay clear of them (tested)."""
    return frozenset(_words(heldout_phrases()) - _words(version_5_training_phrases()))


def training_v6_phrases() -> list[str]:
    """The phrases PHRASING_VERSION 6 added to the training family's tables."""
    tables = (_TRAIN_TERRAIN_V6, _TRAIN_POSE_V6, _TRAIN_POSITION_V6, _TRAIN_POSITION_LABELS_V6,
              _TRAIN_HELMET_V6)  # fmt: skip
    return [p for t in tables for ps in t.values() for p in ps]


def lexicon_excluded_words(off_domain_words: Iterable[str] = ()) -> frozenset[str]:
    """Words no colour name of `colour_names.LEXICON_COLOURS` may contain: every word of the
    held-out colour phrases (so `test_phrasing`'s colour words stay unseen) and of the other
    attributes', garments' and people's phrases in both families ("snow", "sandy") and of the
    off-domain generator ("apple", "forest": `train.text.off_domain.vocabulary()`, passed in by
    the caller because train.text is a higher room than train.data), less the clothing-colour
    words themselves."""
    phrases = [p for ws in HELDOUT_COLOURS.values() for p in ws]
    phrases += [*TRAIN_GARMENTS, *HELDOUT_GARMENTS, *TRAIN_PEOPLE, *HELDOUT_PEOPLE]
    for name, values in value_phrases().items():
        if name != "colour":
            phrases += [p for ps in values.values() for p in ps]
    phrases += off_domain_words
    words = _words(phrases)
    colour_words = {w for ws in COLOUR_WORDS.values() for p in ws for w in p.split()}
    return frozenset(words - colour_words)


def value_phrases() -> dict[str, dict[str, tuple[str, ...]]]:
    """attribute → value → every phrase (both families) that states it; colour words are bare
    colour names. The keyword parser of the tests reads captions back with this."""
    colours = _merge(TRAIN_COLOURS, LEXICON_COLOURS, HELDOUT_COLOURS)
    out: dict[str, dict[str, tuple[str, ...]]] = {"colour": colours}
    for name in ("terrain", "pose", "position", "helmet"):
        parts = [
            t
            for family in Family
            for t in (_TABLES[family][name].inline, _TABLES[family][name].terse)
        ]
        out[name] = {v: tuple(dict.fromkeys(p for t in parts for p in t[v])) for v in parts[0]}
    return out


# --------------------------------------------------------------------------------------------
# Slots: one stated attribute rendered as an inline and a terse phrase
# --------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


# Colour phrasings: (family, template over colour word c and garment g).
_TRAIN_COLOUR_INLINE: tuple[str, ...] = (
    "in {c}", "in {a_cg}", "wearing {a_cg}", "dressed in {c}", "in {c} clothes",
)  # fmt: skip
_HELDOUT_COLOUR_INLINE: tuple[str, ...] = (
    "clad in {c}", "with {a_cg} on", "wearing something {c}", "in {c} gear",
)  # fmt: skip
# "{c} {g}" ("red top") is an operator's commonest way to state a colour, so training has it too
# (PHRASING_VERSION 2); the held-out tuple is kept as it was so that `test_phrasing` renders byte
# for byte as before — its garments and colour words stay held out (HELDOUT_WORD_PROB).
_TRAIN_COLOUR_TERSE: tuple[str, ...] = ("in {c}", "{c} {g}")
_HELDOUT_COLOUR_TERSE: tuple[str, ...] = ("{c} {g}", "{c} clothing", "{c} {g}")
# Fixed words of the held-out colour phrasings: none occurs in training output (tested).
_HELDOUT_COLOUR_MARKERS: tuple[tuple[str, str], ...] = (
    ("clad in {c}", "clad in"), ("wearing something {c}", "wearing something"),
    ("in {c} gear", " gear"), ("{c} clothing", "clothing"),
)  # fmt: skip


@dataclass(frozen=True)
class _Slot:
    name: str
    inline: str
    terse: str
    tags: tuple[str, ...]


def _word(
    rng: np.random.Generator, family: Family, train: tuple[str, ...], heldout: tuple[str, ...]
) -> tuple[str, Family]:
    if family is Family.HELDOUT and rng.random() < HELDOUT_WORD_PROB:
        return _pick(rng, heldout), Family.HELDOUT
    return _pick(rng, train), Family.TRAIN


def _slot(
    name: str,
    a: Attributes,
    family: Family,
    rng: np.random.Generator,
    colour_word: str | None = None,
) -> _Slot:
    value = getattr(a, name)
    if name == "colour":
        if colour_word is not None:
            c, cf = colour_word, family
        elif family is Family.TRAIN and rng.random() < PLAIN_COLOUR_PROB:
            c, cf = value, Family.TRAIN
        elif family is Family.TRAIN and value in LEXICON_COLOURS and rng.random() < LEXICON_PROB:
            c, cf = _pick(rng, LEXICON_COLOURS[value]), Family.TRAIN
        else:
            c, cf = _word(rng, family, TRAIN_COLOURS[value], HELDOUT_COLOURS[value])
        g, gf = _word(rng, family, TRAIN_GARMENTS, HELDOUT_GARMENTS)
        if family is Family.TRAIN:
            inline_t, terse_t = _pick(rng, _TRAIN_COLOUR_INLINE), _pick(rng, _TRAIN_COLOUR_TERSE)
        else:
            inline_t = _pick(rng, _HELDOUT_COLOUR_INLINE + _TRAIN_COLOUR_INLINE[:2])
            terse_t = _pick(rng, _HELDOUT_COLOUR_TERSE)
        fields = {"c": c, "g": g, "a_cg": _a(f"{c} {g}")}
        tags = (f"colour-word:{cf.value}", f"garment:{gf.value}", f"colour-form:{family.value}")
        return _Slot(name, inline_t.format(**fields), terse_t.format(**fields), tags)
    own = _TABLES[family][name]
    base = _TABLES[Family.TRAIN][name] if family is Family.TRAIN else _HELDOUT_FALLBACK[name]
    if family is Family.HELDOUT and rng.random() < HELDOUT_WORD_PROB:
        inline, terse, used = _pick(rng, own.inline[value]), _pick(rng, own.terse[value]), family
    else:
        inline, terse, used = _pick(rng, base.inline[value]), _pick(rng, base.terse[value]), None
    return _Slot(name, inline, terse, (f"{name}:{(used or Family.TRAIN).value}",))


# --------------------------------------------------------------------------------------------
# Forms: how slots become a sentence
# --------------------------------------------------------------------------------------------

# The grammar's clause orders (its templates' orders, restricted to the stated attributes).
TRAIN_ORDERS: tuple[tuple[str, ...], ...] = (
    ("colour", "pose", "terrain", "position", "helmet"),
    ("pose", "terrain", "position", "colour", "helmet"),
    ("helmet", "colour", "pose", "terrain", "position"),
)


def _ordered(slots: list[_Slot], family: Family, rng: np.random.Generator) -> list[_Slot]:
    if family is Family.TRAIN:
        order = TRAIN_ORDERS[int(rng.integers(len(TRAIN_ORDERS)))]
        return sorted(slots, key=lambda s: order.index(s.name))
    return [slots[int(i)] for i in rng.permutation(len(slots))]


def _inline(slots: list[_Slot]) -> str:
    return " ".join(s.inline for s in slots)


@dataclass(frozen=True)
class _Form:
    name: str
    family: Family
    render: Callable[[str, list[_Slot], np.random.Generator], str]
    """(person word, ordered slots, rng) → caption."""


def _train_subject(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    return f"{_pick(rng, PREFIXES)}{_a(person)} {_inline(slots)}"


def _train_list(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    return ", ".join([person, *(s.terse for s in slots)])


def _train_position_first(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    lead = [s for s in slots if s.name == "position"]
    if not lead:
        return _train_subject(person, slots, rng)
    rest = [s for s in slots if s.name != "position"]
    return f"{lead[0].terse}: {_a(person)}" + (f" {_inline(rest)}" if rest else "")


def _question(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    opener = _pick(
        rng, ("anyone", "is there anyone", "any " + person, "do you see " + _a(person), "someone")
    )
    return f"{opener} {_inline(slots)}?"


def _imperative(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    verb = _pick(rng, ("show me", "get me a picture of", "i need", "draw me", "give me"))
    return f"{verb} {_a(person)} {_inline(slots)}"


def _telegraphic(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    del person
    return _pick(rng, (", ", " - ", "; ")).join(s.terse for s in slots)


def _subject_last(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    *lead, last = slots
    head = ", ".join(s.terse for s in lead)
    body = f"{_pick(rng, ('one ' + person, _a(person), 'a single ' + person))} {last.inline}"
    return f"{head} - {body}" if head else f"need eyes on {_a(person)} {last.inline}"


def _bare_subject(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    # Radio shorthand without an article: "figure collapsed in the mud".
    return f"{person} {_inline(slots)}"


# Training's own operator forms (PHRASING_VERSION 2). Their fixed words are disjoint from the
# held-out forms' ("anyone", "show me", ", " / " - " / "; " separators, "uh", "over", …; tested),
# so `test_phrasing` still measures wording the encoder never saw: the *kind* of sentence is
# known, its openers, verbs, separators, fillers and (mostly) synonyms are not.
_TRAIN_QUESTION_OPENERS: tuple[str, ...] = (
    "can you spot {a_p}", "is there {a_p}", "any sign of {a_p}", "have you got {a_p}",
    "do we have {a_p}", "where is the {p}",
)  # fmt: skip
_TRAIN_IMPERATIVE_VERBS: tuple[str, ...] = (
    "look for", "locate", "render", "picture", "bring up", "i want", "display", "spot",
)  # fmt: skip
_TRAIN_TELEGRAPHIC_JOINERS: tuple[str, ...] = (" and ", " / ", ". ")
TRAIN_FILLER_PREFIXES: tuple[str, ...] = ("ok, ", "hey, ", "next: ", "base here: ", "okay ")
TRAIN_FILLER_SUFFIXES: tuple[str, ...] = (" now", ", quick", ", urgent", ", thank you", " pls")
TRAIN_FILLER_PROB = 0.2


def _train_question(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    opener = _pick(rng, _TRAIN_QUESTION_OPENERS).format(a_p=_a(person), p=person)
    return f"{opener} {_inline(slots)}?"


def _train_imperative(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    return f"{_pick(rng, _TRAIN_IMPERATIVE_VERBS)} {_a(person)} {_inline(slots)}"


def _train_telegraphic(person: str, slots: list[_Slot], rng: np.random.Generator) -> str:
    del person
    return _pick(rng, _TRAIN_TELEGRAPHIC_JOINERS).join(s.terse for s in slots)


FORMS: tuple[_Form, ...] = (
    _Form("subject", Family.TRAIN, _train_subject),
    _Form("list", Family.TRAIN, _train_list),
    _Form("position-first", Family.TRAIN, _train_position_first),
    _Form("question-train", Family.TRAIN, _train_question),
    _Form("imperative-train", Family.TRAIN, _train_imperative),
    _Form("telegraphic-train", Family.TRAIN, _train_telegraphic),
    _Form("question", Family.HELDOUT, _question),
    _Form("imperative", Family.HELDOUT, _imperative),
    _Form("telegraphic", Family.HELDOUT, _telegraphic),
    _Form("subject-last", Family.HELDOUT, _subject_last),
    _Form("bare-subject", Family.HELDOUT, _bare_subject),
)
_FORMS_BY_FAMILY = {f: tuple(x for x in FORMS if x.family is f) for f in Family}
HELDOUT_FILLER_PROB = 0.35


@dataclass(frozen=True)
class Phrase:
    """One rendered caption with what it states and what it was built from."""

    caption: str
    stated: frozenset[str]
    """Attribute names the caption states; the others it leaves open."""
    family: Family
    tags: tuple[str, ...]
    """`kind:family` of the form and of every synonym used (the no-overlap test reads them)."""

    @property
    def mask(self) -> int:
        """`stated` as a bitmask over `ATTRIBUTE_NAMES` (bit i = attribute i stated)."""
        return stated_mask(self.stated)


def stated_mask(stated: Iterable[str]) -> int:
    """Bitmask over `ATTRIBUTE_NAMES` order (the `caption_stated` dataset's encoding)."""
    return sum(1 << ATTRIBUTE_NAMES.index(n) for n in set(stated))


def stated_names(mask: int) -> frozenset[str]:
    """Inverse of `stated_mask`."""
    return frozenset(n for i, n in enumerate(ATTRIBUTE_NAMES) if mask >> i & 1)


def draw_stated(rng: np.random.Generator) -> frozenset[str]:
    """A random partial subset: 1–4 attributes, size uniform, then names uniform."""
    size = int(rng.integers(1, len(ATTRIBUTE_NAMES)))
    picked = rng.choice(len(ATTRIBUTE_NAMES), size, replace=False)
    return frozenset(ATTRIBUTE_NAMES[int(i)] for i in picked)


# family → (chance of a filler, prefixes, suffixes); one draw decides, as before version 2.
_FILLERS: dict[Family, tuple[float, tuple[str, ...], tuple[str, ...]]] = {
    Family.HELDOUT: (HELDOUT_FILLER_PROB, HELDOUT_FILLER_PREFIXES, HELDOUT_FILLER_SUFFIXES),
    Family.TRAIN: (TRAIN_FILLER_PROB, TRAIN_FILLER_PREFIXES, TRAIN_FILLER_SUFFIXES),
}


def _checked_stated(stated: Iterable[str]) -> frozenset[str]:
    stated = frozenset(stated)
    if not stated or not stated <= set(ATTRIBUTE_NAMES):
        raise ValueError(f"stated must be a non-empty subset of {ATTRIBUTE_NAMES}, got {stated}")
    return stated


def phrase_for(
    attributes: Attributes,
    stated: Iterable[str],
    family: Family,
    rng: np.random.Generator,
    *,
    colour_word: str | None = None,
) -> Phrase:
    """A caption stating exactly `stated` (non-empty) of `attributes`, in `family`'s phrasing.
    `colour_word` names the colour instead of the family's words (the evaluation of colour
    names, `train.text.colour_name_eval`; the caller vouches that it names that colour); without
    it the generator is consumed exactly as always."""
    stated = _checked_stated(stated)
    person, person_family = _word(rng, family, TRAIN_PEOPLE, HELDOUT_PEOPLE)
    slots = [_slot(n, attributes, family, rng, colour_word) for n in ATTRIBUTE_NAMES if n in stated]
    slots = _ordered(slots, family, rng)
    form = _pick(rng, _FORMS_BY_FAMILY[family])  # type: ignore[arg-type]
    caption = form.render(person, slots, rng)
    tags = [f"form:{form.family.value}", f"person:{person_family.value}"]
    chance, prefixes, suffixes = _FILLERS[family]
    if rng.random() < chance:
        if rng.random() < 0.5:
            caption = _pick(rng, prefixes) + caption
        else:
            caption = caption.rstrip("?") + _pick(rng, suffixes)
        tags.append(f"filler:{family.value}")
    tags += [t for s in slots for t in s.tags]
    return Phrase(caption, stated, family, tuple(tags))


def training_caption(
    attributes: Attributes,
    rng: np.random.Generator,
    partial_fraction: float,
    free_fraction: float = 0.0,
) -> tuple[str, frozenset[str]]:
    """A training caption: with probability `partial_fraction` a partial one of the training
    family, with probability `free_fraction` a full one in the training family's forms, else
    the grammar's full caption (`captions.caption_for`)."""
    if partial_fraction > 0 or free_fraction > 0:
        u = rng.random()
        if u < partial_fraction + free_fraction:
            full = u >= partial_fraction
            stated = frozenset(ATTRIBUTE_NAMES) if full else draw_stated(rng)
            phrase = phrase_for(attributes, stated, Family.TRAIN, rng)
            return phrase.caption, phrase.stated
    return caption_for(attributes, rng), frozenset(ATTRIBUTE_NAMES)


TERSE_MAX_STATED = 2
"""A terse command (`terse_phrase`) states one or two attributes."""


def terse_phrase(attributes: Attributes, stated: Iterable[str], rng: np.random.Generator) -> Phrase:
    """The training family's bare telegraphic clause stating exactly `stated`: "blue jacket",
    "lying down / helmet on". No person word, no opener, no filler — the shortest thing an
    operator types. The dataset holds few of them (a one- or two-attribute caption takes one of
    six forms), so the read-back's refit draws them on its own (`train.text.readback`)."""
    stated = _checked_stated(stated)
    slots = [_slot(n, attributes, Family.TRAIN, rng) for n in ATTRIBUTE_NAMES if n in stated]
    slots = _ordered(slots, Family.TRAIN, rng)
    caption = _train_telegraphic("", slots, rng)
    tags = ("form:train", *(t for s in slots for t in s.tags))
    return Phrase(caption, stated, Family.TRAIN, tags)


def draw_terse_stated(rng: np.random.Generator) -> frozenset[str]:
    """1..`TERSE_MAX_STATED` attribute names, size uniform, then names uniform."""
    size = int(rng.integers(1, TERSE_MAX_STATED + 1))
    picked = rng.choice(len(ATTRIBUTE_NAMES), size, replace=False)
    return frozenset(ATTRIBUTE_NAMES[int(i)] for i in picked)


def heldout_phrase(attributes: Attributes, rng: np.random.Generator) -> Phrase:
    """A `test_phrasing` caption: full with probability `FULL_CAPTION_PROB`, else partial."""
    full = rng.random() < FULL_CAPTION_PROB
    stated = frozenset(ATTRIBUTE_NAMES) if full else draw_stated(rng)
    return phrase_for(attributes, stated, Family.HELDOUT, rng)


def heldout_captions_for(
    attributes: Attributes, count: int, rng: np.random.Generator
) -> tuple[list[str], list[int]]:
    """`count` distinct held-out captions for one image and their `caption_stated` masks."""
    captions: list[str] = []
    masks: list[int] = []
    for _ in range(count * 50):
        phrase = heldout_phrase(attributes, rng)
        if phrase.caption not in captions:
            captions.append(phrase.caption)
            masks.append(phrase.mask)
            if len(captions) == count:
                break
    while len(captions) < count:  # only a grammar trimmed far below today's could get here
        phrase = heldout_phrase(attributes, rng)
        captions.append(phrase.caption)
        masks.append(phrase.mask)
    return captions, masks


_PHRASE_CACHE: list[tuple[str, str, re.Pattern[str]]] = []


def read_back(caption: str) -> dict[str, str]:
    """Keyword reading of a caption over the lexicon: attribute → value for every attribute a
    phrase of the lexicon states (longest phrases first, each span read once). A reference for
    tests and a baseline, not the robot's read-back; a conflicting caption raises ValueError."""
    if not _PHRASE_CACHE:
        entries = [
            (name, value, phrase)
            for name, values in value_phrases().items()
            for value, phrases in values.items()
            for phrase in phrases
        ]
        entries.sort(key=lambda e: -len(e[2]))
        _PHRASE_CACHE.extend(
            (n, v, re.compile(rf"(?<![a-z-]){re.escape(p)}(?![a-z-])")) for n, v, p in entries
        )
    text = caption.lower()
    found: dict[str, str] = {}
    for name, value, pattern in _PHRASE_CACHE:
        for match in pattern.finditer(text):
            if found.get(name, value) != value:
                raise ValueError(f"{caption!r}: {name} reads as both {found[name]} and {value}")
            found[name] = value
            text = text[: match.start()] + "#" * (match.end() - match.start()) + text[match.end() :]
    return found
