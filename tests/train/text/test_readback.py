"""Read-back heads trained with the text encoder (issue 17): losses, positives, checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_runtime import tokenizer
from edge_runtime.vocabulary import words_of
from train import models
from train.checkpoint import build_model, load_checkpoint
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES
from train.data.phrasing import ALL_STATED, read_back, stated_mask
from train.text import pretrain as text_encoder
from train.text import readback as rb
from train.text.joint_embedding import (
    JointObjective,
    batch_ids,
    caption_positives,
    infonce_loss,
)
from train.text.off_domain import eval_sentences

SIZES = (8, 6, 3, 3, 2)


def _tiny_config(**changes: object) -> text_encoder.PretrainConfig:
    config = text_encoder.PretrainConfig(
        steps=3,
        batch_size=16,
        threads=1,
        monitor_every=0,
        log_every=1,
        checkpoint_every=10,
        off_domain_per_batch=4,
        readback_hidden=16,
        text_encoder=models.TextEncoderConfig(
            conv_channels=(16, 16, 16), rnn_hidden=16, embedding_dim=16
        ),
        image_encoder=models.ImageEncoderConfig(channels=(8, 8, 16, 16), embedding_dim=16),
    )
    return text_encoder.resolve(dataclasses.replace(config, **changes))


@pytest.fixture(scope="module")
def partial_splits() -> dict:
    return text_encoder.generated_splits(1, {"train": 48}, partial_fraction=0.5)


@pytest.fixture(scope="module")
def full_splits() -> dict:
    return text_encoder.generated_splits(1, {"train": 48})


def test_caption_positives_are_the_images_a_caption_fits() -> None:
    attributes = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 0, 0, 1], [1, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
    full = torch.full((4,), ALL_STATED)
    same_class = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]]).bool()
    assert torch.equal(caption_positives(attributes, full), same_class)
    colour_only = torch.tensor([stated_mask({"colour"}), ALL_STATED, ALL_STATED, ALL_STATED])
    fits = caption_positives(attributes, colour_only)
    # Caption 0 says only "colour 0": images 0, 1 and 3 are that colour, image 2 is not.
    assert fits[0].tolist() == [True, True, False, True]
    assert torch.equal(fits[1:], same_class[1:])
    assert fits.diagonal().all()  # a caption always fits its own image


def test_infonce_with_full_caption_positives_is_bit_identical_to_class_positives() -> None:
    gen = torch.Generator().manual_seed(0)
    text, image = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    attributes = torch.randint(0, 2, (8, 5), generator=gen)
    labels = (attributes * torch.tensor([16, 8, 4, 2, 1])).sum(1)
    positives = caption_positives(attributes, torch.full((8,), ALL_STATED))
    assert torch.equal(
        infonce_loss(text, image, labels, 10.0), infonce_loss(text, image, labels, 10.0, positives)
    )
    objective = JointObjective("infonce", 32, 6, proxy_weight=1.0, attribute_sizes=(2,) * 5,
                               attribute_weight=5.0)  # fmt: skip
    full = torch.full((8,), ALL_STATED)
    a, _ = objective(text, image, labels, attributes)
    b, _ = objective(text, image, labels, attributes, full)
    assert torch.equal(a, b)


def test_partial_caption_does_not_push_away_images_it_fits() -> None:
    # Caption 0 states only the colour; image 1 has that colour but another terrain.
    attributes = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    labels = torch.tensor([0, 1, 2])
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    text = torch.tensor([[0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])  # caption 0 sits on image 1
    stated = torch.tensor([stated_mask({"colour"}), ALL_STATED, ALL_STATED])
    positives = caption_positives(attributes, stated)
    as_partial = infonce_loss(text, images, labels, 10.0, positives)
    as_full = infonce_loss(text, images, labels, 10.0)
    assert float(as_partial) < float(as_full)


def test_readback_targets_mark_unstated_attributes_not_stated() -> None:
    attributes = torch.tensor([[3, 2, 1, 0, 1], [3, 2, 1, 0, 1]])
    stated = torch.tensor([ALL_STATED, stated_mask({"terrain", "helmet"})])
    assert rb.targets(attributes, stated, SIZES).tolist() == [[3, 2, 1, 0, 1], [8, 2, 3, 3, 1]]


def test_readback_loss_is_positive_and_falls_when_the_heads_are_right() -> None:
    torch.manual_seed(0)
    heads = models.ReadBack(rb.default_config(4, SIZES))
    embedding = torch.randn(6, 4)
    target = torch.tensor([[0, 1, 2, 0, 1]] * 3 + [[8, 6, 3, 3, 2]] * 3)
    off = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    before, parts = rb.readback_loss(heads, embedding, target, off)
    assert float(before.detach()) > 0
    assert set(parts) == {"readback_attributes", "readback_off_domain"}
    optimizer = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        rb.readback_loss(heads, embedding, target, off)[0].backward()
        optimizer.step()
    after, _ = rb.readback_loss(heads, embedding, target, off)
    assert 0 < float(after.detach()) < 0.5 * float(before.detach())


@pytest.mark.parametrize("detach", [False, True])
def test_readback_gradient_reaches_the_encoder_only_when_not_detached(
    detach: bool, partial_splits: dict
) -> None:
    config = _tiny_config(readback_detach=detach)
    config = text_encoder.resolve_classes(config, partial_splits["train"])
    state = text_encoder.TrainState.fresh(config)
    assert state.readback is not None
    schedule = text_encoder.BatchSchedule(
        partial_splits["train"], 16, 0, text_encoder.AugmentConfig()
    )
    batch = schedule.batch(0)
    encoded = batch.encoded + schedule.off_domain(0, 4)
    ids, lengths = batch_ids(encoded, config.text_encoder)
    text_all = state.text_encoder(ids, lengths)  # (20, 16)
    zero = text_all.sum() * 0.0
    loss, parts = text_encoder._with_readback(config, state.readback, text_all, batch, zero)
    loss.backward()
    assert float(loss.detach()) > 0 and parts["readback"] > 0
    grads = [p.grad for p in state.text_encoder.parameters()]
    reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert reached is not detach
    assert all(p.grad is not None for p in state.readback.parameters())


def test_schedule_reports_partial_captions_and_off_domain_lines(partial_splits: dict) -> None:
    split = partial_splits["train"]
    assert split.caption_stated is not None
    schedule = text_encoder.BatchSchedule(split, 16, 0, text_encoder.AugmentConfig())
    stated = torch.cat([schedule.batch(s).stated for s in range(6)])
    assert (stated == ALL_STATED).any() and (stated != ALL_STATED).any()
    lines = schedule.off_domain(3, 8)
    assert len(lines) == 8 and all(isinstance(e, tokenizer.Encoded) for e in lines)


def test_checkpoint_carries_readback_heads(tmp_path: Path, partial_splits: dict) -> None:
    config = _tiny_config()
    text_encoder.train(config, tmp_path, partial_splits)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", kind="text_encoder")
    heads = build_model(checkpoint, "readback")
    assert isinstance(heads, models.ReadBack)
    assert heads.config.value_counts == SIZES and heads.config.embedding_dim == 16
    assert "loss_readback" in (tmp_path / "metrics.jsonl").read_text()
    # Resume rebuilds the heads and their optimiser state.
    resumed = text_encoder.TrainState.from_checkpoint(
        checkpoint, text_encoder.PretrainConfig.from_dict(checkpoint["config"]), "ckpt"
    )
    assert resumed.readback is not None
    for a, b in zip(resumed.readback.parameters(), heads.parameters(), strict=True):
        assert torch.equal(a, b)


def test_readback_weight_zero_trains_no_heads(tmp_path: Path, partial_splits: dict) -> None:
    text_encoder.train(_tiny_config(readback_weight=0.0), tmp_path, partial_splits)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", kind="text_encoder")
    assert "readback" not in checkpoint["models"]


def test_full_captions_train_identically_aware_or_ignoring_partials(
    tmp_path: Path, full_splits: dict
) -> None:
    # Full captions only, no heads: partial-caption awareness must not change a single weight.
    states = []
    for mode in ("aware", "ignore"):
        config = _tiny_config(readback_weight=0.0, partial_captions=mode)
        states.append(text_encoder.train(config, tmp_path / mode, full_splits))
    for a, b in zip(
        states[0].text_encoder.state_dict().values(),
        states[1].text_encoder.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_config_from_before_the_readback_resumes_as_it_was_trained() -> None:
    saved = _tiny_config().to_dict()
    for key in text_encoder.LEGACY_VALUES:
        del saved[key]
    del saved["augment"]["doubled_prob"], saved["augment"]["joined_prob"]
    old = text_encoder.PretrainConfig.from_dict(saved)
    assert old.readback_weight == 0.0 and old.partial_captions == "ignore"
    assert old.off_domain_per_batch == 0 and old.cross_modal_ramp == 0.0
    assert old.augment.doubled_prob == 0.0 and old.augment.joined_prob == 0.0


def test_score_captions_counts_stated_unstated_and_false_alarms() -> None:
    truth = np.array([[1, 2, 0, 1, 1], [1, 2, 0, 1, 1]])
    stated = np.array([ALL_STATED, stated_mask({"colour", "pose"})])
    chosen = np.array([[1, 2, 0, 1, 0, 0], [1, 6, 0, 3, 2, 1]])
    scores = rb.score_captions(chosen, truth, stated, SIZES)
    assert scores["stated_right"] == pytest.approx(6 / 7)
    assert scores["captions_all_stated_right"] == 0.5
    assert scores["not_stated_right"] == 1.0
    assert scores["false_alarm"] == 0.5
    assert scores["per_attribute"]["helmet"] == 0.0
    assert scores["per_attribute"]["colour"] == 1.0


def test_decisions_use_the_robot_rule() -> None:
    torch.manual_seed(0)
    heads = models.ReadBack(rb.default_config(4, SIZES))
    embedding = torch.randn(5, 4)
    chosen = rb.decide_embeddings(heads, embedding)
    probs, off = heads.probabilities(embedding)
    blocks = probs.detach().split(heads.config.block_sizes, dim=1)
    expected = [b.argmax(1) for b in blocks] + [(off.detach() > 0.5).long()]
    assert chosen.tolist() == torch.stack(expected, 1).tolist()


# --------------------------------------------------------------------------------------------
# Linear attribute blocks and the refit on a frozen encoder
# --------------------------------------------------------------------------------------------


def test_linear_attribute_blocks_do_not_read_the_hidden_layer() -> None:
    config = dataclasses.replace(rb.default_config(8, SIZES), hidden=4, linear_attributes=True)
    heads = models.ReadBack(config)
    assert heads.attributes.in_features == 8 and heads.off_domain.in_features == 4
    embedding = torch.randn(3, 8)
    before = heads(embedding)
    with torch.no_grad():
        for p in heads.trunk.parameters():
            p.add_(1.0)
    after = heads(embedding)
    assert torch.equal(before[0], after[0])  # attributes: linear in the normalised embedding
    assert not torch.equal(before[1], after[1])  # off-domain: through the hidden layer
    # A config saved before the field builds the shared-layer heads its weights were saved from.
    old = models.config_from_dict(
        models.ReadBackConfig, {"embedding_dim": 8, "value_counts": SIZES, "hidden": 4}, "old"
    )
    assert models.ReadBack(old).attributes.in_features == 4


def test_refit_inputs_label_captions_copies_and_off_domain_lines(partial_splits: dict) -> None:
    split = partial_splits["train"]
    config = rb.RefitConfig(
        captions=120, perturbed_share=0.25, off_domain_share=0.5, terse_share=0.0, seed=3
    )
    texts, targets, off = rb.refit_inputs(split, SIZES, config, text_encoder.AugmentConfig())
    lines, copies = 60, 30
    assert len(texts) == 120 + copies + lines + 15 == len(targets) == len(off)
    assert off[:150].sum() == 0 and off[150:].sum() == 75
    assert (targets[150:] == torch.tensor(SIZES)).all()  # off-domain lines state nothing
    # Every caption row is labelled from its own image and its own stated bits.
    captions = np.asarray(split.captions, dtype=object).reshape(-1).tolist()
    stated = np.asarray(split.caption_stated).reshape(-1)
    per_image = np.asarray(split.captions).shape[1]
    for row in range(120):
        index = captions.index(texts[row])
        expected = rb.targets(
            torch.as_tensor(
                np.asarray(split.attributes)[index // per_image : index // per_image + 1]
            ),
            torch.tensor([int(stated[index])]),
            SIZES,
        )[0]
        if captions.count(texts[row]) == 1:
            assert torch.equal(targets[row], expected)
    assert (targets[:120] == torch.tensor(SIZES)).any()  # partial captions leave some open
    # The copies are labelled as the captions they were drawn from, and some do change.
    assert sum(t not in captions for t in texts[120:150]) > 0
    again = rb.refit_inputs(split, SIZES, config, text_encoder.AugmentConfig())
    assert again[0] == texts and torch.equal(again[1], targets)


def test_refit_inputs_add_terse_commands_about_the_splits_images(partial_splits: dict) -> None:
    split = partial_splits["train"]
    base = rb.RefitConfig(
        captions=120, perturbed_share=0.25, off_domain_share=0.5, terse_share=0.0, seed=3
    )
    before = rb.refit_inputs(split, SIZES, base, text_encoder.AugmentConfig())
    config = dataclasses.replace(base, terse_share=0.5)
    texts, targets, off = rb.refit_inputs(split, SIZES, config, text_encoder.AugmentConfig())
    terse, copies = 60, 15
    assert len(texts) == len(before[0]) + terse + copies == len(targets) == len(off)
    # The captions and their copies come first, as without terse commands; then the terse
    # commands (rescue: off-domain 0) and their copies; the off-domain lines stay last.
    assert texts[:150] == before[0][:150] and texts[150 + terse + copies :] == before[0][150:]
    assert off[: 150 + terse + copies].sum() == 0 and off[150 + terse + copies :].all()
    rows = {tuple(r) for r in np.asarray(split.attributes).tolist()}
    for text, target in zip(texts[150 : 150 + terse], targets[150 : 150 + terse], strict=True):
        read = read_back(text)
        assert 1 <= len(read) <= 2, text
        stated = [a for a, name in enumerate(ATTRIBUTE_NAMES) if name in read]
        for a, name in enumerate(ATTRIBUTE_NAMES):
            want = ATTRIBUTE_VALUES[name].index(read[name]) if name in read else SIZES[a]
            assert int(target[a]) == want, (text, a)
        # Stated values are those of one of the split's images (no held-out pair is stated).
        assert any(all(r[a] == int(target[a]) for a in stated) for r in rows)
    drawn = {tuple(t) for t in targets[150 : 150 + terse].tolist()}
    assert all(tuple(t) in drawn for t in targets[150 + terse : 150 + terse + copies].tolist())
    with pytest.raises(ValueError, match="terse_share"):
        rb.RefitConfig(terse_share=-0.1)


def _word_encoder(texts: list[str]) -> torch.Tensor:
    """A stand-in text encoder whose embedding is which attribute words a text contains: the
    refit must read those back; anything without one of them is off-domain."""
    words = [w for name in ATTRIBUTE_NAMES for w in _WORDS[name]]
    rows = [[float(w in text.lower()) for w in words] + [1.0] for text in texts]
    noise = torch.randn(len(rows), len(words) + 1, generator=torch.Generator().manual_seed(0))
    return torch.tensor(rows) + 0.01 * noise


_WORDS = {
    "colour": ATTRIBUTE_VALUES["colour"],
    "terrain": ATTRIBUTE_VALUES["terrain"],
    "pose": ["stand", "sit", "lying"],
    "position": ["left", "cent", "right"],
    "helmet": ["no helmet", "wearing a helmet"],
}


def test_fit_heads_reads_back_what_the_embedding_separates(
    partial_splits: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rb, "encode_captions", lambda encoder, texts: _word_encoder(list(texts)))
    width = sum(len(v) for v in _WORDS.values()) + 1
    heads_config = dataclasses.replace(
        rb.default_config(width, SIZES), hidden=16, linear_attributes=True
    )
    config = rb.RefitConfig(captions=480, steps=600, perturbed_share=0.0, lr=1e-2)
    heads, figures = rb.fit_heads(None, partial_splits["train"], heads_config, config)  # type: ignore[arg-type]
    assert not heads.training and figures["readback_refit_steps"] == 600
    # It reads back the captions it was fitted on from the words their embeddings carry, and
    # flags the held-out off-domain list it never saw.
    texts, targets, off = rb.refit_inputs(
        partial_splits["train"], SIZES, config, text_encoder.AugmentConfig()
    )
    chosen = rb.decide_embeddings(heads, _word_encoder(texts))
    right = (chosen[:, :5] == targets.numpy()).mean(0)
    assert right[0] > 0.85 and right[3] > 0.85, right  # colour, position
    assert (chosen[:, 5] == off.numpy()).mean() > 0.85
    flagged = rb.decide_embeddings(heads, _word_encoder(eval_sentences()))[:, 5]
    assert flagged.mean() > 0.7


def test_training_ends_with_heads_refitted_on_the_frozen_encoder(
    tmp_path: Path, partial_splits: dict
) -> None:
    config = _tiny_config(readback_refit_captions=200)
    state = text_encoder.train(config, tmp_path, partial_splits)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", kind="text_encoder")
    heads = build_model(checkpoint, "readback")
    assert isinstance(heads, models.ReadBack) and heads.config.linear_attributes
    # The heads record the words of the captions they learnt from, for the robot's "not in the
    # robot's vocabulary" line (edge_runtime.vocabulary): every word of every train caption.
    words = {w for row in partial_splits["train"].captions for c in row for w in words_of(c)}
    assert heads.config.known_words == tuple(sorted(words)) and "jacket" in words
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert "readback_refit_s" in lines[-1]
    # The refit is a function of (encoder, data, seed): the same run gives the same heads.
    again = text_encoder.train(config, tmp_path / "again", partial_splits)
    assert state.readback is not None and again.readback is not None
    for a, b in zip(state.readback.parameters(), again.readback.parameters(), strict=True):
        assert torch.equal(a, b)
    # Off: the jointly trained heads are what the checkpoint keeps.
    kept = text_encoder.train(
        _tiny_config(readback_refit_captions=0), tmp_path / "kept", partial_splits
    )
    assert "readback_refit_s" not in (tmp_path / "kept" / "metrics.jsonl").read_text()
    assert kept.readback is not None
