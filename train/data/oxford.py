"""`python -m train data convert-oxford`: Oxford-102 flowers + Reed's captions → our HDF5.

Inputs, exactly as distributed::

    102flowers/
        jpg/image_00001.jpg … image_08189.jpg     (imagelabels.mat / setid.mat are not needed:
                                                    Reed's caption folders carry the classes)
    cvpr2016_flowers/                              Reed et al.'s caption release
        text_c10/class_00001/image_06734.txt       10 captions, one per line
        trainvalclasses.txt                        82 class folder names: our "train" split
        testclasses.txt                            20 class folder names: our "test" split

Class id = the folder's number minus one (class_00001 → 0); class names are the folder names.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from train import options
from train.data.convert import (
    ConverterFlags,
    SourceItem,
    find_class_split_dir,
    limit_items,
    read_class_list,
    run_converter,
    write_converted,
)
from train.data.schema import DataError
from train.options import REQUIRED, option

DATASET_NAME = "oxford-102-flowers"
_CLASS_FOLDER = re.compile(r"^class_(\d+)$")


def oxford_items(
    flowers_dir: Path, captions: Path, *, class_split_dir: Path | None = None
) -> tuple[list[SourceItem], list[str], dict[str, int]]:
    """Every captioned image of the class split, class names by id, counts left out."""
    jpg = flowers_dir / "jpg"
    if not jpg.is_dir():
        raise DataError(f"{jpg}: missing (is {flowers_dir} the Oxford-102 '102flowers' folder?)")
    if not captions.is_dir():
        raise DataError(f"{captions}: caption directory (Reed's text_c10) not found")
    split_dir = find_class_split_dir(class_split_dir, captions)
    split_of = {c: "train" for c in read_class_list(split_dir / "trainvalclasses.txt")}
    split_of.update({c: "test" for c in read_class_list(split_dir / "testclasses.txt")})
    folders = sorted(p for p in captions.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{captions}: no class_XXXXX folders (is this Reed's text_c10?)")
    items, ids, left_out = [], {}, {"class in no split": 0}
    for folder in folders:
        match = _CLASS_FOLDER.match(folder.name)
        if match is None or int(match.group(1)) < 1:
            raise DataError(f"{folder}: not a class_XXXXX folder (Reed's text_c10 layout)")
        class_id = int(match.group(1)) - 1
        ids[class_id] = folder.name
        captions_files = sorted(folder.glob("*.txt"))
        which = split_of.get(folder.name)
        if which is None:
            left_out["class in no split"] += len(captions_files)
            continue
        items += [
            SourceItem(which, class_id, f.stem, jpg / f"{f.stem}.jpg", f) for f in captions_files
        ]
    if not any(i.split == "train" for i in items):
        raise DataError(
            f"{captions}: no image falls in the train split (do the names in "
            "trainvalclasses.txt match the class_XXXXX folders?)"
        )
    names = [ids.get(i, f"class_{i + 1:05d}") for i in range(max(ids) + 1)]
    return sorted(items, key=lambda i: i.split != "train"), names, left_out


@dataclass(frozen=True)
class _OxfordSource:
    """What only convert-oxford asks for."""

    flowers_dir: Path = option(REQUIRED, "the Oxford-102 folder containing jpg/", positional=True)
    captions: Path = option(
        REQUIRED, "Reed's caption folder (cvpr2016_flowers/text_c10)", required=True
    )
    class_split_dir: Path | None = option(
        None,
        "folder with trainvalclasses.txt / testclasses.txt (default: --captions' parent)",
        show_default=False,
    )
    limit: int | None = option(None, "at most N images per split", show_default=False, at_least=1)


@dataclass(frozen=True)
class OxfordFlags(ConverterFlags, _OxfordSource):
    """The convert-oxford command line (`train.options`): its own flags, then the shared ones
    (a dataclass takes its bases' fields last base first)."""

    out: Path = option(Path("data/flowers.h5"), "output HDF5 file", show_default=False)


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, generated from `OxfordFlags` (argparse checks the ranges)."""
    p = argparse.ArgumentParser(
        prog="python -m train data convert-oxford",
        description="Convert Oxford-102 flowers with Reed's 10 captions per image to our schema.",
    )
    return options.build_parser(OxfordFlags, p, given_only=False, ranges_in_parser=True)


def main(argv: list[str] | None = None) -> int:
    """Convert; print a JSON summary line on stdout."""
    args = OxfordFlags(**vars(build_parser().parse_args(argv)))

    def convert(started: float) -> dict[str, object]:
        items, class_names, left_out = oxford_items(
            args.flowers_dir, args.captions, class_split_dir=args.class_split_dir
        )
        return write_converted(
            args,
            limit_items(items, args.limit),
            dataset=DATASET_NAME,
            class_names=class_names,
            provenance={
                "converter": "train.data.oxford",
                "source": str(args.flowers_dir),
                "captions": str(args.captions),
                "class_split": "reed",
                "limit": args.limit,
                "left_out": left_out,
            },
            started=started,
        )

    return run_converter(args.out, convert)
