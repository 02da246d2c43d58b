"""The read-back graph: export, parity, int8 by measurement, and the decision-agreement gate.

A GAN checkpoint may carry a "readback" model (`train.models.ReadBack`, copied from the text
encoder's pretraining); old ones do not, and then the bundle has no read-back. The graph is
`ReadBack.probabilities` — text_embedding (B, E) → attribute_probs (B, Σ(n_a + 1)), off_domain
(B,) — so the robot applies only the decision rule (`edge_runtime.readback`).

int8: a dynamic-int8 candidate (MatMul/Gemm) is built and timed against fp32 at batch 1 on one
thread; it ships only if it is ≥ `INT8_MIN_SPEEDUP`× faster, otherwise the int8 variant names the
fp32 read-back graph. Either way the int8 variant is gated end to end (its text encoder → its
read-back against fp32 → fp32) on decision agreement (docs/EXPORT.md § Read-back).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_runtime import bundle as b
from edge_runtime.readback import decision_indices
from export import onnx_export as ox
from export import quantize as q
from train import checkpoint as ck
from train.data import captions
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, UNSEEN_PAIRS
from train.models import CharCnnRnn, ReadBack
from train.timing import interleaved

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.98
"""Gate: share of the int8 variant's decisions equal to fp32's, for attribute decisions (one per
caption and attribute) and off-domain decisions (one per caption) separately."""
INT8_MIN_SPEEDUP = 1.1
"""The int8 read-back graph ships only when it is at least this much faster than fp32 (as the
text encoder's int8 candidates must be)."""
DEFAULT_OFF_DOMAIN_THRESHOLD = 0.5
INT8_OP_TYPES = ("MatMul", "Gemm")

GATE_OFF_DOMAIN_CAPTIONS = (
    "draw a cat sitting on a windowsill",
    "what is the weather like tomorrow",
    "a bowl of ramen with a soft boiled egg",
    "the quarterly report is due on friday",
    "sunset over a quiet harbour with sailing boats",
    "play some jazz music please",
    "a red sports car parked on the street",
    "how many moons does jupiter have",
    "an oil painting of a bowl of fruit",
    "remind me to call my sister",
    "a blue whale swimming in the deep ocean",
    "the cake needs two more eggs and some flour",
    "asdf qwerty zxcv",
    "ok",
    "please",
    "42",
)
"""Sentences outside the robot's world for the gate, so off-domain decisions are compared on
captions that should trip them too (the trained off-domain evaluation list is rt's, in train/)."""


class _Probabilities(nn.Module):
    """Names the graph's signature: text_embedding → (attribute_probs, off_domain)."""

    def __init__(self, readback: ReadBack) -> None:
        super().__init__()
        self.readback = readback

    def forward(self, text_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.readback.probabilities(text_embedding)


def load_readback(checkpoint: dict[str, Any], path: Path, encoder: CharCnnRnn) -> ReadBack | None:
    """The checkpoint's read-back heads, or None when it has none (older checkpoints)."""
    if "readback" not in checkpoint.get("models", {}):
        return None
    readback = ck.build_model(checkpoint, "readback", str(path))
    assert isinstance(readback, ReadBack)
    config = readback.config
    if config.embedding_dim != encoder.config.embedding_dim:
        raise ck.CheckpointError(
            f"{path}: read-back reads {config.embedding_dim}-d embeddings but the text encoder "
            f"emits {encoder.config.embedding_dim}-d"
        )
    counts = tuple(len(ATTRIBUTE_VALUES[name]) for name in ATTRIBUTE_NAMES)
    if tuple(config.value_counts) != counts:
        raise ck.CheckpointError(
            f"{path}: read-back has value counts {list(config.value_counts)}, the attributes "
            f"{list(ATTRIBUTE_NAMES)} have {list(counts)}"
        )
    return readback.eval()


def readback_spec(
    threshold: float = DEFAULT_OFF_DOMAIN_THRESHOLD, known_words: tuple[str, ...] = ()
) -> b.ReadBackSpec:
    """The manifest's labels (train.data.attributes), the decision threshold and the words the
    heads learnt from (`ReadBackConfig.known_words`; () for checkpoints before them)."""
    phrases = captions.canonical_phrases()
    canonical = b.CanonicalSpec(
        template=captions.CANONICAL_TEMPLATE,
        phrases=tuple(phrases[name] for name in ATTRIBUTE_NAMES),
        # The held-out colour×terrain pairs: the GAN never saw them, so an open colour or
        # terrain is not drawn into one (the operator may still ask for one in full).
        excluded=tuple(
            (
                (ATTRIBUTE_NAMES.index("colour"), ATTRIBUTE_VALUES["colour"].index(colour)),
                (ATTRIBUTE_NAMES.index("terrain"), ATTRIBUTE_VALUES["terrain"].index(terrain)),
            )
            for colour, terrain in UNSEEN_PAIRS
        ),
    )
    return b.ReadBackSpec(
        attributes=tuple((name, tuple(ATTRIBUTE_VALUES[name])) for name in ATTRIBUTE_NAMES),
        off_domain_threshold=threshold,
        known_words=tuple(known_words),
        canonical=canonical,
    )


def graph_spec(file: str, precision: str, model: b.ModelSpec, spec: b.ReadBackSpec) -> b.GraphSpec:
    """The manifest entry of a read-back graph (hash and size filled in by write_bundle)."""
    return b.GraphSpec(
        file=file,
        role=b.READBACK,
        precision=precision,
        inputs=(b.TensorSpec(b.TEXT_EMBEDDING, "float32", (b.BATCH_DIM, model.embedding_dim)),),
        outputs=(
            b.TensorSpec(b.ATTRIBUTE_PROBS, "float32", (b.BATCH_DIM, spec.width)),
            b.TensorSpec(b.OFF_DOMAIN, "float32", (b.BATCH_DIM,)),
        ),
        opset=ox.OPSET,
    )


def export_graph(readback: ReadBack, path: Path) -> None:
    """Export `ReadBack.probabilities` with a dynamic batch axis (checked like every graph)."""
    example = torch.randn(
        2, readback.config.embedding_dim, generator=torch.Generator().manual_seed(0)
    )
    ox._export(
        _Probabilities(readback).eval(),
        (example,),
        path,
        inputs=[b.TEXT_EMBEDDING],
        outputs=[b.ATTRIBUTE_PROBS, b.OFF_DOMAIN],
        dynamic_axes={
            b.TEXT_EMBEDDING: {0: b.BATCH_DIM},
            b.ATTRIBUTE_PROBS: {0: b.BATCH_DIM},
            b.OFF_DOMAIN: {0: b.BATCH_DIM},
        },
    )


def run(session: Any, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, E) embeddings → (attribute_probs (B, W), off_domain (B,)) through a session."""
    probs, off = session.run(
        [b.ATTRIBUTE_PROBS, b.OFF_DOMAIN], {b.TEXT_EMBEDDING: embeddings.astype(np.float32)}
    )
    return probs, off


def parity(readback: ReadBack, path: Path, embeddings: np.ndarray) -> float:
    """onnxruntime fp32 against torch on `embeddings`, at batch B and 1; max |Δ| of both outputs."""
    session = ox.session(path)
    worst = 0.0
    for rows in (slice(None), slice(0, 1)):
        with torch.no_grad():
            expected = readback.probabilities(torch.from_numpy(embeddings[rows]))
        got = run(session, embeddings[rows])
        for name, want, have in zip((b.ATTRIBUTE_PROBS, b.OFF_DOMAIN), expected, got, strict=True):
            worst = max(worst, ox.check_parity(f"{path.name} {name}", want.numpy(), have))
    return worst


def agreement(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Share of equal decisions between two `decision_indices` tables (B, A + 1)."""
    same = reference == test
    return {
        "readback_attribute_agreement": float(same[:, :-1].mean()),
        "readback_off_domain_agreement": float(same[:, -1].mean()),
    }


@dataclass
class ReadBackBuild:
    """The read-back graphs of a bundle: fp32 always, int8 by measurement, gated end to end."""

    readback: ReadBack
    spec: b.ReadBackSpec
    model: b.ModelSpec
    work: Path
    fp32_path: Path | None = None
    fp32_session: Any = None
    parity_max_abs_diff: float = 0.0

    def build_fp32(self, parity_embeddings: np.ndarray) -> Path:
        path = self.work / "readback.onnx"
        export_graph(self.readback, path)
        self.parity_max_abs_diff = parity(self.readback, path, parity_embeddings)
        self.fp32_path, self.fp32_session = path, ox.session(path)
        log.info("read-back: onnxruntime parity %.2g", self.parity_max_abs_diff)
        return path

    def build_int8(
        self,
        captions: Sequence[str],
        embed_fp32: Callable[[Sequence[str]], np.ndarray],
        embed_int8: Callable[[Sequence[str]], np.ndarray],
        *,
        min_agreement: float,
        rounds: int,
        allow_lossy: bool = False,
    ) -> tuple[Path | None, dict[str, float], dict[str, Any], bool]:
        """(int8 graph or None = the int8 variant uses the fp32 one, the variant's agreement,
        the manifest's quantization record, whether the gate passed). Below `min_agreement`
        raises `QualityGateError`, unless `allow_lossy` (then the variant is marked failed)."""
        assert self.fp32_path is not None
        candidate = self.work / "readback.int8.onnx"
        details = q.quantize_text_encoder_dynamic(
            self.fp32_path, candidate, ox.IR_VERSION, INT8_OP_TYPES
        )
        int8_session = ox.session(candidate)
        one = embed_fp32(ox.PARITY_CAPTIONS[:1])
        times = interleaved(
            {
                "fp32": lambda: self.fp32_session.run(None, {b.TEXT_EMBEDDING: one}),
                "int8": lambda: int8_session.run(None, {b.TEXT_EMBEDDING: one}),
            },
            rounds=max(rounds, 50),
            warmup=5,
        )
        speedup = times["fp32"] / times["int8"]
        gate_captions = [*captions, *GATE_OFF_DOMAIN_CAPTIONS]
        reference = decision_indices(*run(self.fp32_session, embed_fp32(gate_captions)), self.spec)
        variant_embeddings = embed_int8(gate_captions)
        with_int8 = agreement(
            reference, decision_indices(*run(int8_session, variant_embeddings), self.spec)
        )
        with_fp32 = agreement(
            reference, decision_indices(*run(self.fp32_session, variant_embeddings), self.spec)
        )
        use_int8 = speedup >= INT8_MIN_SPEEDUP and min(with_int8.values()) >= min_agreement
        chosen = with_int8 if use_int8 else with_fp32
        record: dict[str, Any] = {
            "int8_candidate": {
                **details,
                "ms_b1_t1": round(times["int8"], 5),
                "speedup_vs_fp32": round(speedup, 3),
                **with_int8,
            },
            "fp32_ms_b1_t1": round(times["fp32"], 5),
            "chosen": "int8" if use_int8 else "fp32",
            "reason": (
                f"dynamic int8 ran {speedup:.2f}x fp32's speed at batch 1 (1 thread, on the "
                f"exporting machine); it ships only at >= {INT8_MIN_SPEEDUP}x and >= "
                f"{min_agreement:g} agreement"
            ),
            "gate": {
                "metric": "decision agreement of the int8 variant (its text encoder -> its "
                "read-back) with fp32 -> fp32: per attribute the winning class (a value or not "
                "stated), and the off-domain decision",
                "min_agreement": min_agreement,
                "captions": len(gate_captions),
                "composition": "the image gate's captions (held-out, word prefixes, parity) and "
                "export.readback.GATE_OFF_DOMAIN_CAPTIONS",
                **chosen,
            },
        }
        log.info("read-back int8: %s", record["reason"])
        worst = min(chosen.values())
        passed = worst >= min_agreement
        record["gate"]["passed"] = passed
        if not passed and not allow_lossy:
            raise q.QualityGateError(
                f"int8 variant fails the read-back gate: decision agreement with fp32 "
                f"{worst:.4f} < {min_agreement:g} (attributes "
                f"{chosen['readback_attribute_agreement']:.4f}, off-domain "
                f"{chosen['readback_off_domain_agreement']:.4f}) on {len(gate_captions)} fixed "
                "captions; nothing written (--allow-lossy ships it marked as failed)"
            )
        if not passed:
            log.warning(
                "int8 variant fails the read-back gate (%.4f); --allow-lossy ships it", worst
            )
        if not use_int8:
            candidate.unlink()
        return (candidate if use_int8 else None), chosen, record, passed
