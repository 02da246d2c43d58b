"""A probe of a bundle with hand-written operator commands: read-back and pictures, judged.

    python scripts/operator_probe.py --bundle DIR --oracle ORACLE.pt --data data.h5
        [--judge JUDGE.pt] [--commands docs/operator_probe.tsv] [--precision int8] [--seeds 8]

Each line of the commands file is `caption<TAB>colour<TAB>terrain<TAB>pose<TAB>position<TAB>
helmet`, "?" where the caption leaves the attribute open. For every caption it prints what the
bundle's read-back understood, then draws `--seeds` images and counts those whose every stated
attribute the judges read right; the totals close the output.

The default list (docs/operator_probe.tsv) was written by hand in an operator's words, without
consulting the grammar's tables and before any model had read it; its author knows the grammar,
so it is not independent of it (issue 17's independent set is held outside the project). It is a
probe of failure kinds, not a target: never train or tune on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.canonical import DRAW_CHOICES, DRAW_UNDERSTOOD  # noqa: E402
from edge_runtime.engine import Engine  # noqa: E402
from edge_runtime.machine import cpu_info  # noqa: E402
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES  # noqa: E402
from train.errors import InputError  # noqa: E402
from train.quality import oracle as oracle_mod  # noqa: E402

UNSTATED = "?"


def read_commands(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(caption, per-attribute value or "?") per line; a bad line is named by its number."""
    commands = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        caption, *truth = line.split("\t")
        if len(truth) != len(ATTRIBUTE_NAMES):
            raise InputError(
                f"{path}:{number}: {len(truth)} attribute columns, expected "
                f"{len(ATTRIBUTE_NAMES)} ({', '.join(ATTRIBUTE_NAMES)})"
            )
        for name, value in zip(ATTRIBUTE_NAMES, truth, strict=True):
            if value != UNSTATED and value not in ATTRIBUTE_VALUES[name]:
                known = ", ".join(ATTRIBUTE_VALUES[name])
                raise InputError(
                    f"{path}:{number}: {name} {value!r} is not one of {known} or {UNSTATED!r}"
                )
        commands.append((caption, tuple(truth)))
    if not commands:
        raise InputError(f"{path}: no commands")
    return commands


def stated_right(labels: np.ndarray, truth: tuple[str, ...]) -> np.ndarray:
    """(N,) bool: the judge's labels (N, A) match every stated attribute of `truth`."""
    good = np.ones(len(labels), bool)
    for a, (name, value) in enumerate(zip(ATTRIBUTE_NAMES, truth, strict=True)):
        if value != UNSTATED:
            good &= labels[:, a] == ATTRIBUTE_VALUES[name].index(value)
    return good


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--oracle", required=True, help="kind='oracle' checkpoint")
    parser.add_argument("--judge", help="the second judge (python -m train oracle --design judge)")
    parser.add_argument("--data", required=True, help="dataset the judges' honesty is checked on")
    parser.add_argument("--commands", type=Path, default=ROOT / "docs" / "operator_probe.tsv")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument(
        "--draw", choices=DRAW_CHOICES, default=DRAW_UNDERSTOOD,
        help="understood (the robot's default: draw the read-back) or caption (the words)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        commands = read_commands(args.commands)
        engine = Engine(args.bundle, precision=args.precision, threads=1, draw=args.draw)
        judges = {}
        for name, path in (("oracle", args.oracle), ("judge", args.judge)):
            if path is None:
                continue
            # Honesty checks on the data's real renders first, as `train evaluate` runs them.
            judges[name] = oracle_mod.load_oracle(path, args.data).model
    except (InputError, OSError) as exc:
        print(f"operator_probe: {exc}", file=sys.stderr)
        return 2
    drawn = "draws what it understood" if engine.draws_understood else "draws the caption"
    print(f"CPU: {cpu_info().describe()}; bundle {args.bundle} ({engine.precision}, {drawn})")
    read_right = read_total = open_right = open_total = captions_right = 0
    images_right = dict.fromkeys(judges, 0)
    for caption, truth in commands:
        understood = engine.understand(caption)
        read = {a.name: a.value for a in understood.attributes} if understood else {}
        wrong = []
        for name, value in zip(ATTRIBUTE_NAMES, truth, strict=True):
            got = read.get(name)
            if value == UNSTATED:
                open_total += 1
                open_right += got == UNSTATED
            else:
                read_total += 1
                read_right += got == value
                if got != value:
                    wrong.append(f"{name} {got} ≠ {value}")
        captions_right += not wrong
        images = engine.generate(caption, n=args.seeds, seed=0)
        counts = []
        for name, network in judges.items():
            right = int(stated_right(oracle_mod.predict(network, images).labels, truth).sum())
            images_right[name] += right
            counts.append(f"{name} {right}/{args.seeds}")
        verdict = "; ".join(wrong) if wrong else "read right"
        print(f"{caption!r}: {verdict} | images right: {', '.join(counts)}")
    n = len(commands)
    print(f"read-back: stated attributes right {read_right}/{read_total} "
          f"({read_right / read_total:.1%}); captions with every stated attribute read right "
          f"{captions_right}/{n} ({captions_right / n:.1%}); open attributes read '?' "
          f"{open_right}/{open_total} ({open_right / max(open_total, 1):.1%})")  # fmt: skip
    for name, right in images_right.items():
        print(f"images with every stated attribute right ({name}): {right}/{n * args.seeds} "
              f"({right / (n * args.seeds):.1%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
