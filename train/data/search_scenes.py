"""Search scenes: wide frames with 0–4 people and distractors, for the frame scorer (issue 20).

`python -m train data synth-search` renders frames of one terrain (256×256 by default, `--size`)
with zero to four people of different attributes, drawn by the rescue-scenes renderer
(`train.data.scenes`: the same figures, terrains and colours), plus distractors: debris, objects
in clothing colours without a human shape, and slabs that partly hide a person. Every frame has a
*query*: a description of one person in it, or (an "absent" frame) of nobody in it.

- People in one frame differ in (colour, pose, helmet), so each query names exactly one person
  or none; other people often share the query's colour (hard negatives).
- Query captions state colour, pose and helmet, and the terrain half the time, in the training
  phrasing family (`train.data.phrasing`); they never state the position: "left" in a caption is
  about a 64×64 picture's thirds, not about where in a wide frame someone lies.
- Splits (as rescue-scenes, docs/DATA_FORMAT.md § Search scenes): `train`, `val` (calibrates
  the absent threshold) and `test` hold only seen colour×terrain pairs, for every person;
  `test_unseen` queries a person (or an absent one) whose colour×terrain pair is one of
  `UNSEEN_PAIRS`, which no frame of the other splits shows.

Frame `i` of split `k` is drawn from `default_rng([seed, 100 + k, i])`, so a file depends only on
the seed and the counts.

Schema "rescue-t2i-search" version 1 (HDF5)::

    /  attrs: schema, schema_version, frame_size, dataset, max_people, attribute_names (JSON),
              attribute_values (JSON), provenance (JSON)
    /<split>/
        frames            uint8 (N, S, S, 3) RGB
        people_counts     int8 (N,): people in the frame, 0..max_people
        boxes             float32 (N, P, 4): x0, y0, x1, y1 in pixels (x1, y1 exclusive) of what
                          was drawn of each person (unoccluded extent); rows ≥ count are 0
        person_attributes int16 (N, P, A): attribute indices (position: the frame third of the
                          box centre); rows ≥ count are -1
        visible           float32 (N, P): share of the figure not hidden by an occluder
        query_person      int8 (N,): index of the described person, -1 when absent
        query_attributes  int16 (N, A): the described attributes (position -1: not stated)
        query_captions    vlen UTF-8 str (N, C)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from edge_runtime.atomic import atomic_path
from train.data.attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_VALUES,
    UNSEEN_PAIRS,
    Attributes,
)
from train.data.guard import DataError, expect
from train.data.phrasing import Family, phrase_for
from train.data.scenes import (
    CLOTHING_RGB,
    OUTLINE,
    TERRAIN_SUPERSAMPLE,
    _draw_figure,
    _extent,
    _Figure,
    _pose_figure,
    _terrain,
    _transform,
)
from train.data.schema import damaged_file_guard, open_hdf5

log = logging.getLogger(__name__)

SCHEMA = "rescue-t2i-search"
SCHEMA_VERSION = 1
DATASET_NAME = "rescue-search"
SPLITS: tuple[str, ...] = ("train", "val", "test", "test_unseen")
"""In split-index order (`k` of the seed rule): new splits are appended, never inserted."""
MAX_PEOPLE = 4
CAPTIONS_PER_FRAME = 4
DEFAULT_SIZE = 256
MIN_SIZE, MAX_SIZE = 128, 512
ABSENT_FRACTION = 0.25
"""Share of frames whose query describes nobody in the frame."""
HEIGHT_SCALE = (0.7, 2.0)
"""Person size relative to rescue-scenes (≈ 40 px tall): 28–88 px, so both scorer scales see
people of their size (docs/SEARCH.md)."""
OCCLUDE_PROB = 0.3
_CANVAS = 160
"""Side of the canvas a figure is drawn on before it is pasted into the frame (pixels)."""
_POSE, _COLOUR, _HELMET, _TERRAIN, _POSITION = (
    ATTRIBUTE_NAMES.index(n) for n in ("pose", "colour", "helmet", "terrain", "position")
)
_SEEN_COLOURS = {
    t: [c for c in ATTRIBUTE_VALUES["colour"] if (c, t) not in UNSEEN_PAIRS]
    for t in ATTRIBUTE_VALUES["terrain"]
}
_UNSEEN_COLOURS = {
    t: [c for c in ATTRIBUTE_VALUES["colour"] if (c, t) in UNSEEN_PAIRS]
    for t in ATTRIBUTE_VALUES["terrain"]
}


@dataclass
class SearchFrame:
    """One rendered frame and its ground truth."""

    frame: np.ndarray
    """uint8 (S, S, 3) RGB."""
    boxes: np.ndarray
    """float32 (n, 4) x0, y0, x1, y1 of each person's drawn extent."""
    people: list[Attributes]
    visible: np.ndarray
    """float32 (n,)."""
    query_person: int
    """Index into `people`, or -1 (absent)."""
    query: Attributes
    captions: list[str]


@dataclass
class SearchSplit:
    """One split in memory (arrays as in the schema)."""

    frames: np.ndarray
    people_counts: np.ndarray
    boxes: np.ndarray
    person_attributes: np.ndarray
    visible: np.ndarray
    query_person: np.ndarray
    query_attributes: np.ndarray
    query_captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.frames)


# ----------------------------------------------------------------------------------------------
# Rendering


def _translate(fig: _Figure, dx: float, dy: float) -> _Figure:
    return _Figure(
        [
            type(k)((k.p0[0] + dx, k.p0[1] + dy), (k.p1[0] + dx, k.p1[1] + dy), k.radius, k.role,
                    k.shade)
            for k in fig.capsules
        ],
        (fig.head_centre[0] + dx, fig.head_centre[1] + dy),
        fig.head_radius,
        fig.up,
    )  # fmt: skip


def _debris(frame: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Grey-brown slabs and planks on the ground, float32 frame in place."""
    size = frame.shape[0]
    for _ in range(count):
        grey = rng.uniform(70, 170)
        tint = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.78, 0.95)])
        colour = (grey * tint).tolist()
        if rng.random() < 0.5:  # a plank: a thick line
            p0 = rng.uniform(0, size, 2)
            angle, length = rng.uniform(0, math.pi), rng.uniform(15, 50)
            p1 = p0 + length * np.array([math.cos(angle), math.sin(angle)])
            width = int(rng.integers(3, 7))
            cv2.line(
                frame, tuple(p0.astype(int)), tuple(p1.astype(int)), colour, width, cv2.LINE_AA
            )
        else:  # a slab: an irregular hexagon with a dark rim
            centre, radius = rng.uniform(0, size, 2), rng.uniform(6, 20)
            angles = np.sort(rng.uniform(0, 2 * math.pi, 6))
            radii = radius * rng.uniform(0.6, 1.0, 6)
            poly = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
            cv2.fillPoly(frame, [poly.astype(np.int32)], colour, cv2.LINE_AA)
            cv2.polylines(frame, [poly.astype(np.int32)], True, (grey * 0.6,) * 3, 1, cv2.LINE_AA)


def _coloured_objects(frame: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Tarps, barrels and bags in clothing colours: a person's colour without a person's shape."""
    size = frame.shape[0]
    names = list(CLOTHING_RGB)
    for _ in range(count):
        colour = np.array(CLOTHING_RGB[names[int(rng.integers(len(names)))]], np.float64)
        colour = (colour * rng.uniform(0.85, 1.05)).clip(0, 255).tolist()
        cx, cy = rng.uniform(10, size - 10, 2)
        w, h = rng.uniform(6, 26, 2)
        kind = rng.random()
        if kind < 0.4:  # a tarp: a rotated rectangle
            box = cv2.boxPoints(((cx, cy), (w, h), rng.uniform(0, 180))).astype(np.int32)
            cv2.fillPoly(frame, [box], colour, cv2.LINE_AA)
        elif kind < 0.7:  # a barrel seen from above: a disc with a rim
            r = int(min(w, h) / 2) + 3
            cv2.circle(frame, (int(cx), int(cy)), r, colour, -1, cv2.LINE_AA)
            cv2.circle(frame, (int(cx), int(cy)), r, (40, 40, 40), 1, cv2.LINE_AA)
        else:  # a bag: an ellipse
            axes = (int(w / 2) + 2, int(h / 3) + 2)
            cv2.ellipse(frame, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, colour, -1,
                        cv2.LINE_AA)  # fmt: skip


def _third(x: float, size: int) -> str:
    return ATTRIBUTE_VALUES["position"][min(int(3 * x / size), 2)]


def render_frame(
    terrain: str,
    people: list[Attributes],
    rng: np.random.Generator,
    size: int = DEFAULT_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Attributes]]:
    """Render a frame: uint8 (S, S, 3), boxes float32 (n, 4), visible float32 (n,), and the people
    with their position set to the frame third of their box centre. People that cannot be placed
    without overlapping others are dropped (never the first)."""
    big = _terrain(terrain, rng, size * TERRAIN_SUPERSAMPLE)
    frame = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)  # (S, S, 3) float32
    _debris(frame, rng, int(rng.integers(2, 9)) * size // DEFAULT_SIZE)
    _coloured_objects(frame, rng, int(rng.integers(0, 4)))

    boxes: list[np.ndarray] = []
    visible: list[float] = []
    placed: list[Attributes] = []
    for person in people:
        fig, height = _pose_figure(person, rng)
        height *= rng.uniform(*HEIGHT_SCALE)
        px = _transform(fig, 0.0, False, height)
        x0, y0, x1, y1 = _extent(px, OUTLINE)
        w, h = x1 - x0, y1 - y0
        if w + 4 > _CANVAS or h + 4 > _CANVAS:
            scale = (_CANVAS - 6) / max(w, h)
            px = _transform(fig, 0.0, False, height * scale)
            x0, y0, x1, y1 = _extent(px, OUTLINE)
            w, h = x1 - x0, y1 - y0
        local = _translate(px, 2 - x0, 2 - y0)  # extent starts at (2, 2) on the canvas
        for _ in range(30):
            left = rng.uniform(1, size - w - 5)
            top = rng.uniform(1, size - h - 5)
            candidate = np.array([left, top, left + w + 4, top + h + 4])
            if all(_overlap(candidate, b) < 0.1 for b in boxes):
                break
        else:
            if placed:
                continue
        ox, oy = int(left), int(top)
        # Contact shadow below the figure.
        shadow = np.zeros((size, size), np.float32)
        centre = (int(ox + 2 + w / 2), int(oy + 2 + h - 1))
        cv2.ellipse(shadow, centre, (max(int(w * 0.6), 2), max(int(2 + w * 0.08), 2)), 0, 0, 360,
                    1.0, -1)  # fmt: skip
        frame *= (1 - rng.uniform(0.25, 0.4) * cv2.GaussianBlur(shadow, (0, 0), 3))[..., None]
        rgb, alpha, _, (cx0, cy0) = _draw_figure(person, local, rng, False, limit=_CANVAS)
        ch, cw = alpha.shape
        fx, fy = ox + cx0, oy + cy0
        cw, ch = min(cw, size - fx), min(ch, size - fy)
        alpha, rgb = alpha[:ch, :cw], rgb[:ch, :cw]
        region = frame[fy : fy + ch, fx : fx + cw]
        region *= 1 - alpha[..., None]
        region += rgb
        ys, xs = np.nonzero(alpha > 0.05)
        box = np.array([fx + xs.min(), fy + ys.min(), fx + xs.max() + 1, fy + ys.max() + 1],
                       np.float32)  # fmt: skip
        mass = float(alpha.sum())
        seen = 1.0
        if rng.random() < OCCLUDE_PROB:
            seen = _occlude(frame, box, alpha, (fx, fy), rng) / max(mass, 1e-6)
        boxes.append(box)
        visible.append(seen)
        position = _third((box[0] + box[2]) / 2, size)
        placed.append(Attributes(person.colour, terrain, person.pose, position, person.helmet))

    # Lighting: level and a linear gradient, then sensor noise (as rescue-scenes).
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    light = rng.uniform(0.86, 1.1) * (
        1 + rng.uniform(0, 0.16) * (xx * math.cos(theta) + yy * math.sin(theta))
    )
    frame *= light[..., None]
    frame += rng.normal(0, 1.6, frame.shape).astype(np.float32)
    out = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    box_array = np.array(boxes, np.float32).reshape(-1, 4)
    return out, box_array, np.array(visible, np.float32), placed


def _occlude(
    frame: np.ndarray,
    box: np.ndarray,
    alpha: np.ndarray,
    origin: tuple[int, int],
    rng: np.random.Generator,
) -> float:
    """Cover one side (15–35 %) of a person's box with a slab; return the figure mass left."""
    x0, y0, x1, y1 = box
    share = rng.uniform(0.15, 0.35)
    side = int(rng.integers(4))
    if side == 0:
        cover = (x0 - 2, y1 - share * (y1 - y0), x1 + 2, y1 + 2)  # bottom
    elif side == 1:
        cover = (x0 - 2, y0 - 2, x1 + 2, y0 + share * (y1 - y0))  # top
    elif side == 2:
        cover = (x0 - 2, y0 - 2, x0 + share * (x1 - x0), y1 + 2)  # left
    else:
        cover = (x1 - share * (x1 - x0), y0 - 2, x1 + 2, y1 + 2)  # right
    grey = rng.uniform(80, 160)
    c0, c1 = np.floor(cover[:2]).astype(int), np.ceil(cover[2:]).astype(int)
    c0 = np.maximum(c0, 0)
    cv2.rectangle(
        frame, tuple(c0.tolist()), tuple((c1 - 1).tolist()), (grey, grey * 0.95, grey * 0.85), -1
    )
    cv2.rectangle(frame, tuple(c0.tolist()), tuple((c1 - 1).tolist()), (grey * 0.55,) * 3, 1)
    ox, oy = origin
    mask = np.ones_like(alpha)
    h, w = alpha.shape
    ax0, ay0 = max(c0[0] - ox, 0), max(c0[1] - oy, 0)
    ax1, ay1 = min(c1[0] - ox, w), min(c1[1] - oy, h)
    if ax1 > ax0 and ay1 > ay0:
        mask[ay0:ay1, ax0:ax1] = 0
    return float((alpha * mask).sum())


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / max(smaller, 1e-6))


def _triple(a: Attributes) -> tuple[str, str, str]:
    return (a.colour, a.pose, a.helmet)


def _random_person(terrain: str, colours: list[str], rng: np.random.Generator) -> Attributes:
    return Attributes(
        colours[int(rng.integers(len(colours)))],
        terrain,
        ATTRIBUTE_VALUES["pose"][int(rng.integers(3))],
        "center",
        ATTRIBUTE_VALUES["helmet"][int(rng.integers(2))],
    )


def draw_frame(split: str, index: int, seed: int, size: int = DEFAULT_SIZE) -> SearchFrame:
    """Frame `index` of `split`: people, query and captions drawn, then rendered."""
    rng = np.random.default_rng([seed, 100 + SPLITS.index(split), index])
    unseen = split == "test_unseen"
    terrains = ATTRIBUTE_VALUES["terrain"]
    terrain = terrains[int(rng.integers(len(terrains)))]
    seen_colours = _SEEN_COLOURS[terrain]
    # test_unseen: the query's colour×terrain pair is held out; the others may be anything.
    others = list(ATTRIBUTE_VALUES["colour"]) if unseen else seen_colours
    query_colours = _UNSEEN_COLOURS[terrain] if unseen else seen_colours
    absent = rng.random() < ABSENT_FRACTION
    count = int(rng.integers(0 if absent else 1, MAX_PEOPLE + 1))
    query = _random_person(terrain, query_colours, rng)
    people: list[Attributes] = [] if absent else [query]
    while len(people) < count:
        # Half the others share the query's colour (hard negatives: pose or helmet tells them
        # apart); every person differs from every other in (colour, pose, helmet).
        colours = [query.colour] if rng.random() < 0.5 and query.colour in others else others
        candidate = _random_person(terrain, colours, rng)
        if _triple(candidate) not in {_triple(p) for p in [query, *people]}:
            people.append(candidate)
    order = rng.permutation(len(people))
    people = [people[int(i)] for i in order]
    frame, boxes, visible, placed = render_frame(terrain, people, rng, size)
    # -1 also when the described person found no free place in a crowded small frame: the
    # query then describes nobody drawn, which is what "absent" means.
    query_person = next((i for i, p in enumerate(placed) if _triple(p) == _triple(query)), -1)
    stated = {"colour", "pose", "helmet"}
    captions = []
    for _ in range(CAPTIONS_PER_FRAME):
        with_terrain = stated | {"terrain"} if rng.random() < 0.5 else stated
        captions.append(phrase_for(query, with_terrain, Family.TRAIN, rng).caption)
    return SearchFrame(frame, boxes, placed, visible, query_person, query, captions)


def render_split(split: str, count: int, seed: int, size: int = DEFAULT_SIZE) -> SearchSplit:
    """Render `count` frames of a split into schema arrays."""
    a = len(ATTRIBUTE_NAMES)
    out = SearchSplit(
        frames=np.zeros((count, size, size, 3), np.uint8),
        people_counts=np.zeros(count, np.int8),
        boxes=np.zeros((count, MAX_PEOPLE, 4), np.float32),
        person_attributes=np.full((count, MAX_PEOPLE, a), -1, np.int16),
        visible=np.zeros((count, MAX_PEOPLE), np.float32),
        query_person=np.full(count, -1, np.int8),
        query_attributes=np.full((count, a), -1, np.int16),
        query_captions=[],
    )
    for i in range(count):
        item = draw_frame(split, i, seed, size)
        n = len(item.people)
        out.frames[i] = item.frame
        out.people_counts[i] = n
        out.boxes[i, :n] = item.boxes
        for j, person in enumerate(item.people):
            out.person_attributes[i, j] = person.indices
        out.visible[i, :n] = item.visible
        out.query_person[i] = item.query_person
        out.query_attributes[i] = item.query.indices
        out.query_attributes[i, _POSITION] = -1  # never stated
        out.query_captions.append(item.captions)
    return out


# ----------------------------------------------------------------------------------------------
# The file


def write_search(
    path: str | os.PathLike[str],
    splits: dict[str, SearchSplit],
    *,
    size: int,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write splits atomically in schema rescue-t2i-search v1."""
    path = Path(path)
    with atomic_path(path, make_parents=True) as tmp, h5py.File(tmp, "x") as f:
        f.attrs["schema"] = SCHEMA
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["dataset"] = DATASET_NAME
        f.attrs["frame_size"] = size
        f.attrs["max_people"] = MAX_PEOPLE
        f.attrs["attribute_names"] = json.dumps(list(ATTRIBUTE_NAMES))
        f.attrs["attribute_values"] = json.dumps({k: list(v) for k, v in ATTRIBUTE_VALUES.items()})
        f.attrs["provenance"] = json.dumps(provenance or {})
        for name, split in splits.items():
            g = f.create_group(name)
            # One frame per chunk, gzip 1: about 3× smaller, and a reader decompresses per frame.
            g.create_dataset(
                "frames", data=split.frames, chunks=(1, size, size, 3), compression="gzip",
                compression_opts=1,
            )  # fmt: skip
            for key in ("people_counts", "boxes", "person_attributes", "visible", "query_person",
                        "query_attributes"):  # fmt: skip
                g.create_dataset(key, data=getattr(split, key))
            g.create_dataset(
                "query_captions",
                data=np.array(split.query_captions, dtype=object),
                dtype=h5py.string_dtype("utf-8"),
            )
    return path


def _attr_int(f: h5py.File, key: str, low: int, high: int, where: str) -> int:
    value = f.attrs.get(key)
    value = value.item() if isinstance(value, np.generic) else value
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DataError(f"{where}: root attribute {key!r} is {value!r:.40}, expected {low}..{high}")
    return value


def read_search(path: str | os.PathLike[str], split: str) -> tuple[SearchSplit, int]:
    """Load a split (and the frame size), validating every key before and after reading."""
    path = Path(path)
    with open_hdf5(path) as f, damaged_file_guard(f"{path}:/{split}"):
        where = str(path)
        schema = f.attrs.get("schema")
        if schema != SCHEMA:
            raise DataError(
                f"{where}: root attribute 'schema' is {schema!r:.60}, expected {SCHEMA!r}"
            )
        _attr_int(f, "schema_version", 1, SCHEMA_VERSION, where)
        size = _attr_int(f, "frame_size", MIN_SIZE, MAX_SIZE, where)
        people = _attr_int(f, "max_people", 1, 16, where)
        names = f.attrs.get("attribute_names")
        try:
            same = json.loads(names) == list(ATTRIBUTE_NAMES)
        except (TypeError, ValueError, RecursionError):
            same = False
        if not same:
            raise DataError(
                f"{where}: root attribute 'attribute_names' is not {list(ATTRIBUTE_NAMES)}"
            )
        if split not in f or not isinstance(f[split], h5py.Group):
            raise DataError(f"{where}: no split {split!r} (has {sorted(f)})")
        g = f[split]
        at = f"{where}:/{split}"
        for key in ("frames", "people_counts", "boxes", "person_attributes", "visible",
                    "query_person", "query_attributes", "query_captions"):  # fmt: skip
            if not isinstance(g.get(key), h5py.Dataset):
                raise DataError(f"{at}/{key}: missing")
        n = g["frames"].shape[0] if g["frames"].ndim else 0
        a = len(ATTRIBUTE_NAMES)
        expect(g["frames"], f"{at}/frames", "u", (n, size, size, 3))
        expect(g["people_counts"], f"{at}/people_counts", "iu", (n,))
        expect(g["boxes"], f"{at}/boxes", "f", (n, people, 4))
        expect(g["person_attributes"], f"{at}/person_attributes", "iu", (n, people, a))
        expect(g["visible"], f"{at}/visible", "f", (n, people))
        expect(g["query_person"], f"{at}/query_person", "i", (n,))
        expect(g["query_attributes"], f"{at}/query_attributes", "i", (n, a))
        expect(g["query_captions"], f"{at}/query_captions", "O", (n, None))
        if g["frames"].dtype != np.uint8:
            raise DataError(f"{at}/frames: dtype {g['frames'].dtype}, expected uint8")
        out = SearchSplit(
            frames=g["frames"][()],
            people_counts=g["people_counts"][()].astype(np.int64),
            boxes=g["boxes"][()].astype(np.float32),
            person_attributes=g["person_attributes"][()].astype(np.int64),
            visible=g["visible"][()].astype(np.float32),
            query_person=g["query_person"][()].astype(np.int64),
            query_attributes=g["query_attributes"][()].astype(np.int64),
            query_captions=[],
        )
        raw = g["query_captions"][()]
        for i, row in enumerate(raw):
            texts = []
            for j, value in enumerate(row):
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                if not isinstance(text, str) or not 1 <= len(text) <= 1000:
                    raise DataError(f"{at}/query_captions: entry [{i}, {j}] is not a caption")
                texts.append(text)
            out.query_captions.append(texts)
    _check_values(out, size, at)
    return out, size


def _check_values(s: SearchSplit, size: int, at: str) -> None:
    """Values in range: a bad index would otherwise crash or silently mislabel far downstream."""
    people = s.boxes.shape[1]
    bad = np.nonzero((s.people_counts < 0) | (s.people_counts > people))[0]
    if len(bad):
        raise DataError(
            f"{at}/people_counts: entry {bad[0]} is {s.people_counts[bad[0]]}, expected 0..{people}"
        )
    valid = np.arange(people)[None, :] < s.people_counts[:, None]  # (N, P)
    b = s.boxes
    good = np.isfinite(b).all(-1) & (b[..., 0] >= 0) & (b[..., 1] >= 0) & (b[..., 2] <= size)
    good &= (b[..., 3] <= size) & (b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])
    bad_box = np.argwhere(valid & ~good)
    if len(bad_box):
        i, j = bad_box[0]
        raise DataError(f"{at}/boxes: entry [{i}, {j}] is not a box inside the {size}×{size} frame")
    sizes = np.array([len(ATTRIBUTE_VALUES[n]) for n in ATTRIBUTE_NAMES])
    attrs = s.person_attributes
    bad_attr = np.argwhere(valid[..., None] & ((attrs < 0) | (attrs >= sizes)))
    if len(bad_attr):
        i, j, k = bad_attr[0]
        raise DataError(f"{at}/person_attributes: entry [{i}, {j}, {k}] is out of range")
    q = s.query_person
    bad_q = np.nonzero((q < -1) | (q >= s.people_counts))[0]
    if len(bad_q):
        raise DataError(
            f"{at}/query_person: entry {bad_q[0]} is {q[bad_q[0]]}, not -1 or a person of its frame"
        )
    qa = s.query_attributes
    bad_qa = np.argwhere((qa < -1) | (qa >= sizes))
    if len(bad_qa):
        i, k = bad_qa[0]
        raise DataError(f"{at}/query_attributes: entry [{i}, {k}] is out of range")


# ----------------------------------------------------------------------------------------------
# Command line


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not MIN_SIZE <= value <= MAX_SIZE or value % 32:
        raise argparse.ArgumentTypeError(
            f"--size must be a multiple of 32 in {MIN_SIZE}..{MAX_SIZE}, got {value}"
        )
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be 0..1000000, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train data synth-search",
        description="Render search scenes: wide frames with 0-4 people and distractors, a query "
        "caption per frame, ground-truth boxes (schema rescue-t2i-search v1).",
    )
    p.add_argument("--out", default="data/rescue_search.h5", help="output HDF5")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, help="frame side (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=_count, default=2000, help="train frames (default 2000)")
    p.add_argument("--val", type=_count, default=300, help="val frames (default 300)")
    p.add_argument("--test", type=_count, default=500, help="test frames (default 500)")
    p.add_argument("--unseen", type=_count, default=500, help="test_unseen frames (default 500)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def main(argv: list[str] | None = None) -> int:
    """Render the splits and write the file; prints one JSON summary line."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"synth-search: {out}: already exists (--force replaces it)", file=sys.stderr)
        return 2
    counts = {"train": args.train, "val": args.val, "test": args.test, "test_unseen": args.unseen}
    start = time.perf_counter()
    splits = {name: render_split(name, n, args.seed, args.size) for name, n in counts.items()}
    rendered = time.perf_counter() - start
    provenance = {"seed": args.seed, "counts": counts, "generator_version": 1}
    write_search(out, splits, size=args.size, provenance=provenance)
    total = sum(counts.values())
    summary = {"out": str(out), "size": args.size, "splits": counts,
               "render_seconds": round(rendered, 2),
               "frames_per_second": round(total / max(rendered, 1e-9), 1)}  # fmt: skip
    print(json.dumps(summary))
    return 0
