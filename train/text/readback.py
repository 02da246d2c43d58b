"""Training and measuring the read-back heads ψ (`train.models.ReadBack`) on the text embedding.

The robot reads a caption back to the operator as attributes ("understood as: colour=red (0.98)
terrain=? ...") and warns when the caption reads as nothing it knows (docs/TEXT_ENCODER.md
§ Read-back). ψ is trained here, jointly with the text encoder's pretraining:

- per attribute, cross-entropy over its n_a values and a last "not stated" class; the label is
  the image's value where the caption states the attribute (its `caption_stated` bit), else
  "not stated"; off-domain lines state nothing;
- one off-domain logit, binary cross-entropy: 1 for off-domain lines
  (`train.text.off_domain`), 0 for rescue captions (full and partial).

Measured with the robot's own decision rule (`edge_runtime.readback.decision_indices`: argmax per
block, the last class = "?", off-domain above the threshold), never a re-implementation of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge_runtime.bundle import ReadBackSpec
from edge_runtime.readback import decision_indices
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES
from train.models import CharCnnRnn, ReadBack, ReadBackConfig
from train.text.joint_embedding import encode_captions

DEFAULT_OFF_DOMAIN_THRESHOLD = 0.5
"""The manifest's default (`export.readback` records it); the evaluation uses the same."""


def default_config(embedding_dim: int, sizes: Sequence[int]) -> ReadBackConfig:
    """The heads for an encoder of `embedding_dim` and attributes with `sizes` values each."""
    return ReadBackConfig(embedding_dim=embedding_dim, value_counts=tuple(int(n) for n in sizes))


def targets(attributes: torch.Tensor, stated: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Per attribute the class to predict: attributes (B, A) int, stated (B,) bitmasks → (B, A)
    int64, the value index where the caption states attribute a, else n_a ("not stated")."""
    bits = torch.arange(attributes.shape[1], device=stated.device)
    says = (stated[:, None] >> bits) & 1 == 1  # (B, A)
    not_stated = torch.as_tensor(list(sizes), device=attributes.device)  # (A,)
    return torch.where(says, attributes.long(), not_stated[None, :].expand_as(attributes))


def readback_loss(
    readback: ReadBack,
    embedding: torch.Tensor,
    attribute_targets: torch.Tensor,
    off_domain: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(attribute CE averaged over attributes + off-domain BCE, parts): embedding (B, E),
    attribute_targets (B, A) int64 (n_a = not stated), off_domain (B,) 0/1 float."""
    logits, off_logit = readback(embedding)  # (B, Σ(n_a + 1)), (B,)
    blocks = logits.split(readback.config.block_sizes, dim=1)
    attribute = sum(
        F.cross_entropy(block, attribute_targets[:, a]) for a, block in enumerate(blocks)
    ) / len(blocks)
    off = F.binary_cross_entropy_with_logits(off_logit, off_domain)
    assert isinstance(attribute, torch.Tensor)
    return attribute + off, {
        "readback_attributes": float(attribute.detach()),
        "readback_off_domain": float(off.detach()),
    }


def spec(threshold: float = DEFAULT_OFF_DOMAIN_THRESHOLD) -> ReadBackSpec:
    """The rescue-scenes labels in manifest order, as the bundle's manifest will carry them."""
    return ReadBackSpec(
        attributes=tuple((n, tuple(ATTRIBUTE_VALUES[n])) for n in ATTRIBUTE_NAMES),
        off_domain_threshold=threshold,
    )


@torch.no_grad()
def decide_embeddings(
    readback: ReadBack,
    embeddings: torch.Tensor | np.ndarray,
    threshold: float = DEFAULT_OFF_DOMAIN_THRESHOLD,
) -> np.ndarray:
    """The robot's decisions on text embeddings (N, E): (N, A + 1) int, per attribute the
    winning class (n_a = "?"), then 1 if off-domain (`edge_runtime.readback.decision_indices`)."""
    was_training = readback.training
    readback.eval()
    try:
        probs, off = readback.probabilities(torch.as_tensor(embeddings).float())
    finally:
        readback.train(was_training)
    return decision_indices(probs.numpy(), off.numpy(), spec(threshold))


def decisions(
    encoder: CharCnnRnn,
    readback: ReadBack,
    texts: Sequence[str],
    threshold: float = DEFAULT_OFF_DOMAIN_THRESHOLD,
) -> np.ndarray:
    """`decide_embeddings` of captions (encoded in eval mode)."""
    return decide_embeddings(readback, encode_captions(encoder, texts), threshold)


def score_captions(
    chosen: np.ndarray, truth: np.ndarray, stated: np.ndarray, sizes: Sequence[int]
) -> dict[str, Any]:
    """Read-back figures of rescue captions: chosen (N, A + 1) decisions, truth (N, A) the
    image's values, stated (N,) bitmasks.

    - `stated_right`: share of (caption, stated attribute) pairs read as the right value;
    - `captions_all_stated_right`: share of captions with every stated attribute right;
    - `not_stated_right`: share of (caption, unstated attribute) pairs read as "?" (None where the
      captions state everything);
    - `false_alarm`: share of captions flagged off-domain;
    - `per_attribute`: stated-right per attribute name.
    """
    count = truth.shape[1]
    says = ((stated[:, None] >> np.arange(count)) & 1) == 1  # (N, A)
    values = chosen[:, :count]
    right = values == truth
    unstated = values == np.asarray(sizes)[None, :]
    per_attribute = {
        name: (float(right[says[:, a], a].mean()) if says[:, a].any() else None)
        for a, name in enumerate(ATTRIBUTE_NAMES[:count])
    }
    return {
        "captions": len(chosen),
        "stated_right": float(right[says].mean()) if says.any() else None,
        "captions_all_stated_right": float((right | ~says).all(1).mean()),
        "not_stated_right": float(unstated[~says].mean()) if (~says).any() else None,
        "false_alarm": float(chosen[:, count].mean()),
        "per_attribute": per_attribute,
    }
