"""The rescue-scenes caption grammar: attributes → varied English captions.

Every caption names all five attributes (colour, terrain, pose, position, helmet — the helmet both
ways), so a caption fully determines its class; the synonym tables and templates below are the
whole grammar (documented in docs/DATA_FORMAT.md). Output is lower-case ASCII inside the
tokenizer's alphabet.

    >>> rng = np.random.default_rng(0)
    >>> caption_for(Attributes("orange", "rubble", "lying", "left", "no"), rng)  # doctest: +SKIP
    'a survivor in an orange jacket lying on rubble at the left, no helmet'
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from train.data.attributes import ATTRIBUTE_VALUES, Attributes

PEOPLE: tuple[str, ...] = (
    "person", "survivor", "victim", "casualty", "man", "woman", "civilian", "hiker", "worker",
    "individual", "figure",
)  # fmt: skip
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet"),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "white": ("white",),
    "black": ("black",),
}
GARMENTS: tuple[str, ...] = (
    "jacket", "coat", "shirt", "hoodie", "raincoat", "jumpsuit", "sweater", "parka", "outfit",
)  # fmt: skip
TERRAIN_PHRASES: dict[str, tuple[str, ...]] = {
    "rubble": ("on rubble", "on a pile of rubble", "among the debris", "on broken concrete",
               "in the rubble", "on collapsed concrete"),
    "grass": ("on grass", "on the grass", "in a grassy field", "on a lawn", "in a meadow"),
    "sand": ("on sand", "on the sand", "on a sandy beach", "in the dunes", "on sandy ground"),
    "snow": ("in the snow", "on snow", "on a snowfield", "on snowy ground", "in deep snow"),
    "water": ("in flood water", "in the water", "in shallow water", "in a flooded area",
              "in floodwater"),
    "mud": ("in mud", "in the mud", "on muddy ground", "in thick mud", "on wet mud"),
}  # fmt: skip
POSE_PHRASES: dict[str, tuple[str, ...]] = {
    "standing": ("standing", "standing up", "upright", "on their feet"),
    "sitting": ("sitting", "sitting down", "seated", "sitting up"),
    "lying": ("lying", "lying down", "lying flat", "stretched out", "lying motionless"),
}
POSE_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "standing": ("standing",),
    "sitting": ("sitting", "seated"),
    "lying": ("lying", "prone"),
}
# Adverbial phrases follow another phrase directly ("lying on rubble at the left"); labels stand
# after a comma or a colon ("lying on rubble, left side").
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "to the left", "on the left side", "in the left third",
             "at the left edge of the image"),
    "center": ("in the center", "in the centre", "in the middle", "in the middle of the frame",
               "at the center", "in the center of the image"),
    "right": ("on the right", "at the right", "to the right", "on the right side",
              "in the right third", "at the right edge of the image"),
}  # fmt: skip
POSITION_LABELS: dict[str, tuple[str, ...]] = {
    "left": ("left side", "left of frame", "left"),
    "center": ("center of the image", "centre of the frame", "centered", "center", "middle"),
    "right": ("right side", "right of frame", "right"),
}
# "with"-phrases can follow the subject directly; tags only stand after a comma.
HELMET_PHRASES: dict[str, tuple[str, ...]] = {
    "yes": ("wearing a helmet", "with a helmet", "with a hard hat", "in a hard hat",
            "wearing a hard hat", "wearing a safety helmet"),
    "no": ("without a helmet", "not wearing a helmet", "with no hard hat", "without a hard hat",
           "with no helmet"),
}  # fmt: skip
HELMET_TAGS: dict[str, tuple[str, ...]] = {
    "yes": ("helmet on", "has a helmet", "hard hat on"),
    "no": ("no helmet", "bareheaded", "no hard hat", "helmet off"),
}
HELMET_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "yes": ("helmeted", "hard-hatted"),
    "no": ("bareheaded", "helmetless"),
}
PREFIXES: tuple[str, ...] = (
    "", "", "", "", "a photo of ", "an image of ", "there is ", "find ", "search for ", "look for ",
)  # fmt: skip
SUFFIXES: tuple[str, ...] = (
    "", "", "", "", ", needs help", ", waiting for rescue", ", awaiting rescue", ", still visible",
)  # fmt: skip

assert set(COLOUR_WORDS) == set(ATTRIBUTE_VALUES["colour"])
assert set(TERRAIN_PHRASES) == set(ATTRIBUTE_VALUES["terrain"])
assert set(POSE_PHRASES) == set(ATTRIBUTE_VALUES["pose"]) == set(POSE_ADJECTIVES)
assert set(POSITION_PHRASES) == set(POSITION_LABELS) == set(ATTRIBUTE_VALUES["position"])
assert set(HELMET_PHRASES) == set(HELMET_TAGS) == set(ATTRIBUTE_VALUES["helmet"])
assert set(HELMET_ADJECTIVES) == set(ATTRIBUTE_VALUES["helmet"])


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


class _Slots:
    """One draw of every synonym for one caption (templates pick the forms they need)."""

    def __init__(self, a: Attributes, rng: np.random.Generator) -> None:
        self.person = _pick(rng, PEOPLE)
        colour = _pick(rng, COLOUR_WORDS[a.colour])
        garment = _pick(rng, GARMENTS)
        self.clothing = _pick(
            rng,
            (
                f"in {_with_article(f'{colour} {garment}')}",
                f"wearing {_with_article(f'{colour} {garment}')}",
                f"dressed in {colour}",
                f"in {colour} clothes",
                f"in {colour}",
            ),
        )
        self.terrain = _pick(rng, TERRAIN_PHRASES[a.terrain])
        self.pose = _pick(rng, POSE_PHRASES[a.pose])
        self.pose_adjective = _pick(rng, POSE_ADJECTIVES[a.pose])
        phrase = _pick(rng, POSITION_PHRASES[a.position])
        label = _pick(rng, POSITION_LABELS[a.position])
        self.position = _pick(rng, (phrase, label))
        self.position_after = _pick(rng, (f" {phrase}", f", {label}"))
        self.helmet_with = _pick(rng, HELMET_PHRASES[a.helmet])
        self.helmet = _pick(rng, (self.helmet_with, _pick(rng, HELMET_TAGS[a.helmet])))
        self.helmet_adjective = _pick(rng, HELMET_ADJECTIVES[a.helmet])
        self.subject = _with_article(self.person)


# Each template uses every attribute exactly once; word order and punctuation vary. Slot forms:
# `position` / `helmet` stand after a comma, colon or at the start; `position_after` carries its
# own separator; `helmet_with` may follow a noun directly. The flag says whether the caption
# starts with the subject, so a prefix like "find " or "a photo of " reads correctly.
_TEMPLATES: tuple[tuple[Callable[[_Slots], str], bool], ...] = (
    (lambda s: f"{s.subject} {s.clothing} {s.pose} {s.terrain}{s.position_after}, {s.helmet}",
     True),
    (lambda s: f"{s.subject} {s.clothing}, {s.pose} {s.terrain}, {s.position}, {s.helmet}", True),
    (lambda s: f"{s.subject} {s.helmet_with} {s.clothing} {s.pose} {s.terrain}{s.position_after}",
     True),
    (lambda s: f"{s.position}: {s.subject} {s.pose} {s.terrain}, {s.clothing}, {s.helmet}", False),
    (lambda s: f"{s.subject} {s.pose} {s.terrain}{s.position_after}, {s.clothing}, {s.helmet}",
     True),
    (lambda s: f"{s.terrain}, {s.position}: {s.subject} {s.clothing} {s.pose}, {s.helmet}", False),
    (lambda s: (f"{_with_article(s.pose_adjective)} {s.person} {s.clothing} {s.terrain}"
                f"{s.position_after}, {s.helmet}"), True),
    (lambda s: f"{s.subject} {s.pose}{s.position_after}, {s.terrain}, {s.clothing}, {s.helmet}",
     True),
    (lambda s: (f"{_with_article(s.helmet_adjective)} {s.person} {s.clothing} {s.pose} "
                f"{s.terrain}, {s.position}"), True),
    (lambda s: f"{s.person}, {s.pose}, {s.clothing}, {s.helmet}, {s.terrain}, {s.position}",
     False),
    (lambda s: (f"{_with_article(s.helmet_adjective)} {s.pose_adjective} {s.person} "
                f"{s.clothing} {s.terrain}{s.position_after}"), True),
    (lambda s: f"{s.subject} {s.helmet_with}, {s.pose} {s.terrain}{s.position_after}, "
               f"{s.clothing}", True),
)  # fmt: skip


def caption_for(attributes: Attributes, rng: np.random.Generator) -> str:
    """One caption naming all five attributes, drawn from the grammar with `rng`."""
    slots = _Slots(attributes, rng)
    template, starts_with_subject = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    prefix = _pick(rng, PREFIXES) if starts_with_subject else ""
    return f"{prefix}{template(slots)}{_pick(rng, SUFFIXES)}"


def captions_for(attributes: Attributes, count: int, rng: np.random.Generator) -> list[str]:
    """`count` captions for one image, distinct whenever the grammar allows it."""
    captions: list[str] = []
    seen: set[str] = set()
    for _ in range(count * 20):
        caption = caption_for(attributes, rng)
        if caption not in seen:
            seen.add(caption)
            captions.append(caption)
            if len(captions) == count:
                return captions
    # Unreachable with the tables above (millions of captions per class); kept so a trimmed
    # grammar still returns `count` captions.
    while len(captions) < count:
        captions.append(caption_for(attributes, rng))
    return captions


CANONICAL_TEMPLATE = "a person {colour} {pose} {terrain} {position}, {helmet}"
"""The robot's caption for an understood description (`edge_runtime.canonical`): the grammar's
first template with a plain subject, no prefix or suffix, and each slot's first phrase."""


def canonical_phrases() -> dict[str, tuple[str, ...]]:
    """Per attribute, per value (ATTRIBUTE_VALUES order), the phrase of `CANONICAL_TEMPLATE`:
    the first synonym of each grammar table, so every canonical caption is one the grammar
    itself renders (tested)."""
    return {
        "colour": tuple(
            f"in {_with_article(f'{COLOUR_WORDS[c][0]} {GARMENTS[0]}')}"
            for c in ATTRIBUTE_VALUES["colour"]
        ),
        "pose": tuple(POSE_PHRASES[v][0] for v in ATTRIBUTE_VALUES["pose"]),
        "terrain": tuple(TERRAIN_PHRASES[v][0] for v in ATTRIBUTE_VALUES["terrain"]),
        "position": tuple(POSITION_PHRASES[v][0] for v in ATTRIBUTE_VALUES["position"]),
        "helmet": tuple(HELMET_PHRASES[v][0] for v in ATTRIBUTE_VALUES["helmet"]),
    }
