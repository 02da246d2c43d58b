"""The GAN trainer end to end on tiny configs: dry run, exact resume, kill -9 while checkpointing,
NaN stop, the checkpoint contract and one-line errors naming the flag."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import tiny_text_encoder_checkpoint

from train import checkpoint as ck
from train import models
from train.data import schema
from train.gan import loop, losses
from train.gan.trainer import METRIC_NAMES, generated_split

REPO = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    data = schema.write_dataset(
        tmp_path / "tiny.h5",
        {
            "train": generated_split(64, captions=4, seed=0),
            "test": generated_split(16, captions=4, seed=1),
        },
        dataset="tiny",
        image_size=64,
    )
    te = tiny_text_encoder_checkpoint(tmp_path / "te.pt")
    return {"data": data, "te": te, "out": tmp_path / "runs"}


def _args(inputs: dict[str, Path], *extra: str, out: Path | None = None) -> list[str]:
    return [
        "--data", str(inputs["data"]), "--text-encoder", str(inputs["te"]),
        "--out", str(out or inputs["out"]), "--ngf", "8", "--ndf", "8", "--batch-size", "8",
        "--captions-per-sample", "2", "--no-progress", "--log-every", "1",
        "--sample-every", "1000", "--embedding-cache", "off", "--threads", "1", *extra,
    ]  # fmt: skip


def _state(run_dir: Path) -> dict:
    return ck.load_checkpoint(run_dir / "checkpoint.pt", kind="gan")


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert set(a["models"]) == set(b["models"])
    for net in ("generator", "generator_ema", "discriminator"):
        for key, tensor in a["models"].get(net, {}).items():
            assert torch.equal(tensor, b["models"][net][key]), f"{net}.{key} differs"
    for net in ("generator", "discriminator"):
        opt_a, opt_b = a["optimizers"][net]["state"], b["optimizers"][net]["state"]
        for index, entry in opt_a.items():
            for key, value in entry.items():
                assert torch.equal(value, opt_b[index][key]), f"{net} Adam {index}.{key} differs"


def _run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name[:5].isdigit())


def test_gan_upsample_resize_trains_3x3_kernels_and_rebuilds_from_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dry-run", "--out", str(tmp_path), "--no-progress", "--ngf", "8", "--ndf", "8",
            "--batch-size", "8", "--embedding-cache", "off", "--threads", "1",
            "--upsample", "resize", "--ema-decay", "0"]  # fmt: skip
    assert loop.main(argv) == 0
    checkpoint = _state(Path(capsys.readouterr().out.strip()))
    assert checkpoint["model_configs"]["generator"]["upsample"] == "resize"
    assert checkpoint["models"]["generator"]["to_rgb.weight"].shape == (3, 8, 3, 3)
    gen = ck.build_model(checkpoint, "generator")
    assert isinstance(gen.to_rgb, models.ResizeConv)


def test_gan_dry_run_trains_one_step_and_writes_a_complete_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dry-run", "--out", str(tmp_path), "--no-progress", "--ngf", "8", "--ndf", "8",
            "--batch-size", "8", "--embedding-cache", "off", "--threads", "1"]  # fmt: skip
    assert loop.main(argv) == 0
    run = Path(capsys.readouterr().out.strip())
    assert run == tmp_path / "00000-generated-ngf8-ndf8"
    config = json.loads((run / "config.json").read_text())
    assert config["dry_run"] and config["steps"] == 1 and config["run"]["total_steps"] == 1
    checkpoint = _state(run)
    assert checkpoint["step"] == 1 and checkpoint["config"]["data"] is None
    assert set(checkpoint["models"]) == {
        "generator", "generator_ema", "discriminator", "text_encoder"
    }  # fmt: skip
    gen = ck.build_model(checkpoint, "generator")
    assert gen(torch.randn(2, 100), torch.randn(2, 1024)).shape == (2, 3, 64, 64)
    (line,) = (run / "metrics.jsonl").read_text().splitlines()
    logged = json.loads(line)
    assert set(METRIC_NAMES) <= set(logged) and logged["step"] == 1
    assert not any(math.isnan(v) for v in logged.values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert set(METRIC_NAMES) | {"lr", "speed/images_per_s"} <= set(events.Tags()["scalars"])
    assert {"samples/captions_x_noise", "samples/gan_int_strips"} <= set(events.Tags()["images"])
    assert (run / "samples" / "grid-0000001.png").is_file()
    assert (run / "samples" / "interp-0000001.png").is_file()
    # The next run gets the next number.
    assert loop.main(argv) == 0
    assert capsys.readouterr().out.strip().endswith("00001-generated-ngf8-ndf8")


@pytest.mark.parametrize(
    "regularisers",
    [(), ("--r1-gamma", "1", "--r1-every", "2", "--d-augment", "translation,cutout")],
    ids=["default", "r1-augment"],
)
def test_gan_resume_is_bitwise_identical_to_an_uninterrupted_run(
    inputs: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    regularisers: tuple[str, ...],
) -> None:
    # 64 images / batch 8 = 8 steps per epoch: 10 steps cross an epoch and a learning-rate decay.
    # The default keeps the generator's weight average (--ema-decay): it must resume exactly too.
    common = ("--lr-decay-every", "1", "--checkpoint-every", "100", *regularisers)
    cache = ("--embedding-cache", str(tmp_path / "cache"))
    # Measurements must not change training: the straight run makes none, the other measures
    # per-term gradient norms every 2 steps and D's held-out score at every log line.
    quiet = ("--held-out-split", "off", "--grad-norm-every", "0")
    assert (
        loop.main(_args(inputs, *common, *cache, *quiet, "--steps", "10", out=tmp_path / "a")) == 0
    )
    straight = _state(_run_dirs(tmp_path / "a")[0])
    caplog.clear()
    probes = ("--grad-norm-every", "2")
    with caplog.at_level(logging.INFO):
        assert (
            loop.main(_args(inputs, *common, *cache, *probes, "--steps", "5", out=tmp_path / "b"))
            == 0
        )
    assert "from cache" in caplog.text  # the second run reused the first run's embeddings
    run_b = _run_dirs(tmp_path / "b")[0]
    assert _state(run_b)["step"] == 5
    assert loop.main(["--resume", str(run_b), "--steps", "10", "--no-progress"]) == 0
    resumed = _state(run_b)
    _assert_same_training_state(straight, resumed)
    lrs = [json.loads(x)["lr"] for x in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [2e-4] * 8 + [1e-4] * 2  # halved after epoch 1, one line per step
    lines = [json.loads(x) for x in (run_b / "metrics.jsonl").read_text().splitlines()]
    terms = {"grad_norm/G/nonsaturating", "grad_norm/G/gan_int", "grad_norm/G/feature_matching",
             "grad_norm/G/text_image_match"}  # fmt: skip
    assert all(terms <= set(line) for line in lines[1::2])  # steps 2, 4, ...
    assert not any(terms & set(line) for line in lines[0::2])
    assert all(line[t] > 0 for line in lines[1::2] for t in terms)
    assert all(0 < line["D(x)/held_out_right_text"] < 1 for line in lines)
    assert all(line["D/saturated"] in (0.0, 1.0) for line in lines)
    assert lines[-1]["D/saturated_steps_total"] == sum(line["D/saturated"] for line in lines)
    # The GAN checkpoint contract (docs/ARCHITECTURE.md).
    assert set(resumed["models"]) == {
        "generator", "generator_ema", "discriminator", "text_encoder", "image_encoder"
    }  # fmt: skip
    assert resumed["config"]["data"] == str(inputs["data"])
    assert resumed["config"]["text_encoder_checkpoint"] == {
        "path": str(inputs["te"].resolve()),
        "sha256": ck.file_sha256(inputs["te"]),
    }
    for name in ("generator", "generator_ema", "discriminator", "text_encoder", "image_encoder"):
        ck.build_model(resumed, name)
    # The weight average moved away from the trained weights (warm-up: it is not a copy).
    ema, trained = resumed["models"]["generator_ema"], resumed["models"]["generator"]
    assert not torch.equal(ema["to_rgb.weight"], trained["to_rgb.weight"])
    # ... and carries batch-norm statistics of its own weights, not the trained G's (standing
    # statistics, train/gan/ema.py); equal in both runs above, so they are deterministic.
    for key in ("blocks.0.bn.running_mean", "blocks.3.bn.running_var"):
        assert not torch.equal(ema[key], trained[key]), key
    assert isinstance(resumed["rng"]["torch"], torch.Tensor)
    assert resumed["epoch"] == 1 and resumed["batch_in_epoch"] == 2


def test_gan_kill_9_while_checkpointing_leaves_a_loadable_checkpoint_and_resume_is_exact(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    steps = "24"
    reference_run = _args(
        inputs, "--steps", steps, "--checkpoint-every", "100", out=tmp_path / "ref"
    )
    assert loop.main(reference_run) == 0
    reference = _state(_run_dirs(tmp_path / "ref")[0])

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(0)
    command = [sys.executable, "-m", "train", "gan"]
    argv = _args(inputs, "--steps", steps, "--checkpoint-every", "1", out=out)
    last_step = -1
    for _ in range(2):  # kill, resume and kill again
        proc = subprocess.Popen(
            [*command, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 120
            while not (
                out.exists() and any((d / "checkpoint.pt").exists() for d in _run_dirs(out))
            ):
                assert proc.poll() is None, "trainer exited before its first checkpoint"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            # Every step writes a checkpoint: a random moment often falls inside a write.
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        run = _run_dirs(out)[0]
        state = _state(run)  # must load: never a torn file at the checkpoint's name
        assert state["step"] >= last_step
        last_step = state["step"]
        argv = ["--resume", str(run), "--no-progress"]
    assert loop.main(["--resume", str(run), "--no-progress"]) == 0
    assert not list(run.glob(".checkpoint.pt.*.tmp"))  # stale temp files of killed writers removed
    _assert_same_training_state(reference, _state(run))


def test_gan_non_finite_loss_stops_with_one_line_and_keeps_last_good_checkpoint(
    inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = losses.gan_cls_discriminator_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        d = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # step 4 diverges
            nan = torch.tensor(float("nan"))
            return dataclasses.replace(d, fake=d.fake * nan, total=d.total * nan)
        return d

    monkeypatch.setattr(losses, "gan_cls_discriminator_loss", poisoned)
    with caplog.at_level(logging.ERROR, logger="train.gan"):
        assert loop.main(_args(inputs, "--steps", "8", "--checkpoint-every", "2")) == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = record.getMessage()
    run = _run_dirs(inputs["out"])[0]
    assert "step 4" in message and "non-finite gan_cls/fake, gan_cls/total_D" in message
    assert f"last good checkpoint: {run / 'checkpoint.pt'} (step 2)" in message
    assert "\n" not in message
    state = _state(run)
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["models"]["discriminator"].values())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--batch-size", "7"), "--int-fraction 0.5: gives 3.5 interpolated samples"),
        (("--lr", "0"), "--lr 0.0: must be > 0"),
        (("--int-beta", "2"), "--int-beta 2.0: must lie in [0, 1]"),
        (("--label-smoothing", "0.5"), "--label-smoothing 0.5: must lie in [0, 0.5)"),
        (("--text-encoder", "nope.pt"), "--text-encoder nope.pt: no such file"),
        (("--data", "missing.h5"), "missing.h5: dataset file not found"),
        (("--split", "val"), "no split 'val'"),
        (("--device", "tpu"), "--device tpu: must be"),
        (
            ("--captions-per-image", "1"),
            "--captions-per-image 1: must be ≥ --captions-per-sample 2",
        ),
    ],
)
def test_gan_bad_flags_are_one_line_naming_the_flag(
    inputs: dict[str, Path],
    extra: tuple[str, ...],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert loop.main(_args(inputs, "--steps", "1", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("rescue-train gan: ")
    assert not inputs["out"].exists() or not _run_dirs(inputs["out"])  # no work was done


def test_gan_missing_inputs_and_conflicting_resume_flags_are_refused(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert loop.main(["--text-encoder", "random"]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert loop.main(["--data", str(inputs["data"])]) == 2
    assert "--text-encoder is required" in capsys.readouterr().err
    assert loop.main(_args(inputs, "--steps", "1")) == 0
    run = capsys.readouterr().out.strip()
    assert loop.main(["--resume", run, "--ngf", "16"]) == 2
    assert "--ngf 16: differs from the resumed run's 8" in capsys.readouterr().err
    (Path(run) / "checkpoint.pt").write_bytes(b"garbage")
    assert loop.main(["--resume", run]) == 2
    assert "checkpoint.pt: not a torch checkpoint" in capsys.readouterr().err
