"""`python -m train fit-readback`: new heads on a frozen encoder, nothing else changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rescue_files import write_rescue_scenes

from export.tiny import tiny_checkpoint
from train.checkpoint import build_model, load_checkpoint, save_checkpoint
from train.models import ReadBack
from train.text import pretrain as text_encoder
from train.text import refit


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    splits = text_encoder.generated_splits(1, {"train": 40}, partial_fraction=0.5)
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    return write_rescue_scenes(path, splits)


@pytest.fixture(scope="module")
def gan_checkpoint(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    """A GAN checkpoint whose heads share one hidden layer (saved before the refit)."""
    path = tmp_path_factory.mktemp("ck") / "gan.pt"
    save_checkpoint(tiny_checkpoint(data=dataset, readback=True), path)
    return path


def test_refit_replaces_only_the_heads(tmp_path: Path, gan_checkpoint: Path) -> None:
    before = gan_checkpoint.read_bytes()
    out = tmp_path / "refit.pt"
    code = refit.main(["--checkpoint", str(gan_checkpoint), "--out", str(out), "--steps", "50"])
    assert code == 0
    assert gan_checkpoint.read_bytes() == before  # the input is never touched
    old, new = load_checkpoint(gan_checkpoint), load_checkpoint(out, kind="gan")
    assert set(new["models"]) == set(old["models"])
    for name in old["models"]:
        if name == "readback":
            continue
        for key, value in old["models"][name].items():
            assert torch.equal(value, new["models"][name][key]), (name, key)
    heads = build_model(new, "readback")
    assert isinstance(heads, ReadBack) and heads.config.linear_attributes
    assert heads.config.hidden == old["model_configs"]["readback"]["hidden"]
    again = tmp_path / "again.pt"
    refit.main(["--checkpoint", str(gan_checkpoint), "--out", str(again), "--steps", "50"])
    for key, value in load_checkpoint(again)["models"]["readback"].items():
        assert torch.equal(value, new["models"]["readback"][key])  # deterministic


def test_bad_input_is_one_line(
    tmp_path: Path, gan_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out.pt")
    assert refit.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", out]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err
    no_data = tiny_checkpoint(readback=True)
    save_checkpoint(no_data, tmp_path / "nodata.pt")
    assert refit.main(["--checkpoint", str(tmp_path / "nodata.pt"), "--out", out]) == 2
    assert "--data is required" in capsys.readouterr().err
    other = dict(no_data, kind="oracle")
    save_checkpoint(other, tmp_path / "oracle.pt")
    assert refit.main(["--checkpoint", str(tmp_path / "oracle.pt"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "'oracle' checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not Path(out).exists()
