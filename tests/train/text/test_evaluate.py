from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from rescue_files import write_rescue_scenes

from train import models
from train.checkpoint import save_checkpoint
from train.data import synth
from train.data.attributes import Attributes
from train.data.schema import SplitData, read_split
from train.text import evaluate as eval_text
from train.text import pretrain as text_encoder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    splits = text_encoder.generated_splits(1, {"test": 110, "test_unseen": 110})
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    return write_rescue_scenes(path, splits)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    """An untrained tiny pair, saved the way the trainer saves it."""
    config = text_encoder.resolve(
        text_encoder.PretrainConfig(
            data=str(dataset),
            threads=1,
            text_encoder=models.TextEncoderConfig(
                conv_channels=(16, 16, 16), rnn_hidden=16, embedding_dim=16
            ),
            image_encoder=models.ImageEncoderConfig(channels=(8, 8, 16, 16), embedding_dim=16),
        )
    )
    state = text_encoder.TrainState.fresh(dataclasses.replace(config, num_classes=864))
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    save_checkpoint(state.checkpoint(config, {}), path)
    return path


def test_eval_text_appends_json_lines_and_prints_a_table(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --data defaults to the dataset recorded in the checkpoint's config.
    argv = ["--checkpoint", str(checkpoint), "--captions-per-image", "1", "--threads", "1"]
    assert eval_text.main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "split", "clean", "typos", "shuffled", "upper", "punctuation", "doubled", "joined", "max",
        "drop",
    ]  # fmt: skip
    assert "test_unseen" in out and "1 true among 100" in out
    lines = (checkpoint.parent / "eval_text.jsonl").read_text().splitlines()
    everything = [json.loads(line) for line in lines]
    records = [r for r in everything if r["metric"] == eval_text.METRIC]
    assert len(records) == 2 * len(eval_text.VARIANTS)
    # rescue-scenes has attributes: their separation per split and attribute, and its table.
    separation = [r for r in everything if r["metric"] == eval_text.SEPARATION]
    assert {(r["split"], r["attribute"]) for r in separation} == {
        (s, a) for s in ("test", "test_unseen")
        for a in ("colour", "terrain", "pose", "position", "helmet")
    }  # fmt: skip
    assert all(r["value"] is None or 0.0 <= r["value"] <= 1.0 for r in separation)
    assert "attribute separation" in out and "helmet" in out
    assert {(r["split"], r["variant"]) for r in records} == {
        (s, v) for s in ("test", "test_unseen") for v in eval_text.VARIANTS
    }
    for r in records:
        assert 0.0 <= r["value"] <= 1.0 and r["queries"] == 110 and r["candidates"] == 100
        assert r["checkpoint"] == str(checkpoint) and r["step"] == 0
    by = {(r["split"], r["variant"]): r["value"] for r in records}
    # The tokenizer lower-cases, and every variant shares queries and candidates: the upper-case
    # column must equal the clean one exactly.
    assert by["test", "upper"] == by["test", "clean"]

    # Seeded: a second run appends identical numbers.
    assert eval_text.main(argv) == 0
    again = [json.loads(line) for line in (checkpoint.parent / "eval_text.jsonl").read_text()
             .splitlines()[len(everything):]]  # fmt: skip
    again = [r for r in again if r["metric"] == eval_text.METRIC]
    assert [r["value"] for r in again] == [r["value"] for r in records]


def test_eval_text_queries_and_perturbations_are_reproducible(dataset: Path) -> None:
    from train.data.schema import read_split

    split = read_split(dataset, "test")
    texts_a, images_a = eval_text.select_queries(split, 2, seed=5, name="test")
    texts_b, images_b = eval_text.select_queries(split, 2, seed=5, name="test")
    assert texts_a == texts_b and images_a.tolist() == images_b.tolist()
    assert images_a.tolist() == [i for i in range(110) for _ in range(2)]
    typos = eval_text.perturb_all(texts_a, "typos", 0, "test")
    assert typos == eval_text.perturb_all(texts_a, "typos", 0, "test")
    assert all(t != o for t, o in zip(typos, texts_a, strict=True))
    assert eval_text.perturb_all(texts_a, "clean", 0, "test") == texts_a


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint", "{tmp}/none.pt"], "none.pt: checkpoint not found"),
        (["--checkpoint", "{ckpt}", "--candidates", "1"], "--candidates 1: must be ≥ 2"),
        (["--checkpoint", "{ckpt}", "--splits", "val"], "--splits: {data} has no split ['val']"),
        (["--checkpoint", "{ckpt}", "--variants", "lisp"], "--variants: unknown ['lisp']"),
        (["--checkpoint", "{ckpt}", "--captions-per-image", "9"], "--captions-per-image"),
        (["--checkpoint", "{ckpt}", "--data", "{tmp}/x.h5"], "x.h5: dataset file not found"),
        (["--checkpoint", "{ckpt}", "--candidates", "200"], "distractors needed"),
    ],
)
def test_eval_text_bad_input_gives_one_line(  # noqa: PLR0917  (pytest fixtures)
    tmp_path: Path,
    checkpoint: Path,
    dataset: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    fill = {"{tmp}": str(tmp_path), "{ckpt}": str(checkpoint), "{data}": str(dataset)}

    def sub(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    assert eval_text.main([*map(sub, flags), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and sub(message) in err, err


@pytest.fixture(scope="module")
def phrasing_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    splits = text_encoder.generated_splits(2, {"test": 60})
    ids = synth.split_class_ids("test_phrasing", 60, seed=2)
    images, captions, stated = synth.render_items_stated(2, "test_phrasing", 0, ids, 6)
    splits["test_phrasing"] = SplitData(
        images, captions, ids,
        np.array([Attributes.from_class_id(int(c)).indices for c in ids], np.int16),
        caption_stated=np.array(stated, np.uint8),
    )  # fmt: skip
    path = tmp_path_factory.mktemp("phrasing") / "tiny.h5"
    return write_rescue_scenes(path, splits)


def test_eval_text_measures_test_phrasing_full_and_partial_when_present(
    checkpoint: Path, phrasing_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "eval.jsonl"
    argv = ["--checkpoint", str(checkpoint), "--data", str(phrasing_dataset),
            "--candidates", "12", "--variants", "clean", "typos", "--threads", "1",
            "--out", str(out_file)]  # fmt: skip
    assert eval_text.main(argv) == 0
    table = capsys.readouterr().out
    assert "test_phrasing:partial" in table
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    rp = {(r["split"], r["variant"]): r for r in records if r["metric"] == eval_text.METRIC}
    assert set(rp) == {
        (s, v)
        for s in ("test", "test_phrasing", "test_phrasing:partial")
        for v in ("clean", "typos")
    }  # fmt: skip
    split = read_split(phrasing_dataset, "test_phrasing")
    assert split.caption_stated is not None
    full = (split.caption_stated == 31).sum(1)
    assert rp["test_phrasing", "clean"]["queries"] == int(np.minimum(full, 2).sum())
    assert rp["test_phrasing:partial", "clean"]["queries"] == int(np.minimum(6 - full, 2).sum())
    assert all(0.0 <= r["value"] <= 1.0 and r["candidates"] == 12 for r in rp.values())
    texts, images, masks = eval_text.select_stated_queries(split, 2, 0, "x", full=False)
    assert all(m != 31 for m in masks) and all(
        t in split.captions[i] for t, i in zip(texts, images, strict=True)
    )


def test_read_back_by_word_tells_held_out_words_from_held_out_forms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from train.text import readback as rb

    sizes = (8, 6, 3, 3, 2)
    heads = models.ReadBack(rb.default_config(4, sizes))
    texts = ["anyone in a crimson top?", "show me a red jacket", "uh, someone in the wreckage"]
    truth = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [3, 0, 0, 0, 0]])  # red; rubble
    stated = np.array([0b00001, 0b00001, 0b00010])
    # The robot read: colour "?" for crimson, red for "red", terrain right for "wreckage".
    chosen = np.array([[8, 6, 3, 3, 2, 0], [0, 6, 3, 3, 2, 0], [8, 0, 3, 3, 2, 0]])
    monkeypatch.setattr(eval_text, "decide_embeddings", lambda heads, e: chosen)
    records = eval_text._by_word_records(heads, np.zeros((3, 4)), texts, truth, stated, split="s")
    got = {(r["attribute"], r["words"]): (r["captions"], r["right"], r["read_unstated"])
           for r in records}  # fmt: skip
    assert got == {
        ("colour", "held-out word"): (1, 0.0, 1.0),
        ("colour", "training word"): (1, 1.0, 0.0),
        ("terrain", "held-out word"): (1, 1.0, 0.0),
    }
    assert "held-out word" in eval_text.format_by_word_table(records)
    # Another dataset's attributes: nothing to split by.
    other = models.ReadBack(rb.default_config(4, (3, 3)))
    assert (
        eval_text._by_word_records(other, np.zeros((3, 4)), texts, truth, stated, split="s") == []
    )


def test_held_out_value_phrases_are_held_out_and_name_one_value() -> None:
    from train.data import phrasing

    table = phrasing.heldout_value_phrases()
    every = set(phrasing.heldout_phrases())
    for name, by_value in table.items():
        assert set(by_value) == set(phrasing.ATTRIBUTE_VALUES[name])
        phrases = [p for ps in by_value.values() for p in ps]
        assert set(phrases) <= every
        assert len(phrases) == len(set(phrases)), name  # no phrase states two values
