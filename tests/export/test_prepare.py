from __future__ import annotations

import pytest
import torch
from torch import nn

from export.prepare import (
    GENERATOR_FORMS,
    SUBPIXEL_FORMS,
    LinearToMap,
    SubPixelConvTranspose,
    prepare_generator,
)
from export.tiny import randomize_batch_norm
from train import models

# Every stride-2 layer of the paper's generator (ngf 64): (C_in, C_out, input size), bias or not
# (bias appears once batch norm is folded in; to_rgb has none).
PAPER_UP_LAYERS = [(512, 256, 4), (256, 128, 8), (128, 64, 16), (64, 3, 32)]


@pytest.mark.parametrize("form", SUBPIXEL_FORMS)
@pytest.mark.parametrize(("c_in", "c_out", "size"), PAPER_UP_LAYERS)
@pytest.mark.parametrize("bias", [True, False])
def test_subpixel_matches_conv_transpose_on_every_paper_layer_shape(
    form: str, c_in: int, c_out: int, size: int, bias: bool
) -> None:
    torch.manual_seed(c_in + size)
    deconv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)
    x = torch.randn(1, c_in, size, size)
    with torch.no_grad():
        expected = deconv(x).relu()
        got = SubPixelConvTranspose(deconv, form, nn.ReLU())(x)
    assert got.shape == expected.shape == (1, c_out, 2 * size, 2 * size)
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("form", SUBPIXEL_FORMS)
def test_subpixel_is_exact_on_non_square_inputs(form: str) -> None:
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(5, 7, 4, 2, 1)
    x = torch.randn(3, 5, 3, 6)
    with torch.no_grad():
        assert (SubPixelConvTranspose(deconv, form)(x) - deconv(x)).abs().max().item() <= 1e-6


def test_subpixel_2x2_forms_keep_the_weight_count_and_3x3_stores_more() -> None:
    deconv = nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False)
    counts = {
        form: sum(p.numel() for p in SubPixelConvTranspose(deconv, form).parameters())
        for form in SUBPIXEL_FORMS
    }
    assert counts["2x2"] == counts["2x2-phase"] == deconv.weight.numel()
    assert counts["3x3"] == deconv.weight.numel() * 9 // 4


@pytest.mark.parametrize(
    "deconv",
    [
        nn.ConvTranspose2d(4, 4, 4, 1, 0),
        nn.ConvTranspose2d(4, 4, 3, 2, 1),
        nn.ConvTranspose2d(4, 4, 4, 2, 1, output_padding=1),
        nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2),
    ],
)
def test_subpixel_refuses_layers_it_cannot_rewrite_exactly(deconv: nn.ConvTranspose2d) -> None:
    with pytest.raises(ValueError, match="only ConvTranspose2d"):
        SubPixelConvTranspose(deconv)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_to_map_matches_the_first_conv_transpose(bias: bool) -> None:
    torch.manual_seed(1)
    deconv = nn.ConvTranspose2d(228, 512, 4, 1, 0, bias=bias)  # the paper's 1×1 → 4×4 layer
    x = torch.randn(3, 228)
    with torch.no_grad():
        expected = deconv(x[:, :, None, None])
        got = LinearToMap(deconv)(x)
    assert got.shape == (3, 512, 4, 4)
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("form", GENERATOR_FORMS)
@pytest.mark.parametrize(
    ("residual", "text_norm", "upsample"),
    [(False, "batch", "deconv"), (True, "batch", "deconv"), (False, "none", "deconv"),
     (False, "batch", "resize"), (True, "none", "resize")],
)  # fmt: skip
def test_prepared_generator_matches_the_trained_one(
    form: str, residual: bool, text_norm: str, upsample: str
) -> None:
    torch.manual_seed(2)
    config = models.GANConfig(
        ngf=8, embedding_dim=48, residual=residual, text_norm=text_norm, upsample=upsample
    )
    generator = models.Generator(config)
    randomize_batch_norm(generator, torch.Generator().manual_seed(2))
    generator.eval()
    prepared = prepare_generator(generator, form)
    noise, text = torch.randn(4, config.noise_dim), torch.randn(4, 48)
    with torch.no_grad():
        diff = (prepared(noise, text) - generator(noise, text)).abs().max().item()
        # In float64 only the float32 rounding of the folded weights remains.
        diff64 = (
            (
                prepared.double()(noise.double(), text.double())
                - generator.double()(noise.double(), text.double())
            )
            .abs()
            .max()
            .item()
        )
    assert diff <= 1e-5
    assert diff64 <= 1e-6
    kinds = {type(m) for m in prepared.modules()}
    assert nn.BatchNorm1d not in kinds and nn.BatchNorm2d not in kinds
    assert (nn.ConvTranspose2d in kinds) == (form == "convtranspose")


def test_prepare_generator_leaves_the_trained_model_untouched() -> None:
    generator = models.Generator(models.GANConfig(ngf=8, embedding_dim=16)).train()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    prepare_generator(generator)
    assert generator.training
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())


def test_prepare_generator_refuses_an_unknown_form() -> None:
    generator = models.Generator(models.GANConfig(ngf=8, embedding_dim=16)).eval()
    with pytest.raises(ValueError, match="unknown generator form"):
        prepare_generator(generator, "4x4")  # type: ignore[arg-type]
