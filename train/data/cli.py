"""`python -m train data SUBCOMMAND`: dataset commands, each a module with `main(argv) -> int`."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("train.data.synth", "render the rescue-scenes dataset"),
    "convert-cub": ("train.data.cub", "CUB-200-2011 + Reed's text_c10 captions → our HDF5"),
    "convert-oxford": ("train.data.oxford", "Oxford-102 flowers + Reed's text_c10 → our HDF5"),
    "import-peer": ("train.data.peer", "a GAN-CLS birds.hdf5 / flowers.hdf5 → our HDF5"),
    "phrasing-captions": (
        "train.data.phrasing_captions",
        "a split's labelled captions (test_phrasing) → JSON lines for `evaluate --captions`",
    ),
    "synth-search": (
        "train.data.search_scenes",
        "render search scenes: wide frames, 0-4 people, distractors, query captions (issue 20)",
    ),
    "info": ("train.data.info", "describe (and optionally verify) a dataset file"),
    "bench": ("train.data.bench", "time rendering and reading (prints, never asserts)"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: python -m train data SUBCOMMAND [options]   (SUBCOMMAND --help)", ""]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Route `argv[0]` to its subcommand's `main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"python -m train data: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)
