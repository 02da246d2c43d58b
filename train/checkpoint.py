"""Checkpoints: atomic writes, safe reads, and the layout every trainer and the exporter share.

A checkpoint is a plain dict of tensors and built-in types, loaded with `weights_only=True` so a
file from elsewhere can never run code::

    {
      "format": "rescue-t2i-checkpoint", "format_version": 1,
      "kind": "text_encoder" | "gan" | "oracle" | ...,
      "tokenizer": edge_runtime.tokenizer.SPEC,
      "model_configs": {"text_encoder": {...}, "generator": {...}, ...},  # dataclasses.asdict
      "models": {"text_encoder": state_dict, "generator": state_dict, ...},
      "config": {...},           # the trainer's resolved run config
      "step": int, ...           # trainer state: optimisers, RNG states, metrics
    }

A GAN checkpoint carries the frozen text encoder it was trained with, so export can rebuild the
whole pipeline from one file.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from edge_runtime import atomic, tokenizer
from edge_runtime.bundle import sha256_file as file_sha256  # noqa: F401  (re-exported for trainers)
from train import models
from train.errors import InputError, first_line

FORMAT = "rescue-t2i-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(InputError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def new_checkpoint(kind: str, **fields: Any) -> dict[str, Any]:
    """A checkpoint dict with the header every checkpoint carries, plus `fields`."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "tokenizer": dict(tokenizer.SPEC),
        **fields,
    }


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically: temp file in the same directory, fsync, rename, fsync the directory.

    A crash (even kill -9) at any moment leaves either the previous file or the new one at
    `path`, never a truncated one.
    """
    path = Path(path)
    with atomic.atomic_file(path, make_parents=True) as f:
        torch.save(checkpoint, f)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], kind: str | None = None, map_location: str = "cpu"
) -> dict[str, Any]:
    """Load with `weights_only=True`; raise `CheckpointError` (one line) on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CheckpointError(
            f"{path}: not a torch checkpoint (truncated or corrupted: no zip directory in "
            f"{len(data)} bytes)"
        )
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, zip errors, ...
        first = first_line(err)
        raise CheckpointError(f"{path}: cannot be loaded safely: {first}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a rescue-t2i checkpoint (no format {FORMAT!r})")
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not readable by this code ({FORMAT_VERSION})"
        )
    try:
        tokenizer.check_spec(checkpoint.get("tokenizer"), str(path))
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if kind is not None and checkpoint.get("kind") != kind:
        raise CheckpointError(
            f"{path}: is a {checkpoint.get('kind')!r} checkpoint, expected {kind!r}"
        )
    for key in ("models", "model_configs"):
        if not isinstance(checkpoint.get(key), dict):
            raise CheckpointError(f"{path}: missing {key!r}")
    return checkpoint


def generator_for_inference(
    checkpoint: dict[str, Any], where: str = "checkpoint"
) -> torch.nn.Module:
    """The generator to evaluate and export: the weights' moving average ("generator_ema") where
    the run kept one, else the trained weights (runs with --ema-decay 0, older checkpoints)."""
    name = "generator_ema" if "generator_ema" in checkpoint.get("models", {}) else "generator"
    return build_model(checkpoint, name, where)


def build_model(
    checkpoint: dict[str, Any], name: str, where: str = "checkpoint"
) -> torch.nn.Module:
    """Rebuild network `name` ("generator", ...) from a checkpoint alone, in eval mode."""
    if name not in models.MODEL_TYPES:
        raise CheckpointError(f"{where}: unknown model {name!r}")
    config_cls, module_cls = models.MODEL_TYPES[name]
    try:
        config = models.config_from_dict(config_cls, checkpoint["model_configs"][name], where)
        module = module_cls(config)
        state = checkpoint["models"][name]
    except KeyError:
        raise CheckpointError(f"{where}: has no {name!r} model") from None
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: {name} config is invalid: {err}") from None
    expected, given = set(module.state_dict()), set(state)
    if expected != given:
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        raise CheckpointError(
            f"{where}: {name} weights do not fit its config: missing {missing[:3]}"
            f"{'…' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'…' if len(unexpected) > 3 else ''} (written by another version of the model code?)"
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        # Shape mismatches: torch lists them one per line after a header line.
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{where}: {name} weights do not fit its config: {detail}") from None
    return module.eval()
