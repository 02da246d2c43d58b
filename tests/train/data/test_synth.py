"""`python -m train data synth`: splits, labels, determinism, flags."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.data import synth
from train.data.attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_VALUES,
    UNSEEN_PAIRS,
    Attributes,
    is_unseen,
)
from train.data.captions import captions_for
from train.data.phrasing import ALL_STATED, read_back, stated_names
from train.data.schema import read_info, read_split

REPO = Path(__file__).resolve().parents[3]
# --partial-fraction 0 --free-fraction 0: the grammar-only train captions of GENERATOR_VERSION 1
# (the defaults, 0.3 and 0.15, mix in partial and free-form ones; test_synth_partial_fraction_*
# and test_synth_free_fraction_* cover those).
SMALL = ["--train", "150", "--test", "40", "--unseen", "40", "--phrasing", "30",
         "--partial-fraction", "0", "--free-fraction", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "scenes.h5"
    assert synth.main(["--out", str(out), *SMALL, "--workers", "1", "--seed", "3"]) == 0
    return out


def test_synth_writes_the_schema_with_vocabulary_and_provenance(small_set: Path) -> None:
    info = read_info(small_set)
    assert info.dataset == "rescue-scenes" and info.image_size == 64
    assert info.splits == ["test", "test_phrasing", "test_unseen", "train"]
    assert info.split_sizes == {"train": 150, "test": 40, "test_unseen": 40, "test_phrasing": 30}
    assert info.attribute_names == list(ATTRIBUTE_NAMES)
    assert info.attribute_values == {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}
    assert len(info.class_names) == 864
    assert info.class_names[0] == "red/rubble/standing/left/helmet=no"
    assert info.provenance["seed"] == 3
    assert info.provenance["generator_version"] == synth.GENERATOR_VERSION
    assert info.provenance["unseen_pairs"] == [list(p) for p in UNSEEN_PAIRS]
    assert info.augmentation["hflip"] is False and info.augmentation["crop"] is False


def test_synth_labels_captions_and_class_ids_agree(small_set: Path) -> None:
    split = read_split(small_set, "train")
    assert split.images.shape == (150, 64, 64, 3)
    assert split.attributes is not None and split.attributes.shape == (150, 5)
    for class_id, row, captions in zip(
        split.class_ids, split.attributes, split.captions, strict=True
    ):
        a = Attributes.from_class_id(int(class_id))
        assert tuple(row) == a.indices
        assert len(captions) == 10 and len(set(captions)) == 10
        colour_words = {"red": "red scarlet", "purple": "purple violet"}.get(a.colour, a.colour)
        assert all(set(re.findall(r"[a-z]+", c)) & set(colour_words.split()) for c in captions)


def test_synth_test_unseen_pairs_never_occur_in_train(small_set: Path) -> None:
    def pairs(name: str) -> set[tuple[str, str]]:
        split = read_split(small_set, name)
        return {
            (Attributes.from_class_id(int(c)).colour, Attributes.from_class_id(int(c)).terrain)
            for c in split.class_ids
        }

    unseen = set(UNSEEN_PAIRS)
    assert not pairs("train") & unseen
    assert not pairs("test") & unseen
    assert pairs("test_unseen") <= unseen
    assert len(pairs("test_unseen")) == len(unseen)


def test_synth_split_class_ids_are_balanced() -> None:
    ids = synth.split_class_ids("train", 10_000, seed=0)
    counts = Counter(ids.tolist())
    assert len(counts) == 864 - 7 * 18
    assert max(counts.values()) - min(counts.values()) <= 1
    unseen = synth.split_class_ids("test_unseen", 1_000, seed=0)
    assert len(set(unseen.tolist())) == 7 * 18


def test_synth_is_byte_identical_by_seed_whatever_the_worker_count(
    small_set: Path, tmp_path: Path
) -> None:
    two = tmp_path / "two.h5"
    assert synth.main(["--out", str(two), *SMALL, "--workers", "2", "--seed", "3"]) == 0
    other = tmp_path / "other.h5"
    assert synth.main(["--out", str(other), *SMALL, "--workers", "1", "--seed", "4"]) == 0
    for name in ("train", "test", "test_unseen", "test_phrasing"):
        a, b, c = (read_split(p, name) for p in (small_set, two, other))
        assert np.array_equal(a.images, b.images)
        assert a.captions == b.captions
        assert np.array_equal(a.class_ids, b.class_ids)
        assert np.array_equal(a.attributes, b.attributes)
        assert (a.caption_stated is None) == (b.caption_stated is None)
        if a.caption_stated is not None:
            assert np.array_equal(a.caption_stated, b.caption_stated)
        assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--train", "0"], "--train"),
        (["--workers", "0"], "--workers"),
        (["--seed", "-1"], "--seed"),
        (["--unseen", "many"], "--unseen"),
    ],
)
def test_synth_rejects_bad_flags_naming_the_flag(
    flags: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        synth.main(["--out", str(tmp_path / "x.h5"), *flags])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_synth_refuses_a_directory_as_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert synth.main(["--out", str(tmp_path), "--train", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "directory" in err


def test_synth_runs_as_a_module_with_worker_processes(tmp_path: Path) -> None:
    out = tmp_path / "m.h5"
    result = subprocess.run(
        [sys.executable, "-m", "train", "data", "synth", "--out", str(out),
         "--train", "30", "--test", "5", "--unseen", "5", "--workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["splits"] == {"train": 30, "test": 5, "test_unseen": 5, "test_phrasing": 5}
    assert out.stat().st_mode & 0o044, "dataset should be readable per the umask, not 0600"


def test_synth_keeps_the_grammar_captions_of_generator_version_1(small_set: Path) -> None:
    # The seed rule of docs/DATA_FORMAT.md, re-derived: adding test_phrasing changed nothing here.
    for k, name in enumerate(("train", "test", "test_unseen")):
        split = read_split(small_set, name)
        assert split.caption_stated is None
        for i in (0, 7, len(split) - 1):
            a = Attributes.from_class_id(int(split.class_ids[i]))
            rng = np.random.default_rng([3, k, i, 1])
            assert split.captions[i] == captions_for(a, 10, rng)


def test_synth_test_phrasing_has_seen_pairs_and_heldout_captions_with_stated_labels(
    small_set: Path,
) -> None:
    split = read_split(small_set, "test_phrasing")
    assert split.caption_stated is not None and split.caption_stated.shape == (30, 10)
    assert not any(is_unseen(Attributes.from_class_id(int(c))) for c in split.class_ids)
    masks = split.caption_stated.ravel().tolist()
    assert 0.2 < masks.count(ALL_STATED) / len(masks) < 0.6  # full and partial both present
    training = {c for row in read_split(small_set, "train").captions for c in row}
    for i, row in enumerate(split.captions):
        a = Attributes.from_class_id(int(split.class_ids[i]))
        assert len(set(row)) == len(row)
        for caption, mask in zip(row, split.caption_stated[i], strict=True):
            stated = stated_names(int(mask))
            assert read_back(caption) == {n: getattr(a, n) for n in stated}, caption
            assert caption not in training


def test_synth_partial_fraction_replaces_train_captions_only(
    small_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / "partial.h5"
    flags = [*SMALL, "--seed", "3", "--partial-fraction", "0.5"]
    assert synth.main(["--out", str(out), *flags, "--workers", "2"]) == 0
    full, partial = read_split(small_set, "train"), read_split(out, "train")
    assert partial.caption_stated is not None and full.caption_stated is None
    is_partial = partial.caption_stated != ALL_STATED
    assert 0.35 < is_partial.mean() < 0.65
    for i in range(len(full)):
        a = Attributes.from_class_id(int(full.class_ids[i]))
        assert len(set(partial.captions[i])) == 10
        for j in range(10):
            if is_partial[i, j]:
                stated = stated_names(int(partial.caption_stated[i, j]))
                assert read_back(partial.captions[i][j]) == {n: getattr(a, n) for n in stated}
            else:  # the full captions are the grammar's, where they were
                assert partial.captions[i][j] == full.captions[i][j]
    for name in ("test", "test_unseen", "test_phrasing"):
        assert read_split(out, name).captions == read_split(small_set, name).captions
    assert read_info(out).provenance["partial_fraction"] == 0.5
    again = tmp_path / "again.h5"
    assert synth.main(["--out", str(again), *flags, "--workers", "1"]) == 0
    one = read_split(again, "train")
    assert one.captions == partial.captions
    assert np.array_equal(one.caption_stated, partial.caption_stated)


def test_synth_free_fraction_writes_full_captions_in_operator_forms(
    small_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / "free.h5"
    assert synth.main(["--out", str(out), *SMALL, "--seed", "3", "--free-fraction", "0.4",
                       "--workers", "1"]) == 0  # fmt: skip
    grammar, free = read_split(small_set, "train"), read_split(out, "train")
    assert free.caption_stated is None  # every caption still states all five
    moved = np.array([[f != g for f, g in zip(fr, gr, strict=True)]
                      for fr, gr in zip(free.captions, grammar.captions, strict=True)])  # fmt: skip
    assert 0.3 < moved.mean() < 0.5
    for i in range(len(free)):
        a = Attributes.from_class_id(int(free.class_ids[i]))
        assert len(set(free.captions[i])) == 10
        for caption, was_moved in zip(free.captions[i], moved[i], strict=True):
            if was_moved:  # the keyword reader knows the phrasing lexicon, not the grammar's
                assert read_back(caption) == {n: getattr(a, n) for n in ATTRIBUTE_NAMES}, caption
    for name in ("test", "test_unseen", "test_phrasing"):
        assert read_split(out, name).captions == read_split(small_set, name).captions
    assert read_info(out).provenance["free_fraction"] == 0.4


def test_synth_refuses_partial_and_free_fractions_above_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.h5"
    flags = ["--partial-fraction", "0.7", "--free-fraction", "0.4"]
    assert synth.main(["--out", str(out), *SMALL[:8], *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--free-fraction 0.4" in err[0] and "exceed 1" in err[0]
    assert not out.exists()


def test_synth_without_phrasing_writes_no_such_split(tmp_path: Path) -> None:
    out = tmp_path / "none.h5"
    assert synth.main(["--out", str(out), "--train", "5", "--test", "2", "--unseen", "2",
                       "--phrasing", "0", "--workers", "1"]) == 0  # fmt: skip
    assert "test_phrasing" not in read_info(out).splits


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "half"])
def test_synth_rejects_a_bad_partial_fraction(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        synth.main(["--out", str(tmp_path / "x.h5"), "--partial-fraction", value])
    assert exit_info.value.code == 2
    assert "--partial-fraction" in capsys.readouterr().err
