from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from train import checkpoint as ck
from train import models


def _tiny_gan_checkpoint() -> dict:
    config = models.GANConfig(ngf=8, ndf=8, embedding_dim=16)
    gen = models.Generator(config)
    return ck.new_checkpoint(
        "gan",
        models={"generator": gen.state_dict()},
        model_configs={"generator": dataclasses.asdict(config)},
        step=7,
    )


def test_checkpoint_roundtrip_rebuilds_model_from_file_alone(tmp_path: Path) -> None:
    checkpoint = _tiny_gan_checkpoint()
    path = ck.save_checkpoint(checkpoint, tmp_path / "run" / "checkpoint.pt")
    loaded = ck.load_checkpoint(path, kind="gan")
    gen = ck.build_model(loaded, "generator", str(path))
    assert gen.config == models.GANConfig(ngf=8, ndf=8, embedding_dim=16)
    for name, tensor in checkpoint["models"]["generator"].items():
        assert torch.equal(gen.state_dict()[name], tensor)
    assert not gen.training
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b: b[: len(b) // 2], "truncated or corrupted"),
        (lambda b: b"", "truncated or corrupted"),
        (lambda b: b"PK\x03\x04" + b"\0" * 100, "truncated or corrupted"),
    ],
)
def test_checkpoint_corrupted_gives_one_line(tmp_path: Path, corrupt, message: str) -> None:
    path = ck.save_checkpoint(_tiny_gan_checkpoint(), tmp_path / "c.pt")
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(ck.CheckpointError, match=message) as info:
        ck.load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "payload": Evil()}, path)
    with pytest.raises(ck.CheckpointError, match="cannot be loaded safely"):
        ck.load_checkpoint(path)


def test_checkpoint_refuses_wrong_kind_and_foreign_tokenizer(tmp_path: Path) -> None:
    checkpoint = _tiny_gan_checkpoint()
    path = ck.save_checkpoint(checkpoint, tmp_path / "c.pt")
    with pytest.raises(ck.CheckpointError, match="is a 'gan' checkpoint, expected 'text_encoder'"):
        ck.load_checkpoint(path, kind="text_encoder")
    checkpoint["tokenizer"] = dict(checkpoint["tokenizer"], max_length=100)
    ck.save_checkpoint(checkpoint, path)
    with pytest.raises(ck.CheckpointError, match="tokenizer max_length"):
        ck.load_checkpoint(path)


def test_checkpoint_weights_not_fitting_config_named(tmp_path: Path) -> None:
    checkpoint = _tiny_gan_checkpoint()
    checkpoint["model_configs"]["generator"]["ngf"] = 16
    with pytest.raises(ck.CheckpointError, match="generator weights do not fit its config"):
        ck.build_model(checkpoint, "generator")
