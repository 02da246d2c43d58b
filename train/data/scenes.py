"""The rescue-scenes renderer: a person on textured terrain, 64×64 RGB, from attributes and a seed.

Design for learnability at 64×64 (an attribute oracle must reach ≥ 99 %, a GAN must learn the set
on a CPU):

- The figure is drawn at 4× (`FIGURE_SUPERSAMPLE`) as capsules with a dark outline, then
  area-averaged down, so edges are anti-aliased rather than jagged. The terrain is synthesised at
  2× and area-averaged too. Figure and terrain are composited at 64×64 with premultiplied alpha,
  which equals compositing at full resolution and downsampling (both steps are linear).
- Clothing covers torso, arms and legs in a saturated colour; terrains are desaturated and
  mid-toned, so every colour stands apart from every terrain: the dark outline separates white
  from snow, and black clothing (value ≈ 0.1) sits well below the darkest terrain tones (≈ 0.25).
- The helmet is a white dome with a brim, wider than the head; a bare head shows dark hair. The
  head is large (≈ 8 px across) so either is unmistakable at 64×64.
- Poses differ in silhouette: standing is a tall "I" (height ≈ 2–3× width), sitting an "L" seen
  from the side with legs stretched forward (about square), lying a standing body turned about
  90° (width ≈ 2–3× height).
- Position is where the figure's area-weighted centroid lies: the labelled third of the width,
  at least `POSITION_MARGIN` pixels from either boundary, with the whole figure inside the frame.

Per-image jitter: body size, proportions, limb angles, arm pose, facing, placement inside its
third, clothing shade, skin tone, terrain texture and base colour, shadow, lighting level and
gradient, sensor noise. Everything is drawn from the `numpy.random.Generator` passed in, so an
image depends only on its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from train.data.attributes import ATTRIBUTE_VALUES, Attributes

IMAGE_SIZE = 64
FIGURE_SUPERSAMPLE = 4
TERRAIN_SUPERSAMPLE = 2
POSITION_MARGIN = 2.5
"""Minimum distance (pixels at 64) from the figure's centroid to a third's boundary."""
OUTLINE = 0.8
"""Width of the figure's dark outline, pixels at 64."""

# Saturated clothing colours (RGB). Terrains below are kept desaturated so hue alone separates
# them; black and white are separated by value and by the outline.
CLOTHING_RGB: dict[str, tuple[int, int, int]] = {
    "red": (212, 28, 30),
    "orange": (250, 128, 16),
    "yellow": (248, 222, 28),
    "green": (28, 184, 52),
    "blue": (32, 72, 226),
    "purple": (142, 40, 192),
    "white": (246, 246, 246),
    "black": (26, 26, 28),
}
OUTLINE_RGB = (34, 30, 30)
HELMET_RGB = (244, 244, 238)
HAIR_RGB = (58, 38, 24)
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (236, 196, 164), (222, 172, 130), (190, 136, 96), (150, 100, 66), (112, 74, 50),
)  # fmt: skip

# Mask roles in SceneLayout.roles (for tests and debugging only).
ROLE_BACKGROUND, ROLE_OUTLINE, ROLE_CLOTHING, ROLE_SKIN, ROLE_HEADWEAR = 0, 1, 2, 3, 4


@dataclass
class SceneLayout:
    """What was drawn where, at 64×64: the renderer's ground truth for tests."""

    figure_alpha: np.ndarray
    """float32 (64, 64) in [0, 1]: figure coverage including the outline."""
    clothing: np.ndarray
    """float32 (64, 64) in [0, 1]: coverage by clothing fill (not outline, skin or headwear)."""
    headwear: np.ndarray
    """float32 (64, 64) in [0, 1]: coverage by helmet (helmet) or hair (no helmet)."""
    centroid: tuple[float, float]
    """(x, y) area-weighted figure centroid used for placement, pixels at 64."""


# ----------------------------------------------------------------------------------------------
# The figure: capsules (segment + radius) and polygons in body units (standing height = 1, y down)


@dataclass
class _Capsule:
    p0: tuple[float, float]
    p1: tuple[float, float]
    radius: float
    role: int
    shade: float  # clothing brightness factor (legs darker than torso reads as depth)


@dataclass
class _Figure:
    capsules: list[_Capsule]
    head_centre: tuple[float, float]
    head_radius: float
    up: tuple[float, float]  # unit vector from head centre towards the crown


def _polar(origin: tuple[float, float], length: float, angle_deg: float) -> tuple[float, float]:
    """Point at `length` from `origin`; angle 0 = straight down, positive = towards +x."""
    a = math.radians(angle_deg)
    return (origin[0] + length * math.sin(a), origin[1] + length * math.cos(a))


def _front_body(rng: np.random.Generator, lying: bool) -> _Figure:
    """A front-facing body, head at the top: the standing pose (and lying, once rotated)."""
    head_r = 0.105 * rng.uniform(0.94, 1.06)
    head = (0.0, -0.5 + head_r)
    neck_y = -0.5 + 2 * head_r
    torso_r = 0.115 * rng.uniform(0.92, 1.08)
    hip_y = 0.05
    shoulder_y = neck_y + 0.075
    caps = [_Capsule((0.0, shoulder_y), (0.0, hip_y), torso_r, ROLE_CLOTHING, 1.0)]
    arm_r, leg_r = 0.046, 0.056
    for side in (-1, 1):
        shoulder = (side * 0.10, shoulder_y + 0.01)
        if rng.random() < (0.45 if lying else 0.25):
            # Raised: waving for help, or (lying) stretched above the head along the body.
            upper = side * (rng.uniform(150, 172) if lying else rng.uniform(135, 170))
            lower = upper + side * rng.uniform(-15, 15)
        else:
            # Arms by the sides; a lying body keeps them closer so it stays long and thin.
            upper = side * (rng.uniform(4, 18) if lying else rng.uniform(8, 28))
            lower = upper + side * rng.uniform(-10, 18)
        elbow = _polar(shoulder, 0.17, upper)
        hand = _polar(elbow, 0.16, lower)
        caps.append(_Capsule(shoulder, elbow, arm_r, ROLE_CLOTHING, 0.93))
        caps.append(_Capsule(elbow, hand, arm_r, ROLE_CLOTHING, 0.93))
        caps.append(_Capsule(hand, hand, arm_r * 1.1, ROLE_SKIN, 1.0))
        hip = (side * 0.055, hip_y)
        spread = side * rng.uniform(0, 8)
        knee = _polar(hip, 0.22, spread)
        foot = _polar(knee, 0.5 - leg_r - knee[1], spread + side * rng.uniform(-3, 5))
        caps.append(_Capsule(hip, knee, leg_r, ROLE_CLOTHING, 0.8))
        caps.append(_Capsule(knee, foot, leg_r, ROLE_CLOTHING, 0.8))
    return _Figure(caps, head, head_r, (0.0, -1.0))


def _sitting_body(rng: np.random.Generator) -> _Figure:
    """Side view facing +x, sitting on the ground with legs stretched forward: an "L"."""
    head_r = 0.105 * rng.uniform(0.94, 1.06)
    torso_r = 0.11 * rng.uniform(0.92, 1.08)
    leg_r, arm_r = 0.056, 0.046
    hip = (0.0, 0.0)
    lean = rng.uniform(-14, 8)  # degrees from vertical; negative leans back
    shoulder = _polar(hip, 0.30, 180 - lean)
    up = (math.sin(math.radians(-lean)), -math.cos(math.radians(-lean)))
    head = (shoulder[0] + up[0] * (0.03 + head_r), shoulder[1] + up[1] * (0.03 + head_r))
    caps = [_Capsule(hip, shoulder, torso_r, ROLE_CLOTHING, 1.0)]
    knee_lift = rng.uniform(0, 30)  # thigh angle above horizontal
    for offset, shade in ((0.025, 0.72), (0.0, 0.8)):  # far leg first, slightly darker
        h = (hip[0] + offset, hip[1] + torso_r - leg_r)
        knee = _polar(h, 0.23, 90 + knee_lift)
        drop = min(max((h[1] - knee[1]) / 0.23, -1.0), 1.0)
        foot = _polar(knee, 0.23, 90 - math.degrees(math.asin(drop)))
        caps.append(_Capsule(h, knee, leg_r, ROLE_CLOTHING, shade))
        caps.append(_Capsule(knee, foot, leg_r, ROLE_CLOTHING, shade))
    if rng.random() < 0.5:  # hands resting on the knees
        elbow = _polar(shoulder, 0.16, rng.uniform(25, 45))
        hand = _polar(elbow, 0.15, rng.uniform(60, 85))
    else:  # propped up on an arm behind
        elbow = _polar(shoulder, 0.16, -rng.uniform(15, 30))
        hand = _polar(elbow, 0.15, -rng.uniform(5, 25))
    caps.append(_Capsule(shoulder, elbow, arm_r, ROLE_CLOTHING, 0.93))
    caps.append(_Capsule(elbow, hand, arm_r, ROLE_CLOTHING, 0.93))
    caps.append(_Capsule(hand, hand, arm_r * 1.1, ROLE_SKIN, 1.0))
    return _Figure(caps, head, head_r, up)


def _transform(fig: _Figure, angle_deg: float, mirror: bool, scale: float) -> _Figure:
    """Mirror in x, rotate by `angle_deg` (counter-clockwise on screen), scale to pixels."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))

    def point(p: tuple[float, float]) -> tuple[float, float]:
        x, y = (-p[0] if mirror else p[0]), p[1]
        return ((c * x + s * y) * scale, (-s * x + c * y) * scale)

    def direction(d: tuple[float, float]) -> tuple[float, float]:
        x, y = (-d[0] if mirror else d[0]), d[1]
        return (c * x + s * y, -s * x + c * y)

    caps = [
        _Capsule(point(k.p0), point(k.p1), k.radius * scale, k.role, k.shade) for k in fig.capsules
    ]
    return _Figure(caps, point(fig.head_centre), fig.head_radius * scale, direction(fig.up))


def _extent(fig: _Figure, pad: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) bounding box including radii, headwear and `pad`."""
    xs, ys = [], []
    for k in fig.capsules:
        r = k.radius + pad
        xs += [k.p0[0] - r, k.p0[0] + r, k.p1[0] - r, k.p1[0] + r]
        ys += [k.p0[1] - r, k.p0[1] + r, k.p1[1] - r, k.p1[1] + r]
    r = fig.head_radius * 1.45 + pad  # the helmet brim reaches 1.4 head radii
    hx, hy = fig.head_centre
    xs += [hx - r, hx + r]
    ys += [hy - r, hy + r]
    return min(xs), min(ys), max(xs), max(ys)


def _centroid(fig: _Figure) -> tuple[float, float]:
    """Area-weighted centre of the capsules and head (overlaps counted twice: ≈ 0.3 px error)."""
    total = sx = sy = 0.0
    for k in fig.capsules:
        length = math.dist(k.p0, k.p1)
        area = 2 * k.radius * length + math.pi * k.radius**2
        total += area
        sx += area * (k.p0[0] + k.p1[0]) / 2
        sy += area * (k.p0[1] + k.p1[1]) / 2
    area = math.pi * fig.head_radius**2
    total += area
    sx += area * fig.head_centre[0]
    sy += area * fig.head_centre[1]
    return sx / total, sy / total


def _pose_figure(a: Attributes, rng: np.random.Generator) -> tuple[_Figure, float]:
    """The figure in body units and its height in pixels at 64."""
    mirror = bool(rng.random() < 0.5)
    if a.pose == "standing":
        return _transform(_front_body(rng, False), rng.uniform(-5, 5), mirror, 1.0), rng.uniform(
            36, 44
        )
    if a.pose == "sitting":
        return _transform(_sitting_body(rng), rng.uniform(-4, 4), mirror, 1.0), rng.uniform(38, 46)
    turn = (90 if rng.random() < 0.5 else -90) + rng.uniform(-6, 6)
    return _transform(_front_body(rng, True), turn, mirror, 1.0), rng.uniform(30, 36)


def _place(a: Attributes, rng: np.random.Generator) -> tuple[_Figure, tuple[float, float]]:
    """Scale and translate the figure into the frame (pixels at 64); returns it and its centroid."""
    fig, height = _pose_figure(a, rng)
    third = IMAGE_SIZE / 3
    lo_third = ATTRIBUTE_VALUES["position"].index(a.position) * third + POSITION_MARGIN
    hi_third = lo_third + third - 2 * POSITION_MARGIN
    for _ in range(40):
        px = _transform(fig, 0.0, False, height)
        x0, y0, x1, y1 = _extent(px, OUTLINE)
        cx, cy = _centroid(px)
        # Centroid inside its third and the whole figure (1 px margin) inside the frame.
        lo = max(lo_third, 1 - x0 + cx)
        hi = min(hi_third, IMAGE_SIZE - 1 - x1 + cx)
        lo_y = max(1 - y0 + cy, 0.40 * IMAGE_SIZE)
        hi_y = min(IMAGE_SIZE - 1 - y1 + cy, 0.66 * IMAGE_SIZE)
        if lo <= hi and lo_y <= hi_y:
            tx = rng.uniform(lo, hi)
            ty = rng.uniform(lo_y, hi_y) if hi_y > lo_y else lo_y
            shift = _Figure(
                [
                    _Capsule(
                        (k.p0[0] - cx + tx, k.p0[1] - cy + ty),
                        (k.p1[0] - cx + tx, k.p1[1] - cy + ty),
                        k.radius,
                        k.role,
                        k.shade,
                    )
                    for k in px.capsules
                ],
                (px.head_centre[0] - cx + tx, px.head_centre[1] - cy + ty),
                px.head_radius,
                px.up,
            )
            return shift, (tx, ty)
        height *= 0.95  # too big for its third (wide lying poses): shrink until it fits
    raise AssertionError(f"cannot place a {a.pose} figure in the {a.position} third")


def _head_polygons(fig: _Figure, helmet: bool, s: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Helmet dome (+ brim) or hair cap as polygons in supersampled pixels (int32, shift 0)."""
    hx, hy = fig.head_centre
    ux, uy = fig.up
    vx, vy = -uy, ux  # across the head
    r = fig.head_radius
    angles = np.linspace(0, math.pi, 17)
    # Half-ellipses in local (across, up) units of the head radius: (half width, bottom, top).
    if helmet:
        half, bottom, top = 1.18 * r, 0.05 * r, 1.22 * r  # dome wider and taller than the head
        brim = [(-1.42 * r, bottom), (1.42 * r, bottom), (1.42 * r, bottom + 0.3 * r),
                (-1.42 * r, bottom + 0.3 * r)]  # fmt: skip
    else:
        half, bottom, top = 1.04 * r, -0.1 * r, 1.05 * r  # hair: a cap over the crown
        brim = None
    pts = [(half * math.cos(t), bottom + (top - bottom) * math.sin(t)) for t in angles]

    def to_px(local: list[tuple[float, float]]) -> np.ndarray:
        return (
            np.array(
                [[(hx + a * vx + b * ux) * s, (hy + a * vy + b * uy) * s] for a, b in local],
                dtype=np.float64,
            )
            .round()
            .astype(np.int32)
        )

    return to_px(pts), (to_px(brim) if brim is not None else None)


def _draw_figure(
    a: Attributes, fig: _Figure, rng: np.random.Generator, with_roles: bool, limit: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Draw at FIGURE_SUPERSAMPLE× into a canvas around the figure; return premultiplied
    RGB float32 (h, w, 3) and alpha (h, w) at 64-scale, roles (h·s, w·s) or None, and the
    canvas origin (x, y) in 64-pixels."""
    s = FIGURE_SUPERSAMPLE
    x0, y0, x1, y1 = _extent(fig, 1.0)
    ox, oy = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
    w = min(math.ceil(x1) + 1, limit) - ox  # `limit`: the canvas side (search frames: larger)
    h = min(math.ceil(y1) + 1, limit) - oy
    moved = _Figure(
        [
            _Capsule((k.p0[0] - ox, k.p0[1] - oy), (k.p1[0] - ox, k.p1[1] - oy), k.radius, k.role,
                     k.shade)
            for k in fig.capsules
        ],
        (fig.head_centre[0] - ox, fig.head_centre[1] - oy),
        fig.head_radius,
        fig.up,
    )  # fmt: skip
    rgb = np.zeros((h * s, w * s, 3), np.uint8)
    alpha = np.zeros((h * s, w * s), np.uint8)
    roles = np.zeros((h * s, w * s), np.uint8) if with_roles else None
    base = np.array(CLOTHING_RGB[a.colour], np.float64) * rng.uniform(0.93, 1.05)
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    outline_px = OUTLINE * s

    def pt(p: tuple[float, float]) -> tuple[int, int]:
        return (round(p[0] * s), round(p[1] * s))

    def capsule(img: np.ndarray, k: _Capsule, colour: object, extra: float) -> None:
        thickness = max(round(2 * (k.radius * s + extra)), 1)
        cv2.line(img, pt(k.p0), pt(k.p1), colour, thickness, cv2.LINE_AA)

    head = _Capsule(moved.head_centre, moved.head_centre, moved.head_radius, ROLE_SKIN, 1.0)
    dome, brim = _head_polygons(moved, a.has_helmet, s)
    # Outline pass: every part grown by the outline width, in the outline colour.
    for k in [*moved.capsules, head]:
        capsule(rgb, k, OUTLINE_RGB, outline_px)
        capsule(alpha, k, 255, outline_px)
    for poly in (dome, brim):
        if poly is not None:
            cv2.polylines(rgb, [poly], True, OUTLINE_RGB, round(2 * outline_px), cv2.LINE_AA)
            cv2.polylines(alpha, [poly], True, 255, round(2 * outline_px), cv2.LINE_AA)
            cv2.fillPoly(alpha, [poly], 255, cv2.LINE_AA)
    # Fill pass, back to front: clothing, skin, then headwear over the crown.
    for k in moved.capsules:
        colour = base * k.shade if k.role == ROLE_CLOTHING else np.array(skin, np.float64)
        capsule(rgb, k, tuple(np.clip(colour, 0, 255).tolist()), 0.0)
        if roles is not None:
            capsule(roles, k, k.role, 0.0)
    # A highlight stripe along the torso and limbs reads as a lit, rounded body.
    for k in moved.capsules:
        if k.role == ROLE_CLOTHING:
            lit = np.clip(base * k.shade * 0.75 + 255 * 0.25, 0, 255)
            shift = (-k.radius * 0.35, -k.radius * 0.2)
            stripe = _Capsule(
                (k.p0[0] + shift[0], k.p0[1] + shift[1]),
                (k.p1[0] + shift[0], k.p1[1] + shift[1]),
                k.radius * 0.3,
                k.role,
                k.shade,
            )
            capsule(rgb, stripe, tuple(lit.tolist()), 0.0)
    capsule(rgb, head, skin, 0.0)
    if roles is not None:
        capsule(roles, head, ROLE_SKIN, 0.0)
    headwear = HELMET_RGB if a.has_helmet else HAIR_RGB
    for poly in (dome, brim):
        if poly is not None:
            cv2.fillPoly(rgb, [poly], headwear, cv2.LINE_AA)
            if roles is not None:
                cv2.fillPoly(roles, [poly], ROLE_HEADWEAR)
    # INTER_AREA over s×s blocks: exact box-filter downsampling of the supersampled canvas.
    small_alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    small_rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    return small_rgb, small_alpha, roles, (ox, oy)


# ----------------------------------------------------------------------------------------------
# Terrain: synthesised at TERRAIN_SUPERSAMPLE× from value noise and strokes, desaturated tones.


_TERRAIN_SIZE = IMAGE_SIZE * TERRAIN_SUPERSAMPLE
_TERRAIN_YY, _TERRAIN_XX = np.mgrid[0:_TERRAIN_SIZE, 0:_TERRAIN_SIZE].astype(np.float32)
# Image coordinates in [-0.5, 0.5) for the lighting gradient, (64, 64) each.
_LIGHT_YY, _LIGHT_XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE - 0.5


def _fractal_noise(rng: np.random.Generator, size: int, cells: tuple[int, ...]) -> np.ndarray:
    """Sum of bicubic-upsampled random grids, zero mean, about unit range: float32 (size, size)."""
    total = np.zeros((size, size), np.float32)
    weight = 1.0
    for n in cells:
        grid = rng.standard_normal((n + 3, n + 3)).astype(np.float32)
        big = cv2.resize(grid, (size * (n + 3) // n, size * (n + 3) // n), cv2.INTER_CUBIC)
        off = size * 3 // (2 * n)
        total += weight * big[off : off + size, off : off + size]
        weight *= 0.55
    return total / 2.0


def _terrain(name: str, rng: np.random.Generator, size: int = _TERRAIN_SIZE) -> np.ndarray:
    """Terrain texture, float32 (size, size, 3) RGB in 0..255; default size 64·TERRAIN_SUPERSAMPLE.

    Other sizes (search frames, train/data/search_scenes.py) keep the texture's scale and scale
    the number of stones, blades and puddles with the area; at the default size every draw is the
    same as before, so rescue-scenes images are unchanged for a seed."""
    area = (size / _TERRAIN_SIZE) ** 2

    def count(low: int, high: int) -> int:
        n = int(rng.integers(low, high))
        return n if size == _TERRAIN_SIZE else round(n * area)

    def cells(*grid: int) -> tuple[int, ...]:  # noise cells per side: same feature size in px
        return (
            grid
            if size == _TERRAIN_SIZE
            else tuple(max(1, round(g * size / _TERRAIN_SIZE)) for g in grid)
        )

    if size == _TERRAIN_SIZE:
        grid_yy, grid_xx = _TERRAIN_YY, _TERRAIN_XX
    else:
        grid_yy, grid_xx = np.mgrid[0:size, 0:size].astype(np.float32)
    j = rng.uniform(0.95, 1.05, 3)  # per-image base colour jitter
    if name == "rubble":
        base = np.array([132, 128, 122]) * j
        img = np.empty((size, size, 3), np.float32)
        img[:] = base
        img *= (1 + 0.12 * _fractal_noise(rng, size, cells(4, 8)))[..., None]
        n = count(45, 70)
        centres = rng.uniform(0, size, (n, 1, 2))
        # Six-vertex chunks with jittered radii and angles: irregular convex-ish stones.
        angles = np.sort(rng.uniform(0, 2 * math.pi, (n, 6)), axis=1)
        radii = rng.uniform(3, 11, (n, 1)) * rng.uniform(0.6, 1.0, (n, 6))
        polys = centres + radii[..., None] * np.stack([np.cos(angles), np.sin(angles)], -1)
        polys = polys.astype(np.int32)  # (n, 6, 2)
        greys = rng.uniform(95, 178, n)
        tints = rng.uniform(0.96, 1.03, (n, 3))
        for poly, grey, tint in zip(polys, greys, tints, strict=True):
            cv2.fillPoly(img, [poly], (grey * tint).tolist())
            cv2.polylines(img, [poly], True, (grey * 0.62,) * 3, 1)
    elif name == "grass":
        base = np.array([72, 122, 46]) * j
        img = np.empty((size, size, 3), np.float32)
        img[:] = base
        img *= (1 + 0.18 * _fractal_noise(rng, size, cells(4, 8, 16)))[..., None]
        n = count(350, 500)
        roots = rng.uniform(0, size, (n, 2))
        lengths, tilts = rng.uniform(3, 8, n), rng.uniform(-0.5, 0.5, n)
        tips = roots + np.stack([tilts * lengths, -lengths], 1)
        blades = np.stack([roots, tips], 1).astype(np.int32)  # (n, 2, 2)
        # Blades in five shade groups: one polylines call per group instead of one per blade.
        groups = rng.integers(0, 5, n)
        for g, shade in enumerate((0.65, 0.8, 0.95, 1.12, 1.3)):
            cv2.polylines(img, list(blades[groups == g]), False, (base * shade).tolist(), 1)
    elif name == "sand":
        base = np.array([212, 188, 140]) * j
        img = np.empty((size, size, 3), np.float32)
        img[:] = base
        yy, xx = grid_yy, grid_xx
        period = rng.uniform(9, 15)
        warp = 6 * _fractal_noise(rng, size, cells(3, 6))
        theta = rng.uniform(-0.5, 0.5)
        along = yy * math.cos(theta) + xx * math.sin(theta)
        ripples = np.sin(2 * math.pi * (along + warp) / period)
        grain = rng.standard_normal((size, size)).astype(np.float32)
        img *= (
            1
            + 0.07 * ripples
            + 0.035 * grain
            + 0.06
            * _fractal_noise(
                rng,
                size,
                cells(
                    4,
                ),
            )
        )[..., None]
    elif name == "snow":
        base = np.array([186, 203, 234]) * np.clip(j, 0.97, 1.03)
        img = np.empty((size, size, 3), np.float32)
        img[:] = base
        shade = 0.07 * _fractal_noise(rng, size, cells(3, 6, 12))
        # Shadows in snow are bluish: darken red and green more than blue.
        img *= 1 + shade[..., None] * np.array([1.25, 1.1, 0.7], np.float32)
        n = count(40, 80)
        for x, y in rng.uniform(0, size, (n, 2)):
            cv2.circle(img, (int(x), int(y)), 0, (252, 252, 255), -1)
    elif name == "water":
        base = np.array([46, 98, 130]) * j
        img = np.empty((size, size, 3), np.float32)
        img[:] = base
        yy = grid_yy
        warp = 5 * _fractal_noise(rng, size, cells(3, 6))
        waves = np.sin(2 * math.pi * (yy + warp) / rng.uniform(6, 10))
        img *= (1 + 0.10 * waves + 0.12 * _fractal_noise(rng, size, cells(4, 8)))[..., None]
        n = count(30, 55)
        xs, ys = rng.uniform(0, size, (2, n)).astype(int)
        lengths, glints = rng.uniform(4, 12, n).astype(int), rng.uniform(1.45, 1.8, n)
        for x, y, length, glint in zip(xs, ys, lengths, glints, strict=True):
            cv2.ellipse(img, (x, y), (length, 1), 0, 0, 360, (base * glint).tolist(), -1)
    elif name == "mud":
        base = np.array([104, 76, 50]) * j
        img = np.empty((size, size, 3), np.float32)
        img[:] = base
        blotch = _fractal_noise(rng, size, cells(4, 8, 16))
        img *= (1 + 0.22 * blotch)[..., None]
        n = count(5, 12)
        for x, y in rng.uniform(0, size, (n, 2)):
            axes = (int(rng.uniform(4, 12)), int(rng.uniform(2, 5)))
            colour = tuple((base * rng.uniform(1.2, 1.4)).tolist())  # wet, glossy puddles
            cv2.ellipse(img, (int(x), int(y)), axes, rng.uniform(-20, 20), 0, 360, colour, -1)
    else:
        raise ValueError(f"unknown terrain {name!r}")
    return img


# ----------------------------------------------------------------------------------------------


def render_scene(
    attributes: Attributes, rng: np.random.Generator, *, with_layout: bool = False
) -> tuple[np.ndarray, SceneLayout | None]:
    """Render one scene: uint8 (64, 64, 3) RGB, and its layout when `with_layout`."""
    size = IMAGE_SIZE
    fig, centroid = _place(attributes, rng)
    terrain_big = _terrain(attributes.terrain, rng)
    terrain = cv2.resize(terrain_big, (size, size), interpolation=cv2.INTER_AREA)  # (64, 64, 3)

    # Soft contact shadow under the figure (below the feet, or along a lying body).
    x0, _, x1, y1 = _extent(fig, 0.0)
    shadow = np.zeros((size * 2, size * 2), np.float32)
    centre = (int(x0 + x1), int(y1 * 2 - 2))  # at 2× scale
    axes = (max(int((x1 - x0) * 0.6), 2), max(int(2 + (x1 - x0) * 0.08), 2))
    cv2.ellipse(shadow, centre, axes, 0, 0, 360, 1.0, -1)
    shadow = cv2.resize(cv2.GaussianBlur(shadow, (0, 0), 3), (size, size), cv2.INTER_AREA)
    terrain *= (1 - rng.uniform(0.25, 0.4) * shadow)[..., None]

    rgb, alpha, roles, (ox, oy) = _draw_figure(attributes, fig, rng, with_layout)
    h, w = alpha.shape
    image = terrain
    region = image[oy : oy + h, ox : ox + w]
    region *= 1 - alpha[..., None]
    region += rgb  # premultiplied: cv2 anti-aliasing blended the figure with a black canvas

    # Lighting: overall level and a linear gradient in a random direction; then sensor noise.
    level = rng.uniform(0.86, 1.1)
    theta = rng.uniform(0, 2 * math.pi)
    gradient = _LIGHT_XX * math.cos(theta) + _LIGHT_YY * math.sin(theta)
    light = level * (1 + rng.uniform(0, 0.16) * gradient)
    image *= light[..., None]
    image += rng.normal(0, 1.6, image.shape).astype(np.float32)
    out = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    layout = None
    if with_layout:
        assert roles is not None
        s = FIGURE_SUPERSAMPLE

        def coverage(mask: np.ndarray) -> np.ndarray:
            full = np.zeros((size, size), np.float32)
            full[oy : oy + h, ox : ox + w] = cv2.resize(
                mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA
            )
            return full

        assert roles.shape == (h * s, w * s)
        figure_alpha = np.zeros((size, size), np.float32)
        figure_alpha[oy : oy + h, ox : ox + w] = alpha
        layout = SceneLayout(
            figure_alpha=figure_alpha,
            clothing=coverage(roles == ROLE_CLOTHING),
            headwear=coverage(roles == ROLE_HEADWEAR),
            centroid=centroid,
        )
    return out, layout
