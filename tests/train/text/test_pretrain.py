from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_runtime import tokenizer
from train import models
from train.checkpoint import build_model, load_checkpoint
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES
from train.data.phrasing import TERSE_MAX_STATED, read_back, stated_names
from train.data.schema import write_dataset
from train.text import pretrain as text_encoder
from train.text.evaluate import EvalConfig, evaluate
from train.text.joint_embedding import JointEmbedding, encode_captions

TINY_FLAGS = [
    "--conv-channels", "32,32,32", "--rnn-hidden", "32", "--embedding-dim", "32",
    "--image-channels", "8,16,32,32", "--batch-size", "16", "--threads", "1",
]  # fmt: skip


TINY_TRAINING = {
    "steps": 100, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "proxy_weight": 0.0,
    "twin_fraction": 0.0,
}  # fmt: skip


def _tiny_config(**changes: object) -> text_encoder.PretrainConfig:
    config = text_encoder.PretrainConfig(
        steps=8,
        batch_size=16,
        threads=1,
        monitor_every=0,
        log_every=2,
        checkpoint_every=4,
        text_encoder=models.TextEncoderConfig(
            conv_channels=(32, 32, 32), rnn_hidden=32, embedding_dim=32
        ),
        image_encoder=models.ImageEncoderConfig(channels=(8, 16, 32, 32), embedding_dim=32),
    )
    return text_encoder.resolve(dataclasses.replace(config, **changes))


@pytest.fixture(scope="module")
def splits() -> dict:
    return text_encoder.generated_splits(0, {"train": 192, "test": 100})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, splits: dict) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_dataset(path, splits, dataset="rescue-scenes", image_size=64)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, splits: dict) -> tuple[Path, object]:
    """A tiny model trained for 100 steps on 192 rendered scenes (~10 s on 2 cores).

    Class proxies and twins are off: with 192 images of 738 classes they have little to work
    with and slow a 32-channel model down; they are tested in test_text_joint_embedding.py.
    """
    run = tmp_path_factory.mktemp("run")
    config = _tiny_config(**TINY_TRAINING)
    state = text_encoder.train(config, run, splits)
    return run, state


def test_text_encoder_tiny_pretraining_beats_chance(trained: tuple, splits: dict) -> None:
    run, state = trained
    model = JointEmbedding(state.text_encoder, state.image_encoder)
    config = EvalConfig(candidates=20, captions_per_image=4, variants=("clean",))
    trained_value = evaluate(model, {"test": splits["test"]}, config)[0]["value"]
    # The same networks untrained: what the learning bought over chance (5 %).
    untrained = text_encoder.TrainState.fresh(
        text_encoder.resolve_classes(_tiny_config(**TINY_TRAINING), splits["train"])
    )
    fresh = JointEmbedding(untrained.text_encoder, untrained.image_encoder)
    fresh_value = evaluate(fresh, {"test": splits["test"]}, config)[0]["value"]
    assert trained_value > 0.12, trained_value  # 400 queries: chance ± 3σ is 5 ± 3 %
    assert trained_value > fresh_value + 0.08, (trained_value, fresh_value)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    refit = records.pop()  # the read-back heads' refit on the frozen encoder, after step 100
    assert refit["step"] == 100 and "readback_refit_s" in refit and "loss" not in refit
    assert [r["step"] for r in records] == list(range(2, 101, 2))
    # The total rises as the cross-modal term is weighed in (`cross_modal_ramp`); each logged
    # part is unweighted, so the cross-modal one must fall.
    assert records[-1]["loss_infonce"] < records[0]["loss_infonce"]


def test_text_encoder_checkpoint_rebuilds_both_models_from_file_alone(
    trained: tuple, splits: dict
) -> None:
    run, state = trained
    checkpoint = load_checkpoint(run / "checkpoint.pt", kind="text_encoder")
    assert checkpoint["step"] == 100 and checkpoint["config"]["objective"] == "infonce"
    assert set(checkpoint["models"]) == {"text_encoder", "image_encoder", "readback"}
    text = build_model(checkpoint, "text_encoder")
    image = build_model(checkpoint, "image_encoder")
    captions = ["a survivor in red on snow, left", "hiker in blue clothes, lying in mud"]
    torch.testing.assert_close(
        encode_captions(text, captions), encode_captions(state.text_encoder, captions)
    )
    model = JointEmbedding.from_checkpoint(checkpoint)
    original = JointEmbedding(state.text_encoder, state.image_encoder)
    torch.testing.assert_close(
        model.score(splits["test"].images[:4], captions),
        original.score(splits["test"].images[:4], captions),
    )
    assert isinstance(image, models.ImageEncoder) and image.config.normalize
    restored = text_encoder.PretrainConfig.from_dict(checkpoint["config"])
    expected = _tiny_config(**TINY_TRAINING)
    assert restored == text_encoder.resolve_classes(expected, splits["train"])
    assert restored.num_classes == 864 and restored.attribute_sizes == (8, 6, 3, 3, 2)


def test_text_encoder_schedule_is_a_pure_function_of_seed_and_step(splits: dict) -> None:
    def make(twins: float = 0.5) -> text_encoder.BatchSchedule:
        return text_encoder.BatchSchedule(
            splits["train"], 32, seed=3, augment=text_encoder.AugmentConfig(), twin_fraction=twins
        )

    a, b = make(), make()
    batch_a = a.batch(7)
    for step in (0, 20, 7):  # b visits other steps first
        batch_b = b.batch(step)
    assert batch_a.encoded == batch_b.encoded
    assert torch.equal(batch_a.images, batch_b.images)
    assert torch.equal(batch_a.labels, batch_b.labels)
    assert batch_a.attributes is not None and batch_b.attributes is not None
    assert torch.equal(batch_a.attributes, batch_b.attributes)
    assert torch.equal(batch_a.stated, batch_b.stated)
    assert a.off_domain(7, 5) == b.off_domain(7, 5)
    # Without twins one epoch (192 images / 32 per step = 6 steps) visits every image once.
    plain = make(0.0)
    seen = np.concatenate([plain.indices(s) for s in range(6)])
    assert sorted(seen.tolist()) == list(range(192))


def test_text_encoder_cross_modal_weight_holds_then_ramps() -> None:
    weight = text_encoder.cross_modal_weight
    assert [weight(0.25, p) for p in (0.0, 0.1, 0.25, 0.375, 0.5, 0.9)] == [
        0.0, 0.0, 0.0, 0.5, 1.0, 1.0,
    ]  # fmt: skip
    assert weight(0.0, 0.0) == 1.0  # no ramp: the cross-modal term counts from step 0
    assert weight(0.5, 1.0) == 1.0


def test_text_encoder_twins_differ_from_their_anchor_in_exactly_one_attribute() -> None:
    # Every combination of 2 × 3 × 2 attribute values, twice: every twin exists.
    attributes = np.array(
        [(a, b, c) for a in range(2) for b in range(3) for c in range(2)] * 2, dtype=np.int16
    )
    twins = text_encoder.AttributeTwins(attributes)
    rng = np.random.default_rng(0)
    changed = []
    for image in range(len(attributes)):
        for _ in range(20):
            twin = twins.twin(image, rng)
            assert twin is not None
            diff = np.flatnonzero(attributes[twin] != attributes[image])
            assert len(diff) == 1
            changed.append(int(diff[0]))
    # The attribute to change is drawn uniformly, whatever its number of values.
    counts = np.bincount(changed, minlength=3) / len(changed)
    assert np.all(np.abs(counts - 1 / 3) < 0.05), counts
    lonely = text_encoder.AttributeTwins(np.array([[0, 0], [1, 1]], dtype=np.int16))
    assert lonely.twin(0, rng) is None


def test_text_encoder_batches_pair_anchors_with_twins(splits: dict) -> None:
    schedule = text_encoder.BatchSchedule(
        splits["train"], 32, seed=0, augment=text_encoder.AugmentConfig(), twin_fraction=0.5
    )
    assert (schedule.anchors, schedule.twins) == (16, 16)
    attributes = splits["train"].attributes
    idx = schedule.indices(3)
    anchors, twins = idx[:16], idx[16:]
    differ = (attributes[anchors] != attributes[twins]).sum(1)
    # 192 images of 738 classes: an anchor lacks a twin (and gets a random image) only when
    # none of its 17 one-attribute neighbours was rendered, which is rare.
    assert np.mean(differ == 1) > 0.9, differ


def test_text_encoder_terse_commands_swap_in_about_their_own_image(splits: dict) -> None:
    def make(share: float) -> text_encoder.BatchSchedule:
        return text_encoder.BatchSchedule(
            splits["train"], 32, seed=5, augment=text_encoder.AugmentConfig(),
            twin_fraction=0.5, terse_share=share,
        )  # fmt: skip

    # Strength 0: no typos, so the read-back below sees the phrases as drawn.
    plain, none, every = make(0.0).batch(4, 0.0), make(0.0).batch(4, 0.0), make(1.0).batch(4, 0.0)
    assert plain.encoded == none.encoded and torch.equal(plain.stated, none.stated)
    # Same images either way: only the captions (and what they state) change.
    assert torch.equal(plain.images, every.images) and torch.equal(plain.labels, every.labels)
    assert every.attributes is not None
    values = {n: ATTRIBUTE_VALUES[n] for n in ATTRIBUTE_NAMES}
    for encoded, mask, row in zip(every.encoded, every.stated, every.attributes, strict=True):
        text = tokenizer.decode(encoded.ids)
        stated = stated_names(int(mask))
        assert 1 <= len(stated) <= TERSE_MAX_STATED, text
        wanted = {n: values[n][int(row[i])] for i, n in enumerate(ATTRIBUTE_NAMES) if n in stated}
        assert read_back(text) == wanted, text
    some = make(0.3).batch(4, 0.0)
    swapped = sum(a != b for a, b in zip(some.encoded, plain.encoded, strict=True))
    assert 0 < swapped < 32
    with pytest.raises(text_encoder.ConfigError, match="terse_share"):
        _tiny_config(terse_share=1.5)


def test_text_encoder_resume_continues_exactly(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = [*TINY_FLAGS, "--data", str(dataset), "--steps", "6", "--no-eval"]
    flags += ["--monitor-every", "0", "--checkpoint-every", "100"]
    assert text_encoder.main([*flags, "--out", str(tmp_path / "straight")]) == 0

    # Kill the second run (SIGTERM, as `kill` would) while it prepares step 4.
    original = text_encoder.BatchSchedule.batch

    def interrupt_at_4(self: text_encoder.BatchSchedule, step: int, strength: float) -> object:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, strength)

    monkeypatch.setattr(text_encoder.BatchSchedule, "batch", interrupt_at_4)
    assert text_encoder.main([*flags, "--out", str(tmp_path / "split")]) == 130
    run = tmp_path / "split" / "00000"
    # The step under way when the signal came finishes; the checkpoint is at the boundary.
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 5
    monkeypatch.setattr(text_encoder.BatchSchedule, "batch", original)
    assert text_encoder.main(["--resume", "--out", str(tmp_path / "split")]) == 0

    a = load_checkpoint(tmp_path / "straight" / "00000" / "checkpoint.pt")
    b = load_checkpoint(run / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    for name in ("text_encoder", "image_encoder", "readback"):  # the refit too: same encoder
        for key, value in a["models"][name].items():
            torch.testing.assert_close(b["models"][name][key], value, atol=0, rtol=0)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    refits = [r["step"] for r in records if "readback_refit_s" in r]
    steps = [r["step"] for r in records if "readback_refit_s" not in r]
    assert steps == [6] and refits == [6]  # logged every 10 steps and at the end; nothing twice


def test_text_encoder_dry_run_writes_a_complete_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert text_encoder.main([*TINY_FLAGS, "--dry-run", "--out", str(tmp_path)]) == 0
    run = tmp_path / "00000"
    config = json.loads((run / "config.json").read_text())
    checkpoint = load_checkpoint(run / "checkpoint.pt", kind="text_encoder")
    saved = text_encoder.PretrainConfig.from_dict(checkpoint["config"])
    assert saved == text_encoder.PretrainConfig.from_dict(config)  # resolved once, saved twice
    assert saved.dry_run and checkpoint["step"] == 1
    assert config["text_encoder"]["conv_channels"] == [32, 32, 32]
    assert checkpoint["model_configs"]["text_encoder"]["normalize"] is True
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 1
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    out = capsys.readouterr().out
    assert "clean" in out  # the evaluation table
    assert "off_domain_eval" in out and "stated right" in out  # and the read-back
    assert text_encoder.main([*TINY_FLAGS, "--dry-run", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "00001" / "checkpoint.pt").is_file()  # numbered, never overwritten


def test_text_encoder_minutes_cap_stops_the_run(tmp_path: Path, dataset: Path) -> None:
    flags = [*TINY_FLAGS, "--data", str(dataset), "--out", str(tmp_path), "--no-eval"]
    assert text_encoder.main([*flags, "--steps", "1000", "--minutes", "0.0001"]) == 0
    checkpoint = load_checkpoint(tmp_path / "00000" / "checkpoint.pt")
    assert 1 <= checkpoint["step"] < 1000


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--data", "{tmp}/missing.h5"], "missing.h5: dataset file not found"),
        (["--data", "{tmp}/not.h5"], "not a readable HDF5 file"),
        (["--data", "{data}", "--steps", "0"], "--steps 0: must be ≥ 1"),
        (["--data", "{data}", "--batch-size", "1"], "--batch-size 1: must be ≥ 2"),
        (["--data", "{data}", "--minutes", "-1"], "--minutes -1.0: must be > 0"),
        (["--data", "{data}", "--lr", "0"], "--lr 0.0: must be > 0"),
        (["--data", "{data}", "--batch-size", "1000"], "--batch-size 1000 exceeds the 192"),
        (["--data", "{data}", "--objective", "triplet"], "argument --objective: invalid choice"),
        (
            ["--data", "{data}", "--cross-modal-ramp", "1.5"],
            "--cross-modal-ramp 1.5: must lie in [0, 1]",
        ),
        (
            ["--data", "{data}", "--readback-detach", "--readback-attach"],
            "--readback-detach and --readback-attach exclude each other",
        ),
        (["--resume"], "--resume: no run folder with a checkpoint.pt"),
        (["--resume", "{tmp}/nowhere"], "--resume: {tmp}/nowhere not found"),
    ],
)
def test_text_encoder_bad_input_gives_one_line(
    tmp_path: Path,
    dataset: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    (tmp_path / "not.h5").write_bytes(b"certainly not HDF5")
    fill = {"{tmp}": str(tmp_path), "{data}": str(dataset)}

    def sub(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    argv = [*TINY_FLAGS, "--out", str(tmp_path / "runs"), *map(sub, flags)]
    try:
        rc = text_encoder.main(argv)
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and sub(message) in err, err
    assert not list((tmp_path / "runs").glob("*/checkpoint.pt"))


def test_text_encoder_resume_refuses_a_changed_flag(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [*TINY_FLAGS, "--data", str(dataset), "--out", str(tmp_path), "--no-eval"]
    assert text_encoder.main([*flags, "--steps", "2", "--monitor-every", "0"]) == 0
    capsys.readouterr()
    assert text_encoder.main(["--resume", "--out", str(tmp_path), "--lr", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("text-encoder: --lr: a resumed run keeps its config")
    assert text_encoder.main(["--resume", "--out", str(tmp_path), "--no-lead-space"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("text-encoder: --no-lead-space: a resumed run keeps its config"), err
    # Repeating the saved value, or moving the data, is fine; the run is already complete.
    assert text_encoder.main(["--resume", str(tmp_path / "00000"), "--steps", "2"]) == 0


def test_text_encoder_no_lead_space_flag_sets_the_model_config() -> None:
    assert text_encoder.PretrainConfig().text_encoder.lead_space
    flags = text_encoder.parse_flags(["--no-lead-space"])
    config = text_encoder._apply_flags(text_encoder.PretrainConfig(), flags)
    assert not config.text_encoder.lead_space and config.text_encoder.lead_pad == 18
