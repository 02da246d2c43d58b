"""The generator's weight average: decay warm-up, the update, and that evaluation and export
take the average from the checkpoint (old checkpoints without one still load)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from export import pipeline
from train import checkpoint as ck
from train import models
from train.gan.config import GanTrainConfig, config_from_checkpoint
from train.gan.ema import ema_decay_at, standing_statistics, update_ema
from train.quality.evaluate import CheckpointSource

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = models.GANConfig(embedding_dim=16, ngf=4, ndf=4)


def test_ema_decay_warms_up_then_holds() -> None:
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)  # first update: mostly the new weights
    assert ema_decay_at(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay_at(10**6, 0.999) == 0.999
    values = [ema_decay_at(t, 0.99) for t in range(2000)]
    assert values == sorted(values) and max(values) == 0.99


def test_update_ema_averages_parameters_and_copies_buffers() -> None:
    torch.manual_seed(0)
    model, average = models.Generator(TINY), models.Generator(TINY)
    before = copy.deepcopy(average.state_dict())
    model.blocks[0].bn.running_mean.fill_(3.0)
    update_ema(average, model, 0.75)
    for name, p in average.named_parameters():
        expected = 0.75 * before[name] + 0.25 * dict(model.named_parameters())[name]
        assert torch.allclose(p, expected, atol=1e-7), name
    assert torch.equal(average.blocks[0].bn.running_mean, model.blocks[0].bn.running_mean)
    # Decay 0 is a copy; the model is never modified.
    snapshot = copy.deepcopy(model.state_dict())
    update_ema(average, model, 0.0)
    for name, value in model.state_dict().items():
        assert torch.equal(average.state_dict()[name], value)
        assert torch.equal(snapshot[name], value)


def test_standing_statistics_are_the_average_of_the_passes_and_touch_nothing_else() -> None:
    torch.manual_seed(2)
    g = models.Generator(TINY).eval()
    g.blocks[0].bn.running_mean.fill_(5.0)  # what copying the trained G's statistics left there
    weights = copy.deepcopy({k: v for k, v in g.named_parameters()})
    inputs = [
        (torch.randn(6, TINY.noise_dim), torch.randn(6, TINY.embedding_dim)) for _ in range(3)
    ]
    seen: list[torch.Tensor] = []  # the first BN layer's input in each pass: (6, C, 4, 4)
    hook = g.blocks[0].bn.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    standing_statistics(g, lambda i: inputs[i], 3)
    hook.remove()
    assert len(seen) == 3
    per_pass = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen])  # (3, C)
    assert torch.allclose(g.blocks[0].bn.running_mean, per_pass.mean(0), atol=1e-6)
    assert int(g.blocks[0].bn.num_batches_tracked) == 3
    assert not g.training and g.blocks[0].bn.momentum == 0.1  # mode and momentum restored
    for name, p in g.named_parameters():
        assert torch.equal(p, weights[name]), name
    # Deterministic: the same passes give the same statistics again.
    first = copy.deepcopy(g.state_dict())
    standing_statistics(g, lambda i: inputs[i], 3)
    for name, value in g.state_dict().items():
        assert torch.equal(value, first[name]), name


def _gan_checkpoint(with_ema: bool) -> dict:
    torch.manual_seed(1)
    g, g_ema = models.Generator(TINY), models.Generator(TINY)
    text = models.CharCnnRnn(
        models.TextEncoderConfig(conv_channels=(8, 8, 8), rnn_hidden=8, embedding_dim=16)
    )
    config = dataclasses.asdict(TINY)
    states = {"generator": g.state_dict(), "text_encoder": text.state_dict()}
    configs = {"generator": config, "text_encoder": dataclasses.asdict(text.config)}
    if with_ema:
        states["generator_ema"] = g_ema.state_dict()
        configs["generator_ema"] = config
    return ck.new_checkpoint("gan", models=states, model_configs=configs, config={})


def test_generator_for_inference_prefers_the_average_and_old_checkpoints_still_load() -> None:
    checkpoint = _gan_checkpoint(with_ema=True)
    chosen = ck.generator_for_inference(checkpoint)
    ema = checkpoint["models"]["generator_ema"]
    assert torch.equal(chosen.state_dict()["to_rgb.weight"], ema["to_rgb.weight"])
    assert not chosen.training
    old = _gan_checkpoint(with_ema=False)
    plain = ck.generator_for_inference(old)
    assert torch.equal(
        plain.state_dict()["to_rgb.weight"], old["models"]["generator"]["to_rgb.weight"]
    )


def test_export_and_evaluation_load_the_average(tmp_path) -> None:
    checkpoint = _gan_checkpoint(with_ema=True)
    path = ck.save_checkpoint(checkpoint, tmp_path / "gan.pt")
    ema = checkpoint["models"]["generator_ema"]["to_rgb.weight"]
    _, _, exported = pipeline.load_models(path)
    assert torch.equal(exported.state_dict()["to_rgb.weight"], ema)
    evaluated = CheckpointSource(path).generator
    assert torch.equal(evaluated.state_dict()["to_rgb.weight"], ema)


def test_checkpoints_from_before_the_average_resume_without_one() -> None:
    assert config_from_checkpoint({"seed": 3}, "old.pt").ema_decay == 0.0
    assert config_from_checkpoint({"ema_decay": 0.99}, "new.pt").ema_decay == 0.99
    assert GanTrainConfig().ema_decay == 0.999
