"""Small but real checkpoints shared by the training tests (kept here, not copied per file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path


def tiny_text_encoder_checkpoint(
    path: Path, embedding_dim: int = 32, *, lead_pad: int | None = None
) -> Path:
    """A real (small) text-encoder checkpoint with an image encoder, as its trainer writes;
    `lead_pad` overrides the model default (tests pinned before it existed use 0)."""
    import torch

    from train import checkpoint as ck
    from train import models

    torch.manual_seed(0)
    te = models.TextEncoderConfig(
        conv_channels=(16, 16, 16), rnn_hidden=16, embedding_dim=embedding_dim
    )
    if lead_pad is not None:
        te = dataclasses.replace(te, lead_pad=lead_pad)
    ie = models.ImageEncoderConfig(channels=(8, 8), embedding_dim=embedding_dim)
    checkpoint = ck.new_checkpoint(
        "text_encoder",
        models={
            "text_encoder": models.CharCnnRnn(te).state_dict(),
            "image_encoder": models.ImageEncoder(ie).state_dict(),
        },
        model_configs={
            "text_encoder": dataclasses.asdict(te),
            "image_encoder": dataclasses.asdict(ie),
        },
        config={},
        step=0,
    )
    return ck.save_checkpoint(checkpoint, path)
