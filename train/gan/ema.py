"""Exponential moving average of the generator's weights (what is sampled, evaluated, exported).

A GAN's generator weights oscillate around what D currently rewards; their average over the last
~1/(1 − decay) steps is a smoother, usually better generator at no training cost (Karras et al.
2018, Progressive GANs; Yazıcı et al. 2019). Early on the average would be dominated by the
random initial weights, so the decay warms up as in TensorFlow's ExponentialMovingAverage with
`num_updates`: min(decay, (1 + t) / (10 + t)) after t updates.

Batch norm: during training the average's running statistics are copied from G (they are only
a placeholder there), and wherever the average is *used* — sample grids, every checkpoint, so
evaluation and export — `standing_statistics` recomputes them from the average's own weights
("standing statistics", Brock et al. 2019, BigGAN § 3.1 / appendix). Copying G's statistics
(what StyleGAN2 does, but its G has no batch norm) pairs averaged weights with statistics of
other weights: harmless while the weights barely move, ruinous once they drift. Measured on the
60-minute recipe (docs/QUALITY.md § 3.10): all five right 77.5 / 38.5 % (test / unseen) with
copied statistics, 98.0 / 81.4 % with standing ones, same weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

STANDING_BATCHES = 64
"""Batches the standing statistics average over, of the training batch size (4,096 samples at
64; ~0.3 s at ngf 32 on a CPU). On the recipe's generator the worst channel's running mean
then lies within 0.04 standard deviations of a 256-batch estimate (0.055 at 32, 0.10 at 8)."""


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


@torch.no_grad()
def standing_statistics(
    generator: nn.Module, inputs: Callable[[int], tuple[torch.Tensor, ...]], batches: int
) -> None:
    """Recompute every batch-norm layer's running statistics of `generator` as the plain mean
    over `batches` forward passes in training mode (`inputs(i)` gives pass i's arguments);
    weights untouched, training/eval mode restored. Deterministic for deterministic `inputs`."""
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches < 1:
        return
    momenta = [m.momentum for m in norms]
    was_training = generator.training
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # None: a cumulative (equal-weight) average over the passes
        generator.train()
        for i in range(batches):
            generator(*inputs(i))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        generator.train(was_training)
