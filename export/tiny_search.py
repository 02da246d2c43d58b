"""The tiny committed search bundle: the tiny bundle plus a random-weight frame scorer.

    python -m export.tiny_search tests/fixtures/tiny_search_bundle

builds a random-weight scorer checkpoint (4 stages of 4–8 channels, 128×128 frames, the real two
scales) in a temporary directory and runs the real `export.search.add_search` on the committed
`tests/fixtures/tiny_bundle`, so the bundle has fp32 and int8 `frame_scorer` graphs, the real
tensor names and a `search` section the runtime verifies. Runtime tests (`rescue-edge find`,
serial `find`) load it in milliseconds; its boxes are meaningless (the weights are random).

Two checks are relaxed, for reasons of the fixture, not of the exporter: the tiny bundle's text
encoder came from a random GAN checkpoint that is not kept, so the scorer cannot carry that very
encoder (`text_check=False`); and random weights give near-tied scores whose top-1 int8 flips
freely, so the agreement gate is 0 (the real gate is `MIN_TOP1_AGREEMENT`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import torch

from export.search import add_search
from export.tiny import TEXT_CONFIG
from train import checkpoint as ck
from train.models import CharCnnRnn
from train.search.scorer import FrameScorer, ScorerConfig, config_to_dict
from train.search.train import KIND, NMS_IOU, TOP_K

TINY_BUNDLE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny_bundle"
SCORER_CONFIG = ScorerConfig(
    channels=(4, 4, 8, 8),
    embedding_dim=TEXT_CONFIG.embedding_dim,
    joint_dim=8,
    frame_size=128,
)
TINY_THRESHOLD = 0.5


def tiny_scorer_checkpoint(seed: int = 0) -> dict:
    """A random-weight scorer checkpoint in the real format (`train.search.train.load_scorer`)."""
    torch.manual_seed(seed)
    scorer = FrameScorer(SCORER_CONFIG)
    # Random BatchNorm statistics, so folding is exercised with something other than identity.
    for module in scorer.trunk:
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    encoder = CharCnnRnn(TEXT_CONFIG)
    return ck.new_checkpoint(
        KIND,
        models={"frame_scorer": scorer.state_dict(), "text_encoder": encoder.state_dict()},
        model_configs={
            "frame_scorer": config_to_dict(SCORER_CONFIG),
            "text_encoder": dataclasses.asdict(TEXT_CONFIG),
        },
        config={"tiny": True},
        search={"threshold": TINY_THRESHOLD, "nms_iou": NMS_IOU, "top_k": TOP_K},
        metrics={},
        step=0,
    )


def main(argv: list[str] | None = None) -> int:
    """Regenerate the tiny search bundle at OUT (replacing it)."""
    parser = argparse.ArgumentParser(
        prog="python -m export.tiny_search", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="e.g. tests/fixtures/tiny_search_bundle")
    parser.add_argument("--bundle", type=Path, default=TINY_BUNDLE, help="bundle to extend")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="tiny-search-") as tmp:
        path = ck.save_checkpoint(tiny_scorer_checkpoint(), Path(tmp) / "scorer.pt")
        add_search(
            path,
            args.bundle,
            args.out,
            force=True,
            min_agreement=0.0,
            text_check=False,
            gate_frames=8,
        )
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
