"""One GAN training step (`GanTrainer`): the text-conditioned DCGAN's GAN-CLS + GAN-INT + feature
matching, with its networks, optimisers, data and checkpoint state.

One training step (Reed et al. 2016, Algorithm 1, with Salimans et al.'s feature matching):

1. look up the cached text embeddings of the batch: right text t (the image's K captions
   averaged), wrong text t̂ (captions of an image of another class) and, for the first
   `int_fraction` of the batch, t_int = β·t + (1 − β)·t_partner (GAN-INT);
2. one generator forward on [t; t_int] gives the fakes for both updates (Reed's G step also
   scores B + B/2 images, right-text and interpolated, in one batch);
3. D step, GAN-CLS: real+right → 1, real+wrong text → 0 (×½), fake (detached)+right → 0 (×½);
4. G step, D frozen: non-saturating loss on the right-text fakes, GAN-INT on the interpolated
   ones, feature matching of D's joint 4×4 features of fakes against those of the real batch from
   step 3 (optional L1);
5. the generator's weight average moves towards G (`--ema-decay`, train/gan/ema.py).

Partial captions (a split with `caption_stated`): the loader's wrong captions contradict the real
image on a stated attribute, and the matching term rewards any class the caption allows
(`allowed_classes`); splits without them train exactly as before (docs/GAN_TRAINING.md § Partial
captions).

Optional D regularisers (docs/GAN_TRAINING.md § One step): R1 on the real right-text pairs in
step 3, and the same attribute-keeping augmentation on every image D sees in steps 3 and 4.

Where the time goes, and what we avoid (measured in `python -m train.gan.bench`): text
embeddings are never recomputed (cached once); the real images' discriminator path is shared
by the right- and wrong-text terms (only D's cheap text-matching head runs twice); D's weight
gradients are not computed in the G step; the real features for feature matching are reused from
the D step (one Adam step older than the fakes' features: a target that lags one update, for one
D pass less per step); tensors are channels-last.

Everything random is a pure function of (seed, step) or (seed, epoch, sample), so `--resume`
continues bit for bit on CPU with the same thread count and world size (on CUDA with
`--deterministic`); with another world size it continues the same run up to rounding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from train import checkpoint as ck
from train import distributed, models
from train.data import files
from train.data.loader import (
    GanClsBatch,
    GanClsDataset,
    GanClsLoader,
    LoaderConfig,
    resize_images,
    to_model_range,
)
from train.data.schema import SplitData
from train.distributed import DistEnv
from train.errors import first_line
from train.gan import augment, losses
from train.gan.config import GanTrainConfig, config_to_dict, resolve_objective
from train.gan.ema import STANDING_BATCHES, ema_decay_at, standing_statistics, update_ema
from train.gan.text_embeddings import CaptionTable, TextEmbeddings, embed_texts, load_or_compute

log = logging.getLogger(__name__)

GRID_CAPTIONS = 8
HELD_OUT_IMAGES = 64
"""Images of the held-out split D is scored on at each log step (a fixed batch)."""
SATURATED_BELOW = 0.01
"""D's GAN-CLS loss under which a step counts as saturated (the target: ≤ 5 % of steps after
warm-up, docs/QUALITY.md)."""
GRID_NOISE = 8
INTERP_PAIRS = 4
INTERP_STEPS = 8


# ---------------------------------------------------------------------------------------------
# Data for --dry-run and tests
# ---------------------------------------------------------------------------------------------

_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
_RGB = ((220, 40, 40), (250, 140, 20), (240, 220, 40), (40, 170, 60), (40, 80, 220),
        (140, 50, 180), (240, 240, 240), (20, 20, 20))  # fmt: skip
_GROUNDS = ("rubble", "grass", "sand", "snow")


def generated_split(num_images: int = 256, captions: int = 10, seed: int = 0) -> SplitData:
    """A small captioned split for --dry-run and tests: a coloured figure on a tinted ground,
    32 classes (colour × ground), with captions that name both."""
    rng = np.random.default_rng(seed)
    images = np.empty((num_images, 64, 64, 3), dtype=np.uint8)
    texts: list[list[str]] = []
    class_ids = np.empty(num_images, dtype=np.int64)
    for i in range(num_images):
        colour, ground = int(rng.integers(len(_COLOURS))), int(rng.integers(len(_GROUNDS)))
        class_ids[i] = colour * len(_GROUNDS) + ground
        base = np.array([90 + 40 * ground, 120, 150 - 30 * ground], dtype=np.float64)
        image = base + rng.normal(0, 12, (64, 64, 3))
        y, x = int(rng.integers(8, 40)), int(rng.integers(8, 48))
        image[y : y + 20, x : x + 10] = _RGB[colour]
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
        name = (_COLOURS[colour], _GROUNDS[ground])
        texts.append([f"a person in {name[0]} on {name[1]} number {j}" for j in range(captions)])
    return SplitData(images=images, captions=texts, class_ids=class_ids)


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


class DiscriminatorStep(nn.Module):
    """Everything D is trained on in one step, as one forward (DDP syncs gradients per forward).

    The right- and wrong-text terms score the *same* real images, so the image path runs once
    for both; batch norm sees the real and the fake images as separate batches, as in Reed's
    three separate D passes.
    """

    def __init__(self, discriminator: models.Discriminator) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(
        self,
        real: torch.Tensor,
        fake: torch.Tensor,
        right_text: torch.Tensor,
        wrong_text: torch.Tensor,
        wrong_images: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.discriminator
        real_features = d.image_features(real)  # (B, ndf*8, 4, 4)
        logits_real_right, joint_real = d.match_text(real_features, right_text)  # (B,), joint
        if wrong_images is None:
            logits_real_wrong, _ = d.match_text(real_features, wrong_text)
        else:
            logits_real_wrong, _ = d.match_text(d.image_features(wrong_images), right_text)
        logits_fake_right, _ = d.match_text(d.image_features(fake), right_text)
        return logits_real_right, logits_real_wrong, logits_fake_right, joint_real


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients for `module` inside (input gradients still flow through it)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def stateless_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of `parts` (no generator state to save)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


METRIC_NAMES = (
    "gan_cls/real", "gan_cls/wrong", "gan_cls/fake", "gan_cls/total_D",
    "generator/nonsaturating", "generator/gan_int", "generator/feature_matching", "generator/l1",
    "generator/text_image_match", "generator/mode_seeking", "generator/open_attributes",
    "generator/total_G",
    "D(x)/real_right_text", "D(x)/real_wrong_text", "D(G(z))/before_D_step",
    "D(G(z))/after_D_step", "D(G(z))/interpolated", "D/r1_penalty", "D/saturated",
)  # fmt: skip
"""Per-step metrics; the loop averages them over the logging interval ("D/saturated": the
fraction of steps whose GAN-CLS D loss was below `SATURATED_BELOW`)."""


@contextlib.contextmanager
def batch_norm_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Run `module` in training mode (batch statistics) without moving its running statistics:
    a measurement must not change the training state (exact --resume, any logging cadence)."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


class GanTrainer:
    """Networks, optimisers, data and state of one GAN run on one process."""

    def __init__(
        self,
        config: GanTrainConfig,
        env: DistEnv,
        *,
        split: SplitData | None = None,
        resume: dict[str, Any] | None = None,
        resume_path: str | None = None,
    ) -> None:
        # Validated configs are resolved already; code that builds one directly gets the same.
        self.config = c = resolve_objective(config)
        self.env = env
        self.device = env.device
        if c.threads is not None:
            torch.set_num_threads(c.threads)
        if c.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(c.seed)
        np.random.seed(c.seed % 2**32)
        random.seed(c.seed)

        # Data: images and captions of the split, sharded like DistributedSampler.
        local_batch = c.batch_size // env.world_size
        loader_config = LoaderConfig(
            batch_size=local_batch, captions_per_sample=c.captions_per_sample, crop=c.crop,
            flip=c.flip, wrong_images=c.mismatch == "image", seed=c.seed, lazy=c.lazy,
            workers=c.workers, hard_negative_fraction=c.hard_negative_fraction,
        )  # fmt: skip
        if c.data is None:
            split = split if split is not None else generated_split(seed=c.seed)
            self.dataset = GanClsDataset.from_split(split, loader_config, "generated data")
            captions = split.captions
        else:
            self.dataset, captions = GanClsDataset.open(c.data, c.split, loader_config)
        if c.partial_captions == "ignore" and self.dataset.caption_stated is not None:
            log.info("--partial-captions ignore: every caption is treated as a full one")
            self.dataset.caption_stated = None
        if c.partial_captions == "skip":
            # --captions-per-image then keeps the first N full captions of each image.
            order = self.dataset.full_captions_first()
            if order is not None:
                captions = [
                    [row[j] for j in cols]
                    for row, cols in zip(captions, order.tolist(), strict=True)
                ]
        if c.captions_per_image is not None:
            self.dataset.limit_captions(c.captions_per_image)
            captions = [row[: self.dataset.num_captions] for row in captions]
        if c.partial_captions == "skip":
            left_out = self.dataset.keep_full_captions()
            log.info("--partial-captions skip: %d partial captions left out of the GAN", left_out)
        self.loader = GanClsLoader(
            self.dataset, env.rank, env.world_size, pin_memory=self.device.type == "cuda"
        )
        self.steps_per_epoch = self.loader.steps_per_epoch
        self.local_batch = local_batch
        self.local_interp = int(local_batch * c.int_fraction) if c.int_weight > 0 else 0
        drawn_again = c.ms_weight > 0 or c.open_weight > 0
        self.local_ms = max(1, int(local_batch * c.ms_fraction)) if drawn_again else 0
        self.total_steps = c.epochs * self.steps_per_epoch
        if c.steps is not None:
            self.total_steps = min(self.total_steps, c.steps)

        # The frozen text encoder and the embedding table of every caption.
        self.readback: tuple[dict[str, Any], dict[str, Any]] | None = None
        """(state, config) of the text encoder's read-back heads, copied on into every checkpoint
        for export; None when the text-encoder checkpoint has none (older ones)."""
        self.text_encoder, self.text_encoder_ckpt, self.image_encoder = self._text_encoder(resume)
        for p in self.text_encoder.parameters():
            p.requires_grad_(False)
        self.captions = captions
        self.embeddings: TextEmbeddings = load_or_compute(
            self.text_encoder,
            self.text_encoder_ckpt["sha256"],
            captions,
            device=self.device,
            cache_dir=None if c.embedding_cache == "off" else c.embedding_cache,
            rank=env.rank,
            world_size=env.world_size,
            progress=None if c.progress and env.is_main else False,
            where=f"{c.data or 'generated data'}:/{c.split}/captions",
        )
        self.data_digest = CaptionTable.from_captions(captions).digest()
        # The frozen image encoder that scores G's images against their captions (match_weight).
        self.match_encoder: nn.Module | None = None
        self.match_attributes: torch.Tensor | None = None
        self.image_attributes: torch.Tensor | None = None
        if c.match_weight > 0:
            if self.image_encoder is None:
                log.warning(
                    "--match-weight %g: the text encoder has no image encoder (random or "
                    "foreign checkpoint); the text-image matching term is off",
                    c.match_weight,
                )
            else:
                self.match_encoder = self.image_encoder[0].to(self.device).eval()
                for p in self.match_encoder.parameters():
                    p.requires_grad_(False)
                # (K, E) class texts and class id → row; the same on every rank (global table).
                stated = self.dataset.caption_stated  # (N, C) or None: every caption full
                if stated is not None:
                    keep = stated == (1 << self.dataset.attributes.shape[1]) - 1
                else:  # None, or the full captions --partial-captions skip kept
                    keep = self.dataset.caption_filter
                self.match_prototypes, self.match_row_of = losses.class_text_prototypes(
                    self.embeddings.table,
                    self.embeddings.index,
                    torch.from_numpy(np.asarray(self.dataset.class_ids)),
                    keep=None if keep is None else torch.from_numpy(keep),
                )
                # Partial captions: each prototype's attributes, to tell which classes a
                # caption allows (losses.partial_text_image_matching_loss).
                if stated is not None:
                    attributes = torch.from_numpy(self.dataset.attributes).to(self.device)
                    _, first = np.unique(np.asarray(self.dataset.class_ids), return_index=True)
                    self.image_attributes = attributes  # (N, A), by dataset index
                    self.match_attributes = attributes[torch.from_numpy(first)]  # (K, A)
        # The open-attribute divergence reads G's images in the matching term's class space.
        self.open_active = c.open_weight > 0 and self.match_attributes is not None
        if c.open_weight > 0 and not self.open_active:
            log.warning(
                "--open-weight %g: needs the matching term's image encoder and partial captions "
                "(caption_stated, --partial-captions aware); the open-attribute term is off",
                c.open_weight,
            )

        # Networks.
        self.gan_config = models.GANConfig(
            embedding_dim=self.embeddings.dim,
            ngf=c.ngf,
            ndf=c.ndf,
            residual=c.residual,
            text_norm=c.text_norm,
            upsample=c.upsample,
        )
        self.generator = models.Generator(self.gan_config)
        self.discriminator = models.Discriminator(self.gan_config)
        models.init_dcgan_weights(self.generator)
        models.init_dcgan_weights(self.discriminator)
        if env.distributed and c.sync_bn:
            self.generator = distributed.convert_sync_batchnorm(self.generator, self.device)
            self.discriminator = distributed.convert_sync_batchnorm(self.discriminator, self.device)
        memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        self.memory_format = memory_format
        self.generator.to(self.device, memory_format=memory_format)
        self.discriminator.to(self.device, memory_format=memory_format)
        # The weight average (train/gan/ema.py): a plain generator (no synchronised BN: it is
        # never trained), fp32, in eval mode, as evaluation and export will run it.
        self.generator_ema: models.Generator | None = None
        if c.ema_decay > 0:
            self.generator_ema = models.Generator(self.gan_config)
            self.generator_ema.load_state_dict(self.generator.state_dict())
            self.generator_ema.to(self.device, memory_format=memory_format).eval()
            self.generator_ema.requires_grad_(False)
        self.d_step_module = DiscriminatorStep(self.discriminator)
        self.g_train: nn.Module = self.generator
        self.d_train: nn.Module = self.d_step_module
        if env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers: with synchronised BN every rank's running statistics are equal already.
            ddp = {"device_ids": ids, "broadcast_buffers": not c.sync_bn}
            self.g_train = DistributedDataParallel(self.generator, **ddp)
            self.d_train = DistributedDataParallel(self.d_step_module, **ddp)
        # In the G step D is frozen and needs no gradient sync: call it directly, not via DDP.
        self.d_for_g: nn.Module = self.discriminator
        if c.compile:
            self.g_train = torch.compile(self.g_train)
            self.d_train = torch.compile(self.d_train)
            self.d_for_g = torch.compile(self.d_for_g)

        betas = (c.beta1, c.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=c.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=c.lr, betas=betas)
        step_size = c.lr_decay_every if c.lr_decay_every > 0 else 10**9
        self.sched_g = torch.optim.lr_scheduler.StepLR(self.opt_g, step_size, gamma=c.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.StepLR(self.opt_d, step_size, gamma=c.lr_decay)
        self.step = 0
        self.last_lr = c.lr
        self.saturated_steps = torch.zeros((), device=self.device)
        self.probe: dict[str, torch.Tensor] = {}
        """Per-term G gradient norms of the last probe step, until the loop logs them."""
        self.held_out = self._held_out_batch()

        # Fixed inputs of the sample grids: distinct-class captions and fixed noise.
        self.grid_images = self._grid_samples()
        gen = torch.Generator().manual_seed(stateless_seed(c.seed, 2**31 - 1))
        self.grid_noise = torch.randn(GRID_NOISE, self.gan_config.noise_dim, generator=gen)
        self.interp_noise = torch.randn(INTERP_PAIRS, self.gan_config.noise_dim, generator=gen)
        if resume is not None:
            self.load_state(resume, resume_path or "checkpoint")

    # -- setup helpers -------------------------------------------------------------------------

    def _text_encoder(
        self, resume: dict[str, Any] | None
    ) -> tuple[models.CharCnnRnn, dict[str, Any], tuple[nn.Module, dict[str, Any]] | None]:
        """(encoder, {"path", "sha256", "config"}, (image encoder, its config) or None)."""
        c = self.config
        if resume is not None:
            # The GAN checkpoint carries the frozen encoder it was trained with: use that copy.
            encoder = ck.build_model(resume, "text_encoder", "resume checkpoint")
            self.readback = _readback_of(resume, "resume checkpoint")
            info = dict(resume["config"]["text_encoder_checkpoint"])
            image = None
            if "image_encoder" in resume["models"]:
                image = (
                    ck.build_model(resume, "image_encoder", "resume checkpoint"),
                    resume["model_configs"]["image_encoder"],
                )
            return encoder.to(self.device), info, image
        if c.text_encoder in (None, "random"):
            log.warning(
                "text encoder: randomly initialised (no --text-encoder): fine for a smoke test, "
                "but generated images will not follow the captions"
            )
            torch.manual_seed(c.seed)
            encoder = models.CharCnnRnn(models.TextEncoderConfig())
            return encoder.eval().to(self.device), {"path": None, "sha256": "random"}, None
        path = c.text_encoder
        checkpoint = ck.load_checkpoint(path, kind="text_encoder")
        encoder = ck.build_model(checkpoint, "text_encoder", path)
        self.readback = _readback_of(checkpoint, path)
        image = None
        if "image_encoder" in checkpoint["models"]:
            image = (
                ck.build_model(checkpoint, "image_encoder", path),
                checkpoint["model_configs"]["image_encoder"],
            )
        info = {"path": str(Path(path).resolve()), "sha256": ck.file_sha256(path)}
        return encoder.to(self.device), info, image

    def _held_out_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A fixed batch of real images D never trains on and their text: (images (H, 3, 64, 64),
        embeddings (H, E)); from --held-out-split, or generated data with another seed."""
        c = self.config
        if c.held_out_split == "off":
            return None
        if c.data is None:
            split = generated_split(HELD_OUT_IMAGES, captions=4, seed=c.seed + 1)
        else:
            splits = files.read_info(c.data).splits
            if c.held_out_split not in splits or c.held_out_split == c.split:
                log.info(
                    "--held-out-split %s: not a split of %s other than the training split "
                    "(has %s); D's held-out score is not logged",
                    c.held_out_split, c.data, splits,
                )  # fmt: skip
                return None
            split = files.read_split(c.data, c.held_out_split)
        count = min(HELD_OUT_IMAGES, len(split))
        pick = np.linspace(0, len(split) - 1, count).round().astype(np.int64)
        k = c.captions_per_sample
        texts = [split.captions[i][j % len(split.captions[i])] for i in pick for j in range(k)]
        text = embed_texts(self.text_encoder, texts, device=self.device, where="held-out")
        text = text.reshape(count, k, -1).mean(1)  # (H, E): K captions averaged, as in training
        images = to_model_range(resize_images(split.images[pick], 64)).to(self.device)
        return images.contiguous(memory_format=self.memory_format), text

    @torch.no_grad()
    def held_out_score(self) -> torch.Tensor | None:
        """Mean D(x, t) on the fixed held-out real pairs, as D scores its training batches
        (training mode, batch statistics; running statistics untouched). Beside D(x) on the
        training images it shows D memorising its data (Karras et al. 2020, ADA)."""
        if self.held_out is None:
            return None
        images, text = self.held_out
        with batch_norm_statistics_kept(self.discriminator), self.autocast():
            logits, _ = self.discriminator(images, text)
        return torch.sigmoid(logits.float()).mean()

    def _gradient_norms(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """‖∂ term / ∂ θ_G‖ for each weighted generator term, as it enters G's loss (the graph is
        kept for the real backward; parameter gradients are not touched)."""
        params = [p for p in self.generator.parameters() if p.requires_grad]
        norms = {}
        for name, term in terms.items():
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            squares = [g.float().square().sum() for g in grads if g is not None]
            zero = torch.zeros((), device=self.device)
            norms[f"grad_norm/G/{name}"] = torch.stack(squares).sum().sqrt() if squares else zero
        return norms

    def _grid_samples(self) -> np.ndarray:
        """Dataset indices of the grid captions: images of distinct classes, evenly spread."""
        class_ids = self.dataset.class_ids
        _, first = np.unique(class_ids, return_index=True)
        first = np.sort(first)
        picks = np.linspace(0, len(first) - 1, min(GRID_CAPTIONS, len(first))).round()
        return first[picks.astype(np.int64)]

    def grid_texts(self) -> list[str]:
        return [self.captions[i][0] for i in self.grid_images]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.use_amp)

    def noise_for_step(self, step: int) -> torch.Tensor:
        """This rank's rows of the step's global noise: (local batch + local interp, noise_dim).

        The global draw is a pure function of (seed, step); rank r takes rows r, r + W, ... like
        DistributedSampler takes samples, so any world size sees the same noise per sample.
        """
        c, w, r = self.config, self.env.world_size, self.env.rank
        gen = torch.Generator().manual_seed(stateless_seed(c.seed, step, 1))
        total_interp = self.local_interp * w
        noise = torch.randn(c.batch_size + total_interp, self.gan_config.noise_dim, generator=gen)
        mine = torch.cat([noise[: c.batch_size][r::w], noise[c.batch_size :][r::w]])
        return mine.to(self.device, non_blocking=True)

    def augment_for_d(self, images: torch.Tensor, stream: int, parts: list[int]) -> torch.Tensor:
        """`images` as D sees them under --d-augment (unchanged for "none").

        `parts` are the local sizes of the segments of `images` (right-text fakes, then
        interpolated ones); each segment's parameters are drawn for the global batch from
        (seed, step, stream) and this rank takes rows r, r + W, ... as for the noise, so any
        world size augments a sample alike and --resume redraws exactly.
        """
        c = self.config
        if c.d_augment == "none":
            return images
        w, r = self.env.world_size, self.env.rank
        gen = torch.Generator().manual_seed(stateless_seed(c.seed, self.step, stream))
        side = images.shape[-1]
        shifts, centres = [], []
        for size in parts:
            drawn = augment.draw_params(size * w, side, c.d_augment_shift, gen, c.d_augment_p)
            shifts.append(drawn.shift_yx[r::w])
            centres.append(drawn.centre_yx[r::w])
        params = augment.AugmentParams(torch.cat(shifts), torch.cat(centres))
        out = augment.augment(images, c.d_augment, params, c.d_augment_shift, c.d_augment_cutout)
        return out.contiguous(memory_format=self.memory_format)

    # -- one step ------------------------------------------------------------------------------

    def allowed_classes(self, batch: GanClsBatch) -> torch.Tensor:
        """bool (B, K): the classes (prototype rows) that agree with each sample's real image
        on every attribute its captions state — for a full caption, its own class only."""
        assert batch.stated is not None and self.match_attributes is not None
        assert self.image_attributes is not None
        own = self.image_attributes[batch.indices]  # (B, A): the real image's own attributes
        agree = self.match_attributes[None, :, :] == own[:, None, :]  # (B, K, A)
        bits = torch.arange(own.shape[1], device=own.device)
        stated = (batch.stated[:, None] >> bits) & 1 == 1  # (B, A)
        return (agree | ~stated[:, None, :]).all(2)

    def rows_drawn_again(self, batch: GanClsBatch, m: int) -> torch.Tensor:
        """(m,) int64: the batch rows G draws a second time (mode seeking, open attributes). The
        first m rows, as before the open-attribute term; with that term on, the partial captions
        come first (stable order), since a full caption gives it nothing to vary."""
        rows = torch.arange(len(batch), device=self.device)
        if self.open_active and batch.stated is not None:
            full = (1 << self.match_attributes.shape[1]) - 1
            rows = torch.argsort((batch.stated == full).to(torch.int8), stable=True)
        return rows[:m]

    def train_step(self, batch: GanClsBatch) -> dict[str, torch.Tensor]:
        """One D update then one G update; returns every logged quantity (detached scalars)."""
        c = self.config
        batch = batch.to(self.device, non_blocking=True)
        b, n = len(batch), self.local_interp
        real = batch.images.contiguous(memory_format=self.memory_format)  # (B, 3, 64, 64)
        lookup = self.embeddings.lookup
        right = lookup(batch.indices, batch.captions)  # (B, E)
        wrong = lookup(batch.wrong_indices, batch.wrong_captions)  # (B, E), another class
        if n:
            partner = lookup(batch.partner_indices[:n], batch.partner_captions[:n])  # (n, E)
            interp = losses.interpolate_embeddings(right[:n], partner, c.int_beta)  # (n, E)
            texts = torch.cat([right, interp])  # (B + n, E)
        else:
            texts = right
        noise = self.noise_for_step(self.step)  # (B + n, noise_dim)
        m = self.local_ms
        if m:
            # Mode seeking: the first m captions again with noise of their own (stream 2, so runs
            # without the term draw exactly as before), in the same generator call: DDP allows
            # one forward per backward.
            gen = torch.Generator().manual_seed(stateless_seed(c.seed, self.step, 2))
            again = torch.randn(m * self.env.world_size, self.gan_config.noise_dim, generator=gen)
            noise = torch.cat([noise, again[self.env.rank :: self.env.world_size].to(self.device)])
            again_rows = self.rows_drawn_again(batch, m)  # (m,)
            texts = torch.cat([texts, right[again_rows]])  # (B + n + m, E)
        wrong_images = batch.wrong_images
        if wrong_images is not None:
            wrong_images = wrong_images.contiguous(memory_format=self.memory_format)

        with self.autocast():
            generated = self.g_train(noise, texts)  # (B + n [+ m], 3, 64, 64)
        fake = generated[:b]
        if m:
            texts = texts[: b + n]  # D scores the right-text and interpolated images only
        # What D sees: the same augmentation policy on real and fake images (identity when off);
        # the fakes are augmented once and serve both updates, like the fakes themselves.
        r1_now = c.r1_gamma > 0 and self.step % c.r1_every == 0
        real_in = real.detach().requires_grad_(True) if r1_now else real
        real_seen = self.augment_for_d(real_in, 3, [b])
        fake_seen = self.augment_for_d(generated[: b + n], 4, [b, n])  # (B + n, 3, 64, 64)
        if wrong_images is not None:
            wrong_images = self.augment_for_d(wrong_images, 5, [b])

        # (1) Discriminator: GAN-CLS on (real, right), (real, wrong text), (fake, right).
        with self.autocast():
            logits_rr, logits_rw, logits_fr, joint_real = self.d_train(
                real_seen, fake_seen[:b].detach(), right, wrong, wrong_images
            )
        d = losses.gan_cls_discriminator_loss(
            logits_rr.float(), logits_rw.float(), logits_fr.float(),
            wrong_weight=c.wrong_weight, fake_weight=c.fake_weight,
            label_smoothing=c.label_smoothing,
        )  # fmt: skip
        d_total = d.total
        d_r1 = torch.zeros((), device=self.device)
        if r1_now:
            # Lazy regularisation: every r1_every-th step, weighted ×r1_every (StyleGAN2).
            d_r1 = losses.r1_penalty(logits_rr, real_in)
            d_total = d_total + 0.5 * c.r1_gamma * c.r1_every * d_r1
        self.opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        self.opt_d.step()

        # (2) Generator: non-saturating + GAN-INT + feature matching (+ L1, mode seeking), D frozen.
        zero = torch.zeros((), device=self.device)
        with frozen(self.discriminator), self.autocast():
            scored = fake_seen  # the mode-seeking extras are not D's business
            logits, joint = self.d_for_g(scored, texts)  # (B + n,), (B + n, ndf*8, 4, 4)
        logits = logits.float()
        g_nonsat = losses.generator_nonsaturating_loss(logits[:b])
        g_int = losses.gan_int_loss(logits[b:]) if n else zero
        g_fm = (
            losses.feature_matching_loss(
                joint_real, joint[:b], batch_mean=distributed.global_batch_mean
            )
            if c.fm_weight > 0
            else zero
        )
        g_l1 = losses.l1_loss(fake, real) if c.l1_weight > 0 else zero
        g_match = zero
        g_open = zero
        if self.match_encoder is not None:
            with self.autocast():
                fake_embedding = self.match_encoder(fake)  # (B, E); BN in eval mode, frozen
            if batch.stated is None:
                g_match = losses.text_image_matching_loss(
                    fake_embedding.float(),
                    self.match_prototypes,
                    self.match_row_of[batch.class_ids],
                    c.match_temperature,
                )
            else:
                allowed = self.allowed_classes(batch)  # (B, K)
                g_match = losses.partial_text_image_matching_loss(
                    fake_embedding.float(), self.match_prototypes, allowed, c.match_temperature
                )
                if m and self.open_active:
                    with self.autocast():
                        again_embedding = self.match_encoder(generated[b + n :])  # (m, E)
                    g_open = losses.open_attribute_divergence_loss(
                        fake_embedding[again_rows].float(),
                        again_embedding.float(),
                        self.match_prototypes,
                        allowed[again_rows],
                        c.match_temperature,
                    )
        g_ms = (
            losses.mode_seeking_loss(
                fake[again_rows], generated[b + n :], noise[again_rows], noise[b + n :]
            )
            if m and c.ms_weight > 0
            else zero
        )
        g_total = (
            c.nonsat_weight * g_nonsat
            + c.int_weight * g_int
            + c.fm_weight * g_fm
            + c.l1_weight * g_l1
            + c.match_weight * g_match
            + c.ms_weight * g_ms
            + c.open_weight * g_open
        )
        if c.grad_norm_every and (self.step + 1) % c.grad_norm_every == 0:
            weighted = {
                "nonsaturating": c.nonsat_weight * g_nonsat,
                "gan_int": c.int_weight * g_int if n else None,
                "feature_matching": c.fm_weight * g_fm if c.fm_weight > 0 else None,
                "text_image_match": c.match_weight * g_match if self.match_encoder else None,
                "l1": c.l1_weight * g_l1 if c.l1_weight > 0 else None,
                "mode_seeking": c.ms_weight * g_ms if m and c.ms_weight > 0 else None,
                "open_attributes": c.open_weight * g_open if m and self.open_active else None,
            }
            active = {k: v for k, v in weighted.items() if v is not None and v.requires_grad}
            self.probe = self._gradient_norms(active)
        self.opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        self.opt_g.step()
        if self.generator_ema is not None:
            update_ema(self.generator_ema, self.generator, ema_decay_at(self.step, c.ema_decay))

        self.step += 1
        self.last_lr = self.lr  # the rate this step used (the scheduler may change it next)
        if self.step % self.steps_per_epoch == 0:
            self.sched_g.step()
            self.sched_d.step()
        saturated = (d.total.detach() < SATURATED_BELOW).float()
        self.saturated_steps += saturated
        with torch.no_grad():
            values = [
                d.real, d.wrong, d.fake, d.total, g_nonsat, g_int, g_fm, g_l1, g_match, g_ms,
                g_open, g_total,
                torch.sigmoid(logits_rr.float()).mean(), torch.sigmoid(logits_rw.float()).mean(),
                torch.sigmoid(logits_fr.float()).mean(), torch.sigmoid(logits[:b]).mean(),
                torch.sigmoid(logits[b:]).mean() if n else zero, d_r1.detach(), saturated,
            ]  # fmt: skip
            return {k: v.detach() for k, v in zip(METRIC_NAMES, values, strict=True)}

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def lr(self) -> float:
        return float(self.opt_g.param_groups[0]["lr"])

    # -- samples -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_grids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid, strips) as float (3, H, W) in [0, 1]: fixed captions (rows) × fixed noise
        (columns), and GAN-INT strips from caption a (left) to caption b (right), eval mode,
        from the weight average where there is one (what evaluation and export use)."""
        self.refresh_ema_statistics()
        g = self.generator_ema if self.generator_ema is not None else self.generator
        was_training = g.training
        g.eval()
        try:
            emb = self.embeddings
            idx = torch.as_tensor(self.grid_images, device=self.device)
            text = emb.lookup(idx, torch.zeros(len(idx), 1, dtype=torch.int64, device=self.device))
            rows = len(idx)
            noise = self.grid_noise.to(self.device)
            grid = g(noise.repeat(rows, 1), text.repeat_interleave(GRID_NOISE, 0))
            grid = _tile(grid, rows, GRID_NOISE)
            pairs = min(INTERP_PAIRS, rows // 2)
            betas = torch.linspace(1.0, 0.0, INTERP_STEPS, device=self.device)
            a, bb = text[0 : 2 * pairs : 2], text[1 : 2 * pairs : 2]  # (P, E)
            t = betas[None, :, None] * a[:, None] + (1 - betas[None, :, None]) * bb[:, None]
            z = self.interp_noise[:pairs].to(self.device).repeat_interleave(INTERP_STEPS, 0)
            strips = _tile(g(z, t.reshape(-1, t.shape[-1])), pairs, INTERP_STEPS)
        finally:
            g.train(was_training)
        return grid, strips

    # -- checkpoints ---------------------------------------------------------------------------

    @torch.no_grad()
    def refresh_ema_statistics(self) -> None:
        """The weight average's batch-norm statistics from its own weights (standing statistics,
        train/gan/ema.py): training captions of the embedding table and fresh noise, drawn from
        (seed, step) streams of their own, so training's draws and resume are untouched."""
        if self.generator_ema is None:
            return
        c = self.config
        # Stream 7: training draws from streams 1–5 (noise, mode seeking, D augmentation).
        gen = torch.Generator().manual_seed(stateless_seed(c.seed, self.step, 7))
        rows = torch.randint(
            len(self.embeddings.table), (STANDING_BATCHES, c.batch_size), generator=gen
        )
        noise = torch.randn(
            STANDING_BATCHES, c.batch_size, self.gan_config.noise_dim, generator=gen
        )
        table = self.embeddings.table

        def inputs(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            text = table[rows[i].to(table.device)].float()  # (B, E)
            return noise[i].to(self.device), text

        standing_statistics(self.generator_ema, inputs, STANDING_BATCHES)

    def checkpoint(self) -> dict[str, Any]:
        """The full training state as a weights_only-loadable dict (train/checkpoint.py); the
        weight average saved with its standing batch-norm statistics (train/gan/ema.py)."""
        self.refresh_ema_statistics()
        model_states = {
            "generator": _plain_state(self.generator),
            "discriminator": _plain_state(self.discriminator),
            "text_encoder": _plain_state(self.text_encoder),
        }
        gan_config = dataclasses.asdict(self.gan_config)
        model_configs = {
            "generator": gan_config,
            "discriminator": gan_config,
            "text_encoder": dataclasses.asdict(self.text_encoder.config),
        }
        if self.generator_ema is not None:
            model_states["generator_ema"] = _plain_state(self.generator_ema)
            model_configs["generator_ema"] = gan_config
        if self.image_encoder is not None:
            model_states["image_encoder"] = _plain_state(self.image_encoder[0])
            model_configs["image_encoder"] = dict(self.image_encoder[1])
        if self.readback is not None:
            model_states["readback"], model_configs["readback"] = self.readback
        return ck.new_checkpoint(
            "gan",
            models=model_states,
            model_configs=model_configs,
            config=self.resolved_config(),
            optimizers={"generator": self.opt_g.state_dict(),
                        "discriminator": self.opt_d.state_dict()},
            schedulers={"generator": self.sched_g.state_dict(),
                        "discriminator": self.sched_d.state_dict()},
            rng=_rng_state(),
            step=self.step,
            epoch=self.epoch,
            batch_in_epoch=self.step % self.steps_per_epoch,
            data_digest=self.data_digest,
            world_size=self.env.world_size,
            counters={"d_saturated_steps": int(self.saturated_steps.item())},
        )  # fmt: skip

    def resolved_config(self) -> dict[str, Any]:
        """The run config as saved: flags plus the text-encoder file it was trained with."""
        config = config_to_dict(self.config)
        config["text_encoder_checkpoint"] = {
            "path": self.text_encoder_ckpt["path"],
            "sha256": self.text_encoder_ckpt["sha256"],
        }
        return config

    def load_state(self, checkpoint: dict[str, Any], where: str) -> None:
        """Restore weights, optimisers, schedulers, RNG states and the step."""
        if checkpoint.get("data_digest") != self.data_digest:
            raise ck.CheckpointError(
                f"{where}: the captions of {self.config.data}:/{self.config.split} differ from "
                "those the checkpoint was trained on (different dataset or split)"
            )
        try:
            self.generator.load_state_dict(checkpoint["models"]["generator"])
            self.discriminator.load_state_dict(checkpoint["models"]["discriminator"])
            if self.generator_ema is not None:
                self.generator_ema.load_state_dict(checkpoint["models"]["generator_ema"])
            self.opt_g.load_state_dict(checkpoint["optimizers"]["generator"])
            self.opt_d.load_state_dict(checkpoint["optimizers"]["discriminator"])
            self.sched_g.load_state_dict(checkpoint["schedulers"]["generator"])
            self.sched_d.load_state_dict(checkpoint["schedulers"]["discriminator"])
            step = int(checkpoint["step"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise ck.CheckpointError(
                f"{where}: not a resumable GAN checkpoint: {first_line(err)}"
            ) from None
        _set_rng_state(checkpoint.get("rng", {}))
        self.step = step
        saturated = checkpoint.get("counters", {}).get("d_saturated_steps", 0)
        self.saturated_steps = torch.tensor(float(saturated), device=self.device)


def _readback_of(
    checkpoint: dict[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The read-back heads of a checkpoint as (state, config), validated by rebuilding them; None
    when it has none. The GAN never runs them: it only carries them to export."""
    if "readback" not in checkpoint.get("models", {}):
        return None
    heads = ck.build_model(checkpoint, "readback", where)
    return _plain_state(heads), dict(checkpoint["model_configs"]["readback"])


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with contiguous tensors (channels-last strides are a runtime choice)."""
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}


def _rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and ints (no numpy objects: weights_only loading)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(k) for k in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": _python_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [int(version), [int(x) for x in internal], gauss]


def _set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": s["bit_generator"],
                "state": {"key": np.asarray(s["key"], dtype=np.uint32), "pos": s["pos"]},
                "has_gauss": s["has_gauss"],
                "gauss": s["gauss"],
            }
        )
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tile(images: torch.Tensor, rows: int, cols: int, pad: int = 2) -> torch.Tensor:
    """(rows·cols, 3, H, W) in [-1, 1] → one (3, rows·(H+pad)+pad, cols·(W+pad)+pad) in [0, 1]."""
    _, ch, h, w = images.shape
    x = (images.float().clamp(-1, 1) + 1) / 2
    x = torch.nn.functional.pad(x, (pad, 0, pad, 0), value=1.0)  # (N, 3, H+pad, W+pad)
    x = x.reshape(rows, cols, ch, h + pad, w + pad).permute(2, 0, 3, 1, 4)
    x = x.reshape(ch, rows * (h + pad), cols * (w + pad))
    return torch.nn.functional.pad(x, (0, pad, 0, pad), value=1.0).cpu()
