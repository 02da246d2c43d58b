"""A recipe-made checkpoint exports with its read-back (issue 17): the text encoder's pretraining
trains the heads, the GAN trainer copies them into its checkpoint, export ships the graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime import bundle as b
from edge_runtime.engine import open_session
from export.pipeline import ExportOptions, export_bundle
from export.tiny import TINY_MIN_READBACK_AGREEMENT
from train import checkpoint as ck
from train import models
from train import recipe as rc
from train.data.synth import SynthConfig, synthesize


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
