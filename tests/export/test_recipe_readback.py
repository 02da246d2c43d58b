"""A recipe-made checkpoint exports with its read-back (issue 17): the text encoder's pretraining
trains the heads, the GAN trainer copies them into its checkpoint, export ships the graph."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_checkpoints import tiny_text_encoder_checkpoint

from edge_runtime import bundle as b
from edge_runtime.engine import open_session
from export.pipeline import ExportOptions, export_bundle
from export.tiny import TINY_MIN_READBACK_AGREEMENT
from train import checkpoint as ck
from train import models
from train import recipe as rc
from train.data.synth import SynthConfig, synthesize
from train.distributed import DistEnv
from train.gan import trainer as gan
from train.gan.config import GanTrainConfig, validate


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("recipe")
    data = root / "scenes.h5"
    synthesize(
        SynthConfig(out=data, train=64, test=16, test_unseen=8, workers=1, partial_fraction=0.3)
    )
    config = rc.RecipeConfig(
        data=str(data),
        out=str(root / "runs"),
        threads=1,
        text_steps=2,
        text_overrides={
            "batch_size": 16,
            "checkpoint_every": 1000,
            "off_domain_per_batch": 4,
            "readback_hidden": 16,
            "text_encoder": models.TextEncoderConfig(
                conv_channels=(16, 16, 16), rnn_hidden=16, embedding_dim=16
            ),
            "image_encoder": models.ImageEncoderConfig(channels=(8, 8), embedding_dim=16),
        },
        ngf=8,
        ndf=8,
        gan_steps=1,
        gan_overrides={"batch_size": 8, "sample_every": 1000, "checkpoint_every": 1000},
        eval_seeds=1,
        eval_limit=4,
        progress=False,
    )
    return rc.run(config)


def test_recipe_gan_checkpoint_carries_the_text_encoders_readback(recipe_run: dict) -> None:
    gan = ck.load_checkpoint(recipe_run["checkpoint"], kind="gan")
    text = ck.load_checkpoint(
        Path(recipe_run["run_dir"]) / "text-encoder" / "checkpoint.pt", kind="text_encoder"
    )
    assert gan["model_configs"]["readback"] == text["model_configs"]["readback"]
    for name, tensor in text["models"]["readback"].items():
        assert (gan["models"]["readback"][name] == tensor).all(), name


def test_recipe_checkpoint_exports_a_bundle_with_readback(recipe_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    export_bundle(
        ExportOptions(
            checkpoint=Path(recipe_run["checkpoint"]),
            out=out,
            quantize=True,
            allow_lossy=True,  # a 1-step GAN: the generator's int8 gate is not what is tested
            latency_rounds=2,
            min_readback_agreement=TINY_MIN_READBACK_AGREEMENT,
        )
    )
    assert (out / "readback.onnx").is_file()
    bundle = b.load_bundle(out, open_session)
    assert bundle.manifest.readback is not None
    assert all(v.readback is not None for v in bundle.manifest.variants.values())


def _gan_trainer(text_encoder: Path) -> Any:
    config = validate(
        GanTrainConfig(
            text_encoder=str(text_encoder), ngf=8, ndf=8, batch_size=8, embedding_cache="off",
            progress=False, device="cpu", amp="off", threads=1, captions_per_sample=2,
        )
    )  # fmt: skip
    return gan.GanTrainer(config, DistEnv(), split=gan.generated_split(16, captions=2, seed=0))


def test_gan_checkpoint_without_readback_when_the_text_encoder_has_none(tmp_path: Path) -> None:
    te = tiny_text_encoder_checkpoint(tmp_path / "te.pt")  # written before the read-back existed
    checkpoint = _gan_trainer(te).checkpoint()
    assert "readback" not in checkpoint["models"]
    assert "readback" not in checkpoint["model_configs"]


def test_gan_checkpoint_copies_the_text_encoders_readback(tmp_path: Path) -> None:
    te = tiny_text_encoder_checkpoint(tmp_path / "te.pt")
    saved = ck.load_checkpoint(te, kind="text_encoder")
    heads = models.ReadBack(models.ReadBackConfig(embedding_dim=32, hidden=8))
    saved["models"]["readback"] = heads.state_dict()
    saved["model_configs"]["readback"] = dataclasses.asdict(heads.config)
    ck.save_checkpoint(saved, te)
    trainer = _gan_trainer(te)
    checkpoint = trainer.checkpoint()
    assert checkpoint["model_configs"]["readback"] == dataclasses.asdict(heads.config)
    for name, tensor in heads.state_dict().items():
        assert torch.equal(checkpoint["models"]["readback"][name], tensor), name
    # A resumed GAN keeps carrying them.
    path = ck.save_checkpoint(checkpoint, tmp_path / "gan.pt")
    resumed = gan.GanTrainer(
        trainer.config, DistEnv(), split=gan.generated_split(16, captions=2, seed=0),
        resume=ck.load_checkpoint(path, kind="gan"), resume_path=str(path),
    )  # fmt: skip
    assert "readback" in resumed.checkpoint()["models"]
