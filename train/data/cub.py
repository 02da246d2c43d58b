"""`python -m train data convert-cub`: CUB-200-2011 + Reed's captions → our HDF5.

Inputs, exactly as distributed::

    CUB_200_2011/
        images/<class>/<image>.jpg
        images.txt                 "<image id> <class>/<image>.jpg"
        classes.txt                "<class id> <class>", e.g. "1 001.Black_footed_Albatross"
        image_class_labels.txt     "<image id> <class id>"
        train_test_split.txt       "<image id> <1 = train, 0 = test>"   (only for --split cub)
        bounding_boxes.txt         "<image id> <x> <y> <width> <height>" (only for --crop bbox)
    cvpr2016_cub/                  Reed et al.'s caption release
        text_c10/<class>/<image>.txt   10 captions, one per line
        trainvalclasses.txt            150 class names (train + val): our "train" split
        testclasses.txt                50 class names: our "test" split (classes unseen in train)

Class ids are CUB's minus one (0..199); class names come from classes.txt.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from train import options
from train.data.convert import (
    ConverterFlags,
    SourceItem,
    find_class_split_dir,
    limit_items,
    read_class_list,
    read_table,
    run_converter,
    write_converted,
)
from train.data.schema import DataError
from train.options import REQUIRED, option

DATASET_NAME = "cub-200-2011"


def cub_items(
    cub_dir: Path,
    captions: Path,
    *,
    split: str = "reed",
    class_split_dir: Path | None = None,
    crop: str = "none",
) -> tuple[list[SourceItem], list[str], dict[str, int]]:
    """Every image of the chosen splits, the class names by id, and counts of images left out."""
    if not cub_dir.is_dir():
        raise DataError(f"{cub_dir}: CUB-200-2011 directory not found")
    if not captions.is_dir():
        raise DataError(f"{captions}: caption directory (Reed's text_c10) not found")
    images = read_table(cub_dir / "images.txt", (int, str), "CUB image list")
    labels = dict(read_table(cub_dir / "image_class_labels.txt", (int, int), "CUB image classes"))
    classes = dict(read_table(cub_dir / "classes.txt", (int, str), "CUB class names"))
    boxes = {}
    if crop == "bbox":
        rows = read_table(
            cub_dir / "bounding_boxes.txt", (int, float, float, float, float), "CUB boxes"
        )
        boxes = {r[0]: r[1:] for r in rows}
    if split == "reed":
        split_dir = find_class_split_dir(class_split_dir, captions)
        split_of = {c: "train" for c in read_class_list(split_dir / "trainvalclasses.txt")}
        split_of.update({c: "test" for c in read_class_list(split_dir / "testclasses.txt")})
    else:
        flags = dict(read_table(cub_dir / "train_test_split.txt", (int, int), "CUB image split"))

    items, left_out = [], {"class in no split": 0}
    for image_id, relative in images:
        where = f"{cub_dir / 'images.txt'}: image {image_id}"
        if image_id not in labels:
            raise DataError(f"{cub_dir / 'image_class_labels.txt'}: no class for image {image_id}")
        class_id = labels[image_id]
        if class_id not in classes:
            raise DataError(f"{cub_dir / 'classes.txt'}: no class {class_id} ({where})")
        if crop == "bbox" and image_id not in boxes:
            raise DataError(f"{cub_dir / 'bounding_boxes.txt'}: no box for image {image_id}")
        if split == "reed":
            which = split_of.get(classes[class_id])
            if which is None:
                left_out["class in no split"] += 1
                continue
        else:
            if image_id not in flags:
                raise DataError(f"{cub_dir / 'train_test_split.txt'}: no entry for {image_id}")
            which = "train" if flags[image_id] == 1 else "test"
        rel = Path(relative)
        items.append(
            SourceItem(
                split=which,
                class_id=class_id - 1,
                name=rel.stem,
                image=cub_dir / "images" / rel,
                captions=captions / rel.with_suffix(".txt"),
                box=boxes.get(image_id),
            )
        )
    if not any(i.split == "train" for i in items):
        raise DataError(
            f"{cub_dir}: no image falls in the train split (do the names in trainvalclasses.txt "
            "match classes.txt?)"
        )
    size = max(classes, default=0)
    names = [classes.get(i + 1, "") for i in range(size)]
    return sorted(items, key=lambda i: i.split != "train"), names, left_out


@dataclass(frozen=True)
class _CubSource:
    """What only convert-cub asks for."""

    cub_dir: Path = option(REQUIRED, "the CUB_200_2011 directory", positional=True)
    captions: Path = option(
        REQUIRED, "Reed's caption folder (cvpr2016_cub/text_c10)", required=True
    )
    class_split_dir: Path | None = option(
        None,
        "folder with trainvalclasses.txt / testclasses.txt (default: --captions' parent)",
        show_default=False,
    )
    split: str = option(
        "reed",
        "reed: Reed's class split (test classes unseen in train, default); "
        "cub: CUB's own train_test_split.txt (same classes in both)",
        show_default=False,
        choices=("reed", "cub"),
    )
    crop: str = option(
        "none",
        "bbox: crop a square of 1.5× the bird's bounding box before resizing",
        show_default=False,
        choices=("none", "bbox"),
    )
    limit: int | None = option(None, "at most N images per split", show_default=False, at_least=1)


@dataclass(frozen=True)
class CubFlags(ConverterFlags, _CubSource):
    """The convert-cub command line (`train.options`): its own flags, then the shared ones
    (a dataclass takes its bases' fields last base first)."""

    out: Path = option(Path("data/cub.h5"), "output HDF5 file", show_default=False)


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, generated from `CubFlags` (argparse checks the ranges)."""
    p = argparse.ArgumentParser(
        prog="python -m train data convert-cub",
        description="Convert CUB-200-2011 with Reed's 10 captions per image to our HDF5 schema.",
    )
    return options.build_parser(CubFlags, p, given_only=False, ranges_in_parser=True)


def main(argv: list[str] | None = None) -> int:
    """Convert; print a JSON summary line on stdout."""
    args = CubFlags(**vars(build_parser().parse_args(argv)))

    def convert(started: float) -> dict[str, object]:
        items, class_names, left_out = cub_items(
            args.cub_dir,
            args.captions,
            split=args.split,
            class_split_dir=args.class_split_dir,
            crop=args.crop,
        )
        return write_converted(
            args,
            limit_items(items, args.limit),
            dataset=DATASET_NAME,
            class_names=class_names,
            provenance={
                "converter": "train.data.cub",
                "source": str(args.cub_dir),
                "captions": str(args.captions),
                "class_split": args.split,
                "crop": args.crop,
                "limit": args.limit,
                "left_out": left_out,
            },
            started=started,
        )

    return run_converter(args.out, convert)
