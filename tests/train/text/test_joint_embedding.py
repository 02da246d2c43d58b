from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edge_runtime import tokenizer
from train import models
from train.text import joint_embedding as je

F = torch.nn.functional

TINY_TEXT = models.TextEncoderConfig(conv_channels=(32, 32, 32), rnn_hidden=32, embedding_dim=16)
TINY_IMAGE = models.ImageEncoderConfig(channels=(8, 8, 16, 16), embedding_dim=16)


def _reed_loop_loss(txt: torch.Tensor, img: torch.Tensor) -> float:
    """Reed's JointEmbeddingLoss (train_sje_hybrid.lua) for one item per class, both directions."""

    def one_way(fea_a: torch.Tensor, fea_b: torch.Tensor) -> float:
        n = fea_a.shape[0]
        loss = 0.0
        for i in range(n):
            label = float(fea_b[i] @ fea_a[i])
            for j in range(n):
                if j != i:
                    loss += max(0.0, float(fea_b[i] @ fea_a[j]) - label + 1.0)
        return loss / (n * n)

    return one_way(txt, img) + one_way(img, txt)


def test_joint_embedding_sje_equals_reeds_loop_with_one_item_per_class() -> None:
    torch.manual_seed(0)
    txt, img = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.tensor([5, 3, 9, 0, 1, 7])
    loss = je.sje_loss(txt, img, labels)
    assert float(loss) == pytest.approx(_reed_loop_loss(txt, img), rel=1e-5)


def test_joint_embedding_sje_averages_captions_of_a_class() -> None:
    torch.manual_seed(1)
    txt, img = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 0, 1, 2, 2])
    # Class means computed by hand reduce it to one row per class for the image→text side.
    protos = torch.stack([txt[:2].mean(0), txt[2], txt[3:].mean(0)])
    own = torch.tensor([0, 0, 1, 2, 2])
    scores = img @ protos.T
    hinge = F.relu(1 + scores - scores.gather(1, own[:, None]))
    hinge[torch.arange(5), own] = 0
    expected_image_to_text = hinge.sum() / (5 * 3)
    img_protos = torch.stack([img[:2].mean(0), img[2], img[3:].mean(0)])
    scores_t = txt @ img_protos.T
    hinge_t = F.relu(1 + scores_t - scores_t.gather(1, own[:, None]))
    hinge_t[torch.arange(5), own] = 0
    expected = expected_image_to_text + hinge_t.sum() / (5 * 3)
    assert float(je.sje_loss(txt, img, labels)) == pytest.approx(float(expected), rel=1e-5)
    assert float(je.sje_loss(txt, img, torch.zeros(5, dtype=torch.long))) == 0.0


def test_joint_embedding_infonce_is_clip_loss_for_distinct_classes() -> None:
    torch.manual_seed(2)
    txt, img = torch.randn(8, 6), torch.randn(8, 6)
    labels = torch.arange(8)
    logits = 10.0 * F.normalize(txt, dim=1) @ F.normalize(img, dim=1).T
    clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert float(je.infonce_loss(txt, img, labels, 10.0)) == pytest.approx(float(clip), rel=1e-5)


def test_joint_embedding_infonce_does_not_push_apart_same_class_pairs() -> None:
    # Two images of one class and their two (identical) captions: a caption equally close to both
    # images is right, so its gradient is zero when classes are given; treating every item as
    # its own class would pull each caption towards "its" image and away from the other.
    def grad(labels: list[int]) -> torch.Tensor:
        txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
        img = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-0.5, 1.0]])
        je.infonce_loss(txt, img, torch.tensor(labels), 50.0).backward()
        assert txt.grad is not None
        return txt.grad

    assert float(grad([0, 0, 1]).abs().max()) < 1e-6
    assert float(grad([0, 1, 2]).abs().max()) > 1e-3
    assert float(je.InfoNCE(0.07).log_scale.detach().exp()) == pytest.approx(1 / 0.07)


def test_joint_embedding_encode_captions_matches_full_padding_in_input_order() -> None:
    torch.manual_seed(3)
    model = models.CharCnnRnn(TINY_TEXT).eval()
    texts = ["red", "a survivor in an orange jacket lying on rubble", "x" * 250, "blue, left"]
    out = je.encode_captions(model, texts, batch_size=2)
    rows, lengths = tokenizer.encode_batch(texts)
    with torch.no_grad():
        full = model(torch.tensor(rows), torch.tensor(lengths))  # padded to 201
    torch.testing.assert_close(out, full, atol=1e-5, rtol=0)


def test_joint_embedding_batch_ids_trims_to_longest_receptive_field() -> None:
    encoded = [tokenizer.encode("red"), tokenizer.encode("a" * 60)]
    ids, lengths = je.batch_ids(encoded, TINY_TEXT)
    assert ids.shape == (2, TINY_TEXT.min_input_length(60)) and lengths.tolist() == [3, 60]
    assert ids[0, 3:].eq(tokenizer.PAD_ID).all()


@pytest.mark.parametrize(
    "caption",
    [
        "x" * 10_000,  # truncated to 201 characters
        "survivor\x00\x01\x07\x1b[31m in red\x7f\r\n",  # control bytes become spaces
        "\ud800 lone surrogate and emoji 🚑🆘 on snow",  # dropped
        "!!!",  # punctuation only is still a caption
        "ОРАНЖЕВЫЙ survivor 橙色",  # other scripts dropped, the rest kept
    ],
)
def test_joint_embedding_hostile_captions_give_finite_embeddings(caption: str) -> None:
    model = models.CharCnnRnn(dataclasses.replace(TINY_TEXT, normalize=True)).eval()
    out = je.encode_captions(model, [caption, "a person in red"])
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    assert float(out[0].norm()) == pytest.approx(1.0, abs=1e-5)


def test_joint_embedding_long_caption_equals_its_first_201_characters() -> None:
    model = models.CharCnnRnn(TINY_TEXT).eval()
    text = "a survivor in an orange jacket lying on rubble " * 200  # ~9,400 characters
    out = je.encode_captions(model, [text, text[:201]])
    torch.testing.assert_close(out[0], out[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("caption", ["", "   ", "\x00\x01\x02", "🚑🆘", "\u200b\u200b"])
def test_joint_embedding_empty_captions_raise_caption_error_naming_the_index(caption: str) -> None:
    model = models.CharCnnRnn(TINY_TEXT).eval()
    with pytest.raises(tokenizer.CaptionError, match=r"caption 1: caption is empty"):
        je.encode_captions(model, ["fine", caption])


def test_joint_embedding_score_ranks_images_against_captions() -> None:
    torch.manual_seed(4)
    model = je.JointEmbedding(models.CharCnnRnn(TINY_TEXT), models.ImageEncoder(TINY_IMAGE))
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    scores = model.eval().score(images, ["red", "blue on snow"])
    assert scores.shape == (3, 2) and torch.isfinite(scores).all()
    as_float = je.images_to_tensor(images)
    assert float(as_float.min()) >= -1 and float(as_float.max()) <= 1
    torch.testing.assert_close(model.encode_images(as_float), model.encode_images(images))
    with pytest.raises(ValueError, match="uint8"):
        je.images_to_tensor(np.zeros((2, 64, 64), np.uint8))


def test_joint_embedding_text_encoder_batch_norm_folds_exactly_for_export() -> None:
    torch.manual_seed(6)
    model = models.CharCnnRnn(TINY_TEXT)
    assert model.config.batch_norm
    texts = ["a survivor in red on snow", "blue, lying, left, helmet on", "x"]
    for _ in range(3):  # move the running statistics away from their initial values
        model(*je.batch_ids(je.tokenize(texts), TINY_TEXT))
    folded = model.fold_batch_norm()
    assert not folded.config.batch_norm
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    torch.testing.assert_close(
        je.encode_captions(folded, texts), je.encode_captions(model.eval(), texts), atol=1e-5,
        rtol=1e-5,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["infonce", "sje"])
def test_joint_embedding_objective_adds_weighted_auxiliaries(kind: str) -> None:
    torch.manual_seed(7)
    text, image = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    attributes = torch.tensor([[0, 1], [1, 2], [0, 0], [1, 2], [1, 1], [0, 2]])
    objective = je.JointObjective(
        kind, 10, 8, proxy_weight=0.5, attribute_sizes=(2, 3), attribute_weight=2.0
    )
    total, parts = objective(text, image, labels, attributes)
    expected = parts[kind] + 0.5 * parts["proxy"] + 2.0 * parts["attributes"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    assert ("logit_scale" in parts) == (kind == "infonce")
    total.backward()
    assert text.grad is not None and image.grad is not None and text.grad.abs().sum() > 0
    assert objective.attributes is not None and objective.attributes.head.weight.grad is not None
    # Without attribute labels (e.g. CUB) the heads simply do not contribute.
    _, parts = objective(text, image, labels, None)
    assert "attributes" not in parts
    plain = je.JointObjective(kind, 10, 8)
    assert plain.proxies is None and plain.attributes is None
    with pytest.raises(ValueError, match="objective"):
        je.JointObjective("triplet", 10, 8)


@pytest.mark.parametrize("kind", ["infonce", "sje"])
def test_joint_embedding_cross_weight_scales_cross_modal_and_proxy_terms_only(kind: str) -> None:
    torch.manual_seed(5)
    text, image = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    attributes = torch.tensor([[0, 1], [1, 2], [0, 0], [1, 2], [1, 1], [0, 2]])
    objective = je.JointObjective(
        kind, 10, 8, proxy_weight=0.5, attribute_sizes=(2, 3), attribute_weight=2.0
    )
    for weight in (0.0, 0.3, 1.0):
        total, parts = objective(text, image, labels, attributes, cross_weight=weight)
        expected = weight * (parts[kind] + 0.5 * parts["proxy"]) + 2.0 * parts["attributes"]
        assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    # At weight 0 the text's gradient is the attribute heads' alone.
    total, _ = objective(text, image, labels, attributes, cross_weight=0.0)
    (from_total,) = torch.autograd.grad(total, text)
    assert objective.attributes is not None
    heads_only = 2.0 * objective.attributes(text, image, attributes)
    (from_heads,) = torch.autograd.grad(heads_only, text)
    torch.testing.assert_close(from_total, from_heads)


def test_joint_embedding_class_proxies_classify_both_modalities() -> None:
    proxies = je.ClassProxies(3, 2, scale=30.0)
    with torch.no_grad():
        proxies.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    good = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1])
    assert float(proxies(good, good, labels).detach()) < 1e-6
    assert float(proxies(good, good.flip(0), labels).detach()) > 10  # images of the wrong classes
