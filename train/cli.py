"""`python -m train` / `rescue-train`: one thin dispatcher over the training commands.

Each command lives in its own module exposing `main(argv: list[str] | None) -> int`; this file
only routes the first argument, so `--help` of any command costs no import of the others.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

from edge_runtime.stdio import quiet_on_closed_pipe

# fmt: off
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("train.data.cli", "render rescue-scenes, convert CUB / Oxford-102 / birds.hdf5, inspect"),
    "text-encoder": ("train.text.pretrain", "pretrain the char-CNN-RNN text encoder jointly with an image encoder"),
    "eval-text": ("train.text.evaluate", "text→image R-precision of a text-encoder checkpoint"),
    "fit-readback": ("train.text.refit", "fit a checkpoint's read-back heads afresh on its frozen text encoder"),
    "gan": ("train.gan.loop", "train the text-conditioned DCGAN (GAN-CLS + GAN-INT + feature matching)"),
    "oracle": ("train.quality.oracle", "train the rescue-scenes attribute oracle used by evaluate"),
    "search-scorer": ("train.search.train", "fine-tune the frame scorer for search assist (issue 20)"),
    "search-eval": ("train.search.evaluate", "judge a bundle's frame scorer on search scenes (as the robot runs it)"),
    "evaluate": ("train.quality.evaluate", "evaluate a GAN checkpoint or an exported bundle"),
    "recipe": ("train.recipe", "run the default rescue-scenes recipe end to end"),
}
# fmt: on


def available() -> dict[str, tuple[str, str]]:
    """The commands whose modules exist in this checkout."""
    return {k: v for k, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def _usage(commands: dict[str, tuple[str, str]]) -> str:
    width = max(map(len, commands), default=0)
    lines = ["usage: python -m train COMMAND [options]   (COMMAND --help for its options)", ""]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in commands.items()]
    return "\n".join(lines)


def missing_extra(prog: str, extra: str, modules: tuple[str, ...]) -> str | None:
    """One line naming the extra to install when `modules` are absent (e.g. on a robot)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"{prog}: {', '.join(missing)} not installed (this is a robot install?); "
        f"install the {extra} extra: pip install 'rescue-t2i[{extra}]'"
    )


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    """Route `argv[0]` to its command's `main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    problem = missing_extra("rescue-train", "train", ("torch", "h5py"))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    commands = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(commands))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"rescue-train: unknown command {name!r}\n\n{_usage(commands)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    module = importlib.import_module(commands[name][0])
    return int(module.main(rest) or 0)
