"""Graph preparation in PyTorch: fold batch norm, rewrite transposed convolutions, exactly.

onnxruntime's CPU provider has no integer kernel for ConvTranspose (DESIGN.md: quantized, it runs
dequantize → fp32 → quantize and is slower than fp32), and not every onnxruntime release a robot
carries fuses ConvTranspose + BatchNormalization. So before export the trained `Generator` becomes
an `ExportGenerator` that computes the same function:

- every BatchNorm is folded into the layer before it (`fuse_conv_bn_eval`, `fuse_linear_bn_eval`);
- the first 1×1 → 4×4 transposed convolution is a matrix multiply + reshape (`LinearToMap`);
- for the int8 graph, every stride-2, kernel-4, padding-1 transposed convolution is a stride-1
  convolution producing 4× the channels followed by depth-to-space (sub-pixel convolution,
  Shi et al. 2016), in one of the `SUBPIXEL_FORMS`; the graph then has only Gemm, Conv,
  DepthToSpace and element-wise ops. The fp32 graph may keep them ("convtranspose" form).

Why the sub-pixel rewrite is exact: ConvTranspose2d(k=4, s=2, p=1) writes input row i to output
rows 2i - 1 + k. Output row 2m + r (phase r ∈ {0, 1}) therefore reads exactly two input rows,
m - 1 + r + t for t ∈ {0, 1}, through kernel tap k = 3 - r - 2t; the same holds for columns. Each
of the four output phases (r_y, r_x) is a 2×2 correlation of the input, and the four phases
interleave by depth-to-space. The weights are copied, never fitted, so the rewrite matches to
float rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from train.models import Generator, ResidualBlock

SubpixelForm = Literal["3x3", "2x2", "2x2-phase"]
SUBPIXEL_FORMS: tuple[str, ...] = ("3x3", "2x2", "2x2-phase")
"""How a stride-2 k4 p1 transposed convolution becomes convolutions + depth-to-space:

- "3x3": one 3×3 convolution (padding 1) with 4·C_out channels; each phase's kernel is zero
  outside its 2×2 window, so it stores and computes 2.25× the original weights.
- "2x2": one 2×2 convolution (padding 1) with 4·C_out channels over an (H+1)×(W+1) grid, phases
  in reversed depth-to-space slots so that a one-pixel crop finishes the job: the original
  weight count, (H+1)²/H² the MACs.
- "2x2-phase": four 2×2 convolutions, one per phase, each over its own one-sided padding: the
  original weights and MACs exactly, in four smaller GEMMs.
"""
GeneratorForm = Literal["convtranspose", "3x3", "2x2", "2x2-phase"]
GENERATOR_FORMS: tuple[str, ...] = ("convtranspose", *SUBPIXEL_FORMS)
"""`ExportGenerator` forms: "convtranspose" folds batch norm but keeps the stride-2 transposed
convolutions (the fastest fp32 graph measured here); the others rewrite them as above."""


def _tap(phase: int, t: int) -> int:
    """Kernel tap of a k4 s2 p1 transposed convolution that output phase `phase` reads at window
    offset `t` (input row m - 1 + phase + t)."""
    return 3 - phase - 2 * t


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """ConvTranspose weight (C_in, C_out, 4, 4) → phase kernels (2, 2, C_out, C_in, 2, 2)."""
    c_in, c_out = weight.shape[:2]
    out = weight.new_zeros(2, 2, c_out, c_in, 2, 2)
    for ry in range(2):
        for rx in range(2):
            for ty in range(2):
                for tx in range(2):
                    out[ry, rx, :, :, ty, tx] = weight[:, :, _tap(ry, ty), _tap(rx, tx)].T
    return out


class SubPixelConvTranspose(nn.Module):
    """Exact replacement of ConvTranspose2d(k=4, s=2, p=1) [+ an element-wise activation]:
    (B, C_in, H, W) → (B, C_out, 2H, 2W).

    The activation is applied to the convolution's output *before* depth-to-space (element-wise
    ops commute with a permutation), so onnxruntime fuses it into the convolution: FusedConv in
    fp32, and in int8 the ReLU disappears into QLinearConv's output range.
    """

    def __init__(
        self,
        deconv: nn.ConvTranspose2d,
        form: SubpixelForm = "2x2",
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if (
            deconv.kernel_size != (4, 4)
            or deconv.stride != (2, 2)
            or deconv.padding != (1, 1)
            or deconv.output_padding != (0, 0)
            or deconv.dilation != (1, 1)
            or deconv.groups != 1
        ):
            raise ValueError(f"only ConvTranspose2d(k=4, s=2, p=1) can be rewritten, got {deconv}")
        if form not in SUBPIXEL_FORMS:
            raise ValueError(f"unknown sub-pixel form {form!r} (choose from {SUBPIXEL_FORMS})")
        self.form = form
        self.activation = activation if activation is not None else nn.Identity()
        c_in, c_out = deconv.in_channels, deconv.out_channels
        self.c_out = c_out
        has_bias = deconv.bias is not None
        with torch.no_grad():
            phases = _phase_kernels(deconv.weight.detach())  # (2, 2, C_out, C_in, 2, 2)
            bias = deconv.bias.detach() if has_bias else None
            if form == "2x2-phase":
                self.convs = nn.ModuleList()
                for ry in range(2):
                    for rx in range(2):
                        conv = nn.Conv2d(c_in, c_out, 2, bias=has_bias)
                        conv.weight.copy_(phases[ry, rx])
                        if bias is not None:
                            conv.bias.copy_(bias)
                        self.convs.append(conv)
                return
            if form == "3x3":
                # Phase r reads input rows m-1+r+t: offsets r+t ∈ {0,1,2} of a padding-1 3×3 window.
                self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1, bias=has_bias)
                full = phases.new_zeros(c_out, 2, 2, c_in, 3, 3)
                for ry in range(2):
                    for rx in range(2):
                        full[:, ry, rx, :, ry : ry + 2, rx : rx + 2] = phases[ry, rx]
                # Channel o·4 + r_y·2 + r_x is what depth-to-space ("CRD", pixel_shuffle) expects.
                self.conv.weight.copy_(full.reshape(4 * c_out, c_in, 3, 3))
            else:
                # "2x2": padding 1 gives an (H+1)×(W+1) grid; output q reads input rows q-1, q.
                # Phase 0 of row m is grid row m, phase 1 is grid row m+1. Storing phase 1-s in
                # shuffle slot s makes the shuffled (2H+2)-row image Z satisfy out[j] = Z[j+1]:
                # Z[2q] = phase 1 at q = out[2q-1], Z[2q+1] = phase 0 at q = out[2q]. So one crop
                # of one pixel on each side finishes the job.
                self.conv = nn.Conv2d(c_in, 4 * c_out, 2, padding=1, bias=has_bias)
                swapped = phases.flip(0, 1).permute(
                    2, 0, 1, 3, 4, 5
                )  # (C_out, s_y, s_x, C_in, 2, 2)
                self.conv.weight.copy_(swapped.reshape(4 * c_out, c_in, 2, 2))
            if bias is not None:
                self.conv.bias.copy_(bias.repeat_interleave(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "2x2-phase":
            # Each phase padded only on the side its window overhangs: (B, C_out, H, W) each.
            phases = [
                conv(F.pad(x, (1 - i % 2, i % 2, 1 - i // 2, i // 2)))
                for i, conv in enumerate(self.convs)
            ]
            y = torch.stack(phases, 2).flatten(1, 2)  # (B, C_out·4, H, W)
            return F.pixel_shuffle(self.activation(y), 2)
        y = self.activation(self.conv(x))  # (B, 4·C_out, H, W) or (B, 4·C_out, H+1, W+1)
        y = F.pixel_shuffle(
            y, 2
        )  # DepthToSpace (CRD): (B, C_out, 2H, 2W) or (B, C_out, 2H+2, 2W+2)
        if self.form == "2x2":
            y = y[:, :, 1:-1, 1:-1]  # (B, C_out, 2H, 2W)
        return y


class LinearToMap(nn.Module):
    """ConvTranspose2d(k, s=1, p=0) on 1×1 input as Gemm + reshape; (B, C_in) → (B, C_out, k, k)."""

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        if deconv.stride != (1, 1) or deconv.padding != (0, 0) or deconv.groups != 1:
            raise ValueError(
                f"only ConvTranspose2d(s=1, p=0) on 1×1 input is a matmul, got {deconv}"
            )
        c_in, c_out, kh, kw = deconv.weight.shape
        self.shape = (c_out, kh, kw)
        self.linear = nn.Linear(c_in, c_out * kh * kw, bias=deconv.bias is not None)
        with torch.no_grad():
            # y[b, o, i, j] = Σ_c x[b, c] · W[c, o, i, j] + bias[o]
            self.linear.weight.copy_(deconv.weight.detach().reshape(c_in, -1).T)
            if deconv.bias is not None:
                self.linear.bias.copy_(deconv.bias.detach().repeat_interleave(kh * kw))

    def forward(
        self, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        y = self.linear(x)  # (B, C_out·k·k); an element-wise activation here fuses into the Gemm
        if activation is not None:
            y = activation(y)
        # A constant target shape (batch as -1) exports as one Reshape, not Shape/Slice/Concat.
        return y.reshape(-1, *self.shape)  # (B, C_out, k, k)


def fold_residual(block: ResidualBlock) -> nn.Module:
    """A `ResidualBlock` with each Conv2d + BatchNorm2d pair folded into one Conv2d."""
    layers: list[nn.Module] = []
    body = list(block.body)
    i = 0
    while i < len(body):
        layer = body[i]
        if (
            isinstance(layer, nn.Conv2d)
            and i + 1 < len(body)
            and isinstance(body[i + 1], nn.BatchNorm2d)
        ):
            layers.append(fuse_conv_bn_eval(layer, body[i + 1]))
            i += 2
        else:
            layers.append(copy.deepcopy(layer))
            i += 1
    folded = copy.deepcopy(block)
    folded.body = nn.Sequential(*layers)
    return folded


class _FoldedUp(nn.Module):
    """A transposed convolution with its batch norm folded in, then an activation."""

    def __init__(self, deconv: nn.ConvTranspose2d, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = deconv
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x))  # (B, C_out, 2H, 2W)


def _up(deconv: nn.ConvTranspose2d, form: GeneratorForm, activation: nn.Module | None) -> nn.Module:
    if form == "convtranspose":
        return _FoldedUp(deconv, activation)
    return SubPixelConvTranspose(deconv, form, activation)


class ExportGenerator(nn.Module):
    """The trained `Generator`, batch norm folded and transposed convolutions rewritten.

    noise (B, noise_dim), text_embedding (B, E) → image (B, 3, 64, 64) in [-1, 1]; no
    BatchNormalization remains, and in a sub-pixel form no ConvTranspose either.
    """

    def __init__(self, generator: Generator, form: GeneratorForm = "2x2") -> None:
        super().__init__()
        if form not in GENERATOR_FORMS:
            raise ValueError(f"unknown generator form {form!r} (choose from {GENERATOR_FORMS})")
        if generator.training:
            raise ValueError("fold batch norm only in eval mode (call generator.eval())")
        self.form = form
        # A "resize" generator's ×2 stages are transposed convolutions in disguise (ResizeConv):
        # from here on both kinds are the same plain ConvTranspose2d(4, 2, 1) graph.
        generator = generator.as_deconv()
        linear, norm, act = generator.project_text
        # text_norm "none" has an Identity where batch norm would be: nothing to fold.
        folded = fuse_linear_bn_eval(linear, norm) if isinstance(norm, nn.BatchNorm1d) else linear
        self.project_text = nn.Sequential(copy.deepcopy(folded), nn.LeakyReLU(act.negative_slope))
        first, *rest = generator.blocks
        self.first = LinearToMap(fuse_conv_bn_eval(first.conv, first.bn, transpose=True))
        self.ups = nn.ModuleList(
            _up(fuse_conv_bn_eval(b.conv, b.bn, transpose=True), form, nn.ReLU()) for b in rest
        )
        # Keys are block indices, as in Generator.residual: refinement after block i.
        self.residual = nn.ModuleDict(
            {k: fold_residual(block) for k, block in generator.residual.items()}
        )
        self.to_rgb = _up(copy.deepcopy(generator.to_rgb), form, None)

    def forward(self, noise: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        text = self.project_text(text_embedding)  # (B, projected_dim)
        x = torch.cat([noise, text], dim=1)  # (B, noise_dim + projected_dim)
        x = self.first(x, F.relu)  # (B, ngf*8, 4, 4)
        if "0" in self.residual:
            x = self.residual["0"](x)
        for i, up in enumerate(self.ups, start=1):
            # (B, ngf*8, 4, 4) → (B, ngf*4, 8, 8) → (B, ngf*2, 16, 16) → (B, ngf, 32, 32)
            x = up(x)
            if str(i) in self.residual:
                x = self.residual[str(i)](x)
        # The tanh stays last and separate: quantization excludes it, so the image is float.
        # onnxruntime's Tanh returns up to 1.0000002; the clamp makes the manifest's value range
        # [-1, 1] a guarantee of the graph rather than of each reader.
        return torch.tanh(self.to_rgb(x)).clamp(-1.0, 1.0)  # (B, 3, 64, 64)


def prepare_generator(generator: Generator, form: GeneratorForm = "2x2") -> ExportGenerator:
    """Fold and rewrite a trained generator for export (the input is left untouched)."""
    # Fold in float64, then round once: the folded weights are then the nearest float32 to the
    # exact products, rather than carrying the rounding of each fp32 multiply and divide.
    folded = ExportGenerator(copy.deepcopy(generator).double().eval(), form)
    return folded.float().eval()
