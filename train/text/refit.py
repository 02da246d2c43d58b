"""`python -m train fit-readback`: fit a checkpoint's read-back heads ψ afresh on its frozen text
encoder (`train.text.readback.fit_heads`) and write the checkpoint with them to `--out`.

Pretraining now ends with this step; the command brings a checkpoint saved before it (a text
encoder, or a GAN checkpoint, which carries the text encoder and ψ on to export) up to date
without retraining anything: only model "readback" changes. The input file is never touched;
`--out` is written atomically (temp file + rename).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import torch

from train import options
from train.checkpoint import build_model, load_checkpoint, save_checkpoint
from train.data.files import read_info, read_split
from train.errors import BAD_INPUT, ConfigError
from train.models import CharCnnRnn, ReadBack
from train.options import REQUIRED, option
from train.runs import OneLineParser
from train.text.perturb import AugmentConfig
from train.text.pretrain import PretrainConfig
from train.text.readback import RefitConfig, default_config, fit_heads

KINDS = ("text_encoder", "gan")
_R = RefitConfig()


@dataclass(frozen=True)
class RefitFlags:
    """The fit-readback command line, each flag declared once."""

    checkpoint: str = option(REQUIRED, "text-encoder or GAN checkpoint.pt", required=True)
    out: str = option(REQUIRED, "where to write the checkpoint with the new heads", required=True)
    data: str | None = option(
        None,
        "HDF5 dataset whose train split's captions ψ is fitted on (default: the one the "
        "checkpoint trained on)",
        show_default=False,
    )
    captions: int = option(_R.captions, "training captions encoded", at_least=1)
    terse_share: float = option(
        _R.terse_share, 'terse commands ("blue jacket"), as a share of --captions', at_least=0.0
    )
    steps: int = option(_R.steps, "optimiser steps", at_least=1)
    seed: int = option(_R.seed, "")
    threads: int | None = option(
        None, "torch threads (default: all cores)", show_default=False, at_least=1
    )


DESCRIPTION = (
    "Fit a checkpoint's read-back heads afresh on its frozen text encoder (linear attribute "
    "blocks) and write the checkpoint with them to --out."
)


def build_parser() -> OneLineParser:
    """The fit-readback flags, generated from `RefitFlags`."""
    parser = OneLineParser(prog="python -m train fit-readback", description=DESCRIPTION)
    return options.build_parser(RefitFlags, parser, given_only=False)


def refit_checkpoint(
    checkpoint: dict[str, Any], data: str, config: RefitConfig, where: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """A copy of `checkpoint` whose model "readback" is fitted afresh on its "text_encoder"."""
    encoder = build_model(checkpoint, "text_encoder", where)
    assert isinstance(encoder, CharCnnRnn)
    info = read_info(data)
    if not info.attribute_names:
        raise ConfigError(f"--data: {data} has no attributes to read back")
    sizes = [len(info.attribute_values[name]) for name in info.attribute_names]
    if "readback" in checkpoint["models"]:
        old = build_model(checkpoint, "readback", where)
        assert isinstance(old, ReadBack)
        if list(old.config.value_counts) != sizes:
            raise ConfigError(
                f"--data: {data} has attributes of {sizes} values, the checkpoint's heads "
                f"read {list(old.config.value_counts)}"
            )
        heads_config = dataclasses.replace(old.config, linear_attributes=True)
    else:
        heads_config = default_config(encoder.config.embedding_dim, sizes)
        heads_config = dataclasses.replace(heads_config, linear_attributes=True)
    # The text encoder's own augmentation, read as its trainer reads it (legacy fields
    # included); a GAN checkpoint's config is the GAN's, so the default there.
    augment = AugmentConfig()
    if checkpoint.get("kind") == "text_encoder" and checkpoint.get("config"):
        augment = PretrainConfig.from_dict(checkpoint["config"], f"{where}: config").augment
    heads, figures = fit_heads(encoder, read_split(data, "train"), heads_config, config, augment)
    out = dict(checkpoint)
    out["models"] = dict(checkpoint["models"]) | {"readback": heads.state_dict()}
    out["model_configs"] = dict(checkpoint["model_configs"]) | {
        "readback": dataclasses.asdict(heads.config)
    }
    return out, figures


def main(argv: list[str] | None = None) -> int:
    """Refit; 0 on success, 2 on bad input (one line on stderr)."""
    try:
        given = vars(build_parser().parse_args(argv))
        args = RefitFlags(**given)
        options.check_ranges(args)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        checkpoint = load_checkpoint(args.checkpoint)
        if checkpoint.get("kind") not in KINDS:
            raise ConfigError(
                f"--checkpoint: {args.checkpoint} is a {checkpoint.get('kind')!r} checkpoint; "
                f"expected one of {', '.join(KINDS)}"
            )
        data = args.data or (checkpoint.get("config") or {}).get("data")
        if not data:
            raise ConfigError("--data is required (the checkpoint names no dataset)")
        config = RefitConfig(
            captions=args.captions, terse_share=args.terse_share, steps=args.steps, seed=args.seed
        )
        out, figures = refit_checkpoint(checkpoint, str(data), config, args.checkpoint)
        save_checkpoint(out, args.out)
    except BAD_INPUT as err:
        print(f"fit-readback: {err}", file=sys.stderr)
        return 2
    print(
        f"fit-readback: {args.out}: heads fitted on {int(figures['readback_refit_texts'])} texts "
        f"in {figures['readback_refit_s']:.0f} s (loss {figures['readback_refit_loss']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
