from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_runtime import tokenizer
from train import models

F = torch.nn.functional


def test_models_generator_size_matches_design() -> None:
    gen = models.Generator(models.GANConfig())
    assert sum(p.numel() for p in gen.parameters()) == 4_756_736  # DESIGN.md: 4.76 M
    out = gen.eval()(torch.randn(2, 100), torch.randn(2, 1024))
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1


@pytest.mark.parametrize("residual", [False, True])
def test_models_discriminator_shapes(residual: bool) -> None:
    config = models.GANConfig(ngf=16, ndf=16, residual=residual)
    logits, joint = models.Discriminator(config)(torch.randn(3, 3, 64, 64), torch.randn(3, 1024))
    assert logits.shape == (3,) and joint.shape == (3, 16 * 8, 4, 4)
    assert models.Generator(config)(torch.randn(3, 100), torch.randn(3, 1024)).shape == (
        3,
        3,
        64,
        64,
    )


def test_models_text_encoder_conv1_gather_equals_one_hot_convolution() -> None:
    enc = models.CharCnnRnn(models.TextEncoderConfig())
    ids = torch.randint(0, tokenizer.VOCAB_SIZE, (2, 201))
    one_hot = F.one_hot(ids, tokenizer.VOCAB_SIZE)[..., 1:].float().transpose(1, 2)  # (B, 70, T)
    torch.testing.assert_close(enc._conv1_one_hot(ids), enc.conv1(one_hot), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("rnn", "lead_pad"), [("gru", 18), ("lstm", 18), ("lstm", 0)])
def test_models_text_encoder_padding_does_not_change_embedding(rnn: str, lead_pad: int) -> None:
    config = models.TextEncoderConfig(rnn=rnn, lead_pad=lead_pad)
    enc = models.CharCnnRnn(config).eval()
    captions = ["a survivor in an orange jacket lying on rubble at the left", "red", "x" * 300]
    rows, lengths = tokenizer.encode_batch(captions)
    ids, lengths_t = torch.tensor(rows), torch.tensor(lengths)
    with torch.no_grad():
        batch = enc(ids, lengths_t)
        for i, length in enumerate(lengths):
            trimmed = config.min_input_length(length)
            alone = enc(ids[i : i + 1, :trimmed], lengths_t[i : i + 1])
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=0)
        # Changing only what lies in the padding region beyond the receptive field changes nothing.
        noisy = ids.clone()
        noisy[1, config.min_input_length(lengths[1]) :] = 5
        torch.testing.assert_close(enc(noisy, lengths_t)[1], batch[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("lead_pad", "steps_reached"), [(0, 1), (18, 3)])
def test_models_text_encoder_first_character_reaches_several_rnn_steps(
    lead_pad: int, steps_reached: int
) -> None:
    """Which RNN inputs (conv3 steps) change when only a caption's first character does: one
    without the lead padding (at the edge of its window), three with it."""
    enc = models.CharCnnRnn(models.TextEncoderConfig(lead_pad=lead_pad)).eval()
    seen: list[torch.Tensor] = []
    enc.conv3.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    with torch.no_grad():
        for caption in ("blue jacket", "rlue jacket"):
            rows, lengths = tokenizer.encode_batch([caption])
            enc(torch.tensor(rows), torch.tensor(lengths))
    changed = (seen[0] - seen[1]).abs().amax(dim=1)[0] > 0  # (S,)
    assert int(changed.sum()) == steps_reached


@pytest.mark.parametrize("lead_space", [True, False])
def test_models_text_encoder_first_word_is_read_like_a_middle_word(lead_space: bool) -> None:
    """With `lead_space` the first convolution sees a caption-initial "red" through the same
    window (" red") as the "red" of "a red jacket"; without it through "<pad>red", a window no
    middle word makes — a three-letter word has no window of its own (§ The first word)."""
    enc = models.CharCnnRnn(models.TextEncoderConfig(lead_space=lead_space)).eval()
    conv1: list[torch.Tensor] = []
    enc.norm1.register_forward_hook(lambda _m, args, _out: conv1.append(args[0].detach()))
    with torch.no_grad():
        for caption in ("red jacket", "a red jacket"):
            rows, lengths = tokenizer.encode_batch([caption])
            enc(torch.tensor(rows), torch.tensor(lengths))
    lead = enc.config.lead_pad
    first, middle = conv1[0][0, :, lead - 1], conv1[1][0, :, lead + 1]  # windows ending on "d"
    assert torch.equal(first, middle) == lead_space


def test_models_text_encoder_lead_pad_is_checked_and_old_configs_have_none() -> None:
    with pytest.raises(ValueError, match="lead_pad"):
        models.TextEncoderConfig(lead_pad=10)
    saved = {k: v for k, v in models.dataclasses.asdict(models.TextEncoderConfig()).items()}
    assert saved["lead_pad"] == 18 and saved["lead_space"] and "LEGACY_FIELDS" not in saved
    del saved["lead_pad"], saved["lead_space"]
    old = models.config_from_dict(models.TextEncoderConfig, saved)
    assert old.lead_pad == 0 and not old.lead_space


def test_text_norm_none_makes_a_captions_conditioning_independent_of_its_batch() -> None:
    """In training mode batch norm mixes the batch into each caption's projection; "none" must
    not (issue 16: conditioning that depends on the batch)."""
    torch.manual_seed(0)
    text = torch.randn(6, 16)
    outputs = {}
    for norm in models.TEXT_NORMS:
        g = models.Generator(models.GANConfig(embedding_dim=16, ngf=4, text_norm=norm)).train()
        alone = g.project_text(text[:3])  # (3, projected_dim)
        together = g.project_text(text)[:3]
        outputs[norm] = (alone - together).abs().max().item()
    assert outputs["batch"] > 1e-3
    # Not exactly 0: a matmul over 3 rows and over 6 may take different kernels (AMD Zen 4:
    # 2.4e-7); batch norm's dependence is four orders of magnitude larger.
    assert outputs["none"] < 1e-5


def test_text_norm_is_checked_and_old_configs_default_to_batch_norm() -> None:
    with pytest.raises(ValueError, match="text_norm"):
        models.GANConfig(text_norm="layer")
    old = models.config_from_dict(models.GANConfig, {"ngf": 4, "ndf": 4}, "old checkpoint")
    assert old.text_norm == "batch"
    assert isinstance(models.Generator(old).project_text[1], nn.BatchNorm1d)
    none = models.Generator(models.GANConfig(ngf=4, text_norm="none"))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in none.project_text)


def test_resize_conv_is_upsampling_then_a_3x3_convolution_and_equals_a_transposed_conv() -> None:
    torch.manual_seed(0)
    layer = models.ResizeConv(5, 7).double()
    x = torch.randn(2, 5, 6, 9, dtype=torch.double)  # (B, C_in, H, W), not square
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), layer.weight, padding=1)
    got = layer(x)  # (B, C_out, 2H, 2W)
    assert got.shape == (2, 7, 12, 18)
    assert (got - expected).abs().max().item() < 1e-12
    plain = layer.as_conv_transpose()
    assert type(plain) is nn.ConvTranspose2d and plain.weight.shape == (5, 7, 4, 4)
    assert (plain(x) - expected).abs().max().item() < 1e-12
    # Why it exists: a flat input stays flat away from the border (all four output phases sum
    # the same 3×3 kernel); a free 4×4 transposed kernel draws a 2-pixel checkerboard.
    flat = torch.ones(1, 5, 8, 8, dtype=torch.double)
    assert layer(flat)[..., 2:-2, 2:-2].std(dim=(2, 3)).max().item() < 1e-12
    free = nn.ConvTranspose2d(5, 7, 4, 2, 1, bias=False).double()
    assert free(flat)[..., 2:-2, 2:-2].std(dim=(2, 3)).max().item() > 1e-3


def test_resize_generator_trains_its_3x3_kernels_and_exports_as_the_equal_deconv_one() -> None:
    torch.manual_seed(1)
    config = models.GANConfig(ngf=8, embedding_dim=16, upsample="resize")
    generator = models.Generator(config)
    models.init_dcgan_weights(generator)
    shapes = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    assert shapes["to_rgb.weight"] == (3, 8, 3, 3)
    assert shapes["blocks.1.conv.weight"] == (32, 64, 3, 3)  # (C_out, C_in, 3, 3)
    assert shapes["blocks.0.conv.weight"] == (228, 64, 4, 4)  # 1 → 4 stays a transposed conv
    generator.train()
    noise, text = torch.randn(4, 100), torch.randn(4, 16)
    generator(noise, text).square().mean().backward()
    assert generator.to_rgb.weight.grad is not None and generator.to_rgb.weight.grad.abs().sum() > 0
    plain = generator.as_deconv()
    assert plain.config.upsample == "deconv" and plain.training
    assert not any(isinstance(m, models.ResizeConv) for m in plain.modules())
    generator.eval(), plain.eval()
    with torch.no_grad():
        assert (plain(noise, text) - generator(noise, text)).abs().max().item() < 1e-6
    deconv = models.Generator(models.GANConfig(ngf=8, embedding_dim=16))
    assert deconv.as_deconv() is deconv


def test_upsample_is_checked_and_old_configs_default_to_deconv() -> None:
    with pytest.raises(ValueError, match="upsample"):
        models.GANConfig(upsample="bilinear")
    old = models.config_from_dict(models.GANConfig, {"ngf": 4, "ndf": 4}, "old checkpoint")
    assert old.upsample == "deconv"
    assert type(models.Generator(old).to_rgb) is nn.ConvTranspose2d
