"""Read-back of the xkcd colour survey's names (docs/TEXT_ENCODER.md § Colour names).

`test_phrasing` keeps its held-out colour words ("crimson", "navy") out of every lexicon on
purpose, so it cannot say whether the survey's names in the training lexicon
(`train.data.colour_names.LEXICON_COLOURS`, PHRASING_VERSION 3 and 4) are read — nor whether names
the encoder never saw are. This measures both, as `eval-text` prints it:

- commands of the training family (`train.data.phrasing.phrase_for`) whose colour is named by a
  survey name, half stating the colour alone ("anyone in aubergine?"), half with one to four
  more attributes; the attributes and the name are drawn uniformly, the name from its colour's
  list;
- three name sets: "plain" (each value's own word: "red", "purple"), "trained" (the committed
  lexicon) and "rare" (names that pass the same rule but lie outside the survey's `COMMONEST`
  names, so no training caption carried them; derived from matplotlib's copy of the survey,
  the `lexicon` extra, and left out with one log line where it is not installed);
- each row split by whether the name contains a clothing-colour word ("cobalt blue") or stands
  alone ("aubergine"): the first lean on that word.

Judge: the commands' own labels (the colour the name was drawn for), through the robot's
decision rule (`train.text.readback.decide_embeddings`). Rescue-scenes attributes only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, Attributes
from train.data.colour_names import LEXICON_COLOURS, derive, has_colour_word, xkcd_survey
from train.data.phrasing import Family, lexicon_excluded_words, phrase_for
from train.models import ReadBack
from train.text import off_domain
from train.text.readback import decide_embeddings

log = logging.getLogger(__name__)

READBACK_COLOUR_NAMES = "readback_colour_names"
COMMANDS_PER_KIND = 1000
"""Commands per (name set, kind): 1,000 give a standard error of ≤ 1.6 points."""
KINDS = ("colour only", "with others")

NameSets = Mapping[str, Mapping[str, tuple[str, ...]]]


def name_sets() -> dict[str, dict[str, tuple[str, ...]]]:
    """{"plain": each value's own word ("red"), "trained": the committed lexicon, "rare": survey
    names the rule places outside the commonest (only where matplotlib is installed)}, each
    {colour: names}. The plain words are the baseline every name is read against, and where a
    short word's defect showed (docs/TEXT_ENCODER.md § The first word)."""
    plain = {v: (v,) for v in ATTRIBUTE_VALUES["colour"]}
    sets = {"plain": plain, "trained": dict(LEXICON_COLOURS)}
    try:
        survey = xkcd_survey()
    except ImportError:
        log.info("colour names: matplotlib is not installed (the lexicon extra); no rare names")
        return sets
    every = derive(survey, lexicon_excluded_words(off_domain.vocabulary()))
    trained = {n for names in LEXICON_COLOURS.values() for n in names}
    rare = {v: tuple(n for n in names if n not in trained) for v, names in every.items()}
    sets["rare"] = {v: names for v, names in rare.items() if names}
    return sets


def commands(
    names: Mapping[str, tuple[str, ...]], kind: str, count: int, seed: int
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """`count` commands naming their colour from `names`: (captions, the names used, truth
    (count, A) value indices, stated (count,) bitmasks)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng([seed, KINDS.index(kind), count])  # one stream per kind
    colours = sorted(names)
    others = [n for n in ATTRIBUTE_NAMES if n != "colour"]
    captions, used, truth, stated = [], [], [], []
    for _ in range(count):
        values = {n: ATTRIBUTE_VALUES[n][int(rng.integers(len(ATTRIBUTE_VALUES[n])))]
                  for n in others}  # fmt: skip
        values["colour"] = colours[int(rng.integers(len(colours)))]
        name = names[values["colour"]][int(rng.integers(len(names[values["colour"]])))]
        says = {"colour"}
        if kind == "with others":
            extra = rng.choice(len(others), int(rng.integers(1, len(others) + 1)), replace=False)
            says |= {others[int(i)] for i in extra}
        phrase = phrase_for(Attributes(**values), says, Family.TRAIN, rng, colour_word=name)
        captions.append(phrase.caption)
        used.append(name)
        truth.append([ATTRIBUTE_VALUES[n].index(values[n]) for n in ATTRIBUTE_NAMES])
        stated.append(phrase.mask)
    return captions, used, np.asarray(truth, dtype=np.int64), np.asarray(stated, dtype=np.int64)


def records(
    encode: Any, readback: ReadBack, seed: int, sets: NameSets | None = None
) -> list[dict[str, Any]]:
    """One record per (name set, kind, name form): commands, colour read right, colour read
    '?', other stated attributes read right, flagged off-domain, and the colour read right
    least often (one colour's words can fail while the mean hides it: plain "red" did).
    `encode(texts)` → (N, E)."""
    sizes = readback.config.value_counts
    if list(sizes) != [len(ATTRIBUTE_VALUES[n]) for n in ATTRIBUTE_NAMES]:
        return []
    colour = ATTRIBUTE_NAMES.index("colour")
    out = []
    for set_name, names in (sets or name_sets()).items():
        for kind in KINDS:
            texts, used, truth, stated = commands(names, kind, COMMANDS_PER_KIND, seed)
            chosen = decide_embeddings(readback, encode(texts))  # (N, A + 1)
            says = ((stated[:, None] >> np.arange(len(sizes))) & 1) == 1  # (N, A)
            says[:, colour] = False
            right = chosen[:, : len(sizes)] == truth
            leaning = np.array([has_colour_word(n) for n in used])
            for form, rows in (("with a colour word", leaning), ("standalone", ~leaning)):
                if not rows.any():
                    continue
                others = says[rows]
                per_colour = {
                    value: float(right[rows & (truth[:, colour] == i), colour].mean())
                    for i, value in enumerate(ATTRIBUTE_VALUES["colour"])
                    if (rows & (truth[:, colour] == i)).any()
                }
                worst = min(per_colour, key=lambda v: per_colour[v])
                out.append(
                    {
                        "metric": READBACK_COLOUR_NAMES,
                        "names": set_name,
                        "kind": kind,
                        "form": form,
                        "commands": int(rows.sum()),
                        "distinct_names": len(set(np.asarray(used)[rows])),
                        "colour_right": float(right[rows, colour].mean()),
                        "colour_unstated": float((chosen[rows, colour] == sizes[colour]).mean()),
                        "others_right": (
                            float(right[rows][others].mean()) if others.any() else None
                        ),
                        "flagged": float(chosen[rows, len(sizes)].mean()),
                        "worst_colour": worst,
                        "worst_colour_right": per_colour[worst],
                    }
                )
    return out
