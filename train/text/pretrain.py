"""`python -m train text-encoder`: pretrain φ (char-CNN-RNN) jointly with θ (image CNN).

    python -m train text-encoder --data data/rescue_scenes.h5 --out runs/text_encoder

Creates `<out>/NNNNN/` holding `config.json` (the resolved `PretrainConfig`, written before step
0), `checkpoint.pt` (kind "text_encoder": both encoders, their configs, the config again, the
tokenizer, optimiser / objective / RNG state and the step; written atomically every
`checkpoint_every` steps, on Ctrl-C and at the end), `metrics.jsonl`, TensorBoard events in
`tensorboard/`, and — unless `--no-eval` — `eval_text.jsonl` with the final R-precision table.

Recipe and why (measured results and wall times: docs/TEXT_ENCODER.md):

- Data in memory (10k images are 123 MB of uint8), one caption sampled among the image's ten per
  step, augmented with `train.text.perturb.augment` (typos, clause shuffles, stray punctuation).
- Every batch is padded only to its longest caption's `min_input_length` (exact: valid-step
  masking), ~140 instead of 201 characters on rescue-scenes.
- The schedule is a pure function of (seed, step): which images, which captions, which
  perturbations. Resume therefore continues exactly (bit-identical weights after N steps with or
  without an interruption, tested) without replaying a data loader.
- AdamW, linear warm-up then cosine decay to zero over the run (`--steps`, or `--minutes` of
  training time), gradient clipping at 5 (Reed's value).
- Partial captions (issue 17; `--partial-captions aware`): multi-positive InfoNCE over the images
  a caption fits. Read-back heads ψ (`--readback-weight`) learn on the text embedding, with
  `--off-domain-per-batch` generated off-domain lines per step (docs/TEXT_ENCODER.md
  § Read-back); the checkpoint then carries model "readback".
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge_runtime import tokenizer
from train import models, options
from train.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    new_checkpoint,
    save_checkpoint,
)
from train.data.attributes import Attributes
from train.data.files import read_info, read_split
from train.data.phrasing import ALL_STATED, draw_terse_stated, terse_phrase
from train.data.schema import DataError, SplitData
from train.data.synth import render_items_stated, split_class_ids
from train.data.twins import AttributeTwins
from train.errors import BAD_INPUT, ConfigError, first_line
from train.options import option
from train.runs import (
    MetricsLog,
    OneLineParser,
    new_run_dir,
    run_dirs,
    truncate_after_step,
    write_json_atomic,
)
from train.text.evaluate import EvalConfig, evaluate, evaluate_checkpoint, format_table
from train.text.joint_embedding import (
    JointEmbedding,
    JointObjective,
    batch_accuracy,
    batch_ids,
    images_to_tensor,
)
from train.text.off_domain import off_domain_batch
from train.text.perturb import AugmentConfig, augment
from train.text.readback import RefitConfig, default_config, fit_heads, readback_loss, targets

log = logging.getLogger(__name__)

OBJECTIVES = ("sje", "infonce")
PARTIAL_MODES = ("aware", "ignore")
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"


# --------------------------------------------------------------------------------------------
# Configuration: resolved once, saved twice (config.json and inside every checkpoint)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run."""

    data: str = "data/rescue_scenes.h5"
    """HDF5 dataset (schema rescue-t2i-captions); the "train" split is trained on."""
    objective: str = "infonce"
    """"infonce" (default: better measured retrieval) or "sje" (Reed et al. 2016a)."""
    steps: int | None = 650
    """Optimiser steps; the learning-rate schedule spans them. None: run for `minutes`."""
    minutes: float | None = None
    """Training-time budget. Alone it drives the schedule (not bit-reproducible); with `steps`
    it only caps the run (the schedule still spans `steps`)."""
    batch_size: int = 64
    twin_fraction: float = 0.5
    """Share of each batch that are attribute twins of other members (see `AttributeTwins`);
    used only where the dataset has attributes."""
    terse_share: float = 0.0
    """Chance that a batch member's caption is swapped for a terse command about its image
    (`train.data.phrasing.terse_phrase`: "blue jacket", "on the snow / helmet on"), drawn
    on the fly where the dataset has attributes. Off by default: at 0.15 it moved no read-back
    or retrieval figure beyond one seed's noise, on top of the lead padding that did fix terse
    commands (`TextEncoderConfig.lead_pad`; docs/TEXT_ENCODER.md § Terse commands)."""
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    """AdamW decay on weight matrices and kernels only (not biases, norms or temperature)."""
    grad_clip: float = 5.0
    margin: float = 1.0
    """SJE hinge margin Δ."""
    temperature: float = 0.07
    """InfoNCE initial temperature (then learned, as in CLIP)."""
    proxy_weight: float = 1.0
    """Weight of the class-proxy term (`train.text.joint_embedding.ClassProxies`); 0 disables."""
    num_classes: int | None = None
    """Rows of the class-proxy table; resolved from the training split (max class id + 1)."""
    attribute_weight: float = 5.0
    """Weight of the attribute heads (`train.text.joint_embedding.AttributeHeads`), used where the
    dataset has attributes; 0 disables."""
    attribute_sizes: tuple[int, ...] | None = None
    """Values per attribute; resolved from the training split (() when it has none)."""
    seed: int = 0
    threads: int = 0
    """torch intra-op threads; 0 = one per core."""
    checkpoint_every: int = 200
    log_every: int = 10
    monitor_every: int = 200
    """Every this many steps, clean R-precision on a slice of `monitor_split` (logged only;
    nothing is selected on it). 0 disables."""
    monitor_split: str = "test"
    monitor_images: int = 500
    eval_splits: tuple[str, ...] = ("test", "test_unseen", "test_phrasing")
    """Splits the final evaluation (eval-text) runs on, where the dataset has them (files made
    before phrasing version 1 have no test_phrasing)."""
    dry_run: bool = False
    """One step on rendered rescue-scenes data instead of `data`."""
    partial_captions: str = "aware"
    """Captions that state only some attributes (a train split with `caption_stated`): "aware"
    = multi-positive InfoNCE over the images a caption fits, partial captions out of the text
    class-proxy term, unstated attributes out of the attribute heads
    (`JointObjective.forward`); "ignore" = every caption treated as full (training before
    partial captions)."""
    readback_weight: float = 1.0
    """Weight of the read-back heads' loss (`train.text.readback`), trained jointly on the text
    embedding where the dataset has attributes; 0: no heads (the checkpoint carries none)."""
    readback_detach: bool = True
    """Heads read a detached embedding: their loss does not reach the text encoder. Attached,
    the heads (at 10× the learning rate) steer φ so hard that φ learns the attributes far more
    slowly: trained on the attribute heads alone for 150 steps, the text read colour / helmet
    37 / 62 % right attached (even without off-domain lines) and 66 / 79 % detached (with 16)
    (docs/TEXT_ENCODER.md § The helmet)."""
    readback_hidden: int = 256
    """Width of the heads' hidden layer (`train.models.ReadBackConfig.hidden`; 0: linear)."""
    readback_linear_attributes: bool = True
    """The attribute blocks read φ(t) linearly; only the off-domain logit goes through the hidden
    layer (`train.models.ReadBackConfig.linear_attributes`)."""
    readback_refit_captions: int = 20_000
    """After the last step, ψ is fitted afresh on the frozen encoder from this many training
    captions (`train.text.readback.fit_heads`, ~30 s at the default); 0: keep the heads
    trained beside the encoder, which learn the seen colour×terrain combinations."""
    readback_lr_scale: float = 10.0
    """The heads' learning rate is this × the encoders' (same warm-up and cosine). At 1× the
    heads lag far behind what the embedding already separates (docs/TEXT_ENCODER.md
    § Read-back: measured at 300 steps)."""
    off_domain_per_batch: int = 16
    """Off-domain lines (`train.text.off_domain`) added to every batch for the off-domain head;
    they pass through the text encoder with the captions but not through the cross-modal loss."""
    cross_modal_ramp: float = 0.25
    """The cross-modal term (InfoNCE / SJE) and the class proxies weigh 0 for this fraction of
    the run, then rise linearly to 1 over the next such fraction (`cross_modal_weight`); the
    attribute heads count in full from step 0. 0: full weight from step 0 (before the fix).
    Why: on L2-normalised embeddings InfoNCE penalises every text feature the image encoder
    does not yet share, so an attribute that both encoders learn slowly — the helmet, a
    negation late in the caption against a few pixels of the image — stayed at chance for the
    whole run (600 steps: 52–57 % on `test` by the objective's own head), and a linear ramp
    from 0 did not help (54 %). Held at 0, the heads alone teach both encoders every attribute
    first; InfoNCE then keeps what they share (300 steps: 97.6 %). docs/TEXT_ENCODER.md
    § The helmet."""
    augment_ramp: float = 0.3
    """Augmentation strength rises linearly from 0 to 1 over this fraction of the run: clean
    captions first teach the attributes fast, perturbed ones then teach robustness."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    text_encoder: models.TextEncoderConfig = field(default_factory=models.TextEncoderConfig)
    image_encoder: models.ImageEncoderConfig = field(default_factory=models.ImageEncoderConfig)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.proxy_weight < 0 or self.attribute_weight < 0 or self.readback_weight < 0:
            raise ConfigError("proxy_weight, attribute_weight and readback_weight must be ≥ 0")
        if self.partial_captions not in PARTIAL_MODES:
            raise ConfigError(
                f"partial_captions must be one of {PARTIAL_MODES}, got {self.partial_captions!r}"
            )
        if min(self.off_domain_per_batch, self.readback_hidden, self.readback_refit_captions) < 0:
            raise ConfigError(
                "off_domain_per_batch, readback_hidden and readback_refit_captions must be ≥ 0"
            )
        if self.readback_lr_scale <= 0:
            raise ConfigError(f"readback_lr_scale must be > 0, got {self.readback_lr_scale}")
        if not 0.0 <= self.cross_modal_ramp <= 1.0:
            raise ConfigError(f"cross_modal_ramp must be in [0, 1], got {self.cross_modal_ramp}")
        if not 0.0 <= self.augment_ramp <= 1.0:
            raise ConfigError(f"augment_ramp must be in [0, 1], got {self.augment_ramp}")
        if not 0.0 <= self.terse_share <= 1.0:
            raise ConfigError(f"terse_share must be in [0, 1], got {self.terse_share}")
        if not 0.0 <= self.twin_fraction <= 0.5:
            raise ConfigError(f"twin_fraction must be in [0, 0.5], got {self.twin_fraction}")
        if self.steps is None and self.minutes is None:
            raise ConfigError("one of steps or minutes is needed")
        if self.text_encoder.embedding_dim != self.image_encoder.embedding_dim:
            raise ConfigError("text and image embedding sizes differ")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (nested configs included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> PretrainConfig:
        """Inverse of `to_dict`; unknown fields are refused. A config written before a field
        existed gets the value that reproduces how it was trained (`LEGACY_VALUES`)."""
        data = {**LEGACY_VALUES, **data}
        if isinstance(data.get("augment"), dict):
            data["augment"] = {**LEGACY_AUGMENT, **data["augment"]}
        nested = {
            "augment": AugmentConfig,
            "text_encoder": models.TextEncoderConfig,
            "image_encoder": models.ImageEncoderConfig,
        }
        for key, config_cls in nested.items():
            if key in data:
                data[key] = models.config_from_dict(config_cls, data[key], f"{where}.{key}")
        return models.config_from_dict(cls, data, where)


LEGACY_VALUES: dict[str, Any] = {
    "partial_captions": "ignore",
    "readback_weight": 0.0,
    "readback_detach": False,
    "readback_hidden": 256,
    "readback_linear_attributes": False,
    "readback_refit_captions": 0,
    "readback_lr_scale": 1.0,
    "off_domain_per_batch": 0,
    "cross_modal_ramp": 0.0,
    "terse_share": 0.0,
}
"""Fields a saved config may lack (written before issue 17 or before the cross-modal ramp), with
the values it was trained with."""
LEGACY_AUGMENT: dict[str, Any] = {"doubled_prob": 0.0, "joined_prob": 0.0}


def resolve(config: PretrainConfig) -> PretrainConfig:
    """Fill what depends on the machine and the objective (threads, output normalisation)."""
    threads = config.threads or os.cpu_count() or 1
    # InfoNCE compares cosines: the encoders output unit vectors, so θ(v)·φ(t) is the cosine
    # at retrieval too, and the generator sees the same normalised vector the objective shaped.
    normalize = config.objective == "infonce"
    return dataclasses.replace(
        config,
        threads=threads,
        text_encoder=dataclasses.replace(config.text_encoder, normalize=normalize),
        image_encoder=dataclasses.replace(config.image_encoder, normalize=normalize),
    )


def resolve_classes(config: PretrainConfig, train_split: SplitData) -> PretrainConfig:
    """Fill `num_classes` and `attribute_sizes` from the training split (kept if set)."""
    if config.num_classes is None:
        config = dataclasses.replace(config, num_classes=int(np.max(train_split.class_ids)) + 1)
    if config.attribute_sizes is None:
        rows = train_split.attributes
        sizes = () if rows is None else tuple(int(v) + 1 for v in np.max(rows, axis=0))
        config = dataclasses.replace(config, attribute_sizes=sizes)
    return config


# --------------------------------------------------------------------------------------------
# Data: a pure function of (seed, step)
# --------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One step's training batch."""

    encoded: list[tokenizer.Encoded]
    images: torch.Tensor
    """(B, 3, H, W) in [-1, 1]."""
    labels: torch.Tensor
    """Class ids (B,) int64."""
    attributes: torch.Tensor | None
    """(B, A) int64 of the images, or None (a dataset without attributes)."""
    stated: torch.Tensor
    """(B,) int64 bitmask of what each caption states (`ALL_STATED` for a full caption)."""


class BatchSchedule:
    """Which images, captions and perturbations step `s` uses, from (seed, s) alone.

    A batch is `anchors` images taken in order from per-epoch permutations, then (where the
    split has attributes) one `AttributeTwins` twin for each of the first `twins` anchors.
    """

    def __init__(
        self,
        split: SplitData,
        batch_size: int,
        seed: int,
        augment: AugmentConfig,
        twin_fraction: float = 0.0,
        *,
        terse_share: float = 0.0,
    ) -> None:
        if len(split) < batch_size:
            raise DataError(f"train split has {len(split)} images, fewer than the batch size")
        self.split = split
        self.images = torch.from_numpy(np.ascontiguousarray(split.images))  # uint8 (N, H, W, 3)
        self.labels = torch.from_numpy(np.asarray(split.class_ids, dtype=np.int64))
        self.attributes = (
            None
            if split.attributes is None
            else torch.from_numpy(split.attributes.astype(np.int64))
        )
        self.stated = split.caption_stated  # (N, C) uint8 or None: every caption full
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.twins_of = AttributeTwins(split.attributes) if split.attributes is not None else None
        self.twins = round(batch_size * twin_fraction) if self.twins_of else 0
        self.twins = min(self.twins, batch_size // 2)
        self.anchors = batch_size - self.twins
        self.terse_share = terse_share if split.attributes is not None else 0.0
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            # A batch spans at most two epochs: keep the previous permutation, drop older ones.
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            rng = np.random.default_rng([self.seed, epoch, 0])
            self._perms[epoch] = rng.permutation(len(self.split))
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Image indices of `step` (B,): the anchors, then the twins of the first anchors."""
        n = len(self.split)
        positions = step * self.anchors + np.arange(self.anchors)
        anchors = [int(self._perm(int(p // n))[int(p % n)]) for p in positions]
        rng = np.random.default_rng([self.seed, step, 2])
        twins = []
        for anchor in anchors[: self.twins]:
            assert self.twins_of is not None
            twin = self.twins_of.twin(anchor, rng)
            twins.append(twin if twin is not None else int(rng.integers(n)))
        return np.array(anchors + twins, dtype=np.int64)

    def batch(self, step: int, strength: float = 1.0) -> Batch:
        """The `Batch` of `step`; `strength` scales the augmentation probabilities."""
        idx = self.indices(step)
        rng = np.random.default_rng([self.seed, step, 1])
        # Its own stream, so that terse_share 0 draws every batch exactly as before.
        terse_rng = np.random.default_rng([self.seed, step, 5])
        encoded = []
        stated = []
        for i in idx:
            row = self.split.captions[int(i)]
            j = int(rng.integers(len(row)))
            caption = row[j]
            mask = ALL_STATED if self.stated is None else int(self.stated[int(i), j])
            if self.terse_share and terse_rng.random() < self.terse_share:
                assert self.split.attributes is not None
                values = Attributes.from_indices(self.split.attributes[int(i)].tolist())
                phrase = terse_phrase(values, draw_terse_stated(terse_rng), terse_rng)
                caption, mask = phrase.caption, phrase.mask
            stated.append(mask)
            try:
                encoded.append(tokenizer.encode(augment(caption, rng, self.augment, strength)))
            except tokenizer.CaptionError:
                # Typos can delete a one-letter caption entirely; train on the original then.
                encoded.append(tokenizer.encode(caption))
        attributes = None if self.attributes is None else self.attributes[idx]
        return Batch(
            encoded,
            images_to_tensor(self.images[idx]),
            self.labels[idx],
            attributes,
            torch.tensor(stated, dtype=torch.int64),
        )

    def off_domain(self, step: int, count: int, strength: float = 1.0) -> list[tokenizer.Encoded]:
        """`count` off-domain lines of `step` (`train.text.off_domain`), augmented like the
        captions (a typo must not be what tells a rescue caption from another sentence)."""
        rng = np.random.default_rng([self.seed, step, 4])
        encoded = []
        for line in off_domain_batch(rng, count):
            try:
                encoded.append(tokenizer.encode(augment(line, rng, self.augment, strength)))
            except tokenizer.CaptionError:
                encoded.append(tokenizer.encode(line))
        return encoded


def generated_splits(
    seed: int,
    counts: dict[str, int] | None = None,
    captions_per_image: int = 4,
    partial_fraction: float = 0.0,
) -> dict[str, SplitData]:
    """Small rescue-scenes splits rendered on the fly (dry runs and tests), attributes included.

    `counts` maps split names ("train", "test", "test_unseen") to image counts; the default is
    the dry run's 96 training and 120 test images. `partial_fraction` > 0 makes that share of
    the train split's captions partial (with `caption_stated`), as `data synth` does.
    """
    splits = {}
    for name, count in (counts or {"train": 96, "test": 120}).items():
        class_ids = split_class_ids(name, count, seed)
        fraction = partial_fraction if name == "train" else 0.0
        images, captions, stated = render_items_stated(
            seed, name, 0, class_ids, captions_per_image, partial_fraction=fraction
        )
        attributes = np.array(
            [Attributes.from_class_id(int(c)).indices for c in class_ids], dtype=np.int16
        )
        masks = np.asarray(stated, np.uint8)
        splits[name] = SplitData(
            images,
            captions,
            class_ids,
            attributes,
            caption_stated=masks if (masks != ALL_STATED).any() else None,
        )
    return splits


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def cross_modal_weight(ramp: float, progress: float) -> float:
    """Weight of the cross-modal and proxy terms: 0 for the first `ramp` of the run (the
    attribute heads alone), then linear to 1 over the next `ramp`; 1 throughout if `ramp` is 0."""
    if ramp <= 0:
        return 1.0
    return min(1.0, max(0.0, progress / ramp - 1.0))


def learning_rate(config: PretrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from `lr` to 0 as progress goes 0 → 1."""
    warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    return config.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _param_groups(
    encoders: list[nn.Module], objective: nn.Module, weight_decay: float
) -> list[dict[str, Any]]:
    """Decay the encoders' matrices and kernels; never biases, norms, proxies or temperature."""
    decay, no_decay = [], list(objective.parameters())
    for module in encoders:
        for p in module.parameters():
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@dataclass
class TrainState:
    """Everything that changes during a run."""

    text_encoder: models.CharCnnRnn
    image_encoder: models.ImageEncoder
    objective: JointObjective
    """The loss and its parameters (InfoNCE temperature, class proxies)."""
    optimizer: torch.optim.Optimizer
    readback: models.ReadBack | None = None
    """The read-back heads ψ (None: `readback_weight` 0 or a dataset without attributes)."""
    step: int = 0
    elapsed_s: float = 0.0
    """Training time so far (across resumes)."""

    @classmethod
    def fresh(cls, config: PretrainConfig) -> TrainState:
        """New models initialised from `config.seed`."""
        torch.manual_seed(config.seed)
        text = models.CharCnnRnn(config.text_encoder)
        image = models.ImageEncoder(config.image_encoder)
        if config.proxy_weight > 0 and config.num_classes is None:
            raise ValueError("num_classes must be resolved before building the class proxies")
        objective = JointObjective(
            config.objective,
            config.num_classes or 0,
            config.text_encoder.embedding_dim,
            temperature=config.temperature,
            margin=config.margin,
            proxy_weight=config.proxy_weight,
            attribute_sizes=config.attribute_sizes or (),
            attribute_weight=config.attribute_weight,
        )
        groups = _param_groups([text, image], objective, config.weight_decay)
        readback = None
        if config.readback_weight > 0 and config.attribute_sizes:
            # Built after the encoders and the objective: their initial weights stay those of a
            # run without heads.
            readback = models.ReadBack(
                dataclasses.replace(
                    default_config(config.text_encoder.embedding_dim, config.attribute_sizes),
                    hidden=config.readback_hidden,
                    linear_attributes=config.readback_linear_attributes,
                )
            )
            for group in _param_groups([readback], nn.Module(), config.weight_decay):
                groups.append(group | {"lr_scale": config.readback_lr_scale})
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
        return cls(text, image, objective, optimizer, readback)

    def checkpoint(self, config: PretrainConfig, metrics: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint dict (docs/ARCHITECTURE.md, kind "text_encoder"); with heads, model
        "readback" too (the GAN trainer copies it on into GAN checkpoints, export ships it)."""
        model_states = {
            "text_encoder": self.text_encoder.state_dict(),
            "image_encoder": self.image_encoder.state_dict(),
        }
        model_configs = {
            "text_encoder": dataclasses.asdict(self.text_encoder.config),
            "image_encoder": dataclasses.asdict(self.image_encoder.config),
        }
        if self.readback is not None:
            model_states["readback"] = self.readback.state_dict()
            model_configs["readback"] = dataclasses.asdict(self.readback.config)
        return new_checkpoint(
            "text_encoder",
            models=model_states,
            model_configs=model_configs,
            config=config.to_dict(),
            step=self.step,
            elapsed_s=self.elapsed_s,
            optimizer=self.optimizer.state_dict(),
            objective=self.objective.state_dict(),
            rng={"torch": torch.get_rng_state()},
            metrics=metrics,
        )

    @classmethod
    def from_checkpoint(
        cls, checkpoint: dict[str, Any], config: PretrainConfig, where: str
    ) -> TrainState:
        """Rebuild the state a checkpoint saved, to continue it."""
        state = cls.fresh(config)
        try:
            state.text_encoder.load_state_dict(checkpoint["models"]["text_encoder"])
            state.image_encoder.load_state_dict(checkpoint["models"]["image_encoder"])
            if state.readback is not None:
                state.readback.load_state_dict(checkpoint["models"]["readback"])
            state.objective.load_state_dict(checkpoint["objective"])
            state.optimizer.load_state_dict(checkpoint["optimizer"])
            torch.set_rng_state(checkpoint["rng"]["torch"])
            state.step = int(checkpoint["step"])
            state.elapsed_s = float(checkpoint.get("elapsed_s", 0.0))
        except (KeyError, RuntimeError, ValueError) as err:
            first = first_line(err)
            raise CheckpointError(f"{where}: cannot resume from it: {first}") from None
        return state


def _monitor(state: TrainState, split: SplitData, images: int, seed: int) -> float:
    """Clean text→image R-precision on the first `images` images of a split (logging only)."""
    n = min(images, len(split))
    part = SplitData(split.images[:n], split.captions[:n], split.class_ids[:n])
    model = JointEmbedding(state.text_encoder, state.image_encoder)
    candidates = min(100, len(np.unique(part.class_ids)))
    records = evaluate(
        model,
        {"monitor": part},
        EvalConfig(candidates=candidates, captions_per_image=1, seed=seed, variants=("clean",)),
    )
    model.train()
    return float(records[0]["value"])


def _with_readback(
    config: PretrainConfig,
    readback: models.ReadBack,
    text_all: torch.Tensor,
    batch: Batch,
    loss: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`loss` plus the weighted read-back loss on text_all (B + K, E): the B captions' labels
    from their `caption_stated` bits, then K off-domain lines stating nothing."""
    assert batch.attributes is not None
    sizes = readback.config.value_counts
    stated = batch.stated
    if config.partial_captions == "ignore":
        stated = torch.full_like(stated, ALL_STATED)
    captions = targets(batch.attributes, stated, sizes)  # (B, A)
    extra = text_all.shape[0] - captions.shape[0]
    nothing = torch.tensor(sizes, dtype=torch.int64).expand(extra, len(sizes))  # (K, A)
    attribute_targets = torch.cat([captions, nothing])  # (B + K, A)
    off_domain = torch.cat([torch.zeros(captions.shape[0]), torch.ones(extra)])  # (B + K,)
    # Detached: the heads only read φ(t). Attached (default): the attribute and off-domain
    # labels also shape the encoder (docs/TEXT_ENCODER.md § Read-back: both measured).
    embedding = text_all.detach() if config.readback_detach else text_all
    read, parts = readback_loss(readback, embedding, attribute_targets, off_domain)
    parts["readback"] = float(read.detach())
    return loss + config.readback_weight * read, parts


class InterruptedTrainingError(Exception):
    """Training stopped by SIGINT/SIGTERM at a step boundary, after saving a checkpoint."""


class _StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop at the next step boundary.

    Stopping mid-step could save weights already updated by a step the checkpoint does not
    count; a second signal stops at once (the last periodic checkpoint stays valid).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (only possible in the main thread)."""
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self.uninstall()

    def uninstall(self) -> None:
        """Restore the previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def train(
    config: PretrainConfig,
    run_dir: Path,
    splits: dict[str, SplitData],
    checkpoint: dict[str, Any] | None = None,
) -> TrainState:
    """Run (or continue) pretraining in `run_dir`; returns the final state (checkpoint saved)."""
    from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is slow to import

    config = resolve_classes(config, splits["train"])
    torch.set_num_threads(config.threads)
    ckpt_path = run_dir / CHECKPOINT_FILE
    if checkpoint is None:
        state = TrainState.fresh(config)
    else:
        state = TrainState.from_checkpoint(checkpoint, config, str(ckpt_path))
        dropped = truncate_after_step(run_dir / "metrics.jsonl", state.step)
        log.info(
            "resuming %s at step %d (%d later metric lines dropped)", run_dir, state.step, dropped
        )
    schedule = BatchSchedule(
        splits["train"],
        config.batch_size,
        config.seed,
        config.augment,
        config.twin_fraction,
        terse_share=config.terse_share,
    )
    monitor = splits.get(config.monitor_split) if config.monitor_every else None
    total_steps = 1 if config.dry_run else config.steps
    budget_s = None if config.minutes is None else config.minutes * 60.0
    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=state.step or None)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    last: dict[str, Any] = {}
    progress_bar = tqdm(
        total=total_steps, initial=state.step, unit="step", desc="text-encoder", disable=None
    )
    state.text_encoder.train()
    state.image_encoder.train()
    if state.readback is not None:
        state.readback.train()
    window_start, window_steps = time.perf_counter(), 0
    progress_every = max(1, (total_steps or 1000) // 10)

    def save() -> None:
        save_checkpoint(state.checkpoint(config, last), ckpt_path)

    stop = _StopRequest()
    try:
        stop.install()
        while True:
            if stop.signum is not None:
                # At a step boundary, so the checkpoint resumes exactly.
                save()
                log.warning(
                    "stopped by signal %d: checkpoint at step %d saved to %s",
                    stop.signum,
                    state.step,
                    ckpt_path,
                )
                raise InterruptedTrainingError(state.step)
            if total_steps is not None and state.step >= total_steps:
                break
            if budget_s is not None and state.elapsed_s >= budget_s:
                log.info(
                    "training-time budget of %.1f min reached at step %d",
                    config.minutes,
                    state.step,
                )
                break
            started = time.perf_counter()
            progress = (
                state.step / total_steps
                if total_steps is not None
                else state.elapsed_s / (budget_s or 1.0)
            )
            lr = learning_rate(config, state.step, progress)
            for group in state.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

            strength = min(1.0, progress / config.augment_ramp) if config.augment_ramp else 1.0
            batch = schedule.batch(state.step, strength)
            images, labels, attributes = batch.images, batch.labels, batch.attributes
            stated = batch.stated if config.partial_captions == "aware" else None
            encoded = batch.encoded
            off_count = config.off_domain_per_batch if state.readback is not None else 0
            if off_count:
                encoded = encoded + schedule.off_domain(state.step, off_count, strength)
            ids, lengths = batch_ids(encoded, config.text_encoder)  # (B + K, T ≤ 201), (B + K,)
            text_all = state.text_encoder(ids, lengths)  # (B + K, E): captions, then off-domain
            text_emb = text_all[: len(batch.encoded)]  # (B, E)
            image_emb = state.image_encoder(images)  # (B, E)
            cross_weight = cross_modal_weight(config.cross_modal_ramp, progress)
            loss, parts = state.objective(
                text_emb, image_emb, labels, attributes, stated, cross_weight=cross_weight
            )
            if state.readback is not None and attributes is not None:
                loss, read_parts = _with_readback(config, state.readback, text_all, batch, loss)
                parts.update(read_parts)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {state.step}")
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(
                [p for g in state.optimizer.param_groups for p in g["params"]], config.grad_clip
            )
            state.optimizer.step()
            state.step += 1
            state.elapsed_s += time.perf_counter() - started
            window_steps += 1
            progress_bar.update(1)

            if state.step % config.log_every == 0 or state.step == total_steps:
                now = time.perf_counter()
                last = {
                    "step": state.step,
                    "loss": float(loss.detach()),
                    "batch_accuracy": batch_accuracy(text_emb.detach(), image_emb.detach(), labels),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "chars": int(ids.shape[1]),
                    "elapsed_s": round(state.elapsed_s, 2),
                    # CPU seconds of this process: comparable across runs on a shared machine,
                    # where wall time depends on what else is running.
                    "process_cpu_s": round(time.process_time(), 1),
                    "steps_per_s": window_steps / max(now - window_start, 1e-9),
                }
                last.update({f"loss_{k}" if k != "logit_scale" else k: v for k, v in parts.items()})
                window_start, window_steps = now, 0
                metrics.write(last)
                for key, value in last.items():
                    if key != "step":
                        writer.add_scalar(f"train/{key}", value, state.step)
                progress_bar.set_postfix(
                    loss=f"{last['loss']:.3f}", acc=f"{last['batch_accuracy']:.2f}"
                )
            if state.step % progress_every == 0 and progress_bar.disable:
                # Without a terminal (logs, `make demo`) the bar is off: a line per tenth instead.
                log.info(
                    "step %d%s: loss %.3f, batch accuracy %.2f, %.1f min",
                    state.step,
                    f"/{total_steps}" if total_steps else "",
                    float(loss.detach()),
                    batch_accuracy(text_emb.detach(), image_emb.detach(), labels),
                    state.elapsed_s / 60,
                )
            if monitor is not None and state.step % config.monitor_every == 0:
                value = _monitor(state, monitor, config.monitor_images, config.seed)
                metrics.write(
                    {"step": state.step, f"monitor/{config.monitor_split}_r_precision": value}
                )
                writer.add_scalar(f"monitor/{config.monitor_split}_r_precision", value, state.step)
                log.info(
                    "step %d: %s R-precision (clean, %d images) %.1f %%",
                    state.step,
                    config.monitor_split,
                    config.monitor_images,
                    100 * value,
                )
            if state.step % config.checkpoint_every == 0:
                save()
        if state.readback is not None and config.readback_refit_captions and not config.dry_run:
            state.readback, figures = fit_heads(
                state.text_encoder,
                splits["train"],
                state.readback.config,
                RefitConfig(captions=config.readback_refit_captions, seed=config.seed),
                config.augment,
            )
            last = last | figures
            metrics.write({"step": state.step} | figures)
    finally:
        stop.uninstall()
        progress_bar.close()
        writer.close()
        metrics.close()
    save()
    log.info(
        "step %d: %.1f min of training; checkpoint %s", state.step, state.elapsed_s / 60, ckpt_path
    )
    return state


# --------------------------------------------------------------------------------------------
# Command line: flags → validated config → train → evaluate
# --------------------------------------------------------------------------------------------


def _channels(flag: str, count: int | None) -> Any:
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} wants comma-separated integers") from None
        if (count is not None and len(values) != count) or any(v < 1 for v in values):
            want = f"{count} positive" if count else "positive"
            raise argparse.ArgumentTypeError(f"{flag} wants {want} integers, got {text!r}")
        return values

    return parse


_D = PretrainConfig()


def _flag(help: str, **how: Any) -> Any:
    """A text-encoder flag: default None ("not given"), its default named in the help."""
    return option(None, help, show_default=False, **how)


@dataclass(frozen=True)
class PretrainFlags:
    """The text-encoder command line, each flag declared once; None = not given, so a resumed
    run can tell a repeated flag from a changed one. `target` is the config field it sets."""

    data: str | None = _flag(f"HDF5 dataset (default {_D.data})", target=("data",))
    out: str = option("runs/text_encoder", "parent of numbered run folders", show_default=False)
    objective: str | None = _flag(
        f"default {_D.objective}", choices=OBJECTIVES, target=("objective",)
    )
    steps: int | None = _flag(
        f"optimiser steps (default {_D.steps})", at_least=1, target=("steps",)
    )
    minutes: float | None = _flag(
        "training-time budget (alone: drives the schedule; with --steps: a cap)",
        above=0,
        target=("minutes",),
    )
    batch_size: int | None = _flag(
        f"default {_D.batch_size}", at_least=2, target=("batch_size",)
    )  # ≥ 2: contrastive batches
    twin_fraction: float | None = _flag(
        f"default {_D.twin_fraction}", at_least=0, at_most=0.5, target=("twin_fraction",)
    )
    terse_share: float | None = _flag(
        f"chance a caption is swapped for a terse command about its image (default "
        f"{_D.terse_share})",
        at_least=0,
        at_most=1,
        target=("terse_share",),
    )
    temperature: float | None = _flag(
        f"InfoNCE initial (default {_D.temperature})", above=0, target=("temperature",)
    )
    margin: float | None = _flag(
        f"SJE hinge margin (default {_D.margin})", above=0, target=("margin",)
    )
    attribute_weight: float | None = _flag(
        f"attribute heads (default {_D.attribute_weight}; 0: off)",
        at_least=0,
        target=("attribute_weight",),
    )
    cross_modal_ramp: float | None = _flag(
        f"fraction of the run over which InfoNCE/SJE and the proxies ramp in "
        f"(default {_D.cross_modal_ramp}; 0: none)",
        at_least=0,
        at_most=1,
        target=("cross_modal_ramp",),
    )
    proxy_weight: float | None = _flag(
        f"class-proxy term (default {_D.proxy_weight}; 0: off)",
        at_least=0,
        target=("proxy_weight",),
    )
    partial_captions: str | None = _flag(
        f"aware: multi-positive InfoNCE for partial captions (default {_D.partial_captions})",
        choices=PARTIAL_MODES,
        target=("partial_captions",),
    )
    readback_weight: float | None = _flag(
        f"read-back heads (default {_D.readback_weight}; 0: no heads)",
        at_least=0,
        target=("readback_weight",),
    )
    readback_detach: bool = option(
        False,
        "the read-back heads' loss does not reach the text encoder (the default)",
        show_default=False,
        store_true=True,
    )
    readback_attach: bool = option(
        False,
        "the read-back heads' loss also trains the text encoder",
        show_default=False,
        store_true=True,
    )
    readback_hidden: int | None = _flag(
        f"read-back hidden width (default {_D.readback_hidden}; 0: linear)",
        at_least=0,
        target=("readback_hidden",),
    )
    readback_refit_captions: int | None = _flag(
        "captions the read-back heads are fitted on afresh after the last step, on the frozen "
        f"encoder (default {_D.readback_refit_captions}; 0: keep the jointly trained heads)",
        at_least=0,
        target=("readback_refit_captions",),
    )
    readback_lr_scale: float | None = _flag(
        f"read-back learning rate, × the encoders' (default {_D.readback_lr_scale})",
        above=0,
        target=("readback_lr_scale",),
    )
    off_domain_per_batch: int | None = _flag(
        f"off-domain lines per batch for the read-back (default {_D.off_domain_per_batch})",
        at_least=0,
        target=("off_domain_per_batch",),
    )
    lr: float | None = _flag(f"default {_D.lr}", above=0, target=("lr",))
    seed: int | None = _flag(f"default {_D.seed}", target=("seed",))
    threads: int | None = _flag(
        "torch threads (default: one per core)", at_least=1, target=("threads",)
    )
    rnn: str | None = _flag(
        f"default {_D.text_encoder.rnn}", choices=("gru", "lstm"), target=("text_encoder", "rnn")
    )
    embedding_dim: int | None = _flag(f"default {_D.text_encoder.embedding_dim}", at_least=1)
    """Sets both encoders' embedding size (one shared space), see `_apply_flags`."""
    conv_channels: tuple[int, ...] | None = _flag(
        "three text-conv widths (default 384,512,512)",
        parse=_channels("--conv-channels", 3),
        target=("text_encoder", "conv_channels"),
    )
    rnn_hidden: int | None = _flag(
        f"default {_D.text_encoder.rnn_hidden}", at_least=1, target=("text_encoder", "rnn_hidden")
    )
    lead_pad: int | None = _flag(
        f"PAD characters the text encoder prepends (default {_D.text_encoder.lead_pad}; a "
        "multiple of pool_size² — docs/TEXT_ENCODER.md § Terse commands)",
        at_least=0,
        target=("text_encoder", "lead_pad"),
    )
    no_lead_space: bool = option(
        False,
        "the text encoder's lead characters are all padding, as before 2026-12-06 "
        "(docs/TEXT_ENCODER.md § The first word)",
        show_default=False,
        store_true=True,
    )
    image_channels: tuple[int, ...] | None = _flag(
        "image-encoder stage widths (default 32,64,128,256)",
        parse=_channels("--image-channels", None),
        target=("image_encoder", "channels"),
    )
    no_augment: bool = option(
        False, "train on clean captions only", show_default=False, store_true=True
    )
    checkpoint_every: int | None = _flag(
        f"default {_D.checkpoint_every}", at_least=1, target=("checkpoint_every",)
    )
    monitor_every: int | None = _flag(
        f"default {_D.monitor_every} (0: off)", at_least=0, target=("monitor_every",)
    )
    eval_splits: tuple[str, ...] | None = _flag(
        "final evaluation splits (default: test test_unseen test_phrasing where present)",
        nargs="+",
        target=("eval_splits",),
    )
    no_eval: bool = option(False, "skip the final evaluation", show_default=False, store_true=True)
    resume: str | None = _flag(
        "continue a run: its folder or checkpoint (default: newest in --out)",
        nargs="?",
        const="latest",
        metavar="RUN",
    )
    dry_run: bool = option(
        False,
        "one real step on rendered data; writes a normal run folder",
        show_default=False,
        store_true=True,
    )


def build_parser() -> OneLineParser:
    """The text-encoder flags, generated from `PretrainFlags`."""
    parser = OneLineParser(
        prog="python -m train text-encoder",
        description="Pretrain the char-CNN-RNN text encoder jointly with an image encoder.",
    )
    return options.build_parser(PretrainFlags, parser, given_only=False)


def parse_flags(argv: list[str] | None) -> PretrainFlags:
    """argv → frozen `PretrainFlags`, every declared range checked (ConfigError names the flag)."""
    flags = PretrainFlags(**vars(build_parser().parse_args(argv)))
    if flags.eval_splits is not None:
        flags = dataclasses.replace(flags, eval_splits=tuple(flags.eval_splits))
    options.check_ranges(flags)
    return flags


# What may differ when resuming: where the data lives and how many threads compute.
_RESUMABLE_CHANGES = {"data", "threads"}


def _targets() -> dict[str, tuple[str, ...]]:
    """flag field → the config field it sets, as declared on `PretrainFlags`."""
    declared = options.options(PretrainFlags).items()
    return {name: spec.target for name, (spec, _, _) in declared if spec.target is not None}


def _apply_flags(config: PretrainConfig, args: PretrainFlags) -> PretrainConfig:
    """`config` with every flag that was given applied."""
    for name, path in _targets().items():
        value = getattr(args, name)
        if value is None:
            continue
        try:  # the configs validate themselves; name the flag that broke the rule
            if len(path) == 1:
                config = dataclasses.replace(config, **{path[0]: value})
            else:
                inner = dataclasses.replace(getattr(config, path[0]), **{path[1]: value})
                config = dataclasses.replace(config, **{path[0]: inner})
        except ValueError as error:
            raise ConfigError(f"--{name.replace('_', '-')}: {error}") from None
    if args.minutes is not None and args.steps is None and not args.resume:
        config = dataclasses.replace(config, steps=None)  # --minutes alone drives the schedule
    if args.no_augment:
        config = dataclasses.replace(
            config,
            augment=AugmentConfig(
                typo_prob=0.0,
                shuffle_prob=0.0,
                punctuation_prob=0.0,
                doubled_prob=0.0,
                joined_prob=0.0,
            ),
        )
    if args.no_eval:
        config = dataclasses.replace(config, eval_splits=())
    if args.no_lead_space:
        config = dataclasses.replace(
            config, text_encoder=dataclasses.replace(config.text_encoder, lead_space=False)
        )
    if args.readback_detach and args.readback_attach:
        raise ConfigError("--readback-detach and --readback-attach exclude each other")
    if args.readback_detach or args.readback_attach:
        config = dataclasses.replace(config, readback_detach=args.readback_detach)
    if args.dry_run:
        config = dataclasses.replace(config, dry_run=True, monitor_every=0)
    if args.embedding_dim is not None:  # one shared embedding size: set both encoders at once
        config = dataclasses.replace(
            config,
            text_encoder=dataclasses.replace(config.text_encoder, embedding_dim=args.embedding_dim),
            image_encoder=dataclasses.replace(
                config.image_encoder, embedding_dim=args.embedding_dim
            ),
        )
    return config


def _find_resume(spec: str, out: str) -> Path:
    """--resume value → checkpoint path (a run folder, a checkpoint, or "latest" in --out)."""
    if spec == "latest":
        candidates = [d for d in run_dirs(out) if (d / CHECKPOINT_FILE).is_file()]
        if not candidates:
            raise ConfigError(f"--resume: no run folder with a {CHECKPOINT_FILE} under {out}")
        return candidates[-1] / CHECKPOINT_FILE
    path = Path(spec)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(f"--resume: {path} not found")
    return path


def _resumed_config(checkpoint: dict[str, Any], args: PretrainFlags, where: Path) -> PretrainConfig:
    """The saved config; flags may only repeat it (except data location and threads)."""
    saved = PretrainConfig.from_dict(checkpoint.get("config") or {}, f"{where}: config")
    wanted = _apply_flags(saved, args)
    fields = {**_targets(), "embedding_dim": ("text_encoder", "embedding_dim")}
    for name, path in fields.items():
        if getattr(args, name) is None or name in _RESUMABLE_CHANGES:
            continue
        old, new = saved, wanted
        for part in path:
            old, new = getattr(old, part), getattr(new, part)
        if old != new:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag}: a resumed run keeps its config ({old!r}); start a new run to change it"
            )
    for flag, wanted in (("readback_detach", True), ("readback_attach", False)):
        if getattr(args, flag) and saved.readback_detach != wanted:
            raise ConfigError(
                f"--{flag.replace('_', '-')}: a resumed run keeps its config "
                f"(readback_detach={saved.readback_detach}); start a new run to change it"
            )
    if args.no_lead_space and saved.text_encoder.lead_space:
        raise ConfigError(
            "--no-lead-space: a resumed run keeps its config (lead_space=True); "
            "start a new run to change it"
        )
    for flag in ("no_augment", "no_eval", "dry_run"):
        if getattr(args, flag):
            raise ConfigError(f"--{flag.replace('_', '-')} cannot be combined with --resume")
    changed = {k: getattr(args, k) for k in _RESUMABLE_CHANGES if getattr(args, k) is not None}
    return resolve(dataclasses.replace(saved, **changed)) if changed else saved


def _load_splits(config: PretrainConfig) -> dict[str, SplitData]:
    """The train split (and the monitor split, where present), or rendered data for a dry run."""
    if config.dry_run:
        # Partial captions too, so a dry run takes every step of the real path.
        return generated_splits(config.seed, partial_fraction=0.3)
    info = read_info(config.data)
    if "train" not in info.splits:
        raise DataError(f"{config.data}: no 'train' split (has {', '.join(info.splits)})")
    names = ["train"]
    if config.monitor_every and config.monitor_split in info.splits:
        names.append(config.monitor_split)
    started = time.perf_counter()
    splits = {name: read_split(config.data, name) for name in names}
    log.info(
        "loaded %s (%s) in %.1f s",
        config.data,
        ", ".join(f"{k}: {len(v)}" for k, v in splits.items()),
        time.perf_counter() - started,
    )
    return splits


def _final_eval(config: PretrainConfig, run_dir: Path, splits: dict[str, SplitData]) -> int:
    if config.dry_run:
        # The rendered test split is 120 images: fewer candidates, same code path.

        state_ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE, kind="text_encoder")
        model = JointEmbedding.from_checkpoint(state_ckpt, str(run_dir / CHECKPOINT_FILE))
        readback = None
        if "readback" in state_ckpt["models"]:
            readback = build_model(state_ckpt, "readback", str(run_dir / CHECKPOINT_FILE))
            assert isinstance(readback, models.ReadBack)
        records = evaluate(
            model, {"test": splits["test"]}, EvalConfig(candidates=20), readback=readback
        )
        print(format_table(records))
        return 0
    if not config.eval_splits:
        return 0
    info = read_info(config.data)
    names = [s for s in config.eval_splits if s in info.splits]
    if not names:
        log.warning("no evaluation: %s has none of the splits %s", config.data, config.eval_splits)
        return 0
    started = time.perf_counter()
    records = evaluate_checkpoint(run_dir / CHECKPOINT_FILE, config.data, names, EvalConfig())
    log.info("evaluation took %.1f s", time.perf_counter() - started)
    print(format_table(records))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Pretrain; 0 on success, 2 on bad input (one line on stderr), 130 when interrupted."""
    try:
        args = parse_flags(argv)
        checkpoint = None
        if args.resume:
            ckpt_path = _find_resume(args.resume, args.out)
            checkpoint = load_checkpoint(ckpt_path, kind="text_encoder")
            config = _resumed_config(checkpoint, args, ckpt_path)
            run_dir = ckpt_path.parent
        else:
            config = resolve(_apply_flags(PretrainConfig(), args))
            run_dir = None
        if not config.dry_run:
            info = read_info(config.data)  # a missing or foreign file fails here, before work
            if "train" not in info.splits:
                raise DataError(f"{config.data}: no 'train' split (has {', '.join(info.splits)})")
        splits = _load_splits(config)
        if len(splits["train"]) < config.batch_size:
            raise ConfigError(
                f"--batch-size {config.batch_size} exceeds the {len(splits['train'])} training "
                f"images in {'the dry-run data' if config.dry_run else config.data}"
            )
        config = resolve_classes(config, splits["train"])
        if run_dir is None:
            run_dir = new_run_dir(args.out)
            write_json_atomic(run_dir / CONFIG_FILE, config.to_dict())
        log.info(
            "run folder %s (objective %s, %s)",
            run_dir,
            config.objective,
            f"{config.steps} steps" if config.steps else f"{config.minutes} min",
        )
        train(config, run_dir, splits, checkpoint)
        return _final_eval(config, run_dir, splits)
    except (KeyboardInterrupt, InterruptedTrainingError):
        return 130
    except FloatingPointError as err:
        print(f"text-encoder: training diverged: {err}", file=sys.stderr)
        return 1
    except BAD_INPUT as err:
        print(f"text-encoder: {err}", file=sys.stderr)
        return 2
