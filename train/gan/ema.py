"""Exponential moving average of the generator's weights (what is sampled, evaluated, exported).

A GAN's generator weights oscillate around what D currently rewards; their average over the last
~1/(1 − decay) steps is a smoother, usually better generator at no training cost (Karras et al.
2018, Progressive GANs; Yazıcı et al. 2019). Early on the average would be dominated by the
random initial weights, so the decay warms up as in TensorFlow's ExponentialMovingAverage with
`num_updates`: min(decay, (1 + t) / (10 + t)) after t updates. Batch-norm running statistics are
copied, not averaged: they describe the current weights' activations (StyleGAN2 does the same).
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(updates: int, decay: float) -> float:
    """The decay used for the (updates + 1)-th update: min(decay, (1 + t) / (10 + t))."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def update_ema(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average ← decay · average + (1 − decay) · model for parameters; buffers copied.

    Matched by name, so `model` may be a synchronised-batch-norm or channels-last variant of the
    same network (same parameter names and shapes).
    """
    params = dict(model.named_parameters())
    for name, p in average.named_parameters():
        p.lerp_(params[name].detach().to(p.dtype), 1.0 - decay)
    buffers = dict(model.named_buffers())
    for name, b in average.named_buffers():
        b.copy_(buffers[name])
