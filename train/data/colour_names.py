"""Colour names an operator may use, mapped to the renderer's eight clothing colours.

The training lexicon's colour words were a handful per value ("red", "scarlet", "dark red"), so
a robot trained on them reads "aubergine" or "mahogany" as nothing it knows. The xkcd colour
survey's 949 names (`matplotlib.colors.XKCD_COLORS`, shipped inside matplotlib's wheel with
their RGB values; nothing is downloaded) are the names given in some 222,500 survey sessions in
free text: the most independent list there is of how people, not a grammar, name a colour. Each
of its 300 commonest names (`COMMONEST`) is mapped to a clothing colour by a fixed rule over its
RGB value and its words (`classify`), and every name the rule cannot place with confidence is
left out: a wrong label teaches the robot to draw the wrong person, a missing word only makes it
say "not in the robot's vocabulary".

Rule (HSV of the survey's value; hue in degrees):
- achromatic (saturation < 0.15): kept only when the name itself says "white" or "black" and
  the value agrees (≥ 0.85 / ≤ 0.2) — "eggshell" and "charcoal" are not names an operator would
  use for a white or black jacket with any certainty, and greys have no clothing colour;
- chromatic: the hue picks red [345, 12), orange [12, 40), yellow [45, 65), green [75, 160),
  blue [195, 250) or purple [255, 320); the gaps between them (pinks, cyans, gold-browns) are
  left out, as are dark oranges and yellows (value < 0.85: browns such as "chocolate", olives);
- a name with a word of a colour category we do not render (brown, pink, grey, tan, khaki,
  cyan, turquoise, "pinkish", …) is left out whatever its hue;
- a name that contains a clothing-colour word must agree with it ("cobalt blue" must read
  blue); a name without one must be saturated (≥ 0.6): "salmon" sits between categories; a
  word that runs two colour words together ("greenblue") is left out, and so (since
  PHRASING_VERSION 4) is a name that leans on two clothing colours ("orange red", "reddish
  orange", "blue violet", "yellow green"): with them in the lexicon a caption that opens with
  "red" or "orange" may mean the other, and the encoder read "red jacket", "orange jacket" and
  "anyone in red?" as no colour at all (docs/TEXT_ENCODER.md § Colour names).

Filters keep labels and evaluation clean: names that share a word with another attribute's
phrases ("snow", "sandy", "mud"), with the held-out colour phrases of `train.data.phrasing`
("crimson", "navy", "sky blue", "lime green": `test_phrasing` must still measure words the robot
never saw) or with the off-domain generator's vocabulary ("apple", "forest": the read-back's
off-domain head learns those as not-a-person) never enter training.

The table is committed (`LEXICON_COLOURS`) rather than derived at import, so a dataset's
captions do not change with the installed matplotlib; `python scripts/derive_colour_names.py`
prints it again and tests/train/data/test_colour_names.py proves it matches the derivation.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Iterable, Mapping

from train.data.captions import COLOUR_WORDS

# Words of colour categories the renderer has no clothing colour for.
_OTHER_CATEGORY_WORDS = frozenset((
    "aqua", "aquamarine", "beige", "brown", "brownish", "browny", "cyan", "gray", "grayish",
    "grey", "greyish", "khaki", "olive", "pink", "pinkish", "pinky", "silver", "tan", "teal",
    "tealish", "turquoise",
))  # fmt: skip
# Words that do not belong in a robot's training captions, whatever colour they name.
_UNFIT_WORDS = frozenset(["barf", "piss", "poo", "poop", "puke", "shit", "snot", "vomit"])
# Clothing-colour words as the grammar uses them ("scarlet" → red, "violet" → purple).
_CLASS_WORDS: Mapping[str, str] = {
    word: value for value, words in COLOUR_WORDS.items() for word in words if " " not in word
}
_HUE_BINS: tuple[tuple[float, float, str], ...] = (
    (345.0, 360.0, "red"), (0.0, 12.0, "red"), (12.0, 40.0, "orange"), (45.0, 65.0, "yellow"),
    (75.0, 160.0, "green"), (195.0, 250.0, "blue"), (255.0, 320.0, "purple"),
)  # fmt: skip


def classify(words: tuple[str, ...], rgb: tuple[int, int, int]) -> str | None:
    """The clothing colour a colour name with these words and this RGB value states, or None
    when the rule of the module docstring cannot place it."""
    if _OTHER_CATEGORY_WORDS.intersection(words):
        return None
    named = [_CLASS_WORDS[w] for w in words if w in _CLASS_WORDS]
    # "red orange", "reddish orange", "yellow green": a name leaning on two clothing colours
    # teaches that a command opening with "red" may mean orange (measured: "red jacket" and
    # "anyone in red?" read colour "?" with such names in the lexicon).
    leaning = {v for w in words for c, v in _CLASS_WORDS.items() if w.startswith(c)}
    if len(leaning) > 1:
        return None
    hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    if saturation < 0.15:
        by_value = "white" if value >= 0.85 else "black" if value <= 0.2 else None
        return by_value if named and named[-1] == by_value else None
    by_hue = next((c for lo, hi, c in _HUE_BINS if lo <= hue * 360 < hi), None)
    if by_hue in ("orange", "yellow") and value < 0.85:
        return None
    if named:
        return by_hue if named[-1] == by_hue else None
    return by_hue if saturation >= 0.6 else None


def has_colour_word(name: str) -> bool:
    """Whether a colour name contains one of the grammar's clothing-colour words ("cobalt blue",
    "reddish" does not): such names lean on that word; the others ("aubergine") stand alone."""
    return any(word in _CLASS_WORDS for word in name.split())


def derive(
    named_colours: Mapping[str, tuple[int, int, int]],
    excluded_words: Iterable[str],
    commonest: int | None = None,
) -> dict[str, tuple[str, ...]]:
    """value → the colour names (sorted) that `classify` places there, leaving out names with
    an excluded word, names that are not plain lower-case words ("robin's egg", "blue/green"),
    run-together colour words, crude words ("piss yellow") and the bare clothing-colour words
    the grammar already has. `named_colours` is in the survey's order, rarest first; with
    `commonest` only that many of the last (commonest) names are considered."""
    excluded = frozenset(excluded_words)
    out: dict[str, list[str]] = {}
    ordered = list(named_colours.items())
    for name, rgb in ordered[-commonest:] if commonest else ordered:
        if not re.fullmatch(r"[a-z]+( [a-z]+)*", name) or name in _CLASS_WORDS:
            continue
        words = tuple(name.split())
        run_together = any(sum(c in w for c in _CLASS_WORDS) > 1 for w in words)
        if run_together or excluded.intersection(words) or _UNFIT_WORDS.intersection(words):
            continue
        value = classify(words, rgb)
        if value is not None:
            out.setdefault(value, []).append(name)
    return {v: tuple(sorted(set(names))) for v, names in sorted(out.items())}


COMMONEST = 300
"""Only the survey's 300 commonest names (of 949) are candidates. The character model learns a
name from the captions that carry it, and within the recipe's 1,000 encoder steps a name drawn
among all 301 that pass the rule is seen some 20–100 times: names that contain a clothing-colour
word are then read right (they lean on that word), names that stand alone ("canary",
"aubergine") at 29 % (docs/TEXT_ENCODER.md § Colour names). Fewer, commoner names are seen more
often each, and those are the names operators use."""


def xkcd_survey() -> dict[str, tuple[int, int, int]]:
    """The survey's names → RGB, in its own order: matplotlib keeps xkcd's rgb.txt order,
    rarest first, so the last names are the commonest (… "blue", "green", "purple"; tested)."""
    # matplotlib is the `lexicon` extra only: the committed table is what training reads.
    from matplotlib.colors import XKCD_COLORS, to_rgb

    return {
        key.removeprefix("xkcd:"): tuple(round(c * 255) for c in to_rgb(hex_value))  # type: ignore[misc]
        for key, hex_value in XKCD_COLORS.items()
    }


def derive_from_xkcd(excluded_words: Iterable[str]) -> dict[str, tuple[str, ...]]:
    return derive(xkcd_survey(), excluded_words, COMMONEST)


# Generated by `python scripts/derive_colour_names.py` from matplotlib 3.11.2's XKCD_COLORS.
LEXICON_COLOURS: dict[str, tuple[str, ...]] = {
    "blue": (
        "azure", "baby blue", "bright blue", "cadet blue", "cerulean", "cobalt", "cobalt blue",
        "cornflower blue", "dark blue", "dull blue", "dusty blue", "electric blue", "light blue",
        "marine blue", "medium blue", "ocean blue", "pastel blue", "periwinkle blue", "powder blue",
        "royal blue", "slate blue", "steel blue", "true blue",
    ),
    "green": (
        "army green", "avocado", "bright green", "camo green", "dark green", "dirty green",
        "dull green", "electric green", "evergreen", "faded green", "forrest green", "greenish",
        "hunter green", "jade", "jungle green", "kelly green", "leaf green", "light green",
        "lighter green", "medium green", "mint green", "moss green", "neon green", "pale green",
        "pastel green", "sage green", "seafoam green", "spring green", "very light green",
    ),
    "orange": (
        "light orange", "pale orange",
    ),
    "purple": (
        "aubergine", "barney purple", "bluish purple",
        "bright purple", "dark purple", "dark violet", "dull purple", "dusty purple", "eggplant",
        "fuchsia", "indigo", "light magenta", "light purple", "light violet", "neon purple",
        "pale purple", "pale violet", "pastel purple", "plum", "royal purple",
    ),
    "red": (
        "blood red", "brick", "brick red", "bright red", "coral", "dark red", "dark rose",
        "light red", "mahogany", "pale red", "reddish",
    ),
    "yellow": (
        "bright yellow", "gold", "goldenrod", "light yellow", "pale yellow",
    ),
}  # fmt: skip
