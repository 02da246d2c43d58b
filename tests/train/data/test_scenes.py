"""rescue-scenes renderer: the labels agree with the pixels (numpy + OpenCV only)."""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from train.data.attributes import ATTRIBUTE_VALUES, Attributes
from train.data.scenes import IMAGE_SIZE, render_scene

# Reference hues (degrees) of the chromatic clothing colours.
_HUES = {"red": 0, "orange": 28, "yellow": 54, "green": 130, "blue": 226, "purple": 280}


def _render(a: Attributes, seed: int) -> tuple[np.ndarray, object]:
    image, layout = render_scene(a, np.random.default_rng(seed), with_layout=True)
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
    return image, layout


def _classify_colour(rgb: np.ndarray) -> str:
    """Name the clothing colour of a median RGB pixel from its hue, saturation and value."""
    hsv = cv2.cvtColor(rgb.reshape(1, 1, 3).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)[0, 0]
    hue, sat, val = int(hsv[0]) * 360 / 256, int(hsv[1]) / 255, int(hsv[2]) / 255
    if sat < 0.2:
        return "white" if val > 0.6 else "black" if val < 0.25 else "grey"
    return min(_HUES, key=lambda c: min(abs(hue - _HUES[c]), 360 - abs(hue - _HUES[c])))


def test_render_scene_clothing_pixels_have_the_labelled_colour_on_every_terrain() -> None:
    rng = np.random.default_rng(0)
    for seed, (colour, terrain) in enumerate(
        itertools.product(ATTRIBUTE_VALUES["colour"], ATTRIBUTE_VALUES["terrain"])
    ):
        pose, position, helmet = (str(rng.choice(ATTRIBUTE_VALUES[n])) for n in
                                  ("pose", "position", "helmet"))  # fmt: skip
        a = Attributes(colour, terrain, pose, position, helmet)
        image, layout = _render(a, seed)
        inside = layout.clothing > 0.99
        assert inside.sum() >= 40, f"{a.name}: only {inside.sum()} clothing pixels"
        median = np.median(image[inside], axis=0)
        assert _classify_colour(median) == colour, f"{a.name}: median clothing RGB {median}"


def test_render_scene_clothing_stands_out_from_the_terrain() -> None:
    # The hardest pairs: similar colour and terrain. Over poses and lighting, the clothing's
    # median colour differs from the terrain's by > 30 levels in some channel (typically; > 12
    # always), and the dark outline separates the rest.
    hardest = [("white", "snow"), ("black", "mud"), ("black", "rubble"), ("green", "grass"),
               ("blue", "water"), ("yellow", "sand"), ("black", "water")]  # fmt: skip
    for colour, terrain in hardest:
        gaps = []
        for seed in range(9):
            pose = ATTRIBUTE_VALUES["pose"][seed % 3]
            image, layout = _render(Attributes(colour, terrain, pose, "center", "no"), seed)
            figure = np.median(image[layout.clothing > 0.99].astype(float), axis=0)
            background = np.median(image[layout.figure_alpha < 0.01].astype(float), axis=0)
            gaps.append(np.abs(figure - background).max())
        assert np.median(gaps) > 30 and min(gaps) > 12, f"{colour} on {terrain}: {gaps}"


def _bbox(alpha: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(alpha > 0.5)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def test_render_scene_pose_shapes_lying_wide_standing_tall_sitting_compact() -> None:
    ratios: dict[str, list[float]] = {"standing": [], "sitting": [], "lying": []}
    for seed in range(30):
        position = ATTRIBUTE_VALUES["position"][seed % 3]
        helmet = ATTRIBUTE_VALUES["helmet"][seed % 2]
        for pose, values in ratios.items():
            _, layout = _render(Attributes("red", "sand", pose, position, helmet), seed)
            w, h = _bbox(layout.figure_alpha)
            values.append(w / h)
            if pose == "standing":
                assert h >= 30, f"standing figure only {h} px tall (seed {seed})"
    # Every lying figure is wider than tall and every standing one taller than wide, by a
    # margin; sitting ("L" from the side) is about square. Typical figures differ far more.
    assert min(ratios["lying"]) > 1.2 and np.median(ratios["lying"]) > 1.7
    assert max(ratios["standing"]) < 1 / 1.2 and np.median(ratios["standing"]) < 1 / 1.6
    assert min(ratios["sitting"]) > 0.75 and max(ratios["sitting"]) < 1.35


def test_render_scene_position_matches_the_figure_centroid() -> None:
    third = IMAGE_SIZE / 3
    for seed in range(60):
        pose = ATTRIBUTE_VALUES["pose"][seed % 3]
        position = ATTRIBUTE_VALUES["position"][(seed // 3) % 3]
        _, layout = _render(Attributes("blue", "grass", pose, position, "yes"), seed)
        alpha = layout.figure_alpha
        assert alpha[0].max() < 0.5 and alpha[-1].max() < 0.5, "figure cut by the frame"
        assert alpha[:, 0].max() < 0.5 and alpha[:, -1].max() < 0.5, "figure cut by the frame"
        xs = np.arange(IMAGE_SIZE) + 0.5
        cx = (alpha.sum(0) * xs).sum() / alpha.sum()
        assert int(cx // third) == ("left", "center", "right").index(position), (
            f"{pose}/{position}: centroid x {cx:.1f}"
        )


def test_render_scene_helmet_is_a_bright_dome_and_bare_heads_show_dark_hair() -> None:
    for seed in range(24):
        pose = ATTRIBUTE_VALUES["pose"][seed % 3]
        colour = ATTRIBUTE_VALUES["colour"][seed % 8]
        for helmet in ("yes", "no"):
            image, layout = _render(Attributes(colour, "mud", pose, "center", helmet), seed)
            head = layout.headwear > 0.9
            assert head.sum() >= 4, f"{helmet}: headwear covers {head.sum()} pixels"
            value = image[head].mean(1).mean()
            if helmet == "yes":
                assert value > 170, f"helmet mean value {value:.0f} ({colour}, {pose})"
            else:
                assert value < 90, f"hair mean value {value:.0f} ({colour}, {pose})"


def test_render_scene_is_deterministic_per_seed_and_no_two_images_alike() -> None:
    a = Attributes("orange", "rubble", "lying", "left", "no")
    first = render_scene(a, np.random.default_rng(11))[0]
    assert np.array_equal(first, render_scene(a, np.random.default_rng(11))[0])
    others = [render_scene(a, np.random.default_rng(seed))[0] for seed in range(12, 20)]
    for i, other in enumerate(others):
        assert np.abs(first.astype(int) - other).mean() > 8
        for later in others[i + 1 :]:
            assert np.abs(other.astype(int) - later).mean() > 8


def test_render_scene_edges_are_antialiased_by_supersampling() -> None:
    _, layout = _render(Attributes("white", "grass", "standing", "center", "yes"), 3)
    alpha = layout.figure_alpha
    partial = ((alpha > 0.05) & (alpha < 0.95)).sum()
    solid = (alpha >= 0.95).sum()
    # The outline of a ~40 px figure crosses many pixels partially: a hard-edged (aliased)
    # render would have none.
    assert partial > 0.1 * solid
