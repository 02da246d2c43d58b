"""Training and measuring the read-back heads ψ (`train.models.ReadBack`) on the text embedding.

The robot reads a caption back to the operator as attributes ("understood as: colour=red (0.98)
terrain=? ...") and warns when the caption reads as nothing it knows (docs/TEXT_ENCODER.md
§ Read-back). ψ is trained here, jointly with the text encoder's pretraining:

- per attribute, cross-entropy over its n_a values and a last "not stated" class; the label is
  the image's value where the caption states the attribute (its `caption_stated` bit), else
  "not stated"; off-domain lines state nothing;
- one off-domain logit, binary cross-entropy: 1 for off-domain lines
  (`train.text.off_domain`), 0 for rescue captions (full and partial).

At the end of pretraining ψ is fitted afresh on the frozen final encoder (`fit_heads`): heads
that trained beside a moving embedding at 10× the encoders' learning rate learn the training
captions' colour×terrain combinations (the recipe encoder's: colour 66.9 % right on
`test_unseen`; refitted with linear attribute blocks: 99.7 %; docs/TEXT_ENCODER.md § Read-back).

Measured with the robot's own decision rule (`edge_runtime.readback.decision_indices`: argmax per
block, the last class = "?", off-domain above the threshold), never a re-implementation of it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge_runtime import tokenizer, vocabulary
from edge_runtime.bundle import ReadBackSpec
from edge_runtime.readback import decision_indices
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, Attributes
from train.data.phrasing import ALL_STATED, draw_terse_stated, terse_phrase
from train.data.schema import SplitData
from train.models import CharCnnRnn, ReadBack, ReadBackConfig
from train.text.joint_embedding import encode_captions
from train.text.off_domain import off_domain_batch
from train.text.perturb import AugmentConfig, augment

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------
# Fitting ψ afresh on a frozen encoder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefitConfig:
    """How `fit_heads` fits ψ on a frozen text encoder. Measured on the recipe's encoder
    (docs/TEXT_ENCODER.md § Read-back, the refit table): 20,000 captions read back as well as
    all 100,000 (the cost is encoding them: ~1.4 ms a caption on 2 cores), and 2,400 steps as
    well as 4,800 (more fitting trades held-out wording for "not stated")."""

    captions: int = 20_000
    """Training captions encoded (drawn without replacement; all where the split has fewer)."""
    perturbed_share: float = 1 / 3
    """An augmented copy (`train.text.perturb.augment`, as training draws it) of this share of
    them, and of the off-domain lines, joins the clean ones: typos must not change the reading,
    nor tell a rescue caption from another sentence."""
    off_domain_share: float = 0.2
    """Off-domain lines (`train.text.off_domain`), as a share of `captions`."""
    terse_share: float = 0.3
    """Terse commands (`train.data.phrasing.terse_phrase`: "blue jacket", "lying down / helmet
    on"), as a share of `captions`, labelled with what they state; an augmented copy of
    `perturbed_share` of them joins. They are the in-domain counterparts of the off-domain
    generator's many "{colour} {thing}" lines ("draw a blue kettle"). 0.3 since 2026-12-06
    (was 0.1): chosen on training-family commands, it reads colour-only commands with a
    standalone survey name 42 % right instead of 32 % and misspelt terse commands 79 % instead
    of 74 %, with no loss on the held-out figures (docs/TEXT_ENCODER.md § Colour names)."""
    steps: int = 2_400
    batch_size: int = 256
    lr: float = 3e-3
    """AdamW, one-cycle schedule (warm-up, then cosine to ~0) over `steps`."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.captions < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("captions, steps and batch_size must be >= 1")
        if not 0 <= self.perturbed_share <= 1 or self.lr <= 0:
            raise ValueError("perturbed_share must be in [0, 1] and lr > 0")
        if self.off_domain_share < 0 or self.terse_share < 0:
            raise ValueError("off_domain_share and terse_share must be >= 0")


REFIT_STREAM = 17
"""`numpy.random.default_rng([seed, REFIT_STREAM])` draws the refit's captions, augmentation
and off-domain lines: a stream no training step uses ((seed, step, k) streams have 3 entries);
`[seed, REFIT_STREAM, 1]` draws the terse commands, so that `terse_share` 0 refits as before."""


def _augmented(texts: Sequence[str], rng: np.random.Generator, config: AugmentConfig) -> list[str]:
    out = []
    for text in texts:
        perturbed = augment(text, rng, config)
        try:
            tokenizer.encode(perturbed)
        except tokenizer.CaptionError:
            # An augmentation can leave nothing the tokenizer spells: keep the original, as the
            # trainer's batches do.
            perturbed = text
        out.append(perturbed)
    return out


def refit_inputs(
    split: SplitData, sizes: Sequence[int], config: RefitConfig, augment_config: AugmentConfig
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(texts, attribute targets (N, A) int64 with n_a = not stated, off-domain labels (N,)):
    the captions, their augmented copies, then the off-domain lines and theirs."""
    if split.attributes is None:
        raise ValueError("the read-back needs a split with attributes")
    rng = np.random.default_rng([config.seed, REFIT_STREAM])
    captions = np.asarray(split.captions, dtype=object)  # (N, C)
    images, per_image = captions.shape
    stated = (
        np.full(captions.shape, ALL_STATED, dtype=np.int64)
        if split.caption_stated is None
        else np.asarray(split.caption_stated, dtype=np.int64)
    )
    flat = rng.permutation(images * per_image)[: config.captions]  # caption indices
    texts = [str(t) for t in captions.reshape(-1)[flat]]
    values = torch.as_tensor(np.asarray(split.attributes, dtype=np.int64)[flat // per_image])
    caption_targets = targets(values, torch.as_tensor(stated.reshape(-1)[flat]), sizes)  # (n, A)
    copies = rng.permutation(len(texts))[: round(config.perturbed_share * len(texts))]
    texts += _augmented([texts[i] for i in copies], rng, augment_config)
    caption_targets = torch.cat([caption_targets, caption_targets[torch.as_tensor(copies)]])
    lines = off_domain_batch(rng, round(config.off_domain_share * len(flat)))
    lines += _augmented(lines[: round(config.perturbed_share * len(lines))], rng, augment_config)
    nothing = torch.tensor(sizes, dtype=torch.int64).expand(len(lines), len(sizes))  # (K, A)
    terse, terse_targets = _terse_commands(split, len(flat), sizes, config, augment_config)
    texts += terse
    caption_targets = torch.cat([caption_targets, terse_targets])
    off_domain = torch.cat([torch.zeros(len(texts)), torch.ones(len(lines))])  # (N,)
    return texts + lines, torch.cat([caption_targets, nothing]), off_domain


def _terse_commands(
    split: SplitData,
    captions: int,
    sizes: Sequence[int],
    config: RefitConfig,
    augment_config: AugmentConfig,
) -> tuple[list[str], torch.Tensor]:
    """`terse_share` × `captions` (those drawn, as for the off-domain lines) terse commands about
    the split's own images (so a held-out colour×terrain pair is never stated by them) and an
    augmented copy of a share: (texts, targets (T, A))."""
    count = round(config.terse_share * captions)
    if count == 0:
        return [], torch.empty(0, len(sizes), dtype=torch.int64)
    assert split.attributes is not None
    rng = np.random.default_rng([config.seed, REFIT_STREAM, 1])
    rows = np.asarray(split.attributes, dtype=np.int64)[rng.integers(len(split), size=count)]
    texts, masks = [], []
    for row in rows:
        phrase = terse_phrase(Attributes.from_indices(row.tolist()), draw_terse_stated(rng), rng)
        texts.append(phrase.caption)
        masks.append(phrase.mask)
    found = targets(torch.as_tensor(rows), torch.as_tensor(masks), sizes)  # (T, A)
    copies = rng.permutation(count)[: round(config.perturbed_share * count)]
    texts += _augmented([texts[i] for i in copies], rng, augment_config)
    return texts, torch.cat([found, found[torch.as_tensor(copies, dtype=torch.int64)]])


def known_words(split: SplitData) -> tuple[str, ...]:
    """The words of every caption of `split` as the robot splits them (`vocabulary.words_of`),
    sorted; the most frequent `vocabulary.MAX_KNOWN_WORDS` of at most `MAX_WORD_LENGTH` letters
    where there are more (a rescue-scenes train split has about 200)."""
    counts: Counter[str] = Counter()
    for row in split.captions:
        for caption in row:
            counts.update(vocabulary.words_of(caption))
    usable = [(n, w) for w, n in counts.items() if len(w) <= vocabulary.MAX_WORD_LENGTH]
    kept = sorted(usable, key=lambda item: (-item[0], item[1]))[: vocabulary.MAX_KNOWN_WORDS]
    return tuple(sorted(w for _, w in kept))


def fit_heads(
    encoder: CharCnnRnn,
    split: SplitData,
    heads_config: ReadBackConfig,
    config: RefitConfig = RefitConfig(),
    augment_config: AugmentConfig | None = None,
) -> tuple[ReadBack, dict[str, float]]:
    """Fresh heads ψ fitted on `encoder`'s (frozen, eval-mode) embeddings of `split`'s captions
    (`refit_inputs`); returns (ψ in eval mode, figures for the run's metrics). Deterministic in
    `config.seed` on one machine; the encoder is not changed."""
    started = time.perf_counter()
    heads_config = dataclasses.replace(heads_config, known_words=known_words(split))
    texts, attribute_targets, off_domain = refit_inputs(
        split, heads_config.value_counts, config, augment_config or AugmentConfig()
    )
    embeddings = encode_captions(encoder, texts)  # (N, E)
    encoded_s = time.perf_counter() - started
    steps = config.steps
    torch.manual_seed(config.seed)
    heads = ReadBack(heads_config)
    heads.train()
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    draws = torch.Generator().manual_seed(config.seed)
    recent: list[float] = []
    for _ in range(steps):
        rows = torch.randint(len(texts), (config.batch_size,), generator=draws)
        loss, _ = readback_loss(heads, embeddings[rows], attribute_targets[rows], off_domain[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = [*recent[-99:], float(loss.detach())]
    heads.eval()
    figures = {
        "readback_refit_texts": float(len(texts)),
        "readback_refit_steps": float(steps),
        "readback_refit_loss": float(np.mean(recent)),
        "readback_refit_encode_s": round(encoded_s, 1),
        "readback_refit_s": round(time.perf_counter() - started, 1),
    }
    log.info(
        "read-back heads refitted on the frozen encoder: %d texts, %d steps, loss %.3f, %.0f s",
        len(texts),
        steps,
        figures["readback_refit_loss"],
        figures["readback_refit_s"],
    )
    return heads, figures
