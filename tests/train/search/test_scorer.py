"""The frame scorer on tiny tensors: the image encoder as a convolution, folding for export, box
coding, cell assignment, one training step and the dry run (train/search)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_runtime.search import Detection
from train import checkpoint as ck
from train.data.attributes import Attributes
from train.data.search_scenes import render_split
from train.models import CharCnnRnn, ImageEncoder, ImageEncoderConfig, TextEncoderConfig
from train.search.scorer import FrameScorer, ScorerConfig, decode_boxes, encode_targets
from train.search.train import (
    SearchTrainConfig,
    _near_miss,
    assign,
    judge,
    load_scorer,
    losses,
    main,
)

CHANNELS = (4, 4, 8, 8)


def _scorer(frame_size: int = 128, embedding_dim: int = 16) -> tuple[FrameScorer, ImageEncoder]:
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(channels=CHANNELS, embedding_dim=embedding_dim))
    for module in encoder.features:
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics for folding
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    config = ScorerConfig(
        channels=CHANNELS, embedding_dim=embedding_dim, joint_dim=8, frame_size=frame_size
    )
    return FrameScorer.from_image_encoder(encoder.eval(), config).eval(), encoder.eval()


def test_scorer_window_on_a_64_frame_is_the_image_encoder() -> None:
    scorer, encoder = _scorer()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        windows = scorer.window_embeddings(image)  # (2, E, 1, 1)
        expected = encoder(image)
    assert windows.shape == (2, 16, 1, 1)
    torch.testing.assert_close(windows[:, :, 0, 0], expected, rtol=1e-4, atol=1e-5)


def test_scorer_maps_have_the_configured_cells() -> None:
    scorer, _ = _scorer(frame_size=128)
    with torch.no_grad():
        out = scorer(torch.zeros(3, 3, 128, 128), torch.randn(3, 16))
    assert [tuple(t.shape) for t in out] == [(3, 5, 5), (3, 4, 5, 5), (3, 1, 1), (3, 4, 1, 1)]
    assert scorer.config.cells() == [(5, 5), (1, 1)]
    assert all(((t >= 0) & (t <= 1)).all() for t in out[0::2])


def test_scorer_fold_gives_the_same_scores_and_boxes() -> None:
    scorer, _ = _scorer()
    with torch.no_grad():
        scorer.box.weight.normal_(0, 0.05)  # zero at init: make the box head do something
    frames, text = torch.rand(2, 3, 128, 128) * 2 - 1, torch.randn(2, 16)
    with torch.no_grad():
        want = scorer(frames, text)
        got = scorer.fold()(frames, text)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_scorer_box_coding_is_an_inverse_pair() -> None:
    box = torch.tensor([30.0, 40.0, 52.0, 90.0])
    for factor in (1, 2):
        targets = encode_targets(box, factor, 16, 3, 4)  # (4, 3, 4)
        decoded = decode_boxes(targets[None], factor, 16)[0]  # (4, 3, 4)
        torch.testing.assert_close(decoded, box[:, None, None].expand(4, 3, 4), atol=1e-3, rtol=0)


def test_scorer_config_refuses_frames_that_do_not_tile() -> None:
    with pytest.raises(ValueError, match="scale"):
        ScorerConfig(channels=CHANNELS, frame_size=100)
    with pytest.raises(ValueError, match="stride"):
        ScorerConfig(channels=(4, 4, 4))


def test_assign_picks_cells_near_the_centre_at_the_fitting_scale() -> None:
    config = ScorerConfig(channels=CHANNELS, frame_size=256)
    small = np.array([[100.0, 108.0, 120.0, 132.0]])  # 24 px tall: scale 1 only
    big = np.array([[60.0, 40.0, 160.0, 150.0]])  # 110 px: scale 1/2 only
    (masks,) = assign(small, config, 256)
    assert masks[0].any() and not masks[1].any()
    i, j = np.argwhere(masks[0])[0]
    assert abs(j * 16 + 32 - 110) <= 12.8 and abs(i * 16 + 32 - 120) <= 12.8
    (masks,) = assign(big, config, 256)
    assert masks[1].any() and not masks[0].any()
    corner = np.array([[0.0, 0.0, 12.0, 30.0]])  # no window centre near: the nearest cell
    (masks,) = assign(corner, config, 256)
    assert sum(int(m.sum()) for m in masks) == 1 and masks[0][0, 0]


def test_losses_are_finite_and_train_the_scorer() -> None:
    scorer, _ = _scorer(frame_size=128)
    scorer.train()
    frames = torch.rand(2, 3, 128, 128) * 2 - 1
    text = torch.randn(2, 16)
    targets = [(np.array([[40.0, 30.0, 60.0, 70.0]], np.float32), 0), (np.zeros((0, 4)), -1)]
    config = SearchTrainConfig()
    optimizer = torch.optim.Adam(scorer.parameters(), 1e-2)
    first = None
    for _ in range(15):
        terms = losses(scorer, frames, text, targets, config)
        assert all(torch.isfinite(v) for v in terms.values())
        first = first if first is not None else terms["total"].item()
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
    assert terms["total"].item() < first


def test_judge_counts_top1_and_absent() -> None:
    split = render_split("test", 2, 0, 128)
    split.query_person[:] = [0, -1]
    split.people_counts[0] = max(int(split.people_counts[0]), 1)
    x0, y0, x1, y1 = (float(v) for v in split.boxes[0, 0])
    dets = [[Detection(x0, y0, x1, y1, 0.9)], [Detection(0, 0, 5, 5, 0.2)]]
    result = judge(split, dets, threshold=0.5)
    assert result["top1_iou50"] == 1.0 and result["absent_rejected"] == 1.0
    result = judge(split, dets, threshold=0.1)
    assert result["absent_rejected"] == 0.0


def test_search_scorer_dry_run_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    text = TextEncoderConfig(conv_channels=(16, 16, 16), rnn_hidden=16, embedding_dim=16)
    torch.manual_seed(0)
    encoder = CharCnnRnn(text)
    image = ImageEncoder(ImageEncoderConfig(channels=CHANNELS, embedding_dim=16))
    checkpoint = ck.new_checkpoint(
        "text_encoder",
        models={"text_encoder": encoder.state_dict(), "image_encoder": image.state_dict()},
        model_configs={
            "text_encoder": dataclasses.asdict(text),
            "image_encoder": dataclasses.asdict(image.config),
        },
    )
    path = ck.save_checkpoint(checkpoint, tmp_path / "te.pt")
    out = tmp_path / "run"
    assert main(["--text-encoder", str(path), "--out", str(out), "--dry-run"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["threshold"] < 1 and "test_unseen" in metrics
    scorer, text_encoder, record = load_scorer(out / "checkpoint.pt")
    assert scorer.config.frame_size == 128 and record["threshold"] == metrics["threshold"]
    assert text_encoder.config.embedding_dim == 16
    # A second round starts from the first run's scorer; another text encoder is refused.
    again = tmp_path / "run2"
    args = ["--text-encoder", str(path), "--out", str(again), "--dry-run"]
    assert main([*args, "--init", str(out / "checkpoint.pt")]) == 0
    torch.manual_seed(1)
    checkpoint["models"]["text_encoder"] = CharCnnRnn(text).state_dict()
    other = ck.save_checkpoint(checkpoint, tmp_path / "te2.pt")
    args = ["--text-encoder", str(other), "--out", str(tmp_path / "run3"), "--dry-run"]
    assert main([*args, "--init", str(out / "checkpoint.pt")]) == 2


def test_search_scorer_refuses_a_missing_checkpoint(tmp_path: Path, capsys) -> None:
    assert main(["--text-encoder", str(tmp_path / "none.pt"), "--dry-run"]) == 2
    assert "not found" in capsys.readouterr().err


def test_near_miss_changes_one_attribute_and_matches_nobody() -> None:
    rng = np.random.default_rng(0)
    person = Attributes("red", "mud", "lying", "left", "yes")
    others = {("red", "lying", "yes"), ("red", "sitting", "yes"), ("blue", "lying", "yes")}
    for _ in range(50):
        miss = _near_miss(person, others, rng)
        assert (miss.colour, miss.pose, miss.helmet) not in others
        changed = [
            n for n in ("colour", "pose", "helmet") if getattr(miss, n) != getattr(person, n)
        ]
        assert len(changed) == 1 and miss.terrain == "mud"


def test_losses_with_a_near_miss_are_finite() -> None:
    scorer, _ = _scorer(frame_size=128)
    frames = torch.rand(2, 3, 128, 128) * 2 - 1
    boxes = np.array([[40.0, 30.0, 60.0, 70.0]], np.float32)
    targets = [(boxes, 0, 0), (np.zeros((0, 4)), -1, -1)]
    terms = losses(
        scorer,
        frames,
        torch.randn(2, 16),
        targets,
        SearchTrainConfig(),
        miss_text=torch.randn(2, 16),
    )
    assert torch.isfinite(terms["near_miss"]) and terms["near_miss"] > 0


def test_bf16_autocast_runs_the_trunk_in_bf16_and_the_losses_in_fp32() -> None:
    """`--amp bf16`: the same terms as fp32 within bf16's precision, fp32 loss values, and a
    gradient that reaches the trunk's fp32 weights."""
    scorer, _ = _scorer(frame_size=128)
    scorer.train()
    frames = torch.rand(2, 3, 128, 128) * 2 - 1
    text = torch.randn(2, 16)
    targets = [(np.array([[40.0, 30.0, 60.0, 70.0]], np.float32), 0), (np.zeros((0, 4)), -1)]
    plain = losses(scorer, frames, text, targets, SearchTrainConfig(amp="off"))
    seen: list[torch.dtype] = []
    first_conv = next(m for m in scorer.trunk if isinstance(m, torch.nn.Conv2d))
    hook = first_conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    mixed = losses(scorer, frames, text, targets, SearchTrainConfig(amp="bf16"))
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(v.dtype == torch.float32 for v in mixed.values())
    for name, value in plain.items():
        assert mixed[name].item() == pytest.approx(value.item(), rel=0.05, abs=0.02), name
    mixed["total"].backward()
    assert first_conv.weight.dtype == torch.float32
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("native", "asked", "resolved"), [
    (True, "auto", "bf16"), (False, "auto", "off"), (True, "off", "off"), (False, "bf16", "bf16"),
])  # fmt: skip
def test_amp_auto_uses_bf16_only_where_the_cpu_computes_it(
    monkeypatch: pytest.MonkeyPatch, native: bool, asked: str, resolved: str
) -> None:
    import train.search.train as search_train

    monkeypatch.setattr(search_train, "cpu_computes_bf16", lambda: native)
    assert search_train.resolve_amp(asked) == resolved
