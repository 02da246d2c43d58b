"""`python -m train gan`: train the text-conditioned DCGAN (GAN-CLS + GAN-INT + feature matching).

    python -m train gan --data data/rescue_scenes.h5 --text-encoder runs/te/00000-x/checkpoint.pt \\
        --out runs/gan [--minutes 15] [--resume runs/gan/00003-...]
    torchrun --nproc-per-node 4 -m train gan ...        # data-parallel, same flags
    python -m train gan --dry-run                       # one real step on generated data

One training step (Reed et al. 2016, Algorithm 1, with Salimans et al.'s feature matching):

1. look up the cached text embeddings of the batch: right text t (the image's K captions
   averaged), wrong text t̂ (captions of an image of another class) and, for the first
   `int_fraction` of the batch, t_int = β·t + (1 − β)·t_partner (GAN-INT);
2. one generator forward on [t; t_int] gives the fakes for both updates (Reed's G step also
   scores B + B/2 images, right-text and interpolated, in one batch);
3. D step, GAN-CLS: real+right → 1, real+wrong text → 0 (×½), fake (detached)+right → 0 (×½);
4. G step, D frozen: non-saturating loss on the right-text fakes, GAN-INT on the interpolated
   ones, feature matching of D's joint 4×4 features of fakes against those of the real batch from
   step 3 (optional L1).

Where the time goes, and what we avoid (measured in `python -m train.bench_gan`): text
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

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_runtime import tokenizer
from train import checkpoint as ck
from train import distributed, models
from train import gan_losses as losses
from train.data.loader import GanClsBatch, GanClsDataset, GanClsLoader, LoaderConfig
from train.data.schema import DataError, SplitData
from train.distributed import DistEnv
from train.text_embeddings import CaptionTable, TextEmbeddings, load_or_compute

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
GRID_CAPTIONS = 8
GRID_NOISE = 8
INTERP_PAIRS = 4
INTERP_STEPS = 8


class ConfigError(ValueError):
    """A flag (or combination) that cannot work; the message starts with the flag's name."""


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GanTrainConfig:
    """Everything a run depends on; resolved once, written to the run folder and the checkpoint."""

    # Data and inputs
    data: str | None = None
    """HDF5 dataset (docs/DATA_FORMAT.md); None only for --dry-run (generated data)."""
    split: str = "train"
    text_encoder: str | None = None
    """kind="text_encoder" checkpoint, or "random" for an untrained encoder (smoke tests)."""
    out: str = "runs/gan"
    """Folder holding the numbered run folders."""
    # Networks (train/models.py, GANConfig)
    ngf: int = 64
    ndf: int = 64
    residual: bool = False
    # Objective (train/gan_losses.py); defaults are the paper's
    wrong_weight: float = 0.5
    """GAN-CLS weight of real image + wrong text."""
    fake_weight: float = 0.5
    """GAN-CLS weight of fake image + right text."""
    mismatch: str = "text"
    """"text": real image + captions of another class; "image": wrong image + right text
    (Reed's released code); both pair a real image with a description of another class."""
    int_weight: float = 1.0
    """GAN-INT weight (Reed's CUB script: 1)."""
    int_beta: float = 0.5
    int_fraction: float = 0.5
    """Interpolated samples per batch, relative to the batch (Reed: ½)."""
    fm_weight: float = 1.0
    """Feature matching on D's joint 4×4 features (0 = off)."""
    l1_weight: float = 0.0
    match_weight: float = 1.0
    """Text–image matching on generated images (0 = off): the frozen pretrained image encoder's
    embedding of G(z, t) classified against every class's mean caption embedding
    (`gan_losses.text_image_matching_loss`; after AttnGAN's DAMSM loss, Xu et al. 2018).
    Why: D learns which caption an image matches only from its few mismatched pairs, so
    details such as a helmet or the pose reach G late; the image encoder already tells every
    attribute apart (issue 4's pretraining) and hands G that gradient directly. Needs a
    text-encoder checkpoint that holds an image encoder (ours do); off, with a warning, for a
    random encoder."""
    match_temperature: float = 0.1
    """Softmax temperature of the matching loss (DAMSM: γ3 = 10, i.e. 0.1)."""
    ms_weight: float = 0.0
    """Mode seeking (`gan_losses.mode_seeking_loss`, MSGAN; 0 = off): G also draws
    `ms_fraction` × batch images of the batch's first captions with fresh noise, and is pushed to
    make them differ from their partners made with the batch noise. Why it exists: the default
    objective's images hardly vary with the seed (diversity 0.17–0.20 of real same-class spread,
    docs/QUALITY.md); its measured effect is in docs/QUALITY.md § 3.0."""
    ms_fraction: float = 0.25
    """Images per batch drawn a second time for mode seeking, relative to the batch."""
    label_smoothing: float = 0.0
    """One-sided: the real target becomes 1 − this."""
    # Data pipeline (train/data/loader.py)
    captions_per_sample: int = 4
    captions_per_image: int | None = None
    """Use only the first N captions of each image (None: all). Fewer captions to embed once:
    the embedding pass costs minutes for 100,000 captions on 2 CPU cores."""
    flip: bool = True
    crop: bool = True
    lazy: bool = False
    workers: int = 0
    # Optimisation
    batch_size: int = 64
    """Global batch (split evenly over the processes)."""
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_every: int = 100
    """Epochs between learning-rate halvings (Reed: 100); 0 = constant."""
    lr_decay: float = 0.5
    epochs: int = 600
    steps: int | None = None
    """Stop after this many steps in total (None: `epochs`)."""
    minutes: float | None = None
    """Wall-clock budget of this invocation, setup included; a checkpoint is written at the end."""
    # Engineering
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    """CPU threads per process (torch.set_num_threads); None = torch's default. Results are
    bitwise reproducible for a given thread count."""
    amp: str = "auto"
    """"auto": bf16 autocast on CUDA, fp32 on CPU (AVX2 CPUs have no bf16 arithmetic); "off"."""
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = True
    """Batch-norm statistics over the global batch under DDP (train/distributed.py)."""
    deterministic: bool = False
    """Deterministic CUDA kernels (bitwise --resume on GPUs); CPU is deterministic anyway."""
    checkpoint_every: int = 500
    log_every: int = 20
    sample_every: int = 500
    embedding_cache: str = "auto"
    """Folder for cached text embeddings; "auto" = <out>/text-embeddings, "off" = none."""
    progress: bool = True
    dry_run: bool = False

    @property
    def use_amp(self) -> bool:
        return self.amp == "bf16"


# Flags that may differ on --resume without changing the result of the steps already defined.
RESUMABLE_OVERRIDES = frozenset(
    {"steps", "minutes", "epochs", "checkpoint_every", "log_every", "sample_every", "progress",
     "workers", "embedding_cache", "device", "threads", "compile", "out", "data",
     "text_encoder"}
)  # fmt: skip


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """Flags map one-to-one onto `GanTrainConfig` fields (defaults shown are the config's)."""
    d = GanTrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m train gan",
        description="Train the text-conditioned DCGAN: GAN-CLS + GAN-INT + feature matching.",
        argument_default=argparse.SUPPRESS,
    )

    groups: list[Any] = [p]

    def group(title: str) -> Any:
        groups.append(p.add_argument_group(title))
        return groups[-1]

    def add(field: str, text: str, **kw: Any) -> None:
        default = getattr(d, field)
        groups[-1].add_argument(_flag(field), dest=field, help=f"{text} (default: {default})", **kw)

    def toggle(field: str, text: str) -> None:
        add(field, text, action=argparse.BooleanOptionalAction)

    g = group("inputs and outputs")
    add("data", "HDF5 dataset", metavar="FILE")
    add("split", "split to train on")
    add("text_encoder", 'text-encoder checkpoint, or "random"', metavar="CKPT")
    add("out", "folder for numbered run folders", metavar="DIR")
    g.add_argument("--resume", metavar="RUN", help="run folder or checkpoint to continue")
    g = group("networks")
    add("ngf", "generator width", type=int)
    add("ndf", "discriminator width", type=int)
    toggle("residual", "residual blocks at 4×4 and 8×8")
    g = group("objective")
    add("wrong_weight", "GAN-CLS real+wrong-text weight", type=float)
    add("fake_weight", "GAN-CLS fake+right-text weight", type=float)
    add("mismatch", "mismatched pair: real image + wrong text, or wrong image + right text",
        choices=("text", "image"))  # fmt: skip
    add("int_weight", "GAN-INT weight (0 = off)", type=float)
    add("int_beta", "GAN-INT interpolation β", type=float)
    add("int_fraction", "interpolated samples per batch, relative to the batch", type=float)
    add("fm_weight", "feature-matching weight (0 = off)", type=float)
    add("l1_weight", "L1 weight (0 = off)", type=float)
    add("match_weight", "text-image matching weight with the frozen image encoder (0 = off)",
        type=float)  # fmt: skip
    add("match_temperature", "temperature of the matching loss", type=float)
    add("ms_weight", "mode-seeking weight (MSGAN; 0 = off)", type=float)
    add("ms_fraction", "images per batch drawn again for mode seeking, relative to the batch",
        type=float)  # fmt: skip
    add("label_smoothing", "one-sided label smoothing of the real target", type=float)
    g = group("data pipeline")
    add("captions_per_sample", "captions averaged per sample (Reed: 4)", type=int)
    add("captions_per_image", "use only the first N captions of each image", type=int)
    toggle("flip", "random horizontal flips (off when the dataset forbids them)")
    toggle("crop", "resize to 76 and random-crop 64 (off when the dataset forbids it)")
    toggle("lazy", "read images from HDF5 per batch instead of holding them in memory")
    add("workers", "DataLoader workers (lazy mode)", type=int)
    g = group("optimisation")
    add("batch_size", "global batch size", type=int)
    add("lr", "Adam learning rate (the original study used 3.4e-4)", type=float)
    add("beta1", "Adam β1", type=float)
    add("beta2", "Adam β2", type=float)
    add("lr_decay_every", "epochs between learning-rate decays (0 = never)", type=int)
    add("lr_decay", "learning-rate factor per decay", type=float)
    add("epochs", "epochs to train", type=int)
    add("steps", "stop after this many steps in total", type=int)
    add("minutes", "wall-clock budget of this invocation (checkpoint at the end)", type=float)
    g = group("engineering")
    add("seed", "random seed", type=int)
    add("device", 'device: "auto", "cpu", "cuda", "cuda:N"')
    add("threads", "CPU threads per process", type=int)
    add("amp", "autocast: auto = bf16 on CUDA, fp32 on CPU", choices=("auto", "bf16", "off"))
    toggle("channels_last", "channels-last tensors")
    toggle("compile", "torch.compile the networks (minutes of compilation on small CPUs)")
    toggle("sync_bn", "synchronise batch norm over processes")
    toggle("deterministic", "deterministic CUDA kernels (exact --resume on GPU)")
    add("checkpoint_every", "steps between checkpoints", type=int)
    add("log_every", "steps between logged metrics", type=int)
    add("sample_every", "steps between sample grids", type=int)
    add("embedding_cache", 'text-embedding cache folder, "auto" or "off"', metavar="DIR")
    toggle("progress", "tqdm progress bar")
    p.add_argument(
        "--dry-run", action="store_true", help="one real step on generated data (random encoder)"
    )
    return p


def validate(config: GanTrainConfig, world_size: int = 1) -> GanTrainConfig:
    """Check every flag and flag combination; raise ConfigError naming the flag. Returns the
    config with "auto" values resolved."""

    def fail(field: str, message: str) -> None:
        raise ConfigError(f"{_flag(field)} {getattr(config, field)}: {message}")

    for field in ("ngf", "ndf", "batch_size", "epochs", "checkpoint_every", "log_every",
                  "sample_every", "captions_per_sample"):  # fmt: skip
        if getattr(config, field) < 1:
            fail(field, "must be ≥ 1")
    for field in ("wrong_weight", "fake_weight", "int_weight", "fm_weight", "l1_weight",
                  "match_weight", "ms_weight", "workers", "lr_decay_every"):  # fmt: skip
        if getattr(config, field) < 0:
            fail(field, "must be ≥ 0")
    if not config.lr > 0:
        fail("lr", "must be > 0")
    if not config.match_temperature > 0:
        fail("match_temperature", "must be > 0")
    for field in ("beta1", "beta2", "int_beta", "int_fraction", "ms_fraction"):
        if not 0.0 <= getattr(config, field) <= 1.0:
            fail(field, "must lie in [0, 1]")
    if not 0.0 < config.lr_decay <= 1.0:
        fail("lr_decay", "must lie in (0, 1]")
    if not 0.0 <= config.label_smoothing < 0.5:
        fail("label_smoothing", "must lie in [0, 0.5)")
    if config.captions_per_image is not None and config.captions_per_image < max(
        1, config.captions_per_sample
    ):
        fail("captions_per_image", f"must be ≥ --captions-per-sample {config.captions_per_sample}")
    if config.threads is not None and config.threads < 1:
        fail("threads", "must be ≥ 1")
    if config.steps is not None and config.steps < 1:
        fail("steps", "must be ≥ 1")
    if config.minutes is not None and not config.minutes > 0:
        fail("minutes", "must be > 0")
    if config.mismatch not in ("text", "image"):
        fail("mismatch", 'must be "text" or "image"')
    if config.amp not in ("auto", "bf16", "off"):
        fail("amp", 'must be "auto", "bf16" or "off"')
    if config.text_encoder not in (None, "random") and not Path(config.text_encoder).is_file():
        fail("text_encoder", "no such file")
    if config.batch_size % world_size:
        fail("batch_size", f"must be divisible by the {world_size} processes")
    local = config.batch_size // world_size
    interp = local * config.int_fraction
    if config.int_weight > 0 and (interp != int(interp) or interp < 1):
        raise ConfigError(
            f"--int-fraction {config.int_fraction}: gives {interp:g} interpolated samples of the "
            f"{local} per process (--batch-size {config.batch_size}); must be a whole number ≥ 1"
        )
    device = config.device
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        fail("device", 'must be "auto", "cpu", "cuda" or "cuda:N"')
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    amp = config.amp if config.amp != "auto" else ("bf16" if cuda else "off")
    if amp == "bf16" and not cuda:
        log.warning(
            "--amp bf16 on CPU: only CPUs with AVX-512 BF16/AMX compute bf16 natively; on others "
            "it is emulated and far slower (measured 40× slower than fp32 on a Zen 3)"
        )
    cache = config.embedding_cache
    if cache == "auto":
        cache = str(Path(config.out) / "text-embeddings")
    return dataclasses.replace(config, amp=amp, embedding_cache=cache)


def config_to_dict(config: GanTrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_checkpoint(saved: dict[str, Any], where: str) -> GanTrainConfig:
    """The run config stored in a checkpoint (extra keys like text_encoder_checkpoint ignored)."""
    names = {f.name for f in dataclasses.fields(GanTrainConfig)}
    try:
        return GanTrainConfig(**{k: v for k, v in saved.items() if k in names})
    except TypeError as err:
        raise ck.CheckpointError(f"{where}: config does not fit this trainer: {err}") from None


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
    "generator/text_image_match", "generator/mode_seeking", "generator/total_G",
    "D(x)/real_right_text", "D(x)/real_wrong_text", "D(G(z))/before_D_step",
    "D(G(z))/after_D_step", "D(G(z))/interpolated",
)  # fmt: skip


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
        self.config = c = config
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
            workers=c.workers,
        )  # fmt: skip
        if c.data is None:
            split = split if split is not None else generated_split(seed=c.seed)
            self.dataset = GanClsDataset.from_split(split, loader_config, "generated data")
            captions = split.captions
        else:
            self.dataset, captions = GanClsDataset.open(c.data, c.split, loader_config)
        if c.captions_per_image is not None:
            self.dataset.limit_captions(c.captions_per_image)
            captions = [row[: self.dataset.num_captions] for row in captions]
        self.loader = GanClsLoader(
            self.dataset, env.rank, env.world_size, pin_memory=self.device.type == "cuda"
        )
        self.steps_per_epoch = self.loader.steps_per_epoch
        self.local_batch = local_batch
        self.local_interp = int(local_batch * c.int_fraction) if c.int_weight > 0 else 0
        self.local_ms = max(1, int(local_batch * c.ms_fraction)) if c.ms_weight > 0 else 0
        self.total_steps = c.epochs * self.steps_per_epoch
        if c.steps is not None:
            self.total_steps = min(self.total_steps, c.steps)

        # The frozen text encoder and the embedding table of every caption.
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
                self.match_prototypes, self.match_row_of = losses.class_text_prototypes(
                    self.embeddings.table,
                    self.embeddings.index,
                    torch.from_numpy(np.asarray(self.dataset.class_ids)),
                )

        # Networks.
        self.gan_config = models.GANConfig(
            embedding_dim=self.embeddings.dim, ngf=c.ngf, ndf=c.ndf, residual=c.residual
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
        self.d_step_module = DiscriminatorStep(self.discriminator)
        self.g_train: nn.Module = self.generator
        self.d_train: nn.Module = self.d_step_module
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

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
        image = None
        if "image_encoder" in checkpoint["models"]:
            image = (
                ck.build_model(checkpoint, "image_encoder", path),
                checkpoint["model_configs"]["image_encoder"],
            )
        info = {"path": str(Path(path).resolve()), "sha256": ck.file_sha256(path)}
        return encoder.to(self.device), info, image

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

    # -- one step ------------------------------------------------------------------------------

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
            texts = torch.cat([texts, right[:m]])  # (B + n + m, E)
        wrong_images = batch.wrong_images
        if wrong_images is not None:
            wrong_images = wrong_images.contiguous(memory_format=self.memory_format)

        with self.autocast():
            generated = self.g_train(noise, texts)  # (B + n [+ m], 3, 64, 64)
        fake = generated[:b]
        if m:
            texts = texts[: b + n]  # D scores the right-text and interpolated images only

        # (1) Discriminator: GAN-CLS on (real, right), (real, wrong text), (fake, right).
        with self.autocast():
            logits_rr, logits_rw, logits_fr, joint_real = self.d_train(
                real, fake.detach(), right, wrong, wrong_images
            )
        d = losses.gan_cls_discriminator_loss(
            logits_rr.float(), logits_rw.float(), logits_fr.float(),
            wrong_weight=c.wrong_weight, fake_weight=c.fake_weight,
            label_smoothing=c.label_smoothing,
        )  # fmt: skip
        self.opt_d.zero_grad(set_to_none=True)
        d.total.backward()
        self.opt_d.step()

        # (2) Generator: non-saturating + GAN-INT + feature matching (+ L1, mode seeking), D frozen.
        zero = torch.zeros((), device=self.device)
        with frozen(self.discriminator), self.autocast():
            scored = generated[: b + n]  # the mode-seeking extras are not D's business
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
        if self.match_encoder is not None:
            with self.autocast():
                fake_embedding = self.match_encoder(fake)  # (B, E); BN in eval mode, frozen
            g_match = losses.text_image_matching_loss(
                fake_embedding.float(),
                self.match_prototypes,
                self.match_row_of[batch.class_ids],
                c.match_temperature,
            )
        g_ms = (
            losses.mode_seeking_loss(fake[:m], generated[b + n :], noise[:m], noise[b + n :])
            if m
            else zero
        )
        g_total = (
            g_nonsat
            + c.int_weight * g_int
            + c.fm_weight * g_fm
            + c.l1_weight * g_l1
            + c.match_weight * g_match
            + c.ms_weight * g_ms
        )
        self.opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        self.opt_g.step()

        self.step += 1
        self.last_lr = self.lr  # the rate this step used (the scheduler may change it next)
        if self.step % self.steps_per_epoch == 0:
            self.sched_g.step()
            self.sched_d.step()
        with torch.no_grad():
            values = [
                d.real, d.wrong, d.fake, d.total, g_nonsat, g_int, g_fm, g_l1, g_match, g_ms,
                g_total,
                torch.sigmoid(logits_rr.float()).mean(), torch.sigmoid(logits_rw.float()).mean(),
                torch.sigmoid(logits_fr.float()).mean(), torch.sigmoid(logits[:b]).mean(),
                torch.sigmoid(logits[b:]).mean() if n else zero,
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
        (columns), and GAN-INT strips from caption a (left) to caption b (right), eval mode."""
        g = self.generator
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

    def checkpoint(self) -> dict[str, Any]:
        """The full training state as a weights_only-loadable dict (train/checkpoint.py)."""
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
        if self.image_encoder is not None:
            model_states["image_encoder"] = _plain_state(self.image_encoder[0])
            model_configs["image_encoder"] = dict(self.image_encoder[1])
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
            self.opt_g.load_state_dict(checkpoint["optimizers"]["generator"])
            self.opt_d.load_state_dict(checkpoint["optimizers"]["discriminator"])
            self.sched_g.load_state_dict(checkpoint["schedulers"]["generator"])
            self.sched_d.load_state_dict(checkpoint["schedulers"]["discriminator"])
            step = int(checkpoint["step"])
        except (KeyError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ck.CheckpointError(f"{where}: not a resumable GAN checkpoint: {first}") from None
        _set_rng_state(checkpoint.get("rng", {}))
        self.step = step


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


# ---------------------------------------------------------------------------------------------
# Run folder, logging and the loop
# ---------------------------------------------------------------------------------------------


def new_run_dir(out: Path, description: str) -> Path:
    """`out/NNNNN-description`, numbered after the highest existing run (stylegan's layout)."""
    out.mkdir(parents=True, exist_ok=True)
    while True:
        numbers = [int(p.name[:5]) for p in out.iterdir() if p.is_dir() and p.name[:5].isdigit()]
        run = out / f"{max(numbers, default=-1) + 1:05d}-{description}"
        try:
            run.mkdir()
            return run
        except FileExistsError:  # another run started at the same moment: take the next number
            continue


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _logged_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # e.g. a line cut short by a crash


class RunLog:
    """Rank 0's outputs: TensorBoard, metrics.jsonl, sample PNGs, log.txt."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        (run_dir / "samples").mkdir(exist_ok=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.metrics_path.exists():
            # Drop lines a crashed run logged after the checkpoint: those steps are redone.
            kept = [
                line
                for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
                if _logged_step(line) is not None and _logged_step(line) <= resume_step
            ]
            tmp = self.metrics_path.with_suffix(".tmp")
            tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
            os.replace(tmp, self.metrics_path)
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        self.handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self.handler)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")

    def images(self, step: int, grid: torch.Tensor, strips: torch.Tensor) -> None:
        import cv2

        self.writer.add_image("samples/captions_x_noise", grid, step)
        self.writer.add_image("samples/gan_int_strips", strips, step)
        for name, image in (("grid", grid), ("interp", strips)):
            rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            path = self.run_dir / "samples" / f"{name}-{step:07d}.png"
            cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))

    def close(self) -> None:
        self.writer.close()
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


@dataclass
class RunResult:
    """What `train` returns (tests and the recipe use it)."""

    trainer: GanTrainer
    run_dir: Path | None
    exit_code: int
    checkpoint: Path | None


def train(
    config: GanTrainConfig,
    *,
    resume_from: str | None = None,
    split: SplitData | None = None,
    started: float | None = None,
    env: DistEnv | None = None,
) -> RunResult:
    """Run (or continue) training per `config`; the library entry point behind `main`."""
    started = time.monotonic() if started is None else started
    env = env or distributed.init_distributed(config.device)
    config = validate(config, env.world_size)
    resume: dict[str, Any] | None = None
    run_dir: Path | None = None
    if resume_from is not None:
        ckpt_path = _checkpoint_path(resume_from)
        resume = ck.load_checkpoint(ckpt_path, kind="gan", map_location="cpu")
        run_dir = ckpt_path.parent
        if env.is_main:
            # Temp files of a writer killed mid-save (the checkpoint itself is always whole).
            for stale in run_dir.glob(f".{ckpt_path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
    trainer = GanTrainer(config, env, split=split, resume=resume, resume_path=str(resume_from))
    c = trainer.config
    if env.is_main:
        if run_dir is None:
            name = Path(c.data).stem if c.data else "generated"
            run_dir = new_run_dir(Path(c.out), f"{name}-ngf{c.ngf}-ndf{c.ndf}")
        resolved = trainer.resolved_config()
        resolved["run"] = {
            "world_size": env.world_size,
            "device": str(env.device),
            "batch_per_process": trainer.local_batch,
            "interpolated_per_process": trainer.local_interp,
            "steps_per_epoch": trainer.steps_per_epoch,
            "total_steps": trainer.total_steps,
            "images": len(trainer.dataset),
            "data_digest": trainer.data_digest,
            "torch": torch.__version__,
            "resumed_from_step": trainer.step if resume is not None else None,
        }
        write_json_atomic(run_dir / "config.json", resolved)
        log.info("run folder %s (config.json written)", run_dir)
    result = RunResult(trainer, run_dir, 0, None)
    runlog = RunLog(run_dir, trainer.step if resume else None) if env.is_main else None
    try:
        result.exit_code, result.checkpoint = _loop(trainer, runlog, run_dir, started)
    finally:
        if runlog is not None:
            runlog.close()
    return result


def _checkpoint_path(resume_from: str) -> Path:
    path = Path(resume_from)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def _loop(
    trainer: GanTrainer, runlog: RunLog | None, run_dir: Path | None, started: float
) -> tuple[int, Path | None]:
    """The training loop: steps, logging, samples, checkpoints, stop conditions."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    c, env = trainer.config, trainer.env
    main_rank = env.is_main
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir is not None else None
    last_good: tuple[Path | None, int | None] = (
        (ckpt_path, trainer.step) if ckpt_path is not None and ckpt_path.exists() else (None, None)
    )
    budget = None if c.minutes is None else c.minutes * 60.0
    sums: dict[str, torch.Tensor] = {}
    interval_steps, interval_start = 0, time.monotonic()
    if main_rank and runlog is not None and trainer.step == 0:
        runlog.writer.add_text("samples/captions", "\n\n".join(trainer.grid_texts()), 0)
        runlog.images(0, *trainer.sample_grids())

    def save() -> bool:
        """Write the checkpoint (rank 0) unless a weight is non-finite; False = stop."""
        nonlocal last_good
        nets = [trainer.generator, trainer.discriminator]
        finite = all(bool(torch.isfinite(p).all()) for n in nets for p in n.parameters())
        if distributed.any_rank(not finite, trainer.device):
            log.error(
                "step %d: non-finite weights; not saved, %s",
                trainer.step,
                _last_good_text(last_good),
            )
            return False
        if env.distributed and not all(
            distributed.replicas_identical(n, trainer.device) for n in nets
        ):
            raise RuntimeError("DDP ranks hold different weights; this is a bug, please report it")
        if main_rank and ckpt_path is not None:
            ck.save_checkpoint(trainer.checkpoint(), ckpt_path)
            last_good = (ckpt_path, trainer.step)
            log.info("step %d: checkpoint %s", trainer.step, ckpt_path)
        return True

    exit_code = 0
    bar = tqdm(
        total=trainer.total_steps, initial=trainer.step, unit="step", dynamic_ncols=True,
        disable=None if main_rank and c.progress else True, desc="GAN",
    )  # fmt: skip
    redirect = logging_redirect_tqdm() if main_rank and c.progress else contextlib.nullcontext()
    try:
        with redirect:
            while trainer.step < trainer.total_steps:
                epoch, start = divmod(trainer.step, trainer.steps_per_epoch)
                stop = False
                for batch in trainer.loader.batches(epoch, start):
                    metrics = trainer.train_step(batch)
                    bar.update(1)
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0) + v
                    interval_steps += 1
                    stacked = torch.stack(list(metrics.values()))
                    bad = not bool(torch.isfinite(stacked).all())
                    if distributed.any_rank(bad, trainer.device):
                        names = [k for k, v in metrics.items() if not torch.isfinite(v)]
                        log.error(
                            "step %d (epoch %d): non-finite %s; stopped without saving, %s",
                            trainer.step, trainer.epoch, ", ".join(names) or "loss on another rank",
                            _last_good_text(last_good),
                        )  # fmt: skip
                        return 1, last_good[0]
                    step = trainer.step
                    if step % c.log_every == 0 or step == trainer.total_steps:
                        _log_interval(
                            trainer, runlog, bar, sums, steps=interval_steps, started=interval_start
                        )
                        sums, interval_steps, interval_start = {}, 0, time.monotonic()
                    if main_rank and runlog is not None and step % c.sample_every == 0:
                        runlog.images(step, *trainer.sample_grids())
                    if step % c.checkpoint_every == 0 and not save():
                        return 1, last_good[0]
                    if budget is not None:
                        out_of_time = time.monotonic() - started >= budget
                        if distributed.broadcast_flag(out_of_time, trainer.device):
                            log.info("step %d: --minutes %g reached", step, c.minutes)
                            stop = True
                    if stop or trainer.step >= trainer.total_steps:
                        break
                if stop:
                    break
            if trainer.step % c.checkpoint_every != 0 and not save():
                return 1, last_good[0]
            if main_rank and runlog is not None and trainer.step % c.sample_every != 0:
                runlog.images(trainer.step, *trainer.sample_grids())
    except KeyboardInterrupt:
        if not env.distributed:
            log.warning("interrupted at step %d: saving a checkpoint", trainer.step)
            save()
        return 130, last_good[0]
    finally:
        bar.close()
    return exit_code, last_good[0]


def _last_good_text(last_good: tuple[Path | None, int | None]) -> str:
    if last_good[0] is None:
        return "no checkpoint was written yet"
    return f"last good checkpoint: {last_good[0]} (step {last_good[1]})"


def _log_interval(
    trainer: GanTrainer,
    runlog: RunLog | None,
    bar: Any,
    sums: dict[str, torch.Tensor],
    *,
    steps: int,
    started: float,
) -> None:
    """Average the interval's metrics over steps and ranks; rank 0 writes them."""
    if not sums:
        return
    keys = list(sums)
    totals = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]).float())
    means = (totals / (steps * trainer.env.world_size)).tolist()
    elapsed = max(time.monotonic() - started, 1e-9)
    values = dict(zip(keys, means, strict=True))
    values["lr"] = trainer.last_lr
    values["speed/images_per_s"] = steps * trainer.config.batch_size / elapsed
    values["epoch"] = trainer.epoch
    if runlog is not None:
        runlog.scalars(trainer.step, values)
        bar.set_postfix(
            img_s=f"{values['speed/images_per_s']:.0f}",
            D=f"{values['gan_cls/total_D']:.3f}",
            G=f"{values['generator/total_G']:.3f}",
            refresh=False,
        )
        log.debug("step %d: %s", trainer.step, values)
        if bar.disable and trainer.step % (10 * trainer.config.log_every) == 0:
            # No terminal (logs, `make demo`) or --no-progress: a progress line now and then.
            log.info(
                "step %d, epoch %d: D %.3f, G %.3f, %.0f images/s",
                trainer.step,
                trainer.epoch,
                values["gan_cls/total_D"],
                values["generator/total_G"],
                values["speed/images_per_s"],
            )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> tuple[GanTrainConfig, str | None]:
    """Flags → config; with --resume, the checkpoint's config plus the allowed overrides."""
    given = {k: v for k, v in vars(args).items() if k != "resume"}
    resume = getattr(args, "resume", None)
    if resume is None:
        if given.get("dry_run"):
            given.setdefault("steps", 1)
            given.setdefault("text_encoder", "random")
            if "data" in given:
                raise ConfigError("--dry-run trains on generated data: drop --data")
        elif "data" not in given:
            raise ConfigError("--data is required (an HDF5 dataset; or --dry-run)")
        elif "text_encoder" not in given:
            raise ConfigError(
                "--text-encoder is required (a checkpoint of `python -m train text-encoder`; "
                '"random" trains on an untrained encoder whose images will not follow the text)'
            )
        return GanTrainConfig(**given), None
    if given.get("dry_run"):
        raise ConfigError("--dry-run cannot --resume")
    path = _checkpoint_path(resume)
    saved = ck.load_checkpoint(path, kind="gan")
    base = config_from_checkpoint(saved.get("config", {}), str(path))
    for field, value in given.items():
        if field not in RESUMABLE_OVERRIDES and value != getattr(base, field):
            raise ConfigError(
                f"{_flag(field)} {value}: differs from the resumed run's {getattr(base, field)!r}; "
                "--resume continues the saved run (only stop conditions, logging and device "
                "may change)"
            )
    return dataclasses.replace(base, **given), str(path)


def main(argv: list[str] | None = None) -> int:
    """`python -m train gan ...`; returns the exit status."""
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    try:
        config, resume = resolve_config(args)
        env = distributed.init_distributed(config.device)
        result = train(config, resume_from=resume, started=started, env=env)
    except (
        ConfigError, DataError, ck.CheckpointError, tokenizer.CaptionError, distributed.DeviceError
    ) as err:  # fmt: skip
        print(f"rescue-train gan: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    if result.exit_code == 0 and result.run_dir is not None:
        print(result.run_dir)  # machine-usable: the run folder
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
