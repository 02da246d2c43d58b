"""Each GAN-INT-CLS loss term on hand-built tensors; the trainer feeds them the right pairs."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_checkpoints import tiny_text_encoder_checkpoint

from train import models
from train.data.schema import SplitData
from train.distributed import DistEnv
from train.gan import losses as L
from train.gan import trainer as gan
from train.gan.config import GanTrainConfig, validate

LOG2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_gan_cls_discriminator_loss_weights_real_wrong_fake() -> None:
    real = torch.tensor([2.0, -1.0])  # want 1: BCE = softplus(-x)
    wrong = torch.tensor([0.5, 0.0])  # want 0: BCE = softplus(x)
    fake = torch.tensor([-3.0, 1.0])
    d = L.gan_cls_discriminator_loss(real, wrong, fake)
    exp_real = (_softplus(-2.0) + _softplus(1.0)) / 2
    exp_wrong = (_softplus(0.5) + LOG2) / 2
    exp_fake = (_softplus(-3.0) + _softplus(1.0)) / 2
    assert d.real.item() == pytest.approx(exp_real, rel=1e-6)
    assert d.wrong.item() == pytest.approx(exp_wrong, rel=1e-6)
    assert d.fake.item() == pytest.approx(exp_fake, rel=1e-6)
    # Reed's Algorithm 1: L_D = s_r + (s_w + s_f) / 2.
    assert d.total.item() == pytest.approx(exp_real + 0.5 * exp_wrong + 0.5 * exp_fake, rel=1e-6)


def test_gan_cls_label_smoothing_moves_only_the_real_target() -> None:
    zeros = torch.zeros(4)
    smooth = L.gan_cls_discriminator_loss(torch.full((4,), 3.0), zeros, zeros, label_smoothing=0.1)
    # BCE(x, 0.9) = 0.9·softplus(-x) + 0.1·softplus(x)
    assert smooth.real.item() == pytest.approx(0.9 * _softplus(-3.0) + 0.1 * _softplus(3.0))
    assert smooth.wrong.item() == pytest.approx(LOG2) and smooth.fake.item() == pytest.approx(LOG2)


def test_generator_nonsaturating_and_gan_int_are_minus_log_d() -> None:
    logits = torch.tensor([0.0, 2.0, -2.0])
    expected = sum(_softplus(-x) for x in (0.0, 2.0, -2.0)) / 3  # -log sigmoid(x)
    assert L.generator_nonsaturating_loss(logits).item() == pytest.approx(expected)
    assert L.gan_int_loss(logits).item() == pytest.approx(expected)


def test_interpolate_embeddings_is_convex_combination() -> None:
    t1, t2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    assert torch.equal(L.interpolate_embeddings(t1, t2, 0.5), torch.tensor([[0.5, 2.0]]))
    assert torch.equal(L.interpolate_embeddings(t1, t2, 0.25), torch.tensor([[0.25, 3.0]]))


def test_feature_matching_is_distance_of_batch_means_with_real_as_target() -> None:
    real = torch.zeros(2, 1, 4, 4)
    real[0] = 2.0  # batch mean 1.0 everywhere
    fake = torch.zeros(2, 1, 4, 4, requires_grad=True)
    with torch.no_grad():
        fake[1] = 4.0  # batch mean 2.0 everywhere → squared distance 1 per feature
    real.requires_grad_(True)
    loss = L.feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert real.grad is None  # statistics of real data are a target, not optimised
    # d/d fake_i of mean((mean_b fake - 1)^2) = 2·(2 − 1)/16 features /2 samples
    assert torch.allclose(fake.grad, torch.full_like(fake, 2 * 1.0 / 16 / 2))


def test_l1_loss_is_mean_absolute_difference() -> None:
    assert L.l1_loss(torch.ones(2, 3), torch.zeros(2, 3)).item() == pytest.approx(1.0)


def test_discriminator_step_shares_image_path_yet_equals_separate_passes() -> None:
    torch.manual_seed(0)
    d = models.Discriminator(models.GANConfig(ndf=8, embedding_dim=16))
    step = gan.DiscriminatorStep(d)
    real, fake = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    right, wrong = torch.randn(4, 16), torch.randn(4, 16)
    with torch.no_grad():
        rr, rw, fr, joint = step(real, fake, right, wrong)
        # Batch norm sees real and fake as separate batches, like three separate D passes.
        torch.testing.assert_close(rr, d(real, right)[0])
        torch.testing.assert_close(joint, d(real, right)[1])
        torch.testing.assert_close(rw, d(real, wrong)[0])
        torch.testing.assert_close(fr, d(fake, right)[0])
        wrong_images = torch.randn(4, 3, 64, 64)
        _, rw_image, _, _ = step(real, fake, right, wrong, wrong_images)
        torch.testing.assert_close(rw_image, d(wrong_images, right)[0])


def _unique_caption_split(n: int = 48) -> SplitData:
    """Each image: 4 captions unique to it; 6 classes."""
    rng = np.random.default_rng(0)
    words = ("red", "blue", "green", "white", "black", "yellow")
    class_ids = np.arange(n) % len(words)
    captions = [
        [f"{words[c]} figure {i} view {j}" for j in range(4)] for i, c in enumerate(class_ids)
    ]
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    return SplitData(images=images, captions=captions, class_ids=class_ids)


def test_trainer_wrong_text_is_another_class_and_interpolation_uses_two_captions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    split = _unique_caption_split()
    config = validate(
        GanTrainConfig(
            text_encoder="random", ngf=8, ndf=8, batch_size=8, captions_per_sample=2,
            embedding_cache="off", progress=False, device="cpu", int_beta=0.25,
        )
    )  # fmt: skip
    trainer = gan.GanTrainer(config, DistEnv(), split=split)
    seen: dict[str, torch.Tensor] = {}
    d_forward, g_forward = gan.DiscriminatorStep.forward, models.Generator.forward

    def spy_d(self, *args):  # type: ignore[no-untyped-def]
        real, _, right, wrong, *_ = args
        seen.update(real=real, right=right, wrong=wrong)
        return d_forward(self, *args)

    def spy_g(self, noise, text):  # type: ignore[no-untyped-def]
        seen.setdefault("g_text", text)
        return g_forward(self, noise, text)

    monkeypatch.setattr(gan.DiscriminatorStep, "forward", spy_d)
    monkeypatch.setattr(models.Generator, "forward", spy_g)
    batch = next(trainer.loader.batches(0))
    trainer.train_step(batch)

    table = trainer.embeddings
    texts = [c for caps in split.captions for c in caps]
    captions_of = {i: set(split.captions[i]) for i in range(len(split.captions))}

    def embedding(i: int, caps: torch.Tensor) -> torch.Tensor:
        return table.table[table.index[i, caps]].mean(0)

    for row in range(len(batch)):
        i, w = int(batch.indices[row]), int(batch.wrong_indices[row])
        # Right text: the image's own captions; wrong text: captions of an image of ANOTHER class.
        torch.testing.assert_close(seen["right"][row], embedding(i, batch.captions[row]))
        torch.testing.assert_close(seen["wrong"][row], embedding(w, batch.wrong_captions[row]))
        assert split.class_ids[w] != split.class_ids[i]
        assert not captions_of[w] & captions_of[i]
    # The wrong-text term is scored on the real images themselves.
    torch.testing.assert_close(seen["real"], batch.images)
    # GAN-INT: β·t1 + (1 − β)·t2 with t2 from a different image (different captions).
    n = trainer.local_interp
    assert n == 4
    for row in range(n):
        i, p = int(batch.indices[row]), int(batch.partner_indices[row])
        assert p != i and not captions_of[p] & captions_of[i]
        expected = 0.25 * embedding(i, batch.captions[row]) + 0.75 * embedding(
            p, batch.partner_captions[row]
        )
        torch.testing.assert_close(seen["g_text"][len(batch) + row], expected)
    assert len(set(texts)) == len(texts)


def test_trainer_mismatch_image_pairs_wrong_class_images_with_the_right_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    split = _unique_caption_split()
    config = validate(
        GanTrainConfig(
            text_encoder="random", ngf=8, ndf=8, batch_size=8, captions_per_sample=1,
            embedding_cache="off", progress=False, device="cpu", mismatch="image",
        )
    )  # fmt: skip
    trainer = gan.GanTrainer(config, DistEnv(), split=split)
    seen: dict[str, torch.Tensor] = {}
    d_forward = gan.DiscriminatorStep.forward

    def spy_d(self, *args):  # type: ignore[no-untyped-def]
        seen["wrong_images"] = args[4]
        return d_forward(self, *args)

    monkeypatch.setattr(gan.DiscriminatorStep, "forward", spy_d)
    batch = next(trainer.loader.batches(0))
    trainer.train_step(batch)
    assert batch.wrong_images is not None
    torch.testing.assert_close(seen["wrong_images"], batch.wrong_images)
    assert (batch.wrong_class_ids != batch.class_ids).all()
    draws = trainer.dataset.draws(0)
    for row in range(len(batch)):  # each wrong image is its (other-class) sample's own picture
        i, w = int(batch.indices[row]), int(batch.wrong_indices[row])
        big = cv2.resize(split.images[w], (76, 76), interpolation=cv2.INTER_LINEAR)
        y, x = draws.wrong_crop_yx[i]
        crop = big[y : y + 64, x : x + 64]
        crop = crop[:, ::-1] if draws.wrong_flip[i] else crop
        expected = torch.from_numpy(crop.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
        torch.testing.assert_close(batch.wrong_images[row], expected)


def test_class_prototypes_average_each_class_captions_and_map_class_ids_to_rows() -> None:
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])  # (U=4, E=2)
    index = torch.tensor([[0, 1], [2, 2], [3, 3]])  # (N=3, C=2)
    class_ids = torch.tensor([7, 7, 2])
    prototypes, row_of = L.class_text_prototypes(table, index, class_ids, chunk=2)
    assert row_of.tolist() == [-1, -1, 0, -1, -1, -1, -1, 1]
    torch.testing.assert_close(prototypes[row_of[2]], torch.tensor([-1.0, 0.0]))
    # class 7: images 0 and 1, each the normalised mean of its captions → (1, 1) direction.
    torch.testing.assert_close(prototypes[row_of[7]], torch.tensor([1.0, 1.0]) / 2**0.5)


def test_text_image_matching_loss_is_cross_entropy_over_all_class_texts() -> None:
    torch.manual_seed(0)
    prototypes = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    targets = torch.tensor([0, 3, 4])
    right = L.text_image_matching_loss(prototypes[targets] * 3.0, prototypes, targets, 0.1)
    wrong = L.text_image_matching_loss(prototypes[[1, 1, 1]], prototypes, targets, 0.1)
    assert right.item() < 0.5 < wrong.item()
    logits = prototypes[targets] @ prototypes.T / 0.1
    expected = torch.nn.functional.cross_entropy(logits, targets)
    assert right.item() == pytest.approx(expected.item(), rel=1e-5)


def test_trainer_matching_term_uses_the_frozen_image_encoder_and_moves_only_g(
    tmp_path: Path,
) -> None:
    split = _unique_caption_split()
    base = {
        "text_encoder": str(tiny_text_encoder_checkpoint(tmp_path / "te.pt")), "ngf": 8, "ndf": 8,
        "batch_size": 8, "embedding_cache": "off", "progress": False, "device": "cpu",
    }  # fmt: skip
    on = gan.GanTrainer(validate(GanTrainConfig(**base)), DistEnv(), split=split)
    assert on.match_encoder is not None and not on.match_encoder.training
    frozen_before = {k: v.clone() for k, v in on.match_encoder.state_dict().items()}
    values = on.train_step(next(on.loader.batches(0)))
    assert values["generator/text_image_match"].item() > 0
    for key, value in on.match_encoder.state_dict().items():
        torch.testing.assert_close(value, frozen_before[key])  # weights and BN statistics
    off = gan.GanTrainer(validate(GanTrainConfig(**base, match_weight=0.0)), DistEnv(), split=split)
    assert off.match_encoder is None
    assert off.train_step(next(off.loader.batches(0)))["generator/text_image_match"].item() == 0


def test_mode_seeking_loss_is_noise_distance_over_image_distance() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 100), torch.randn(4, 100)
    a = torch.rand(4, 3, 8, 8)
    b = a + 0.1  # every pixel 0.1 apart
    expected = 1.0 / (0.1 / (z1 - z2).abs().mean().item() + 1e-5)
    assert L.mode_seeking_loss(a, b, z1, z2).item() == pytest.approx(expected, rel=1e-4)
    # Collapse (images independent of the noise) costs the most; more spread costs less.
    assert L.mode_seeking_loss(a, a, z1, z2).item() == pytest.approx(1e5)
    assert L.mode_seeking_loss(a, a + 0.2, z1, z2) < L.mode_seeking_loss(a, b, z1, z2)
    # Its gradient pushes the two images apart.
    b_param = b.clone().requires_grad_(True)
    L.mode_seeking_loss(a, b_param, z1, z2).backward()
    assert (b_param.grad < 0).all()  # increasing b (away from a) lowers the loss


def test_trainer_mode_seeking_draws_the_first_captions_again_with_other_noise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    split = _unique_caption_split()
    base = {
        "text_encoder": "random", "ngf": 8, "ndf": 8, "batch_size": 8, "embedding_cache": "off",
        "progress": False, "device": "cpu", "match_weight": 0.0,
    }  # fmt: skip
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    g_forward = models.Generator.forward

    def spy_g(self, noise, text):  # type: ignore[no-untyped-def]
        calls.append((noise.detach().clone(), text.detach().clone()))
        return g_forward(self, noise, text)

    monkeypatch.setattr(models.Generator, "forward", spy_g)
    on = gan.GanTrainer(
        validate(GanTrainConfig(**base, ms_weight=1.0, ms_fraction=0.25)),
        DistEnv(),
        split=split,
    )
    values = on.train_step(next(on.loader.batches(0)))
    b, n, m = 8, on.local_interp, on.local_ms
    assert m == 2 and values["generator/mode_seeking"].item() > 0
    (noise, text), *_ = calls  # one generator call per step (DDP: one forward per backward)
    assert len(noise) == b + n + m
    torch.testing.assert_close(text[b + n :], text[:m])  # the same captions ...
    assert not torch.equal(noise[b + n :], noise[:m])  # ... with noise of their own
    calls.clear()
    off = gan.GanTrainer(validate(GanTrainConfig(**base)), DistEnv(), split=split)
    values = off.train_step(next(off.loader.batches(0)))
    assert off.local_ms == 0 and values["generator/mode_seeking"].item() == 0
    assert len(calls[0][0]) == b + n  # off: the generator's batch is exactly as before
