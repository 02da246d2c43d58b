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


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_models_text_encoder_padding_does_not_change_embedding(rnn: str) -> None:
    config = models.TextEncoderConfig(rnn=rnn)
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
