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
from train import models, options
from train.distributed import cpu_computes_bf16
from train.errors import ConfigError
from train.gan import augment
from train.options import option

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def _term(help: str, **how: Any) -> Any:
    """An objective weight: None until `resolve_objective` fills it from `--objective`."""
    return option(
        None, f"{help} (default: per --objective)", group="objective", show_default=False, **how
    )


def _policy_flag(text: str) -> str:
    """argparse `type=` for --d-augment: the canonical policy, or one line saying what is wrong."""
    try:
        return augment.parse_policy(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@dataclass(frozen=True)
class GanTrainConfig:
    """Everything a run depends on; resolved once, written to the run folder and the checkpoint."""

    # Data and inputs
    data: str | None = option(None, "HDF5 dataset", group="inputs and outputs", metavar="FILE")
    """HDF5 dataset (docs/DATA_FORMAT.md); None only for --dry-run (generated data)."""
    split: str = option("train", "split to train on", group="inputs and outputs")
    text_encoder: str | None = option(
        None, 'text-encoder checkpoint, or "random"', group="inputs and outputs", metavar="CKPT"
    )
    """kind="text_encoder" checkpoint, or "random" for an untrained encoder (smoke tests)."""
    out: str = option(
        "runs/gan", "folder for numbered run folders", group="inputs and outputs", metavar="DIR"
    )
    """Folder holding the numbered run folders."""
    # Networks (train/models.py, GANConfig)
    ngf: int = option(64, "generator width", group="networks", at_least=1)
    ndf: int = option(64, "discriminator width", group="networks", at_least=1)
    residual: bool = option(False, "residual blocks at 4×4 and 8×8", group="networks")
    text_norm: str = option(
        "batch",
        "normalisation in both networks' text projection (none: no batch dependence)",
        group="networks",
        choices=models.TEXT_NORMS,
    )
    upsample: str = option(
        "deconv",
        "G's ×2 stages: deconv (4×4 transposed convolution) or resize (nearest ×2 + 3×3 "
        "convolution, no checkerboard; same exported graph)",
        group="networks",
        choices=models.UPSAMPLES,
    )
    # Objective (train/gan/losses.py): --objective names a set of term weights (OBJECTIVES);
    # a weight flag given beside it overrides that one weight. None = "from --objective".
    objective: str = option(
        "default",
        "named objective: paper (Reed et al.), seed (paper + feature matching), default (ours)",
        group="objective",
        choices=("paper", "seed", "default"),
    )
    """Which term weights the None fields below resolve to (`OBJECTIVES`, `resolve_objective`;
    docs/GAN_TRAINING.md § Objectives). The resolved weights are what config.json records."""
    nonsat_weight: float | None = _term("weight of the non-saturating right-text term", at_least=0)
    """Weight of the mean non-saturating loss over the B right-text fakes. Reed's code scores the
    right-text and interpolated fakes as one batch of B + n (one BCE mean), i.e. weights
    B/(B+n) and n/(B+n) per term: `paper` and `seed` resolve to those; `default` keeps 1 and 1,
    which weighs each interpolated sample 2× a right-text one at `--int-fraction 0.5`."""
    wrong_weight: float | None = _term("GAN-CLS real+wrong-text weight", at_least=0)
    """GAN-CLS weight of real image + wrong text (Reed: ½)."""
    fake_weight: float | None = _term("GAN-CLS fake+right-text weight", at_least=0)
    """GAN-CLS weight of fake image + right text (Reed: ½)."""
    mismatch: str = option(
        "text",
        "mismatched pair: real image + wrong text, or wrong image + right text",
        group="objective",
        choices=("text", "image"),
    )
    """"text": real image + captions of another class; "image": wrong image + right text
    (Reed's released code); both pair a real image with a description of another class."""
    partial_captions: str = option(
        "aware",
        "partial captions (a split with caption_stated): aware = wrong captions contradict a "
        "stated attribute, a sample's captions state one thing, the matching term allows what "
        "a caption leaves open; ignore = treat every caption as full (the ablation); skip = "
        "train on the full captions only (the text encoder still learns from all)",
        group="objective",
        choices=("aware", "ignore", "skip"),
    )
    """docs/GAN_TRAINING.md § Partial captions. Splits without `caption_stated` train the same
    every way. `skip` suits a robot that draws the read-back's canonical (full) caption
    (docs/QUALITY.md § 3.19, § 3.20)."""
    int_weight: float | None = _term("GAN-INT weight (0 = off)", at_least=0)
    """Weight of the mean GAN-INT loss over the n interpolated fakes (see `nonsat_weight`)."""
    int_beta: float = option(
        0.5, "GAN-INT interpolation β", group="objective", at_least=0, at_most=1
    )
    int_fraction: float = option(
        0.5,
        "interpolated samples per batch, relative to the batch",
        group="objective",
        at_least=0,
        at_most=1,
    )
    """Interpolated samples per batch, relative to the batch (Reed: ½)."""
    fm_weight: float | None = _term("feature-matching weight (0 = off)", at_least=0)
    """Feature matching on D's joint 4×4 features (0 = off)."""
    l1_weight: float | None = _term("L1 weight (0 = off)", at_least=0)
    match_weight: float | None = _term(
        "text-image matching weight with the frozen image encoder (0 = off)", at_least=0
    )
    """Text–image matching on generated images (0 = off): the frozen pretrained image encoder's
    embedding of G(z, t) classified against every class's mean caption embedding
    (`train.gan.losses.text_image_matching_loss`; after AttnGAN's DAMSM loss, Xu et al. 2018).
    Why: D learns which caption an image matches only from its few mismatched pairs, so
    details such as a helmet or the pose reach G late; the image encoder already tells every
    attribute apart (its joint pretraining) and hands G that gradient directly. Needs a
    text-encoder checkpoint that holds an image encoder (ours do); off, with a warning, for a
    random encoder."""
    match_temperature: float = option(
        0.1, "temperature of the matching loss", group="objective", above=0
    )
    """Softmax temperature of the matching loss (DAMSM: γ3 = 10, i.e. 0.1)."""
    ms_weight: float | None = _term("mode-seeking weight (MSGAN; 0 = off)", at_least=0)
    """Mode seeking (`train.gan.losses.mode_seeking_loss`, MSGAN; 0 = off): G also draws
    `ms_fraction` × batch images of the batch's first captions with fresh noise, and is pushed to
    make them differ from their partners made with the batch noise. Why it exists: the default
    objective's images hardly vary with the seed; that diversity and this term's measured effect
    are in docs/QUALITY.md § 3.0."""
    ms_fraction: float = option(
        0.25,
        "images per batch drawn again for mode seeking, relative to the batch",
        group="objective",
        at_least=0,
        at_most=1,
    )
    """Images per batch drawn a second time for mode seeking, relative to the batch."""
    open_weight: float | None = _term(
        "weight of the open-attribute divergence on partial captions (0 = off)", at_least=0
    )
    """Open-attribute divergence (`train.gan.losses.open_attribute_divergence_loss`; 0 = off):
    like mode seeking, G draws `ms_fraction` × batch captions a second time with fresh noise —
    partial captions first — and the two images of a caption that leaves attributes open are
    pushed to read, in the matching encoder's class softmax over the classes the caption allows,
    as different classes. Why: a partial caption's open attributes are nearly fixed per caption
    (unstated-attribute entropy 0.1, target 0.6; docs/QUALITY.md § 3.14). Needs the matching
    term's encoder and a dataset with partial captions; does nothing on full captions."""
    label_smoothing: float | None = _term(
        "one-sided label smoothing of the real target", at_least=0, below=0.5
    )
    """One-sided: the real target becomes 1 − this."""
    hard_negative_fraction: float | None = _term(
        "share of wrong captions from a class differing in exactly one attribute",
        at_least=0,
        at_most=1,
    )
    """Hard negatives for GAN-CLS's mismatched pair (train/data/loader.py): this share of the
    wrong captions come from an attribute twin of the real image (one attribute differs), the
    rest from a random other class. Why: random other classes differ in 3–4 of 5 attributes, so
    D's mismatch task saturates early (docs/GAN_TRAINING.md § D regularisers). Datasets without
    attributes keep random ones."""
    r1_gamma: float | None = _term(
        "R1 penalty γ on D's gradient at real (image, right text) pairs (0 = off)", at_least=0
    )
    """Zero-centred gradient penalty γ/2 · E‖∇ₓ D(x, t)‖² on real pairs (Mescheder et al. 2018;
    `train.gan.losses.r1_penalty`): keeps D smooth around the data so it keeps informing G."""
    r1_every: int = option(
        1, "steps between R1 penalties (lazy regularisation)", group="objective", at_least=1
    )
    """Lazy R1 (StyleGAN2): the penalty on every N-th step only, weighted ×N."""
    d_augment: str | None = _term(
        'augmentation of every image D sees: "translation", "cutout", both (comma-separated) or '
        '"none"; never colour or flips',
        parse=_policy_flag,
        metavar="KINDS",
    )
    """Differentiable augmentation for D (train/gan/augment.py), the same policy on real and
    fake images; only kinds that keep every attribute (no colour, no flips)."""
    d_augment_shift: int = option(
        3, "largest --d-augment translation, pixels", group="objective", at_least=1, at_most=8
    )
    """At most a few pixels: the figure must stay within its third (21 px) of the image."""
    d_augment_cutout: float = option(
        0.25, "--d-augment cutout square side, relative to the image", group="objective",
        above=0, at_most=0.5,
    )  # fmt: skip
    d_augment_p: float = option(
        1.0, "probability that --d-augment transforms an image (each image drawn alone)",
        group="objective", above=0, at_most=1,
    )  # fmt: skip
    """ADA's augmentation probability p (Karras et al. 2020), fixed: below 1 D also sees
    untransformed images, which is what G must match; not measured yet (docs/QUALITY.md § 3.16)."""
    # Data pipeline (train/data/loader.py)
    captions_per_sample: int = option(
        4, "captions averaged per sample (Reed: 4)", group="data pipeline", at_least=1
    )
    captions_per_image: int | None = option(
        None, "use only the first N captions of each image", group="data pipeline"
    )
    """Use only the first N captions of each image (None: all). Fewer captions to embed once: on a
    CPU the embedding pass is a real part of a short run (docs/QUALITY.md § 4)."""
    flip: bool = option(
        True, "random horizontal flips (off when the dataset forbids them)", group="data pipeline"
    )
    crop: bool = option(
        True,
        "resize to 76 and random-crop 64 (off when the dataset forbids it)",
        group="data pipeline",
    )
    lazy: bool = option(
        False,
        "read images from HDF5 per batch instead of holding them in memory",
        group="data pipeline",
    )
    workers: int = option(0, "DataLoader workers (lazy mode)", group="data pipeline", at_least=0)
    # Optimisation
    batch_size: int = option(64, "global batch size", group="optimisation", at_least=1)
    """Global batch (split evenly over the processes)."""
    lr: float = option(
        2e-4, "Adam learning rate (the original study used 3.4e-4)", group="optimisation", above=0
    )
    beta1: float = option(0.5, "Adam β1", group="optimisation", at_least=0, at_most=1)
    beta2: float = option(0.999, "Adam β2", group="optimisation", at_least=0, at_most=1)
    lr_decay_every: int = option(
        100, "epochs between learning-rate decays (0 = never)", group="optimisation", at_least=0
    )
    """Epochs between learning-rate halvings (Reed: 100); 0 = constant."""
    lr_decay: float = option(
        0.5, "learning-rate factor per decay", group="optimisation", above=0, at_most=1
    )
    ema_decay: float = option(
        0.999,
        "decay of the generator's weight average (0 = off)",
        group="optimisation",
        at_least=0,
        below=1,
    )
    """Exponential moving average of G's weights, warmed up (train/gan/ema.py); the average is
    what sample grids show and what evaluation and export use (`train.checkpoint.
    generator_for_inference`). 0 = off: the trained weights are used, as in older runs."""
    epochs: int = option(600, "epochs to train", group="optimisation", at_least=1)
    steps: int | None = option(
        None, "stop after this many steps in total", group="optimisation", at_least=1
    )
    """Stop after this many steps in total (None: `epochs`)."""
    minutes: float | None = option(
        None,
        "wall-clock budget of this invocation (checkpoint at the end)",
        group="optimisation",
        above=0,
    )
    """Wall-clock budget of this invocation, setup included; a checkpoint is written at the end."""
    # Engineering
    seed: int = option(0, "random seed", group="engineering")
    device: str = option("auto", 'device: "auto", "cpu", "cuda", "cuda:N"', group="engineering")
    threads: int | None = option(None, "CPU threads per process", group="engineering", at_least=1)
    """CPU threads per process (torch.set_num_threads); None = torch's default. Results are
    bitwise reproducible for a given thread count."""
    amp: str = option(
        "auto",
        "autocast: auto = bf16 on CUDA and on CPUs with bf16 hardware, else fp32",
        group="engineering",
        choices=("auto", "bf16", "off"),
    )
    """"auto": bf16 autocast on CUDA and on CPUs with bf16 arithmetic (AVX-512 BF16 / AMX: about
    2× the steps per minute at the same quality per step, docs/GAN_TRAINING.md § Speed on CPU);
    fp32 elsewhere (AVX2 CPUs emulate bf16, far slower); "off": always fp32."""
    channels_last: bool = option(True, "channels-last tensors", group="engineering")
    compile: bool = option(
        False,
        "torch.compile the networks (minutes of compilation on small CPUs)",
        group="engineering",
    )
    sync_bn: bool = option(True, "synchronise batch norm over processes", group="engineering")
    """Batch-norm statistics over the global batch under DDP (train/distributed.py)."""
    deterministic: bool = option(
        False, "deterministic CUDA kernels (exact --resume on GPU)", group="engineering"
    )
    """Deterministic CUDA kernels (bitwise --resume on GPUs); CPU is deterministic anyway."""
    checkpoint_every: int = option(
        500, "steps between checkpoints", group="engineering", at_least=1
    )
    log_every: int = option(20, "steps between logged metrics", group="engineering", at_least=1)
    grad_norm_every: int = option(
        100,
        "steps between per-term generator gradient norms (0 = never)",
        group="engineering",
        at_least=0,
    )
    """Every N steps, the norm of each weighted G term's gradient on G's parameters (one extra
    backward per term on that step), logged as grad_norm/G/<term> at the next log line."""
    held_out_split: str = option(
        "test",
        'split whose fixed batch of real images D is scored on at each log line ("off": none)',
        group="engineering",
    )
    sample_every: int = option(500, "steps between sample grids", group="engineering", at_least=1)
    embedding_cache: str = option(
        "auto", 'text-embedding cache folder, "auto" or "off"', group="engineering", metavar="DIR"
    )
    """Folder for cached text embeddings; "auto" = <out>/text-embeddings, "off" = none."""
    progress: bool = option(True, "tqdm progress bar", group="engineering")
    dry_run: bool = option(
        False,
        "one real step on generated data (random encoder)",
        show_default=False,
        store_true=True,
    )

    @property
    def use_amp(self) -> bool:
        return self.amp == "bf16"


# The objectives by name (docs/GAN_TRAINING.md § Objectives). Every term weight of
# GanTrainConfig that is None resolves from here; flags given beside --objective win.
_REED: dict[str, Any] = {
    # GAN-CLS exactly as Reed et al. 2016 Algorithm 1: L_D = s_r + ½ (s_w + s_f).
    "wrong_weight": 0.5,
    "fake_weight": 0.5,
    # nonsat_weight / int_weight: per sample, as Reed's code (`resolve_objective`).
    "fm_weight": 0.0,
    "match_weight": 0.0,
    "l1_weight": 0.0,
    "ms_weight": 0.0,
    "open_weight": 0.0,
    "label_smoothing": 0.0,
    "hard_negative_fraction": 0.0,
    "r1_gamma": 0.0,
    "d_augment": "none",
}
OBJECTIVES: dict[str, dict[str, Any]] = {
    "paper": dict(_REED),
    # The seed document's objective: the paper's plus Salimans et al.'s feature matching.
    "seed": {**_REED, "fm_weight": 1.0},
    # Ours: the paper's terms weighted per term (GAN-INT samples count 2× at --int-fraction ½),
    # feature matching and the text–image matching term.
    "default": {**_REED, "nonsat_weight": 1.0, "int_weight": 1.0, "fm_weight": 1.0,
                "match_weight": 1.0},
}  # fmt: skip


# The leave-one-out ablation (`python -m train recipe --ablation`, docs/QUALITY.md § 3.8): each
# term of the trained objective is switched off alone, everything else kept, for the same wall
# time. A term is ablated only where the run has it on (`ablated_terms`), so the list follows the
# default as the ablation changes it.
ABLATION_TERMS: dict[str, tuple[str, dict[str, Any]]] = {
    "match": ("text–image matching term", {"match_weight": 0.0}),
    "fm": ("feature matching", {"fm_weight": 0.0}),
    "int": ("GAN-INT", {"int_weight": 0.0}),
    "wrong": ("GAN-CLS mismatch pair (matching-aware D)", {"wrong_weight": 0.0}),
    "ema": ("EMA of G", {"ema_decay": 0.0}),
    "text-norm": ("batch norm in the text projections", {"text_norm": "none"}),
    "r1": ("R1 penalty", {"r1_gamma": 0.0}),
    "hard-negatives": ("hard-negative wrong captions", {"hard_negative_fraction": 0.0}),
    "d-augment": ("D augmentation", {"d_augment": "none"}),
    "smoothing": ("one-sided label smoothing", {"label_smoothing": 0.0}),
    "open": ("open-attribute divergence", {"open_weight": 0.0}),
}  # fmt: skip


def ablated_terms(config: GanTrainConfig) -> list[str]:
    """Names of `ABLATION_TERMS` that `config` (resolved from its objective) has switched on."""
    resolved = resolve_objective(config)
    return [
        name
        for name, (_, off) in ABLATION_TERMS.items()
        if any(getattr(resolved, field) != value for field, value in off.items())
    ]


def objective_weights(objective: str, int_fraction: float) -> dict[str, Any]:
    """The term weights `objective` names, for a batch with `int_fraction` interpolated samples.

    Reed's G step scores the B right-text and the n = f·B interpolated fakes as one batch (one
    BCE mean over B + n, interp_weight 1 per sample: main_cls_int.lua's `criterion_interp`),
    so its per-term weights are B/(B+n) = 1/(1+f) and n/(B+n) = f/(1+f).
    """
    weights = dict(OBJECTIVES[objective])
    if "nonsat_weight" not in weights:
        weights["nonsat_weight"] = 1.0 / (1.0 + int_fraction)
        weights["int_weight"] = int_fraction / (1.0 + int_fraction)
    return weights


def resolve_objective(config: GanTrainConfig) -> GanTrainConfig:
    """`config` with every unset (None) term weight taken from its `--objective`."""
    weights = objective_weights(config.objective, config.int_fraction)
    unset = {k: v for k, v in weights.items() if getattr(config, k) is None}
    return dataclasses.replace(config, **unset) if unset else config


# Flags that may differ on --resume without changing the result of the steps already defined.
RESUMABLE_OVERRIDES = frozenset(
    {"steps", "minutes", "epochs", "checkpoint_every", "log_every", "sample_every", "progress",
     "workers", "embedding_cache", "device", "threads", "compile", "out", "data",
     "text_encoder", "grad_norm_every", "held_out_split"}
)  # fmt: skip


LEGACY_VALUES: dict[str, Any] = {
    "ema_decay": 0.0,
    "partial_captions": "ignore",
    "upsample": "deconv",
}
"""Values of fields added after a checkpoint was written that match how it was trained (checkpoints
written before `ema_decay` existed hold no weight average; before `partial_captions`, every
caption was read as a full one)."""


def build_parser() -> argparse.ArgumentParser:
    """Flags map one-to-one onto `GanTrainConfig` fields (defaults shown are the config's)."""
    parser = argparse.ArgumentParser(
        prog="python -m train gan",
        description="Train the text-conditioned DCGAN: GAN-CLS + GAN-INT + feature matching.",
    )

    def resume_flag(group: Any) -> None:
        group.add_argument("--resume", metavar="RUN", help="run folder or checkpoint to continue")

    return options.build_parser(GanTrainConfig, parser, after={"out": resume_flag})


def validate(config: GanTrainConfig, world_size: int = 1) -> GanTrainConfig:
    """Check every flag and flag combination; raise ConfigError naming the flag. Returns the
    config with "auto" values resolved."""

    def fail(field: str, message: str) -> None:
        raise ConfigError(f"{options.flag(field)} {getattr(config, field)}: {message}")

    options.check_ranges(config)
    config = resolve_objective(config)
    try:
        config = dataclasses.replace(config, d_augment=augment.parse_policy(config.d_augment))
    except ValueError as err:
        fail("d_augment", str(err))
    if config.captions_per_image is not None and config.captions_per_image < max(
        1, config.captions_per_sample
    ):
        fail("captions_per_image", f"must be ≥ --captions-per-sample {config.captions_per_sample}")
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
    native_bf16 = cuda or cpu_computes_bf16()
    # CPU bf16 only for one process: under gloo DDP the replicas were measured to drift apart
    # in bf16 (tests/train/gan/test_trainer.py keeps DDP in fp32), so auto keeps fp32 there.
    auto_bf16 = cuda or (native_bf16 and world_size == 1)
    amp = config.amp if config.amp != "auto" else ("bf16" if auto_bf16 else "off")
    if amp == "bf16" and not native_bf16:
        log.warning(
            "--amp bf16 on CPU: only CPUs with AVX-512 BF16/AMX compute bf16 natively; on others "
            "it is emulated and far slower (docs/GAN_TRAINING.md § Speed on CPU)"
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
    # Fields newer than the checkpoint take the value that reproduces how it was trained.
    saved = {**LEGACY_VALUES, **saved}
    try:
        config = GanTrainConfig(**{k: v for k, v in saved.items() if k in names})
        return resolve_objective(config)
    except TypeError as err:
        raise ck.CheckpointError(f"{where}: config does not fit this trainer: {err}") from None
