"""Flags and the frozen config of a GAN run: each `GanTrainConfig` field is one flag.

`build_parser` generates the command line from the dataclass, `validate` checks every flag and
flag combination before any work (the message starts with the flag's name), and
`RESUMABLE_OVERRIDES` names what `--resume` may change on top of the saved config.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from train import checkpoint as ck
from train.errors import ConfigError

log = logging.getLogger(__name__)


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
    # Objective (train/gan/losses.py); defaults are the paper's
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
