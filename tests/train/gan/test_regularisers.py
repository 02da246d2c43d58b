"""D's regularisers and what each gradient reaches: R1 (sign, scale, D only), attribute-keeping
augmentation (exact shifts and cutouts, differentiable, no colour or flips), and that G's terms
leave D untouched in a real trainer step with everything on."""

from __future__ import annotations

import pytest
import torch

from train import models
from train.distributed import DistEnv
from train.gan import augment, losses
from train.gan import trainer as gan
from train.gan.config import ConfigError, GanTrainConfig, build_parser, validate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = models.GANConfig(embedding_dim=16, ngf=4, ndf=4)


def test_r1_penalty_is_the_squared_input_gradient_norm() -> None:
    # A linear score w·x has gradient w at every x: the penalty is ‖w‖² exactly, whatever x.
    w = torch.randn(3, 8, 8)
    x = torch.randn(5, 3, 8, 8, requires_grad=True)
    logits = (x * w).sum(dim=(1, 2, 3))
    assert losses.r1_penalty(logits, x).item() == pytest.approx(w.square().sum().item(), rel=1e-5)
    # Zero-centred: a score flat in x costs nothing.
    flat = (x * 0).sum(dim=(1, 2, 3)) + 1.0
    assert losses.r1_penalty(flat, x).item() == 0.0


def test_r1_penalty_trains_d_only() -> None:
    torch.manual_seed(0)
    g, d = models.Generator(TINY), models.Discriminator(TINY)
    text = torch.randn(4, 16)
    real = torch.randn(4, 3, 64, 64).requires_grad_(True)
    fake = g(torch.randn(4, TINY.noise_dim), text)
    logits_real, _ = d(real, text)
    d(fake.detach(), text)  # the D step sees fakes too, detached
    losses.r1_penalty(logits_real, real).backward()
    assert all(p.grad is None for p in g.parameters())
    grads = [p.grad for p in d.parameters() if p.grad is not None]
    assert grads and any(float(gr.abs().sum()) > 0 for gr in grads)


def test_translation_moves_content_by_the_drawn_shift_and_stays_within_max_shift() -> None:
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    shift = torch.tensor([[2, -3], [0, 1]])
    out = augment.translate(images, shift, max_shift=3)
    assert out.shape == images.shape
    # out[y, x] = in[y − dy, x − dx] away from the border.
    torch.testing.assert_close(out[0, :, 2:, :13], images[0, :, :14, 3:])
    torch.testing.assert_close(out[1, :, :, 1:], images[1, :, :, :15])
    # Replicate padding: the border repeats the edge (no grey frame a real image never has).
    torch.testing.assert_close(out[0, :, 0, :13], images[0, :, 0, 3:])
    torch.testing.assert_close(out[0, :, 1, :13], images[0, :, 0, 3:])
    gen = torch.Generator().manual_seed(0)
    params = augment.draw_params(1000, 64, 3, gen)
    assert params.shift_yx.abs().max() == 3 and params.shift_yx.min() == -3


def test_cutout_zeroes_one_square_of_the_given_side_and_is_differentiable() -> None:
    images = torch.ones(1, 3, 64, 64, requires_grad=True)
    out = augment.cutout(images, torch.tensor([[32, 32]]), fraction=0.25)
    zeroed = (out[0, 0] == 0).nonzero()
    assert len(zeroed) == 16 * 16
    assert zeroed[:, 0].min() == 24 and zeroed[:, 0].max() == 39
    out.sum().backward()
    assert images.grad is not None and float(images.grad.sum()) == 3 * (64 * 64 - 256)


def test_augmentation_probability_leaves_the_other_images_untouched() -> None:
    images = torch.rand(400, 3, 64, 64)

    def drawn(probability: float) -> augment.AugmentParams:
        return augment.draw_params(400, 64, 3, torch.Generator().manual_seed(7), probability)

    # p = 1 draws exactly the stream drawn before the option existed, and leaves the generator
    # where that left it (the trainer draws every segment from one generator), so older runs
    # resume bit-exactly.
    before, after = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    old_shift = torch.randint(-3, 4, (400, 2), generator=before)
    old_centre = torch.randint(0, 64, (400, 2), generator=before)
    params = augment.draw_params(400, 64, 3, after, 1.0)
    assert torch.equal(params.shift_yx, old_shift) and torch.equal(params.centre_yx, old_centre)
    assert torch.equal(before.get_state(), after.get_state())
    out = augment.augment(images, "translation,cutout", drawn(0.3), 3, 0.25)
    unchanged = (out == images).flatten(1).all(dim=1)  # (N,)
    # About 70 % pass untouched (binomial, 400 draws: 3 sd ≈ 7 points); the rest are changed.
    assert 0.62 < unchanged.float().mean().item() < 0.78
    params = drawn(0.3)
    moved = (params.shift_yx != 0).any(dim=1) | (params.centre_yx >= 0).all(dim=1)
    assert torch.equal(unchanged, ~moved)
    # A vanishing p is the identity.
    torch.testing.assert_close(
        augment.augment(images, "translation,cutout", drawn(1e-9), 3, 0.25), images
    )
    with pytest.raises(ConfigError, match="--d-augment-p"):
        validate(GanTrainConfig(device="cpu", embedding_cache="off", d_augment_p=1.5))


def test_augmentation_policy_refuses_colour_and_flips_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert augment.parse_policy("cutout, translation") == "translation,cutout"
    assert augment.parse_policy("none") == "none"
    with pytest.raises(ValueError, match="colour is an attribute"):
        augment.parse_policy("translation,color")
    with pytest.raises(ValueError, match="position is an attribute"):
        augment.parse_policy("flip")
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--d-augment", "colour"])
    assert exit_info.value.code == 2
    assert "--d-augment" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^--d-augment hflip: 'hflip' is not allowed"):
        validate(GanTrainConfig(device="cpu", embedding_cache="off", d_augment="hflip"))


def _trainer(**fields) -> gan.GanTrainer:
    config = validate(
        GanTrainConfig(
            text_encoder="random", ngf=8, ndf=8, batch_size=8, captions_per_sample=2,
            embedding_cache="off", progress=False, device="cpu", amp="off", **fields,
        )
    )  # fmt: skip
    return gan.GanTrainer(config, DistEnv(), split=gan.generated_split(64, captions=4, seed=0))


def test_trainer_step_with_r1_and_augmentation_g_terms_leave_d_alone() -> None:
    trainer = _trainer(r1_gamma=10.0, d_augment="translation,cutout", fm_weight=1.0)
    after_d: dict[str, torch.Tensor] = {}
    step_d = trainer.opt_d.step

    def record(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = step_d(*args, **kwargs)
        for name, p in trainer.discriminator.named_parameters():
            after_d[name] = p.detach().clone()
            after_d[name + ".grad"] = p.grad.detach().clone()
        return out

    trainer.opt_d.step = record  # type: ignore[method-assign]
    batch = next(trainer.loader.batches(0))
    metrics = trainer.train_step(batch)
    assert metrics["D/r1_penalty"] > 0
    assert all(torch.isfinite(v) for v in metrics.values())
    # The G step (non-saturating, GAN-INT, feature matching) changed neither D's weights nor
    # its gradients: D is frozen there.
    for name, p in trainer.discriminator.named_parameters():
        assert torch.equal(p, after_d[name]), name
        assert torch.equal(p.grad, after_d[name + ".grad"]), name


def test_trainer_r1_changes_only_the_d_update_and_lazy_r1_skips_steps() -> None:
    plain, r1 = _trainer(), _trainer(r1_gamma=10.0, r1_every=2)
    batches = list(plain.loader.batches(0))[:2]
    m_plain, m_r1 = plain.train_step(batches[0]), r1.train_step(batches[0])
    assert float(m_r1["D/r1_penalty"]) > 0 and float(m_plain["D/r1_penalty"]) == 0
    # Same first D losses (the penalty is added after them), different D weights after.
    assert float(m_plain["gan_cls/total_D"]) == float(m_r1["gan_cls/total_D"])
    d_plain = dict(plain.discriminator.named_parameters())
    assert any(not torch.equal(p, d_plain[n]) for n, p in r1.discriminator.named_parameters())
    assert float(r1.train_step(batches[1])["D/r1_penalty"]) == 0  # step 1: lazy, skipped


def test_augmentation_is_a_pure_function_of_the_step() -> None:
    a, b = _trainer(d_augment="translation,cutout"), _trainer(d_augment="translation,cutout")
    images = torch.randn(8, 3, 64, 64)
    torch.testing.assert_close(a.augment_for_d(images, 3, [8]), b.augment_for_d(images, 3, [8]))
    assert not torch.equal(a.augment_for_d(images, 3, [8]), a.augment_for_d(images, 4, [8]))
    assert torch.equal(_trainer().augment_for_d(images, 3, [8]), images)  # "none"
