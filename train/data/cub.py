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
from pathlib import Path

from train.data.convert import (
    SourceItem,
    add_common_flags,
    find_class_split_dir,
    limit_items,
    positive_int,
    read_class_list,
    read_table,
    run_converter,
    write_converted,
)
from train.data.schema import DataError

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


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = argparse.ArgumentParser(
        prog="python -m train data convert-cub",
        description="Convert CUB-200-2011 with Reed's 10 captions per image to our HDF5 schema.",
    )
    p.add_argument("cub_dir", type=Path, help="the CUB_200_2011 directory")
    p.add_argument(
        "--captions", type=Path, required=True, help="Reed's caption folder (cvpr2016_cub/text_c10)"
    )
    p.add_argument(
        "--class-split-dir",
        type=Path,
        default=None,
        help="folder with trainvalclasses.txt / testclasses.txt (default: --captions' parent)",
    )
    p.add_argument(
        "--split",
        choices=("reed", "cub"),
        default="reed",
        help="reed: Reed's class split (test classes unseen in train, default); "
        "cub: CUB's own train_test_split.txt (same classes in both)",
    )
    p.add_argument(
        "--crop",
        choices=("none", "bbox"),
        default="none",
        help="bbox: crop a square of 1.5× the bird's bounding box before resizing",
    )
    p.add_argument(
        "--limit", type=positive_int("--limit"), default=None, help="at most N images per split"
    )
    add_common_flags(p, "data/cub.h5")
    return p


def main(argv: list[str] | None = None) -> int:
    """Convert; print a JSON summary line on stdout."""
    args = build_parser().parse_args(argv)

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
