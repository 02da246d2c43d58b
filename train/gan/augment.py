"""Differentiable augmentation of every image D sees (DiffAugment, Zhao et al. 2020), restricted
to transformations that keep every rescue-scenes attribute.

D overfits its real images long before G catches up (its adversarial loss reached 0.001;
docs/GAN_TRAINING.md § D regularisers); showing it randomly shifted and partly masked images,
real and fake alike, takes away the pixel-exact cues it memorises, and because the
transformations are differentiable G still gets a gradient through them. Only two kinds are allowed:

- translation by at most a few pixels (`max_shift`), replicate-padded: the figure stays in its
  left / centre / right third (a third is 21 px) and the terrain runs on to the border;
- cutout of one square per image (`cutout` × the side), set to 0 (mid-grey), as DiffAugment.

Never colour (colour is an attribute) and never flips (left/right position is one). The random
parameters are drawn by the caller from a generator seeded by (seed, step, stream), so
augmentation is a pure function of the step like the noise (exact --resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("translation", "cutout")
FORBIDDEN = {"color": "colour is an attribute", "colour": "colour is an attribute",
             "flip": "left/right position is an attribute",
             "hflip": "left/right position is an attribute"}  # fmt: skip


def parse_policy(text: str) -> str:
    """Canonical policy from a flag value: "none", "translation", "cutout", "translation,cutout".

    Raises ValueError naming the offending kind (argparse turns it into one line).
    """
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    if not kinds or kinds == ["none"]:
        return "none"
    for kind in kinds:
        if kind in FORBIDDEN:
            raise ValueError(f"{kind!r} is not allowed: {FORBIDDEN[kind]}")
        if kind not in KINDS:
            raise ValueError(f"unknown augmentation {kind!r} (translation, cutout or none)")
    return ",".join(k for k in KINDS if k in kinds)


@dataclass(frozen=True)
class AugmentParams:
    """Per-image random parameters for a batch of N images."""

    shift_yx: torch.Tensor
    """int64 (N, 2) in [−max_shift, max_shift]: content moves down / right by this much."""
    centre_yx: torch.Tensor
    """int64 (N, 2) in [0, side): centre of the cutout square (−side: no cutout for that image)."""


def draw_params(
    count: int, side: int, max_shift: int, gen: torch.Generator, probability: float = 1.0
) -> AugmentParams:
    """Random parameters for `count` images (CPU, from `gen`).

    Each image is transformed with `probability` (ADA's p, Karras et al. 2020, held fixed); an
    image left alone gets shift 0 and a cutout square centred a whole side off the image, so
    `augment` returns it unchanged. At probability 1 nothing extra is drawn: the same stream as
    before the option existed, so older runs resume bit-exactly.
    """
    shift = torch.randint(-max_shift, max_shift + 1, (count, 2), generator=gen)
    centre = torch.randint(0, side, (count, 2), generator=gen)
    if probability < 1.0:
        applied = torch.rand(count, generator=gen) < probability  # (N,)
        shift = torch.where(applied[:, None], shift, torch.zeros_like(shift))
        centre = torch.where(applied[:, None], centre, torch.full_like(centre, -side))
    return AugmentParams(shift, centre)


def translate(images: torch.Tensor, shift_yx: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image (B, C, H, W) by its (dy, dx), replicate-padded; differentiable."""
    b, _, h, w = images.shape
    s = max_shift
    padded = F.pad(images, (s, s, s, s), mode="replicate")  # (B, C, H+2s, W+2s)
    shift = shift_yx.to(images.device)
    rows = (s - shift[:, :1]) + torch.arange(h, device=images.device)  # (B, H)
    cols = (s - shift[:, 1:]) + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indices around a slice put the broadcast dims first: (B, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)  # (B, C, H, W), channels-last in memory


def cutout(images: torch.Tensor, centre_yx: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero one square of side `fraction` × H per image (B, C, H, W); differentiable."""
    _, _, h, w = images.shape
    side = max(1, round(fraction * h))
    start = centre_yx.to(images.device) - side // 2  # (B, 2); the square may cross the border
    y = torch.arange(h, device=images.device)[None, :]  # (1, H)
    x = torch.arange(w, device=images.device)[None, :]  # (1, W)
    inside_y = (y >= start[:, :1]) & (y < start[:, :1] + side)  # (B, H)
    inside_x = (x >= start[:, 1:]) & (x < start[:, 1:] + side)  # (B, W)
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])  # (B, H, W)
    return images * keep[:, None].to(images.dtype)


def augment(
    images: torch.Tensor, policy: str, params: AugmentParams, max_shift: int, fraction: float
) -> torch.Tensor:
    """`images` (B, C, H, W) with `policy`'s transformations applied ("none": unchanged)."""
    if "translation" in policy:
        images = translate(images, params.shift_yx, max_shift)
    if "cutout" in policy:
        images = cutout(images, params.centre_yx, fraction)
    return images
