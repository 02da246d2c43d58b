"""`python -m train search-eval`: judge an exported bundle's frame scorer on search scenes.

Runs what the robot runs — `edge_runtime.engine.Engine` (the variant's text encoder and frame
scorer graphs) and `edge_runtime.find.find_in_frame` (resize, NMS, the manifest's threshold) —
on a split of a search-scene file, with each frame's first query caption as the operator's
words. Judge: the renderer's ground-truth boxes (`train.search.train.judge`): top-1 IoU ≥ 0.5
with the described person on present frames, best score below the threshold on absent ones.
Prints one JSON line per split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from edge_runtime.engine import Engine
from edge_runtime.find import find_in_frame
from train.data.search_scenes import read_search
from train.errors import BAD_INPUT, first_line
from train.search.train import judge


def evaluate(engine: Engine, data: str, split_name: str, limit: int | None = None) -> dict:
    """The judged figures of one split through `engine`."""
    split, _ = read_search(data, split_name)
    count = len(split) if limit is None else min(limit, len(split))
    detections = []
    seconds = 0.0
    for i in range(count):
        embedding = engine.embed([split.query_captions[i][0]])
        start = time.perf_counter()
        found = find_in_frame(engine, embedding, split.frames[i], str(i))
        seconds += time.perf_counter() - start
        detections.append(list(found.detections))
    trimmed = split
    if count < len(split):
        trimmed = type(split)(
            *(getattr(split, f)[:count] for f in ("frames", "people_counts", "boxes",
              "person_attributes", "visible", "query_person", "query_attributes")),
            query_captions=split.query_captions[:count],
        )  # fmt: skip
    spec = engine.manifest.search
    assert spec is not None
    result = judge(trimmed, detections, spec.threshold)
    return {
        "split": split_name,
        "precision": engine.precision,
        "threshold": spec.threshold,
        **result,
        "frames_per_second_scorer": round(count / max(seconds, 1e-9), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse flags, evaluate each split, print JSON lines."""
    p = argparse.ArgumentParser(
        prog="python -m train search-eval", description=__doc__.splitlines()[0]
    )
    p.add_argument("--bundle", required=True, help="bundle with a frame scorer")
    p.add_argument("--data", required=True, help="search-scene HDF5")
    p.add_argument("--splits", nargs="+", default=["test", "test_unseen"])
    p.add_argument("--precision", default="int8", help="variant (default int8)")
    p.add_argument("--limit", type=int, default=None, help="frames per split (default all)")
    args = p.parse_args(argv)
    try:
        engine = Engine(args.bundle, precision=args.precision, threads=1)
        if not engine.has_search:
            print(f"search-eval: {args.bundle}: no frame scorer", file=sys.stderr)
            return 2
        for name in args.splits:
            print(json.dumps(evaluate(engine, args.data, name, args.limit)), flush=True)
    except BAD_INPUT as err:
        print(f"search-eval: {first_line(err)}", file=sys.stderr)
        return 2
    return 0
