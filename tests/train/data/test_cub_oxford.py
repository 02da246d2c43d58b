"""CUB-200-2011 and Oxford-102 converters on fixtures laid out exactly like the originals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from train.data import cub, oxford
from train.data.schema import read_info, read_split


def _convert_cub(root: Path, out: Path, *extra: str) -> int:
    return cub.main(
        [str(root / "CUB_200_2011"), "--captions", str(root / "cvpr2016_cub" / "text_c10"),
         "--out", str(out), "--workers", "2", *extra]
    )  # fmt: skip


def _convert_oxford(root: Path, out: Path, *extra: str) -> int:
    return oxford.main(
        [str(root / "102flowers"), "--captions", str(root / "cvpr2016_flowers" / "text_c10"),
         "--out", str(out), *extra]
    )  # fmt: skip


def test_convert_cub_uses_reeds_class_split_and_stores_76px_images(
    cub_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fx: SimpleNamespace
) -> None:
    out = tmp_path / "cub.h5"
    assert _convert_cub(cub_root, out) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 9, "test": 3} and summary["skipped"] == 0
    train, test = read_split(out, "train"), read_split(out, "test")
    assert sorted(set(train.class_ids.tolist())) == [0, 1, 2]  # trainvalclasses
    assert set(test.class_ids.tolist()) == {3}  # testclasses: unseen in train
    assert train.images.shape == (9, 76, 76, 3)
    assert train.names[0] == "Black_footed_Albatross_0001_790001"
    assert (
        train.captions[0][0] == "this bird Black_footed_Albatross_0001_790001 has feature number 0"
    )
    assert len(train.captions[0]) == 10 and train.caption_counts.tolist() == [10] * 9
    info = read_info(out)
    assert info.dataset == "cub-200-2011" and info.image_size == 76
    assert info.class_names == list(fx.CUB_CLASSES)
    assert info.provenance["class_split"] == "reed"
    assert info.augmentation == {"hflip": True, "crop": True, "crop_size": 64}


def test_convert_cub_bbox_crop_centres_the_bird(cub_root: Path, tmp_path: Path) -> None:
    assert _convert_cub(cub_root, tmp_path / "full.h5") == 0
    assert _convert_cub(cub_root, tmp_path / "crop.h5", "--crop", "bbox") == 0
    full = read_split(tmp_path / "full.h5", "train").images[0].astype(int)
    crop = read_split(tmp_path / "crop.h5", "train").images[0].astype(int)

    def red_fraction(image: np.ndarray) -> float:
        return float(((image[..., 0] > 150) & (image[..., 2] < 100)).mean())

    # The red box fills 40×30 of 160×100 (7.5 %); a 1.5× square crop around it, ~30-45 %.
    assert red_fraction(full) < 0.12
    assert 0.25 < red_fraction(crop) < 0.6
    assert crop[38, 38, 0] > 150  # the crop's centre is the bird


def test_convert_cub_limit_takes_images_round_robin_over_classes(
    cub_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "few.h5"
    assert _convert_cub(cub_root, out, "--limit", "4") == 0
    train = read_split(out, "train")
    assert train.class_ids.tolist() == [0, 1, 2, 0]
    assert len(read_split(out, "test")) == 3


def test_convert_cub_can_use_cubs_own_image_split(cub_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cubsplit.h5"
    assert _convert_cub(cub_root, out, "--split", "cub", "--captions-per-image", "4") == 0
    train, test = read_split(out, "train"), read_split(out, "test")
    assert len(train) == 8 and len(test) == 4  # 2 of each class's 3 images are "1" (train)
    assert set(train.class_ids.tolist()) == set(test.class_ids.tolist()) == {0, 1, 2, 3}
    assert len(train.captions[0]) == 4


def _first_image(root: Path) -> tuple[Path, Path]:
    cls = "001.Black_footed_Albatross"
    stem = "Black_footed_Albatross_0001_790001"
    return (root / "CUB_200_2011" / "images" / cls / f"{stem}.jpg",
            root / "cvpr2016_cub" / "text_c10" / cls / f"{stem}.txt")  # fmt: skip


def _tiny_image(root: Path, fx: SimpleNamespace) -> None:
    image, _ = _first_image(root)
    image.write_bytes(fx.jpeg(np.zeros((6, 9, 3), np.uint8)))


# case: (damage, expected stderr fragment, reason counted by --skip-bad or None if fatal)
CUB_BAD: dict[str, tuple[Callable[[Path, SimpleNamespace], None], str, str | None]] = {
    "missing caption file": (lambda r, fx: _first_image(r)[1].unlink(),
                             "Black_footed_Albatross_0001_790001.txt: missing caption file",
                             "missing caption file"),
    "empty caption file": (lambda r, fx: _first_image(r)[1].write_text("\n  \n"),
                           "0001_790001.txt: empty caption file", "empty caption file"),
    "non-UTF-8 captions": (lambda r, fx: _first_image(r)[1].write_bytes(b"ok\nbad \xff\n"),
                           "0001_790001.txt: caption not UTF-8: byte 7 (line 2)",
                           "caption not UTF-8"),
    "missing image": (lambda r, fx: _first_image(r)[0].unlink(),
                      "0001_790001.jpg: missing image file", "missing image file"),
    "undecodable image": (lambda r, fx: _first_image(r)[0].write_bytes(b"\xff\xd8\xff junk"),
                          "0001_790001.jpg: undecodable image", "undecodable image"),
    "wrong-size image": (_tiny_image, "0001_790001.jpg: image too small: 9×6",
                         "image too small"),
    "malformed images.txt": (
        lambda r, fx: (r / "CUB_200_2011" / "images.txt").write_text("1 a.jpg\ntwo b.jpg\n"),
        "images.txt:2: malformed line 'two b.jpg'", None),
    "missing class split": (lambda r, fx: (r / "cvpr2016_cub" / "testclasses.txt").unlink(),
                            "testclasses.txt: missing (Reed's class split file)", None),
    "wrong layout": (lambda r, fx: (r / "CUB_200_2011" / "image_class_labels.txt").unlink(),
                     "image_class_labels.txt: missing (CUB image classes)", None),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CUB_BAD))
def test_convert_cub_bad_input_fails_in_one_line_or_is_skipped_and_counted(
    case: str,
    cub_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fx: SimpleNamespace,
) -> None:
    damage, expected, reason = CUB_BAD[case]
    damage(cub_root, fx)
    out = tmp_path / "out" / "cub.h5"
    assert _convert_cub(cub_root, out) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    fx.assert_no_output(out)
    assert _convert_cub(cub_root, out, "--skip-bad") == (0 if reason else 1)
    captured = capsys.readouterr()
    if reason is None:  # layout problems are never skippable
        fx.assert_no_output(out)
        return
    summary = json.loads(captured.out)
    assert summary["skipped"] == 1 and summary["skipped_by_reason"] == {reason: 1}
    assert summary["splits"] == {"train": 8, "test": 3}
    assert "Black_footed_Albatross_0001_790001" not in read_split(out, "train").names
    assert read_info(out).provenance["skipped"] == {reason: 1}


def test_convert_cub_flags_are_validated_up_front(
    cub_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _convert_cub(cub_root, tmp_path / "x.h5", "--limit", "0")
    assert "--limit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _convert_cub(cub_root, tmp_path / "x.h5", "--image-size", "8")
    assert "--image-size" in capsys.readouterr().err
    assert _convert_cub(cub_root, tmp_path) == 2
    assert "--out" in capsys.readouterr().err


def test_convert_oxford_uses_reeds_class_folders_and_split(
    oxford_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "flowers.h5"
    assert _convert_oxford(oxford_root, out, "--encode-png") == 0
    assert json.loads(capsys.readouterr().out)["splits"] == {"train": 4, "test": 2}
    train, test = read_split(out, "train"), read_split(out, "test")
    assert train.class_ids.tolist() == [0, 0, 1, 1] and test.class_ids.tolist() == [2, 2]
    assert train.names == ["image_00001", "image_00002", "image_00003", "image_00004"]
    assert train.captions[0][3] == "this bird flower image_00001 has feature number 3"
    assert train.images.shape == (4, 76, 76, 3)
    info = read_info(out)
    assert info.dataset == "oxford-102-flowers"
    assert info.class_names == ["class_00001", "class_00002", "class_00003"]


def _flowers(root: Path) -> tuple[Path, Path]:
    return (root / "102flowers" / "jpg" / "image_00003.jpg",
            root / "cvpr2016_flowers" / "text_c10" / "class_00002" / "image_00003.txt")  # fmt: skip


OXFORD_BAD: dict[str, tuple[Callable[[Path], None], str, str | None]] = {
    "missing image": (lambda r: _flowers(r)[0].unlink(), "image_00003.jpg: missing image file",
                      "missing image file"),
    "non-UTF-8 captions": (lambda r: _flowers(r)[1].write_bytes(b"\xfe\xff"),
                           "image_00003.txt: caption not UTF-8: byte 0 (line 1)",
                           "caption not UTF-8"),
    "undecodable image": (lambda r: _flowers(r)[0].write_bytes(b""),
                          "image_00003.jpg: undecodable image", "undecodable image"),
    "wrong class folder": (lambda r: (r / "cvpr2016_flowers" / "text_c10" / "roses").mkdir(),
                           "roses: not a class_XXXXX folder", None),
    "missing jpg folder": (lambda r: (r / "102flowers" / "jpg").rename(r / "102flowers" / "j"),
                           "jpg: missing", None),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(OXFORD_BAD))
def test_convert_oxford_bad_input_fails_in_one_line_or_is_skipped_and_counted(
    case: str,
    oxford_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fx: SimpleNamespace,
) -> None:
    damage, expected, reason = OXFORD_BAD[case]
    damage(oxford_root)
    out = tmp_path / "out" / "flowers.h5"
    assert _convert_oxford(oxford_root, out) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    fx.assert_no_output(out)
    if reason is not None:
        assert _convert_oxford(oxford_root, out, "--skip-bad") == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["skipped_by_reason"] == {reason: 1}
        assert summary["splits"] == {"train": 3, "test": 2}
