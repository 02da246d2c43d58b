"""`python -m export.search`: add the frame scorer (search assist, issue 20) to a bundle.

    python -m export.search --scorer runs/search/checkpoint.pt --bundle bundles/rescue \
        --out bundles/rescue-search

The scorer checkpoint (`python -m train search-scorer`) carries the text encoder it was trained
against; the bundle's fp32 text encoder must embed captions as that one does (checked on fixed
captions, `TEXT_MATCH_TOLERANCE`), else the scores would mean nothing. Then, like every graph:

- fp32: `FrameScorer.fold()` (BatchNorm folded, head and projection composed) exported with a
  dynamic batch axis, parity with torch checked on rendered search frames;
- int8: static QDQ per-channel on the convolutions (QLinearConv: ONNX Runtime's CPU provider has
  int8 kernels for them), calibrated on rendered frames and their captions; the head's
  normalisation, the text projection and the score stay fp32;
- gate: each variant end to end (its text encoder → its scorer → `edge_runtime.search.detect`)
  against fp32 on `GATE_FRAMES` rendered frames: the top-1 box must be the same box (IoU ≥ 0.5)
  and the present/absent decision the same in ≥ `MIN_TOP1_AGREEMENT` of them;
- the bundle is rewritten (atomically, `write_bundle`) with role `frame_scorer` graphs, every
  variant naming its own, and the manifest's `search` section (frame size, scales, threshold).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edge_runtime import bundle as b
from edge_runtime import search as es
from export import onnx_export as ox
from export import quantize as q
from export.errors import ExportError
from train import checkpoint as ck
from train.data.search_scenes import render_split
from train.errors import BAD_INPUT, first_line
from train.search.scorer import FrameScorer
from train.search.train import load_scorer
from train.timing import interleaved

log = logging.getLogger(__name__)

MIN_TOP1_AGREEMENT = 0.9
GATE_FRAMES = 64
CALIBRATION_FRAMES = 32
TEXT_MATCH_TOLERANCE = 1e-3
"""Max |Δ| between the scorer's text encoder (torch) and the bundle's fp32 graph, relative to the
embedding's largest magnitude."""
PARITY_SCORE_TOLERANCE = 1e-3
PARITY_BOX_TOLERANCE = 0.05
"""Pixels."""
_GATE_SEED = 20_20


class _Graph(nn.Module):
    """Names the graph's signature: (frame, text_embedding) → scores_0, boxes_0, ..."""

    def __init__(self, scorer: FrameScorer) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(
        self, frame: torch.Tensor, text_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return self.scorer(frame, text_embedding)


def search_spec(scorer: FrameScorer, record: dict[str, Any]) -> b.SearchSpec:
    """The manifest's `search` section from the scorer's config and its checkpoint record."""
    config = scorer.config
    scales = tuple(
        b.SearchScale(round(1 / s), cells)
        for s, cells in zip(config.scales, config.cells(), strict=True)
    )
    metrics = record.get("metrics", {})
    calibration = {"absent_quantile": float(record.get("absent_quantile", 0.95))}
    for split in ("test", "test_unseen"):
        for key in ("top1_iou50", "absent_rejected"):
            value = metrics.get(split, {}).get(key)
            if isinstance(value, float | int):
                calibration[f"{split}_{key}_torch"] = float(value)
    return b.SearchSpec(
        frame_size=config.frame_size,
        scales=scales,
        threshold=float(record["threshold"]),
        nms_iou=float(record.get("nms_iou", 0.3)),
        top_k=int(record.get("top_k", 5)),
        calibration=calibration,
    )


def graph_spec(file: str, precision: str, spec: b.SearchSpec, embedding_dim: int) -> b.GraphSpec:
    """The manifest entry of a frame scorer graph (hash and size filled in by write_bundle)."""
    size = spec.frame_size
    outputs = []
    for i, scale in enumerate(spec.scales):
        h, w = scale.cells
        outputs += [
            b.TensorSpec(b.scores_name(i), "float32", (b.BATCH_DIM, h, w)),
            b.TensorSpec(b.boxes_name(i), "float32", (b.BATCH_DIM, 4, h, w)),
        ]
    return b.GraphSpec(
        file=file,
        role=b.FRAME_SCORER,
        precision=precision,
        inputs=(
            b.TensorSpec(b.FRAME, "float32", (b.BATCH_DIM, 3, size, size)),
            b.TensorSpec(b.TEXT_EMBEDDING, "float32", (b.BATCH_DIM, embedding_dim)),
        ),
        outputs=tuple(outputs),
        opset=ox.OPSET,
    )


def export_graph(scorer: FrameScorer, path: Path, names: tuple[str, ...]) -> None:
    """Export the folded scorer with a dynamic batch axis; output shapes stated exactly (shape
    inference leaves some map sizes symbolic, and the manifest's contract names them)."""
    folded = scorer.fold()
    gen = torch.Generator().manual_seed(0)
    size = scorer.config.frame_size
    frame = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
    text = torch.randn(2, scorer.config.embedding_dim, generator=gen)
    ox._export(
        _Graph(folded).eval(),
        (frame, text),
        path,
        inputs=[b.FRAME, b.TEXT_EMBEDDING],
        outputs=list(names),
        dynamic_axes={n: {0: b.BATCH_DIM} for n in (b.FRAME, b.TEXT_EMBEDDING, *names)},
    )
    model = onnx.load(str(path))
    shapes = {}
    for i, (h, w) in enumerate(scorer.config.cells()):
        shapes[b.scores_name(i)] = (h, w)
        shapes[b.boxes_name(i)] = (4, h, w)
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        wanted = shapes[output.name]
        assert len(dims) == 1 + len(wanted), (output.name, len(dims))
        for dim, size in zip(dims[1:], wanted, strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = size
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def run_scorer(session: Any, frame: np.ndarray, text: np.ndarray) -> list[np.ndarray]:
    """One (1, 3, S, S) frame and (1, E) embedding → the graph's maps, in output order."""
    return session.run(None, {b.FRAME: frame, b.TEXT_EMBEDDING: text.astype(np.float32)})


def embed(session: Any, model: b.ModelSpec, captions: list[str]) -> np.ndarray:
    """Captions → (N, E) through a bundle's text encoder session, one caption a run (as the
    robot's engine does: an embedding must not depend on its batch)."""
    rows = []
    for caption in captions:
        ids, lengths = ox.example_char_ids([caption], model.max_length)
        (emb,) = session.run([b.TEXT_EMBEDDING], {b.CHAR_IDS: ids, b.LENGTHS: lengths})
        rows.append(emb[0])
    return np.stack(rows).astype(np.float32)


def top1_agreement(
    reference: list[list[es.Detection]], test: list[list[es.Detection]], threshold: float
) -> float:
    """Share of frames whose top-1 boxes overlap (IoU ≥ 0.5) and whose present/absent decision
    (best score ≥ threshold) is the same."""
    same = 0
    for ref, got in zip(reference, test, strict=True):
        if not ref or not got:
            same += not ref and not got
            continue
        overlap = es.iou(np.array(ref[0].box), np.array(got[0].box))[0, 0] >= 0.5
        same += bool(overlap and (ref[0].score >= threshold) == (got[0].score >= threshold))
    return same / max(len(reference), 1)


def _detect_all(
    session: Any, frames: np.ndarray, texts: np.ndarray, spec: b.SearchSpec
) -> list[list[es.Detection]]:
    out = []
    for frame, text in zip(frames, texts, strict=True):
        maps = run_scorer(session, es.frame_to_input(frame), text[None])
        out.append(
            es.detect(
                maps[0::2],
                maps[1::2],
                iou_threshold=spec.nms_iou,
                top_k=spec.top_k,
                frame_size=spec.frame_size,
            )
        )
    return out


def add_search(
    scorer_path: Path,
    bundle_path: Path,
    out: Path,
    *,
    force: bool = False,
    min_agreement: float = MIN_TOP1_AGREEMENT,
    allow_lossy: bool = False,
    gate_frames: int = GATE_FRAMES,
    text_check: bool = True,
) -> b.Manifest:
    """Write `out`: the bundle at `bundle_path` plus the frame scorer (module docstring)."""
    scorer, encoder, record = load_scorer(scorer_path)
    bundle = b.load_bundle(bundle_path, ox.session)
    manifest = bundle.manifest
    if manifest.search is not None:
        raise ExportError(f"{bundle_path}: already has a frame scorer (export from the original)")
    if scorer.config.embedding_dim != manifest.model.embedding_dim:
        raise ExportError(
            f"{scorer_path}: scorer reads {scorer.config.embedding_dim}-d text embeddings, the "
            f"bundle's text encoder emits {manifest.model.embedding_dim}-d"
        )
    reference = manifest.variants.get("fp32") or next(iter(manifest.variants.values()))
    probe = list(ox.PARITY_CAPTIONS[:4])
    with torch.no_grad():
        ids, lengths = ox.example_char_ids(probe, manifest.model.max_length)
        want = encoder(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
    have = embed(bundle.sessions[reference.text_encoder], manifest.model, probe)
    gap = float(np.abs(want - have).max() / max(np.abs(want).max(), 1e-6))
    if text_check and gap > TEXT_MATCH_TOLERANCE:
        raise ExportError(
            f"{scorer_path}: was trained against another text encoder than {bundle_path}'s "
            f"(relative embedding difference {gap:.3g} > {TEXT_MATCH_TOLERANCE:g}); train the "
            "scorer from the text-encoder checkpoint this bundle's GAN was trained with"
        )
    spec = search_spec(scorer, record)
    names = spec.output_names()
    size = spec.frame_size
    gate = render_split("val", gate_frames, _GATE_SEED, size)
    calibration = render_split("train", CALIBRATION_FRAMES, _GATE_SEED, size)
    gate_captions = [row[0] for row in gate.query_captions]
    with tempfile.TemporaryDirectory(prefix="export-search-") as tmp:
        work = Path(tmp)
        fp32_path = work / "frame_scorer.onnx"
        export_graph(scorer, fp32_path, names)
        fp32 = ox.session(fp32_path)
        folded = scorer.fold()
        worst_score = worst_box = 0.0
        for i in range(2):
            frame = es.frame_to_input(gate.frames[i])
            text = want[i : i + 1]
            with torch.no_grad():
                expected = [
                    t.numpy() for t in folded(torch.from_numpy(frame), torch.from_numpy(text))
                ]
            got = run_scorer(fp32, frame, text)
            for k, (e, g) in enumerate(zip(expected, got, strict=True)):
                diff = float(np.abs(e - g).max())
                if k % 2:
                    worst_box = max(worst_box, diff)
                else:
                    worst_score = max(worst_score, diff)
        if worst_score > PARITY_SCORE_TOLERANCE or worst_box > PARITY_BOX_TOLERANCE:
            raise ExportError(
                f"frame scorer: onnxruntime differs from torch by {worst_score:.3g} (scores) / "
                f"{worst_box:.3g} px (boxes)"
            )
        # int8: static QDQ on the convolutions, calibrated on rendered frames and their captions.
        int8_path = work / "frame_scorer.int8.onnx"
        cal_text = embed(
            bundle.sessions[reference.text_encoder],
            manifest.model,
            [row[0] for row in calibration.query_captions],
        )
        feeds = [
            {b.FRAME: es.frame_to_input(f), b.TEXT_EMBEDDING: t[None]}
            for f, t in zip(calibration.frames, cal_text, strict=True)
        ]
        details = _quantize(fp32_path, int8_path, feeds)
        int8 = ox.session(int8_path)
        one_frame = es.frame_to_input(gate.frames[0])
        times = interleaved(
            {
                "fp32": lambda: run_scorer(fp32, one_frame, want[:1]),
                "int8": lambda: run_scorer(int8, one_frame, want[:1]),
            },
            rounds=20,
            warmup=3,
        )
        ref_text = embed(bundle.sessions[reference.text_encoder], manifest.model, gate_captions)
        ref_dets = _detect_all(fp32, gate.frames, ref_text, spec)
        graphs = dict(manifest.graphs)
        files: dict[str, Any] = {k: bundle.graph_path(k) for k in manifest.graphs}
        graphs["frame_scorer.fp32"] = graph_spec(fp32_path.name, "fp32", spec, spec_dim(manifest))
        files["frame_scorer.fp32"] = fp32_path
        graphs["frame_scorer.int8"] = graph_spec(int8_path.name, "int8", spec, spec_dim(manifest))
        files["frame_scorer.int8"] = int8_path
        variants = {}
        agreements = {}
        for name, variant in manifest.variants.items():
            key = "frame_scorer.int8" if name == "int8" else "frame_scorer.fp32"
            session = int8 if key.endswith("int8") else fp32
            texts = embed(bundle.sessions[variant.text_encoder], manifest.model, gate_captions)
            agreement = top1_agreement(ref_dets, _detect_all(session, gate.frames, texts, spec),
                                       spec.threshold)  # fmt: skip
            agreements[name] = agreement
            passed = agreement >= min_agreement
            if not passed and not allow_lossy:
                raise q.QualityGateError(
                    f"variant {name} fails the frame-scorer gate: top-1 agreement with fp32 "
                    f"{agreement:.4f} < {min_agreement:g} on {gate_frames} rendered frames; "
                    "nothing written (--allow-lossy ships it marked as failed)"
                )
            variants[name] = dataclasses.replace(
                variant,
                frame_scorer=key,
                gate_passed=variant.gate_passed and passed,
                quality={**variant.quality, "frame_top1_agreement": round(agreement, 4)},
                latency_ms={
                    **variant.latency_ms,
                    "frame_scorer_b1_t1": round(
                        times["int8" if key.endswith("int8") else "fp32"], 3
                    ),
                },
            )
        quantization = dict(manifest.quantization)
        quantization["frame_scorer"] = {
            **details,
            "fp32_ms_b1_t1": round(times["fp32"], 3),
            "int8_ms_b1_t1": round(times["int8"], 3),
            "parity_max_abs_diff": {"scores": worst_score, "boxes_px": worst_box},
            "gate": {
                "metric": "top-1 box IoU >= 0.5 and the same present/absent decision as fp32 "
                "(each variant end to end: its text encoder -> its scorer)",
                "frames": gate_frames,
                "min_agreement": min_agreement,
                "agreement": agreements,
            },
        }
        provenance = {**manifest.provenance, "search_scorer_sha256": _sha256(scorer_path)}
        new = dataclasses.replace(
            manifest,
            graphs=graphs,
            variants=variants,
            search=spec,
            quantization=quantization,
            provenance=provenance,
        )
        log.info(
            "frame scorer: fp32 %.2f ms, int8 %.2f ms; agreement %s",
            times["fp32"], times["int8"], agreements,
        )  # fmt: skip
        return b.write_bundle(out, new, files, force=force)


def spec_dim(manifest: b.Manifest) -> int:
    return manifest.model.embedding_dim


def _quantize(
    fp32_path: Path, out_path: Path, feeds: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Static int8 QDQ on Conv only (per channel, 7-bit weights); everything else stays fp32."""
    # reduce_range as for the generator (docs/EXPORT.md § 5): with 8-bit weights, CPUs without
    # VNNI (AVX2) saturate the u8s8 multiply-adds, and the scorer built on an AVX-512 VNNI machine
    # passed its gate there but failed it on a Zen 3 (AVX2): top-1 agreement 0.89 < 0.90, which
    # stopped `make demo` (docs/SEARCH.md § int8 on AVX2).
    method = q.quantize_static_convs(fp32_path, out_path, feeds, ox.IR_VERSION, reduce_range=True)
    method["calibration"] = f"{CALIBRATION_FRAMES} rendered search frames and their query captions"
    return method


def _sha256(path: Path) -> str:
    return b.sha256_file(Path(path))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.search",
        description="Add the frame scorer (search assist) to a bundle: fp32 + int8, gated, hashed.",
    )
    p.add_argument("--scorer", type=Path, required=True, help="search-scorer checkpoint.pt")
    p.add_argument("--bundle", type=Path, required=True, help="bundle to extend (left unchanged)")
    p.add_argument("--out", type=Path, required=True, help="the new bundle")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--min-agreement", type=float, default=MIN_TOP1_AGREEMENT)
    p.add_argument("--allow-lossy", action="store_true", help="ship a variant failing the gate")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse flags, extend the bundle, print its path; one error line on failure."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    if not args.scorer.is_file():
        print(f"export.search: error: --scorer {args.scorer}: file not found", file=sys.stderr)
        return 2
    if args.out.exists() and not args.force:
        print(f"export.search: error: --out {args.out}: already exists (--force)", file=sys.stderr)
        return 2
    try:
        add_search(
            args.scorer,
            args.bundle,
            args.out,
            force=args.force,
            min_agreement=args.min_agreement,
            allow_lossy=args.allow_lossy,
        )
    except (*BAD_INPUT, ExportError, b.BundleError, ck.CheckpointError) as err:
        print(f"export.search: error: {first_line(err)}", file=sys.stderr)
        return 1
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
