"""The attribute oracle: its honesty checks (real-render accuracy, near chance on noise), the
refusal of a dishonest oracle, and the training command end to end on real renders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from train import checkpoint as ck
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES
from train.data.schema import read_split, write_dataset
from train.data.synth import SynthConfig, synthesize
from train.quality import oracle as om

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real rescue-scenes renders: 480 train, 60 test, 60 test_unseen (≈ 3 s)."""
    path = tmp_path_factory.mktemp("scenes") / "scenes.h5"
    synthesize(SynthConfig(out=path, train=480, test=60, test_unseen=60, workers=1))
    return path


def _oracle(seed: int = 0) -> om.AttributeOracle:
    torch.manual_seed(seed)
    return om.AttributeOracle(om.OracleConfig()).eval()


def _save(oracle: om.AttributeOracle, path: Path) -> Path:
    report = om.HonestyReport(real={}, noise={})
    checkpoint = om.oracle_checkpoint(
        oracle, om.OracleTrainConfig(oracle=oracle.config), dict(ATTRIBUTE_VALUES), report, {}
    )
    return ck.save_checkpoint(checkpoint, path)


def test_oracle_honesty_fails_an_untrained_oracle_on_real_renders(scenes: Path) -> None:
    real = {"test": read_split(scenes, "test")}
    report = om.honesty_report(_oracle(), real, noise_count=60)
    assert not report.passed
    # Each attribute below 99 % is named, with the split and the measured accuracy.
    failing = [f for f in report.failures if f.startswith("real test ")]
    assert failing and all("< 99 %" in f for f in failing)
    assert set(report.real["test"]) == set(ATTRIBUTE_NAMES)


def test_oracle_honesty_noise_check_passes_an_uninformed_oracle(scenes: Path) -> None:
    # With the real-accuracy bar at 0, only the noise checks remain: a freshly initialised
    # oracle outputs near-uniform probabilities, i.e. it claims nothing about noise.
    real = {"test": read_split(scenes, "test")}
    report = om.honesty_report(_oracle(), real, min_accuracy=0.0, noise_count=120)
    assert report.passed, report.failures
    for per in report.noise.values():
        for name, row in per.items():
            assert abs(row["accuracy"] - row["chance"]) <= row["tolerance"], name
            assert row["confidence"] <= row["confidence_limit"]


def test_oracle_honesty_noise_check_catches_a_confident_oracle(scenes: Path) -> None:
    # Scaling the heads makes every prediction near-certain: the oracle now "sees" a colour,
    # a terrain, ... in static. The check must say so for every attribute.
    oracle = _oracle()
    with torch.no_grad():
        for head in oracle.heads:
            head.weight.mul_(200.0)
            head.bias.mul_(200.0)
    real = {"test": read_split(scenes, "test")}
    report = om.honesty_report(oracle, real, min_accuracy=0.0, noise_count=60)
    assert not report.passed
    confident = [f for f in report.failures if "mean confidence" in f]
    assert len(confident) == len(om.NOISE_FAMILIES_CHECK) * len(ATTRIBUTE_NAMES)


def test_oracle_noise_families_show_no_person_and_are_seeded() -> None:
    for family in om.NOISE_FAMILIES_CHECK:
        a = om.noise_images(family, 4, seed=3)
        assert a.shape == (4, 64, 64, 3) and a.dtype == np.uint8
        assert np.array_equal(a, om.noise_images(family, 4, seed=3))
        assert not np.array_equal(a, om.noise_images(family, 4, seed=4))
        assert a.std() > 20  # not a flat image


def test_oracle_load_refuses_a_dishonest_oracle_unless_forced(
    scenes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _save(_oracle(), tmp_path / "oracle.pt")
    with pytest.raises(om.OracleError, match=r"fails its honesty checks.*--force-oracle"):
        om.load_oracle(path, scenes, noise_count=60)
    with caplog.at_level(logging.WARNING, logger="train.quality.oracle"):
        loaded = om.load_oracle(path, scenes, force=True, noise_count=60)
    assert not loaded.honesty.passed
    assert "UNTRUSTED ORACLE" in caplog.text
    # Checked on every split the data has (both real-render splits).
    assert set(loaded.honesty.real) == {"test", "test_unseen"}


def test_oracle_load_refuses_another_vocabulary(scenes: Path, tmp_path: Path) -> None:
    oracle = _oracle()
    values = {**ATTRIBUTE_VALUES, "colour": ("red", "green", "blue", "x", "y", "z", "w", "v")}
    checkpoint = om.oracle_checkpoint(
        oracle, om.OracleTrainConfig(), values, om.HonestyReport({}, {}), {}
    )
    path = ck.save_checkpoint(checkpoint, tmp_path / "other.pt")
    with pytest.raises(om.OracleError, match="values of 'colour'"):
        om.load_oracle(path, scenes, noise_count=60)


def test_oracle_cli_trains_checks_and_saves(
    scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    code = om.main(
        [
            "--data",
            str(scenes),
            "--out",
            str(out),
            "--epochs",
            "4",
            "--batch-size",
            "32",
            "--threads",
            "1",
            "--noise-images",
            "60",
        ]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 480 images are too few for 99 % on every attribute: the command says so by its exit code.
    assert code == (0 if result["passed"] else 1)
    checkpoint = ck.load_checkpoint(result["checkpoint"], kind="oracle")
    assert checkpoint["honesty"]["passed"] == result["passed"]
    run = Path(result["checkpoint"]).parent
    assert (run / "config.json").is_file() and (run / om.HONESTY_FILE).is_file()
    honesty = json.loads((run / om.HONESTY_FILE).read_text().splitlines()[0])
    # It learned from the renders: colour (the easiest attribute) is far above chance (12.5 %).
    assert honesty["real"]["test"]["colour"] > 0.5
    rebuilt = om.build_oracle(checkpoint, "oracle")
    pred = om.predict(rebuilt, read_split(scenes, "test").images[:8])
    assert pred.features.shape == (8, om.OracleConfig().feature_dim)


def test_oracle_cli_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert om.main(["--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.h5" in err
    plain = write_dataset(
        tmp_path / "plain.h5",
        {"train": read_split_like(), "test": read_split_like()},
        dataset="plain",
        image_size=64,
    )
    assert om.main(["--data", str(plain), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data" in err and "attribute" in err
    assert om.main(["--data", str(plain), "--epochs", "0"]) == 2
    assert "--epochs 0: must be ≥ 1" in capsys.readouterr().err
    assert om.main(["--data", str(plain), "--blur", "-1"]) == 2
    assert "--blur -1.0: must be ≥ 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        om.main(["--data", str(plain), "--design", "resnet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--design" in err and "'judge'" in err


def read_split_like():  # type: ignore[no-untyped-def]
    """A 4-image split without attributes."""
    from train.data.schema import SplitData

    return SplitData(
        images=np.zeros((4, 64, 64, 3), np.uint8),
        captions=[["a thing"]] * 4,
        class_ids=np.arange(4),
    )


# --------------------------------------------------------------------------------------------
# The second judge (design "judge"): same honesty machinery, another network
# --------------------------------------------------------------------------------------------


def _judge(seed: int = 0) -> om.AttributeJudge:
    torch.manual_seed(seed)
    return om.build_network(om.OracleConfig(design="judge", channels=(16, 32, 32))).eval()


def test_judge_is_another_design_with_the_oracle_interface() -> None:
    judge, oracle = _judge(), _oracle()
    assert isinstance(judge, om.AttributeJudge) and isinstance(oracle, om.AttributeOracle)
    assert judge.config.independent_of_image_encoder
    assert not oracle.config.independent_of_image_encoder
    # No batch norm, no 4×4 convolutions: nothing of the oracle's (and ImageEncoder's) body.
    kinds = {type(m) for m in judge.modules()}
    assert torch.nn.BatchNorm2d not in kinds and torch.nn.GroupNorm in kinds
    assert all(m.kernel_size != (4, 4) for m in judge.modules() if isinstance(m, torch.nn.Conv2d))
    pred = om.predict(judge, np.zeros((3, 64, 64, 3), np.uint8))
    assert pred.labels.shape == (3, len(ATTRIBUTE_NAMES)) and pred.features.shape == (3, 128)


def test_judge_fixed_low_pass_removes_single_pixel_speckle() -> None:
    # A checkerboard (the finest speckle there is) barely moves the judge's features, while the
    # oracle, with no low-pass, is moved far more by the same pattern.
    flat = np.full((1, 64, 64, 3), 128, np.uint8)
    checker = (np.indices((64, 64)).sum(0) % 2 * 60 - 30)[None, :, :, None]
    speckled = (flat.astype(int) + checker).astype(np.uint8)
    judge, oracle = _judge(), _oracle()

    def moved(model: om.AttributeNetwork) -> float:
        a, b = om.predict(model, flat).features, om.predict(model, speckled).features
        return float(np.abs(a - b).sum() / (np.abs(a).sum() + 1e-9))

    assert moved(judge) < 0.1 * moved(oracle)


def test_judge_honesty_fails_an_untrained_judge_on_real_renders(scenes: Path) -> None:
    report = om.honesty_report(_judge(), {"test": read_split(scenes, "test")}, noise_count=60)
    assert not report.passed
    assert any(f.startswith("real test ") and "< 99 %" in f for f in report.failures)


def test_old_oracle_checkpoint_without_design_loads_as_the_cnn(tmp_path: Path) -> None:
    # Checkpoints written before the judge existed have no "design" field.
    oracle = _oracle()
    checkpoint = om.oracle_checkpoint(
        oracle, om.OracleTrainConfig(), dict(ATTRIBUTE_VALUES), om.HonestyReport({}, {}), {}
    )
    del checkpoint["model_configs"]["oracle"]["design"]
    rebuilt = om.build_oracle(
        ck.load_checkpoint(ck.save_checkpoint(checkpoint, tmp_path / "o.pt")), "o"
    )
    assert isinstance(rebuilt, om.AttributeOracle) and rebuilt.config.design == "cnn"


def test_training_blur_is_per_image_and_label_preserving() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    same = om.blur(x, torch.zeros(4))
    assert torch.allclose(same, x, atol=1e-4)  # σ = 0: a delta kernel
    blurred = om.blur(x, torch.tensor([0.0, 0.5, 1.0, 2.0]))
    change = (blurred - x).abs().mean((1, 2, 3))
    assert change[0] < 1e-4 < change[1] < change[2] < change[3]
    out = om._augment(x, 2, gen, max_blur=1.0, pixel_noise=0.15)
    assert out.shape == x.shape and out.abs().max() <= 1


def test_judge_cli_trains_a_judge_that_is_honest_on_noise(
    scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = om.main(
        [
            "--design",
            "judge",
            "--data",
            str(scenes),
            "--out",
            str(tmp_path / "runs"),
            "--epochs",
            "4",
            "--batch-size",
            "32",
            "--threads",
            "1",
            "--noise-images",
            "60",
        ]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == (0 if result["passed"] else 1)
    checkpoint = ck.load_checkpoint(result["checkpoint"], kind="oracle")
    assert checkpoint["model_configs"]["oracle"]["design"] == "judge"
    assert checkpoint["config"]["blur"] == om.JUDGE_BLUR
    assert checkpoint["config"]["pixel_noise"] == om.JUDGE_PIXEL_NOISE
    honesty = checkpoint["honesty"]
    # It learned from 480 renders in 60 steps (colour > 2× chance, 12.5 %), and outlier
    # exposure keeps it near uniform on every noise family: no noise failure among its failures.
    assert honesty["real"]["test"]["colour"] > 0.25
    assert not [f for f in honesty["failures"] if f.startswith("noise")], honesty["failures"]
    assert isinstance(om.build_oracle(checkpoint, "judge"), om.AttributeJudge)
