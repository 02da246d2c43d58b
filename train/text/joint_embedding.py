"""The joint image–text embedding: batching, the two pretraining objectives, and scoring.

φ(t) (`CharCnnRnn`) and θ(v) (`ImageEncoder`) map captions and images into one space where
F(v, t) = θ(v)·φ(t) says how well a caption describes an image. Two objectives train them:

- `sje_loss`: Reed et al. 2016a's symmetric structured joint embedding. For each image, a hinge
  (margin Δ = 1) against every *class* in the batch, where a class's text is the mean embedding of
  its captions in the batch; and the same with the roles swapped. Reed's loader drew one image and
  one caption per class so the mean was over one item; ours draws images at random, so several
  images of a class may meet in a batch and the class means are real means. Normalised by batch ×
  classes as in Reed's `JointEmbeddingLoss` (cvpr2016/train_sje_hybrid.lua).
- `infonce_loss`: the symmetric contrastive loss of CLIP (Radford et al. 2021) on L2-normalised
  embeddings with a learned temperature. Items of the same class in a batch are not negatives of
  each other: the target spreads evenly over all same-class items (a false negative would push
  apart two captions that mean the same thing).

The trainer (train/text/pretrain.py) measures both and picks the default; see its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime import tokenizer
from edge_runtime.tokenizer import CaptionError
from train.checkpoint import build_model
from train.models import CharCnnRnn, ImageEncoder, TextEncoderConfig

__all__ = [
    "AttributeHeads",
    "CaptionError",
    "ClassProxies",
    "InfoNCE",
    "JointEmbedding",
    "JointObjective",
    "batch_ids",
    "caption_positives",
    "encode_captions",
    "encode_images",
    "images_to_tensor",
    "infonce_loss",
    "sje_loss",
    "tokenize",
]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def tokenize(texts: Sequence[str]) -> list[tokenizer.Encoded]:
    """Encode captions with the shared tokenizer; `CaptionError` names the failing index."""
    out: list[tokenizer.Encoded] = []
    for i, text in enumerate(texts):
        try:
            out.append(tokenizer.encode(text))
        except CaptionError as err:
            raise CaptionError(f"caption {i}: {err}") from None
    return out


def batch_ids(
    encoded: Sequence[tokenizer.Encoded], config: TextEncoderConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest `min_input_length` in the batch: ids (B, T) int64, lengths (B,) int64.

    Padding further would give the same embeddings (valid-step masking, docs/ARCHITECTURE.md)
    at more cost: captions of ~90 characters need T ≈ 140 instead of 201.
    """
    if not encoded:
        raise ValueError("batch_ids needs at least one caption")
    lengths = [min(e.length, config.max_length) for e in encoded]
    width = max(config.min_input_length(n) for n in lengths)
    ids = torch.zeros(len(encoded), width, dtype=torch.int64)  # PAD_ID is 0
    for row, (e, n) in enumerate(zip(encoded, lengths, strict=True)):
        ids[row, :n] = torch.tensor(e.ids[:n])
    return ids, torch.tensor(lengths, dtype=torch.int64)


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB → float (N, 3, H, W) in [-1, 1] (the generator's range)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


@torch.no_grad()
def encode_captions(model: CharCnnRnn, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Text embeddings (N, E) of captions, in order; raises `CaptionError` for an empty caption.

    Anything else — 10,000 characters, control bytes, emoji, mixed scripts — gives a finite
    embedding: the tokenizer truncates to 201 characters and maps or drops what it cannot spell.
    Captions are sorted by length so each batch is trimmed as far as its longest caption allows.
    Always in eval mode (no dropout), as `encode_images`: an embedding is a function of the
    caption, not of whether the caller was training.
    """
    encoded = tokenize(texts)
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    out = torch.empty(len(encoded), model.config.embedding_dim)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, lengths = batch_ids([encoded[i] for i in rows], model.config)
            out[rows] = model(ids.to(device), lengths.to(device)).float().cpu()
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def encode_images(
    model: ImageEncoder, images: np.ndarray | torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Image embeddings (N, E) of uint8 (N, H, W, 3) RGB images, or of float (N, 3, H, W) in
    [-1, 1] (e.g. generator output); always with batch-norm running statistics (eval mode)."""
    x = torch.as_tensor(images)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        chunks = []
        for start in range(0, len(x), batch_size):
            part = x[start : start + batch_size]
            part = images_to_tensor(part) if part.dtype == torch.uint8 else part.float()
            chunks.append(model(part.to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, model.config.embedding_dim)


# --------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------


def _class_means(x: torch.Tensor, inverse: torch.Tensor, classes: int) -> torch.Tensor:
    """Mean of the rows of x (B, E) per class index in `inverse` (B,) → (K, E)."""
    sums = torch.zeros(classes, x.shape[1], dtype=x.dtype, device=x.device)
    sums.index_add_(0, inverse, x)
    counts = torch.bincount(inverse, minlength=classes).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def _class_hinge(
    queries: torch.Tensor, prototypes: torch.Tensor, inverse: torch.Tensor, margin: float
) -> torch.Tensor:
    """Σ over queries and wrong classes of max(0, Δ + q·p_wrong − q·p_own) / (B·K)."""
    scores = queries @ prototypes.T  # (B, K)
    own = scores.gather(1, inverse[:, None])  # (B, 1)
    hinge = F.relu(margin + scores - own)  # (B, K)
    hinge = hinge.masked_fill(F.one_hot(inverse, prototypes.shape[0]).bool(), 0.0)
    return hinge.sum() / hinge.numel()


def sje_loss(
    text: torch.Tensor, image: torch.Tensor, labels: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Reed's symmetric structured joint embedding loss: text (B, E), image (B, E), labels (B,)."""
    classes, inverse = torch.unique(labels, return_inverse=True)
    if len(classes) < 2:
        return (text.sum() + image.sum()) * 0.0  # no wrong class to rank against
    text_protos = _class_means(text, inverse, len(classes))  # (K, E)
    image_protos = _class_means(image, inverse, len(classes))  # (K, E)
    image_to_text = _class_hinge(image, text_protos, inverse, margin)
    text_to_image = _class_hinge(text, image_protos, inverse, margin)
    return image_to_text + text_to_image


class InfoNCE(nn.Module):
    """The learned temperature of `infonce_loss`: logit scale exp(s), s ≤ log(100) (CLIP)."""

    def __init__(self, initial_temperature: float = 0.07) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / initial_temperature)))

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        labels: torch.Tensor,
        positives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        return infonce_loss(text, image, labels, scale, positives)


def caption_positives(attributes: torch.Tensor, stated: torch.Tensor) -> torch.Tensor:
    """Which images each caption describes: attributes (B, A) int of the batch's images (caption
    i was written for image i), stated (B,) bitmasks of the captions → bool (B captions, B
    images), [i, j] = image j agrees with image i on every attribute caption i states.

    A full caption's positives are its class (rescue-scenes: class = the full combination); a
    partial one ("anyone in yellow?") fits every image in yellow, and calling those negatives
    would teach the encoder that the caption means something it does not say.
    """
    bits = torch.arange(attributes.shape[1], device=stated.device)
    says = (stated[:, None] >> bits) & 1 == 1  # (B, A): caption i states attribute a
    agree = attributes[:, None, :] == attributes[None, :, :]  # (B, B, A)
    return (agree | ~says[:, None, :]).all(2)


def infonce_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    labels: torch.Tensor,
    scale: torch.Tensor | float,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised text (B, E) and image (B, E).

    Positives: same class, or `positives` (B captions, B images) bool where given (multi-positive
    InfoNCE for partial captions, `caption_positives`); the target spreads evenly over a row's
    positives, for captions over images and for images over the captions that fit them.
    """
    text = F.normalize(text, dim=1)
    image = F.normalize(image, dim=1)
    logits = scale * text @ image.T  # (B, B): row = caption, column = image
    if positives is None:
        same = (labels[:, None] == labels[None, :]).to(logits.dtype)  # (B, B), symmetric
        target = same / same.sum(1, keepdim=True)
        target_t = target
    else:
        fits = positives.to(logits.dtype)  # (B, B), not symmetric when a caption is partial
        target = fits / fits.sum(1, keepdim=True)
        target_t = fits.T / fits.T.sum(1, keepdim=True)  # (B images, B captions)
    text_to_image = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    image_to_text = -(target_t * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (text_to_image + image_to_text) / 2


class ClassProxies(nn.Module):
    """One learned direction per class; text and image embeddings are each classified against
    them (Proxy-NCA, Movshovitz-Attias et al. 2017; cosine logits as in NormFace).

    Why, on top of the cross-modal loss: a cross-modal loss learns an attribute only once both
    encoders already react to it (the gradient on a caption is the difference of two image
    embeddings, ~0 while the image encoder ignores the attribute, and vice versa), and in-batch
    negatives rarely differ in a small detail: on rescue-scenes, InfoNCE alone left the helmet
    near chance (docs/TEXT_ENCODER.md § Objective). Class labels exist in
    every dataset we train on (rescue-scenes: attribute combination; CUB: species), and
    classifying each modality against shared class directions teaches each encoder every
    distinction between classes directly, while the cross-modal loss aligns the two.
    """

    def __init__(self, num_classes: int, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        labels: torch.Tensor,
        full: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`full` (B,) bool: captions that name their class; a partial caption names no class,
        so it is left out of the text term (None: every caption is full)."""
        proxies = F.normalize(self.proxies, dim=1)  # (K, E)
        text_logits = self.scale * F.normalize(text, dim=1) @ proxies.T  # (B, K)
        image_logits = self.scale * F.normalize(image, dim=1) @ proxies.T  # (B, K)
        if full is None:
            text_term = F.cross_entropy(text_logits, labels)
        else:
            text_term = F.cross_entropy(text_logits, labels.masked_fill(~full, -100))
            text_term = text_term if bool(full.any()) else text_logits.sum() * 0.0
        return (text_term + F.cross_entropy(image_logits, labels)) / 2


class AttributeHeads(nn.Module):
    """Linear attribute classifiers shared by both modalities (training only, never exported).

    Where a dataset records attributes (rescue-scenes: colour, terrain, pose, position,
    helmet), a class label is their combination; predicting each factor separately gives every
    attribute its own loss from step 0 instead of one bit among 864 classes, which is what
    finally taught the encoders the helmet (see `ClassProxies` for the failure). One head for
    both modalities puts each attribute along the same directions in both embeddings.
    """

    def __init__(self, sizes: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.sizes = tuple(sizes)
        self.head = nn.Linear(dim, sum(sizes))

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        attributes: torch.Tensor,
        text_attributes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`text_attributes` (B, A): the captions' labels, -100 where a caption leaves an
        attribute open (ignored); None: the images' `attributes`."""
        loss = text.new_zeros(())
        targets = (attributes if text_attributes is None else text_attributes, attributes)
        for embedding, target in zip((text, image), targets, strict=True):
            logits = self.head(F.normalize(embedding, dim=1)).split(self.sizes, dim=1)
            for a, part in enumerate(logits):  # part: (B, sizes[a])
                column = target[:, a]
                if bool((column >= 0).any()):
                    loss = loss + F.cross_entropy(part, column)
        return loss / (2 * len(self.sizes))


class JointObjective(nn.Module):
    """The pretraining loss: "infonce" or "sje" between modalities, plus weighted auxiliaries."""

    def __init__(
        self,
        kind: str,
        num_classes: int,
        dim: int,
        *,
        temperature: float = 0.07,
        margin: float = 1.0,
        proxy_weight: float = 0.0,
        attribute_sizes: tuple[int, ...] = (),
        attribute_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in ("infonce", "sje"):
            raise ValueError(f"objective must be 'infonce' or 'sje', got {kind!r}")
        self.kind = kind
        self.margin = margin
        self.proxy_weight = proxy_weight
        self.infonce = InfoNCE(temperature) if kind == "infonce" else None
        self.proxies = ClassProxies(num_classes, dim) if proxy_weight > 0 else None
        self.attribute_weight = attribute_weight
        use_attributes = attribute_weight > 0 and attribute_sizes
        self.attributes = AttributeHeads(attribute_sizes, dim) if use_attributes else None

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        labels: torch.Tensor,
        attributes: torch.Tensor | None = None,
        stated: torch.Tensor | None = None,
        *,
        cross_weight: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(total loss, its named parts as floats for logging); attributes (B, A) int64 of the
        images, stated (B,) bitmasks of the captions (None, or every bit set: all full);
        `cross_weight` scales the cross-modal and class-proxy terms (the trainer ramps it in,
        `PretrainConfig.cross_modal_ramp`; the logged parts stay unweighted).

        With partial captions in the batch (and attributes to judge them by): InfoNCE's
        positives are the images each caption fits (`caption_positives`), the class-proxy text
        term skips partial captions and the attribute heads skip what a caption leaves open.
        SJE has no per-caption positives and treats every caption as full. A batch of full
        captions takes exactly the code path (and numbers) of training before partial captions.
        """
        full_mask = None
        if stated is not None and attributes is not None:
            everything = (1 << attributes.shape[1]) - 1
            full_mask = stated == everything  # (B,)
            if bool(full_mask.all()):
                full_mask = None
        positives = None if full_mask is None else caption_positives(attributes, stated)
        if self.infonce is not None:
            cross = self.infonce(text, image, labels, positives)
        else:
            cross = sje_loss(text, image, labels, self.margin)
        parts = {self.kind: float(cross.detach())}
        total = cross_weight * cross
        if self.proxies is not None:
            proxy = self.proxies(text, image, labels, full_mask)
            parts["proxy"] = float(proxy.detach())
            total = total + cross_weight * self.proxy_weight * proxy
        if self.attributes is not None and attributes is not None:
            text_attributes = None
            if full_mask is not None:
                assert stated is not None
                bits = torch.arange(attributes.shape[1], device=stated.device)
                says = (stated[:, None] >> bits) & 1 == 1  # (B, A)
                text_attributes = attributes.masked_fill(~says, -100)
            attribute = self.attributes(text, image, attributes, text_attributes)
            parts["attributes"] = float(attribute.detach())
            total = total + self.attribute_weight * attribute
        if self.infonce is not None:
            parts["logit_scale"] = float(self.infonce.log_scale.detach().exp())
        return total, parts


def batch_accuracy(text: torch.Tensor, image: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of captions whose best-scoring image in the batch has their class."""
    best = (text @ image.T).argmax(1)
    return float((labels[best] == labels).float().mean())


# --------------------------------------------------------------------------------------------
# The pair as one model
# --------------------------------------------------------------------------------------------


class JointEmbedding(nn.Module):
    """φ and θ together: encode captions and images, and score how well they match."""

    def __init__(self, text_encoder: CharCnnRnn, image_encoder: ImageEncoder) -> None:
        super().__init__()
        if text_encoder.config.embedding_dim != image_encoder.config.embedding_dim:
            raise ValueError(
                f"text embedding {text_encoder.config.embedding_dim} ≠ image embedding "
                f"{image_encoder.config.embedding_dim}"
            )
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder

    @classmethod
    def from_checkpoint(
        cls, checkpoint: dict[str, Any], where: str = "checkpoint"
    ) -> JointEmbedding:
        """Rebuild both encoders (eval mode) from a checkpoint dict alone."""
        text = build_model(checkpoint, "text_encoder", where)
        image = build_model(checkpoint, "image_encoder", where)
        assert isinstance(text, CharCnnRnn) and isinstance(image, ImageEncoder)
        return cls(text, image).eval()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Caption embeddings (N, E); see `encode_captions`."""
        return encode_captions(self.text_encoder, texts)

    def encode_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Image embeddings (N, E); see `encode_images`."""
        return encode_images(self.image_encoder, images)

    def score(self, images: np.ndarray | torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Match scores (N_images, N_texts): θ(v)·φ(t), higher = better described.

        With InfoNCE-trained (normalised) encoders this is the cosine in [-1, 1]; with SJE it
        is Reed's unbounded compatibility. Compare scores, do not threshold them across models.
        """
        return self.encode_images(images) @ self.encode_texts(texts).T
