"""The GAN-INT-CLS objective, one function per term named as in the papers.

- GAN-CLS (Reed et al. 2016, Algorithm 1): the matching-aware discriminator scores three pairs,
  real image + right text (→ 1), real image + wrong text (→ 0, weight ½) and fake image + right
  text (→ 0, weight ½): `L_D = s_r + ½ (s_w + s_f)` in the paper's notation.
- Generator: the non-saturating loss `-log D(G(z, t), t)` (Goodfellow et al. 2014, §3).
- GAN-INT (Reed et al. 2016, eq. 5): the generator is also scored on interpolated embeddings
  `β t1 + (1 − β) t2` of two different captions, with the interpolated text given to D.
- Feature matching (Salimans et al. 2016, §3.1): `‖E f(x) − E f(G(z))‖²` on an intermediate
  discriminator layer; ours is the joint 4×4 layer, which has seen the text.
- Text–image matching (in the spirit of AttnGAN's sentence-level DAMSM loss, Xu et al. 2018):
  generated images are embedded by the frozen pretrained image encoder and classified against
  every class's mean caption embedding (Reed's class-wise structured joint embedding).
- R1 (Mescheder et al. 2018): a zero-centred penalty on the gradient of D's real-pair score with
  respect to the real image, `γ/2 · E ‖∇ₓ D(x, t)‖²`, which keeps D from becoming so sharp that it
  stops telling G anything (docs/GAN_TRAINING.md § D regularisers).
- Open-attribute divergence (ours): two images of one partial caption, different noise, should
  read as different classes among those the caption allows (Jensen–Shannon of the matching
  softmax), so the noise picks what the caption leaves open (docs/GAN_TRAINING.md § Partial
  captions).
- Optional extras: one-sided label smoothing (Salimans et al. 2016, §3.4) and an L1 term pulling
  the generated image towards the real image of the same caption.

All functions take logits (D's sigmoid is folded into the numerically stable BCE-with-logits) and
return scalar tensors; the trainer logs each term under its name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DiscriminatorLosses:
    """GAN-CLS terms; `total` is what D minimises."""

    real: torch.Tensor
    """BCE(D(real image, right text), 1 − smoothing)."""
    wrong: torch.Tensor
    """BCE(D(real image, text of another class), 0), before its weight."""
    fake: torch.Tensor
    """BCE(D(G(z, right text), right text), 0), before its weight."""
    total: torch.Tensor


def gan_cls_discriminator_loss(
    logits_real_right: torch.Tensor,
    logits_real_wrong: torch.Tensor,
    logits_fake_right: torch.Tensor,
    *,
    wrong_weight: float = 0.5,
    fake_weight: float = 0.5,
    label_smoothing: float = 0.0,
) -> DiscriminatorLosses:
    """GAN-CLS: real+right → 1, real+wrong text → 0 (×½), fake+right → 0 (×½); logits (B,)."""
    # One-sided smoothing: only the real target moves (smoothing fakes would reward G's mistakes).
    real = F.binary_cross_entropy_with_logits(
        logits_real_right, torch.full_like(logits_real_right, 1.0 - label_smoothing)
    )
    wrong = F.binary_cross_entropy_with_logits(
        logits_real_wrong, torch.zeros_like(logits_real_wrong)
    )
    fake = F.binary_cross_entropy_with_logits(
        logits_fake_right, torch.zeros_like(logits_fake_right)
    )
    return DiscriminatorLosses(real, wrong, fake, real + wrong_weight * wrong + fake_weight * fake)


def generator_nonsaturating_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-log D(G(z, t), t): BCE of the fake logits (B,) against 1 (Goodfellow et al. 2014)."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def interpolate_embeddings(t1: torch.Tensor, t2: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """GAN-INT's conditioning: β·t1 + (1 − β)·t2 for embeddings (B, E) of two different captions."""
    return beta * t1 + (1.0 - beta) * t2


def gan_int_loss(logits_interpolated: torch.Tensor) -> torch.Tensor:
    """GAN-INT: non-saturating loss of D(G(z, t_int), t_int) for interpolated embeddings t_int."""
    return generator_nonsaturating_loss(logits_interpolated)


def feature_matching_loss(
    joint_real: torch.Tensor,
    joint_fake: torch.Tensor,
    batch_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Salimans' feature matching: squared distance of batch means of D's joint features.

    `joint_*` are (B, C, 4, 4); the real statistics are a target (no gradient). The distance is
    averaged over the C·16 features so the weight does not depend on the discriminator's width.
    `batch_mean` replaces the local mean over dim 0; under DDP it averages over all ranks so the
    statistics are the global batch's (train/distributed.py, `global_batch_mean`).
    """
    mean = batch_mean or (lambda x: x.mean(dim=0))
    target = mean(joint_real.detach().float())  # (C, 4, 4)
    return F.mse_loss(mean(joint_fake.float()), target)


def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between G(z, t) and the real image t describes (optional term)."""
    return F.l1_loss(fake.float(), real.float())


def mode_seeking_loss(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    noise_a: torch.Tensor,
    noise_b: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Mode seeking (Mao et al. 2019, MSGAN eq. 3): 1 / (mean|G(z₁,t) − G(z₂,t)| / mean|z₁ − z₂|).

    `images_a`, `images_b` (M, C, H, W) are made from the same texts with noises `noise_a`,
    `noise_b` (M, noise_dim). Minimising it pushes images of one caption apart in proportion to
    how far apart their noises are: a generator that ignores z (mode collapse) pays most.
    """
    image_distance = torch.mean(torch.abs(images_a.float() - images_b.float()))
    noise_distance = torch.mean(torch.abs(noise_a.float() - noise_b.float()))
    return 1.0 / (image_distance / noise_distance + eps)


def class_text_prototypes(
    table: torch.Tensor,
    index: torch.Tensor,
    class_ids: torch.Tensor,
    chunk: int = 2048,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's text: the normalised mean of its images' caption embeddings.

    `table` (U, E) caption embeddings, `index` (N, C) caption rows per image, `class_ids` (N,).
    `keep` (N, C) bool, optional: only these captions count (the full ones of a split with
    partial captions: a class's text is what describes the whole class; an image with none
    kept adds nothing). Returns prototypes (K, E), unit rows, and `row_of` (max class id + 1,)
    int64 mapping a class id to its prototype row (−1 for ids absent from the split).
    """
    classes, rows = torch.unique(class_ids.cpu(), return_inverse=True)
    sums = torch.zeros(len(classes), table.shape[1], device=table.device)
    for start in range(0, len(index), chunk):
        embedded = table[index[start : start + chunk]]  # (n, C, E)
        if keep is None:
            per_image = F.normalize(embedded.mean(1), dim=1)  # (n, E)
        else:
            weight = keep[start : start + chunk].to(embedded).unsqueeze(2)  # (n, C, 1)
            summed = (embedded * weight).sum(1) / weight.sum(1).clamp(min=1)
            per_image = F.normalize(summed, dim=1)  # (n, E); zero rows stay zero
        sums.index_add_(0, rows[start : start + chunk].to(table.device), per_image)
    row_of = torch.full((int(classes.max()) + 1,), -1, dtype=torch.int64)
    row_of[classes] = torch.arange(len(classes))
    return F.normalize(sums, dim=1), row_of.to(table.device)


def text_image_matching_loss(
    image_embedding: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Cross-entropy of each generated image's embedding (B, E) against every class's text
    prototype (K, E), cosine logits / temperature; `targets` (B,) are prototype rows.

    Reed's structured joint embedding compares an image with class-averaged captions of *all*
    classes; a softmax over them (rather than over the batch's captions, as AttnGAN's DAMSM does)
    always includes the classes that differ from the right one in a single attribute (the same
    person without a helmet), which a random batch of 64 almost never holds.
    """
    logits = F.normalize(image_embedding, dim=1) @ prototypes.T / temperature  # (B, K)
    return F.cross_entropy(logits, targets)


def partial_text_image_matching_loss(
    image_embedding: torch.Tensor,
    prototypes: torch.Tensor,
    allowed: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """`text_image_matching_loss` for captions that may leave attributes open: −log of the
    probability mass on every class the caption allows, `allowed` (B, K) bool (each row has at
    least one; a full caption allows exactly its class, and then this equals the cross-entropy).

    Why not the image's own class as target: for "a person in red" that class's helmet, pose
    and ground are noise the caption never gave, so the best a generator could do against it is
    one blurred average of every red class. Rewarding any allowed class instead lets the noise
    pick one (docs/GAN_TRAINING.md § Partial captions).
    """
    logits = F.normalize(image_embedding, dim=1) @ prototypes.T / temperature  # (B, K)
    inside = logits.masked_fill(~allowed, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(inside, dim=1)).mean()


def open_attribute_divergence_loss(
    embedding_a: torch.Tensor,
    embedding_b: torch.Tensor,
    prototypes: torch.Tensor,
    allowed: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """−JS(p_a, p_b) / log 2, mean over the rows whose caption leaves something open: two images
    of one caption made with different noise, `embedding_a`, `embedding_b` (M, E) in the matching
    encoder's space, should read as *different* classes among those the caption allows,
    `allowed` (M, K) bool; p is the matching softmax over the allowed classes only.

    Why Jensen–Shannon and not MSGAN's pixel distance: the pixel term buys its diversity as
    speckle (docs/QUALITY.md § 3.0), and a collision probability p_a·p_b would also be lowered by
    two blurred averages of every allowed class. JS is 0 for identical posteriors (two uniform
    ones included) and log 2 only for two confident, different readings — another helmet, pose or
    ground, which is what a partial caption leaves to the noise. A full caption allows one class,
    so its rows are exactly 0 and are left out of the mean; no open row gives 0.
    """
    scale = 1.0 / temperature
    # A large negative instead of −inf keeps log-probabilities finite (no 0·−inf in the gradient).
    outside = torch.finfo(torch.float32).min / 4
    logits_a = (F.normalize(embedding_a.float(), dim=1) @ prototypes.T * scale).masked_fill(
        ~allowed, outside
    )  # (M, K)
    logits_b = (F.normalize(embedding_b.float(), dim=1) @ prototypes.T * scale).masked_fill(
        ~allowed, outside
    )
    log_a = F.log_softmax(logits_a, dim=1)
    log_b = F.log_softmax(logits_b, dim=1)
    log_mix = torch.logaddexp(log_a, log_b) - math.log(2.0)
    p_a, p_b = log_a.exp(), log_b.exp()
    # JS = ½ KL(a‖m) + ½ KL(b‖m); allowed entries only (the others are exactly 0 in p_a, p_b).
    inside = allowed.float()
    js = 0.5 * ((p_a * (log_a - log_mix) + p_b * (log_b - log_mix)) * inside).sum(1)  # (M,)
    open_rows = allowed.sum(1) > 1
    if not bool(open_rows.any()):
        return js.sum() * 0.0  # keeps the graph, gradient 0
    return -(js[open_rows].mean() / math.log(2.0))


def r1_penalty(logits_real: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1: mean over the batch of ‖∇ₓ logit(x, t)‖² for the real pairs (Mescheder et al. 2018).

    `real_images` (B, C, H, W) must require grad and be what `logits_real` (B,) was computed
    from. The graph is kept (create_graph) so the penalty trains D; its gradient reaches only
    D's parameters, since real images come from data. The caller weights it by γ/2.
    """
    (grad,) = torch.autograd.grad(logits_real.float().sum(), real_images, create_graph=True)
    return grad.float().square().sum(dim=(1, 2, 3)).mean()
