"""The peer GAN-CLS birds.hdf5 layout: direct reading, de-duplication, import, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from train.data import peer
from train.data.files import read_info, read_split
from train.data.schema import DataError


@pytest.fixture
def birds(tmp_path: Path, fx: SimpleNamespace) -> Path:
    return fx.write_peer_file(tmp_path / "birds.hdf5")


def test_read_peer_split_deduplicates_entries_and_merges_captions(
    birds: Path, fx: SimpleNamespace
) -> None:
    split = peer.read_peer_split(birds, "train", image_size=76)
    assert split.images.shape == (4, 76, 76, 3) and split.images.dtype == np.uint8
    distinct = [list(dict.fromkeys(d)) for d in fx.PEER_DRAWS]
    assert split.caption_counts.tolist() == [len(d) for d in distinct] == [4, 5, 2, 5]
    c = max(len(d) for d in distinct)
    for i, (captions, draws) in enumerate(zip(split.captions, distinct, strict=True)):
        name = f"train_Bird_{i:04d}_{100 + i}"
        assert split.names[i] == name
        expected = [f"{name} caption {k}" for k in draws]  # trailing newline stripped
        assert captions[: len(expected)] == expected
        assert len(captions) == c
        assert captions == [expected[j % len(expected)] for j in range(c)]  # cycled padding
    # "001.Black_footed_Albatross" → 0: CUB's class number minus one, as our CUB converter.
    assert split.class_ids.tolist() == [0, 0, 1, 2]
    # The stored 76×76 image is the resized JPEG: blue background, red box towards the right.
    image = split.images[0].astype(int)
    assert image[5, 5, 2] > 150 and image[5, 5, 0] < 60


def test_read_peer_counts_the_duplicate_entries(birds: Path, fx: SimpleNamespace) -> None:
    _, class_names, stats = peer.read_peer(birds)
    duplicates = sum(len(d) - len(set(d)) for d in fx.PEER_DRAWS)
    for split in ("train", "valid", "test"):
        assert stats[split] == {"entries": 20, "duplicate_entries": duplicates, "images": 4}
    assert class_names == list(dict.fromkeys(fx.PEER_CLASSES))


def test_schema_readers_accept_the_peer_layout_directly(birds: Path) -> None:
    info = read_info(birds)
    assert info.layout == peer.LAYOUT
    assert info.splits == ["test", "train", "valid"]
    assert info.split_sizes == {"test": 4, "train": 4, "valid": 4}
    assert info.image_size == 76
    assert info.augmentation["hflip"] is True
    split = read_split(birds, "valid")
    assert len(split) == 4 and split.names[0].startswith("valid_")


def test_import_peer_writes_our_schema(
    birds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fx: SimpleNamespace
) -> None:
    out = tmp_path / "birds.h5"
    assert peer.main([str(birds), "--out", str(out), "--workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 4, "valid": 4, "test": 4}
    duplicates = sum(len(d) - len(set(d)) for d in fx.PEER_DRAWS)
    assert summary["merged_duplicate_entries"] == 3 * duplicates
    direct = peer.read_peer_split(birds, "test")
    converted = read_split(out, "test")
    assert np.array_equal(direct.images, converted.images)
    assert direct.captions == converted.captions
    assert np.array_equal(direct.caption_counts, converted.caption_counts)
    info = read_info(out)
    assert info.layout == "rescue-t2i-captions" and info.image_size == 76
    assert info.class_names[:3] == list(dict.fromkeys(fx.PEER_CLASSES))


def _undecodable(ex: object, split: str, image: int, entry: int) -> None:
    if split == "train" and image == 1:
        del ex["img"]
        ex.create_dataset("img", data=np.void(b"\xff\xd8 not really a jpeg"))


def _non_utf8(ex: object, split: str, image: int, entry: int) -> None:
    if split == "train" and image == 2 and entry == 1:
        del ex["txt"]
        ex.create_dataset("txt", data=np.bytes_(b"caf\xe9 bird"))


def _empty_caption(ex: object, split: str, image: int, entry: int) -> None:
    if split == "train" and image == 3 and entry == 0:
        del ex["txt"]
        ex.create_dataset("txt", data="  \n", dtype=h5py.special_dtype(vlen=str))


def _missing_img(ex: object, split: str, image: int, entry: int) -> None:
    if split == "train" and image == 0 and entry == 2:
        del ex["img"]


def _conflicting_class(ex: object, split: str, image: int, entry: int) -> None:
    if split == "train" and image == 1 and entry == 4:
        del ex["class"]
        ex.create_dataset("class", data="004.Groove_billed_Ani")


# case: (damage, expected message, skipped entries, reason counted by --skip-bad)
BAD_ENTRIES = {
    "undecodable image": (_undecodable, r"/train/train_Bird_0001_101_0/img: undecodable image",
                          1, "undecodable image"),
    "non-UTF-8 caption": (_non_utf8, r"/train/train_Bird_0002_102_1/txt: caption not UTF-8: "
                          r"byte 3", 1, "caption not UTF-8"),
    "empty caption": (_empty_caption, r"/train/train_Bird_0003_103_0/txt: empty caption", 1,
                      "empty caption"),
    "missing img": (_missing_img, r"/train/train_Bird_0000_100_2/img: missing dataset", 1,
                    "missing dataset"),
    "conflicting class": (_conflicting_class, r"/train/train_Bird_0001_101_4/class: "
                          r"conflicting entries", 1, "conflicting entries"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_import_peer_bad_entries_fail_in_one_line_or_are_skipped_and_counted(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], fx: SimpleNamespace
) -> None:
    mutate, expected, skipped, reason = BAD_ENTRIES[case]
    source = fx.write_peer_file(tmp_path / "birds.hdf5", mutate=mutate)
    out = tmp_path / "out" / "birds.h5"
    with pytest.raises(DataError, match=expected):
        peer.read_peer_split(source, "train")
    assert peer.main([str(source), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(source) in err and "Traceback" not in err
    fx.assert_no_output(out)
    assert peer.main([str(source), "--out", str(out), "--skip-bad"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == skipped
    assert summary["skipped_by_reason"] == {reason: skipped}
    assert read_split(out, "valid").names == read_split(source, "valid").names
    train = read_split(out, "train")
    if case == "undecodable image":  # the whole image goes, its captions with it
        assert len(train) == 3 and "train_Bird_0001_101" not in train.names
    else:  # only the bad entry goes; the image keeps its other captions
        assert len(train) == 4


def test_peer_reader_rejects_files_that_are_not_the_peer_layout(tmp_path: Path) -> None:
    path = tmp_path / "other.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=np.zeros(3))
    with pytest.raises(DataError, match="not the GAN-CLS peer layout"):
        peer.read_peer_split(path, "train")
    with pytest.raises(DataError, match="file not found"):
        peer.read_peer_split(tmp_path / "absent.hdf5", "train")


def test_peer_reader_reports_a_truncated_file(
    birds: Path, capsys: pytest.CaptureFixture[str], fx: SimpleNamespace
) -> None:
    data = birds.read_bytes()
    birds.write_bytes(data[: len(data) // 2])
    out = birds.parent / "out.h5"
    assert peer.main([str(birds), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated" in err and str(birds) in err
    fx.assert_no_output(out)


def test_import_peer_rejects_unknown_split_flag(
    birds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert peer.main([str(birds), "--out", str(birds.parent / "o.h5"), "--splits", "dev"]) == 2
    assert "--splits" in capsys.readouterr().err


def test_peer_reader_turns_any_truncation_or_corruption_into_one_data_error(
    birds: Path,
) -> None:
    data = birds.read_bytes()
    damaged = birds.parent / "damaged.hdf5"
    rng = np.random.default_rng(1)
    for trial in range(50):
        if trial < 15:
            damaged.write_bytes(data[: len(data) * (trial + 1) // 16])
        else:
            corrupt = bytearray(data)
            for position in rng.integers(0, len(data), 20):
                corrupt[position] = int(rng.integers(0, 256))
            damaged.write_bytes(bytes(corrupt))
        try:
            read_info(damaged)
            peer.read_peer(damaged)
        except DataError as err:
            assert "\n" not in str(err) and str(err).startswith(str(damaged))
