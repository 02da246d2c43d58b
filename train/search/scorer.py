"""The frame scorer: the joint image encoder made fully convolutional, at two scales (issue 20).

`ImageEncoder` (train/models.py) maps a 64×64 picture through four stride-2 convolutions to a
(C, 4, 4) map and a linear layer over that map to the joint embedding. A linear layer over a 4×4
map *is* a 4×4 convolution, so the same weights applied to a whole frame give one embedding per
64×64 window, 16 pixels apart: on a 64×64 frame exactly the encoder's embedding (tested); inside
a larger frame a window differs only where the encoder saw zero padding and the frame shows the
window's neighbours. That is where the scorer starts; fine-tuning then teaches it that a window
centred on a person embeds near that person's captions, and background or another person does not.

Per scale s (frame average-pooled by 1/s first: s = 1 sees people up to ~64 px, s = 1/2 up to
~128 px):

    frame (B, 3, S, S) → pool → (B, 3, S·s, S·s) → trunk → (B, C, S·s/16, S·s/16)
      → head: 4×4 conv → window embeddings (B, E, h, w), h = S·s/16 − 3
      → joint: 1×1 conv (E → D), L2-normalised per cell
      → score: σ(τ · cos(cell, text) + β)                          (B, h, w)
      → box:   4×4 conv → (dx, dy, log w, log h) → frame pixels    (B, 4, h, w)

The text side is `joint_text` (E → D, started equal to the image side's projection) on the frozen
text encoder's embedding. `fold` composes head and joint projection into one 4×4 convolution
(E → D: far fewer channels) and BatchNorm into the convolutions for export.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from train.models import ImageEncoder, ImageEncoderConfig

WINDOW = 64
"""Side of the window one cell sees, in pixels of its scale (the encoder's input size)."""


@dataclass(frozen=True)
class ScorerConfig:
    """The scorer's shape; saved in its checkpoint so the network rebuilds from it alone."""

    channels: tuple[int, ...] = (32, 64, 128, 256)
    """Trunk widths: the image encoder's (its weights are loaded into the trunk)."""
    embedding_dim: int = 1024
    """The text (and image) encoder's embedding size."""
    joint_dim: int = 128
    """Size of the scoring space: the 4×4 head outputs this many channels once folded."""
    scales: tuple[float, ...] = (1.0, 0.5)
    frame_size: int = 256
    """Side of the square frame the exported graph takes."""

    def __post_init__(self) -> None:
        stride = 2 ** len(self.channels)
        if 4 * stride != WINDOW:
            raise ValueError(f"{len(self.channels)} stages give stride {stride}, not {WINDOW // 4}")
        if not 1 <= self.joint_dim <= self.embedding_dim:
            raise ValueError(f"joint_dim {self.joint_dim} must be 1..{self.embedding_dim}")
        for s in self.scales:
            side = self.frame_size * s
            if side != int(side) or int(side) % stride or side < WINDOW:
                raise ValueError(f"scale {s}: frame {self.frame_size} → {side} px, not a multiple "
                                 f"of {stride} ≥ {WINDOW}")  # fmt: skip

    @property
    def stride(self) -> int:
        return 2 ** len(self.channels)

    def cells(self, frame_size: int | None = None) -> list[tuple[int, int]]:
        """(h, w) of each scale's score map for a square frame."""
        side = frame_size or self.frame_size
        out = []
        for s in self.scales:
            n = int(side * s) // self.stride - 3
            out.append((n, n))
        return out


class FrameScorer(nn.Module):
    """(frame (B, 3, S, S) in [-1, 1], text embedding (B, E)) → per scale: scores (B, h, w) in
    [0, 1] and boxes (B, 4, h, w) in frame pixels, flattened as [scores_0, boxes_0, scores_1, …]."""

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in config.channels:
            layers += [
                nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, config.embedding_dim, 4)
        self.joint_image = nn.Conv2d(config.embedding_dim, config.joint_dim, 1, bias=False)
        self.joint_text = nn.Linear(config.embedding_dim, config.joint_dim, bias=False)
        self.box = nn.Conv2d(c_in, 4, 4)
        self.logit_scale = nn.Parameter(torch.tensor(10.0))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))
        with torch.no_grad():
            # A random projection keeps cosines roughly (Johnson–Lindenstrauss): the pretrained
            # space survives the move to joint_dim; both sides start with the same matrix.
            q, _ = torch.linalg.qr(torch.randn(config.embedding_dim, config.joint_dim))
            self.joint_image.weight.copy_(q.T[:, :, None, None])
            self.joint_text.weight.copy_(q.T)
            nn.init.zeros_(self.box.weight)
            nn.init.zeros_(self.box.bias)

    @classmethod
    def from_image_encoder(cls, encoder: ImageEncoder, config: ScorerConfig) -> FrameScorer:
        """A scorer whose trunk and head are the encoder's (the linear layer as a 4×4 conv)."""
        enc: ImageEncoderConfig = encoder.config
        if tuple(enc.channels) != tuple(config.channels) or enc.extra_convs:
            raise ValueError(f"image encoder stages {enc.channels} (+{enc.extra_convs} extra) do "
                             f"not match the scorer's {config.channels}")  # fmt: skip
        if enc.embedding_dim != config.embedding_dim or enc.image_size != WINDOW:
            raise ValueError("image encoder embedding size or image size does not fit the scorer")
        scorer = cls(config)
        scorer.trunk.load_state_dict(encoder.features.state_dict())
        with torch.no_grad():
            c = config.channels[-1]
            # ImageEncoder flattens (C, 4, 4) row-major: weight column c·16 + y·4 + x.
            scorer.head.weight.copy_(encoder.project.weight.view(config.embedding_dim, c, 4, 4))
            scorer.head.bias.copy_(encoder.project.bias)
        return scorer

    def window_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """The encoder's embedding of every 64×64 window, 16 px apart: (B, E, h, w)."""
        return self.head(self.trunk(frames))

    def text(self, text_embedding: torch.Tensor) -> torch.Tensor:
        """(B, E) → unit vectors in the scoring space (B, D)."""
        return F.normalize(self.joint_text(text_embedding), dim=1)

    def cells(self, frames: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One scale's unit window embeddings (B, D, h, w) and raw box offsets (B, 4, h, w)."""
        factor = round(1 / scale)
        x = F.avg_pool2d(frames, factor) if factor > 1 else frames  # (B, 3, S·s, S·s)
        features = self.trunk(x)  # (B, C, S·s/16, S·s/16)
        cells = F.normalize(self.joint_image(self.head(features)), dim=1)  # (B, D, h, w)
        return cells, self.box(features)  # raw: dx, dy, log w, log h in window units

    def logits(self, cells: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) cells against (B, D) unit text → (B, h, w) score logits."""
        cosine = torch.einsum("bdhw,bd->bhw", cells, text)
        return self.logit_scale * cosine + self.logit_bias

    def scale_maps(
        self, frames: torch.Tensor, text: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One scale: (logits (B, h, w), boxes (B, 4, h, w) frame px, raw box offsets)."""
        cells, raw = self.cells(frames, scale)
        boxes = decode_boxes(raw, round(1 / scale), self.config.stride)
        return self.logits(cells, text), boxes, raw

    def forward(
        self, frames: torch.Tensor, text_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        text = self.text(text_embedding)
        out: list[torch.Tensor] = []
        for scale in self.config.scales:
            logits, boxes, _ = self.scale_maps(frames, text, scale)
            out += [torch.sigmoid(logits), boxes]
        return tuple(out)

    def fold(self) -> FrameScorer:
        """An equivalent eval-mode copy for export: BatchNorm folded into the trunk's convolutions,
        head and image-side projection composed into one 4×4 conv (joint_image becomes identity)."""
        folded = FrameScorer(dataclasses.replace(self.config, embedding_dim=self.config.joint_dim))
        folded.eval()
        src = self.eval()
        layers = []
        modules = list(src.trunk)
        for i in range(0, len(modules), 3):
            conv, bn = modules[i], modules[i + 1]
            layers += [fuse_conv_bn_eval(conv, bn), nn.ReLU(inplace=False)]
        folded.trunk = nn.Sequential(*layers)
        with torch.no_grad():
            p = src.joint_image.weight[:, :, 0, 0]  # (D, E)
            w = src.head.weight  # (E, C, 4, 4)
            folded.head.weight.copy_(torch.einsum("de,echw->dchw", p, w))
            folded.head.bias.copy_(p @ src.head.bias)
            folded.joint_image.weight.copy_(torch.eye(self.config.joint_dim)[:, :, None, None])
            # The text side still reads E-d embeddings: keep it E → D.
            folded.joint_text = nn.Linear(
                self.config.embedding_dim, self.config.joint_dim, bias=False
            )
            folded.joint_text.weight.copy_(src.joint_text.weight)
            folded.box.load_state_dict(src.box.state_dict())
            folded.logit_scale.copy_(src.logit_scale)
            folded.logit_bias.copy_(src.logit_bias)
        folded.joint_image = nn.Identity()  # type: ignore[assignment]
        return folded.eval()


def decode_boxes(raw: torch.Tensor, factor: int, stride: int) -> torch.Tensor:
    """(B, 4, h, w) offsets (dx, dy in windows from the window centre, log w, log h in windows)
    → (B, 4, h, w) boxes x0, y0, x1, y1 in frame pixels (the pooled frame is `factor`× smaller)."""
    _, _, h, w = raw.shape
    window = float(WINDOW * factor)
    ys = (torch.arange(h, dtype=raw.dtype) * stride + WINDOW / 2) * factor  # (h,)
    xs = (torch.arange(w, dtype=raw.dtype) * stride + WINDOW / 2) * factor  # (w,)
    cx = xs.view(1, 1, w) + raw[:, 0] * window  # (B, h, w)
    cy = ys.view(1, h, 1) + raw[:, 1] * window
    half_w = 0.5 * window * torch.exp(raw[:, 2].clamp(-4, 2))
    half_h = 0.5 * window * torch.exp(raw[:, 3].clamp(-4, 2))
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)


def encode_targets(box: torch.Tensor, factor: int, stride: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `decode_boxes` for one box (4,) at every cell: (4, h, w)."""
    window = float(WINDOW * factor)
    ys = (torch.arange(h, dtype=box.dtype) * stride + WINDOW / 2) * factor
    xs = (torch.arange(w, dtype=box.dtype) * stride + WINDOW / 2) * factor
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw, bh = (box[2] - box[0]).clamp(min=1), (box[3] - box[1]).clamp(min=1)
    return torch.stack(
        [
            ((cx - xs) / window).view(1, w).expand(h, w),
            ((cy - ys) / window).view(h, 1).expand(h, w),
            torch.log(bw / window).expand(h, w),
            torch.log(bh / window).expand(h, w),
        ]
    )


def config_to_dict(config: ScorerConfig) -> dict[str, Any]:
    """JSON-able config (tuples become lists)."""
    d = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
