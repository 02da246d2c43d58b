"""`python -m train data phrasing-captions`: labelled captions for `evaluate --captions`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.data import phrasing_captions, synth
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, Attributes
from train.data.info import describe
from train.data.phrasing import read_back, stated_mask
from train.data.schema import read_split


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phrasing") / "scenes.h5"
    flags = ["--train", "20", "--test", "12", "--unseen", "4", "--phrasing", "25"]
    assert synth.main(["--out", str(out), *flags, "--workers", "1", "--seed", "5"]) == 0
    return out


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_phrasing_captions_export_the_splits_captions_with_only_stated_attributes(
    scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "phrasing.jsonl"
    assert (
        phrasing_captions.main(["--data", str(scenes), "--out", str(out), "--per-image", "4"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    lines = _read(out)
    assert summary["captions"] == len(lines) == 25 * 4 and 0 < summary["partial"] < len(lines)
    split = read_split(scenes, "test_phrasing")
    for line in lines:
        i = int(str(line["image"]).split("/")[1])
        j = split.captions[i].index(str(line["caption"]))
        assert stated_mask(line["stated"]) == split.caption_stated[i, j]  # type: ignore[arg-type]
        truth = Attributes.from_class_id(int(split.class_ids[i]))
        assert line["attributes"] == {n: getattr(truth, n) for n in line["stated"]}  # type: ignore[union-attr]
        assert read_back(str(line["caption"])) == line["attributes"]


def test_phrasing_captions_kind_and_seed(scenes: Path, tmp_path: Path) -> None:
    base = ["--data", str(scenes), "--per-image", "2"]
    for kind in ("full", "partial"):
        out = tmp_path / f"{kind}.jsonl"
        assert phrasing_captions.main([*base, "--out", str(out), "--kind", kind]) == 0
        assert all((len(line["stated"]) == 5) == (kind == "full") for line in _read(out))  # type: ignore[arg-type]
    a, b, c = (tmp_path / n for n in ("a.jsonl", "b.jsonl", "c.jsonl"))
    assert phrasing_captions.main([*base, "--out", str(a), "--seed", "1"]) == 0
    assert phrasing_captions.main([*base, "--out", str(b), "--seed", "1"]) == 0
    assert phrasing_captions.main([*base, "--out", str(c), "--seed", "2"]) == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_phrasing_captions_of_a_split_without_labels_state_everything(
    scenes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "test.jsonl"
    assert (
        phrasing_captions.main(["--data", str(scenes), "--split", "test", "--out", str(out)]) == 0
    )
    assert all(line["stated"] == list(ATTRIBUTE_NAMES) for line in _read(out))


def test_phrasing_captions_are_read_by_the_evaluator(scenes: Path, tmp_path: Path) -> None:
    # Imported here: the quality room is heavy and only this test needs it.
    from train.quality.evaluate import read_captions_file

    out = tmp_path / "phrasing.jsonl"
    assert (
        phrasing_captions.main(["--data", str(scenes), "--out", str(out), "--per-image", "3"]) == 0
    )
    values = {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}
    captions = read_captions_file(out, list(ATTRIBUTE_NAMES), values)
    lines = _read(out)
    assert captions.captions == [line["caption"] for line in lines]
    unstated = (captions.attributes < 0).sum(1)
    assert unstated.tolist() == [5 - len(line["stated"]) for line in lines]  # type: ignore[arg-type]


def test_phrasing_captions_bad_input_is_one_line(
    scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.jsonl"
    assert (
        phrasing_captions.main(["--data", str(scenes), "--split", "valid", "--out", str(out)]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no split 'valid'" in err and str(scenes) in err
    missing = tmp_path / "missing.h5"
    assert phrasing_captions.main(["--data", str(missing), "--out", str(out)]) == 1
    assert "not found" in capsys.readouterr().err
    assert not out.exists()


def test_info_verify_counts_partial_captions(scenes: Path) -> None:
    splits = describe(scenes, verify=True)["splits"]
    stated = read_split(scenes, "test_phrasing").caption_stated
    assert stated is not None
    assert splits["test_phrasing"]["partial_captions"] == int((stated != 31).sum()) > 0  # type: ignore[index]
    assert splits["test"]["partial_captions"] is None  # type: ignore[index]
