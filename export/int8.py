"""The int8 decision: quantize, measure against fp32 on this machine, and ship only what pays.

The generator is quantized statically on real captions and sampled noise; the text encoder's
int8 candidates ship only when they are measurably faster and keep the embeddings and images
(`TEXT_INT8_MIN_SPEEDUP`, `TEXT_INT8_MIN_COSINE`, the PSNR gate); the variant as a whole must
pass the PSNR gate against fp32 unless a lossy bundle is allowed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import bundle as b
from edge_runtime import tokenizer
from export import calibration
from export import onnx_export as ox
from export import quantize as q
from export.calibration import CALIBRATION_BATCH, NOISE_SEED, Captions, _embed, _generate
from train.models import CharCnnRnn
from train.quality.oracle import OracleError, accuracy_per_attribute, load_oracle, predict
from train.timing import interleaved

log = logging.getLogger(__name__)

TEXT_INT8_MIN_SPEEDUP = 1.1
"""An int8 text encoder ships only if it runs at least this much faster than fp32 here."""

TEXT_SPEED_BATCH = 32
"""Batch (of held-out captions, two threads) on which text-encoder candidates are also timed."""

TEXT_INT8_MIN_COSINE = 0.99
"""... and its embeddings keep at least this cosine similarity to fp32's on the quality batch."""


def _text_encoder_candidates(
    fp32_path: Path,
    work: Path,
    encoder: CharCnnRnn,
    calibration: Sequence[str],
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """int8 text-encoder graphs worth measuring for this encoder."""
    candidates: dict[str, tuple[Path, dict[str, Any]]] = {}
    # Dynamic int8 of the matrix multiplies (and the LSTM, which onnxruntime can quantize; GRU it
    # cannot). Convolutions are left out: dynamic ConvInteger was measured slower than fp32.
    op_types = ["MatMul", "Gemm"] + (["LSTM"] if encoder.config.rnn == "lstm" else [])
    path = work / "text_encoder.dynamic.onnx"
    candidates["dynamic"] = (
        path,
        q.quantize_text_encoder_dynamic(fp32_path, path, ox.IR_VERSION, op_types),
    )
    # Static int8 convolutions (QLinearConv), calibrated on the same real captions.
    feeds = []
    for i in range(0, len(calibration), CALIBRATION_BATCH):
        ids, lengths = ox.example_char_ids(
            calibration[i : i + CALIBRATION_BATCH], encoder.config.max_length
        )
        feeds.append({b.CHAR_IDS: ids, b.LENGTHS: lengths})
    static_path = work / "text_encoder.static.onnx"
    static = q.quantize_text_encoder_static_convs(fp32_path, static_path, feeds, ox.IR_VERSION)
    candidates["static-conv"] = (static_path, static)
    # Both: the convolutions carry most of the work at batch 32, the LSTM and projection much of
    # it at batch 1; on the recipe's encoder this was the fastest at both (docs/EXPORT.md).
    path = work / "text_encoder.static-dynamic.onnx"
    dynamic = q.quantize_text_encoder_dynamic(static_path, path, ox.IR_VERSION, op_types)
    candidates["static-conv+dynamic"] = (
        path,
        {"method": "static convolutions + dynamic", "convolutions": static, "dynamic": dynamic},
    )
    return candidates


def oracle_accuracy(
    oracle: Any, images: dict[str, np.ndarray], attributes: np.ndarray
) -> dict[str, float]:
    """The attribute oracle's accuracy on each precision's images of the whole captions:
    `oracle_accuracy_<precision>` (mean over attributes) and `oracle_<attribute>_<precision>`."""
    names = oracle.config.attribute_names
    out: dict[str, float] = {}
    for precision, batch in images.items():
        # Only the whole held-out captions have attributes; they come first in the batch.
        labels = predict(oracle, batch[: len(attributes)]).labels
        accuracy = accuracy_per_attribute(labels, attributes, names)
        out[f"oracle_accuracy_{precision}"] = round(float(np.mean(list(accuracy.values()))), 4)
        out.update({f"oracle_{n}_{precision}": round(a, 4) for n, a in accuracy.items()})
    return out


def load_export_oracle(path: Path, data: Path, captions: Captions, force: bool) -> Any:
    """The oracle's network, and whether it passed its honesty checks on `data`."""
    if captions.quality_attributes is None:
        raise ox.ExportError(f"--oracle: {data} has no attributes on its held-out captions")
    try:
        # Re-runs the oracle's honesty checks on the dataset's real images, and refuses an
        # oracle that fails them: an untrustworthy judge must not pass or flag a bundle.
        loaded = load_oracle(path, data, force=force)
    except OracleError as err:
        message = str(err).replace("(--force-oracle)", "(--force-oracle to use it anyway)")
        raise ox.ExportError(message) from None
    return loaded.model, loaded.honesty.passed


@dataclass(frozen=True)
class Int8Gate:
    """What the int8 decision is held to (from the export options)."""

    min_psnr_db: float
    allow_lossy: bool
    latency_rounds: int
    oracle_file: Path | None = None
    """The attribute-oracle checkpoint whose accuracies are recorded (hashed in the manifest)."""


@dataclass
class Int8Build:
    """The int8 variant under construction: inputs shared by its steps."""

    gate: Int8Gate
    encoder: CharCnnRnn
    model: b.ModelSpec
    captions: Captions
    work: Path
    text_path: Path
    gen_path: Path
    text_fp32: Any
    gen_fp32: Any
    oracle: tuple[Any, bool] | None = None
    """The attribute oracle (train.quality.oracle.AttributeOracle) and whether it passed its honesty
    checks, when one was given."""

    def run(self) -> tuple[b.Variant, dict[str, Any], dict[str, Path], tuple[Any, Any]]:
        """Quantize, measure against fp32, gate; (variant, quantization, files, sessions)."""
        options, model, captions = self.gate, self.model, self.captions
        # ---- generator: static int8, calibrated on real captions + sampled noise ---------------
        calib_emb = _embed(self.text_fp32, captions.calibration_all, model.max_length)
        calib_noise = (
            np.random.default_rng(NOISE_SEED)
            .standard_normal((len(calib_emb), model.noise_dim))
            .astype(np.float32)
        )
        settings = q.GeneratorQuantization()
        gen_int8_path = self.work / "generator.int8.onnx"
        gen_details = q.quantize_generator(
            self.gen_path,
            gen_int8_path,
            calibration.calibration_feeds(calib_noise, calib_emb),
            settings=settings,
            output_name=b.IMAGE,
            text_input=b.TEXT_EMBEDDING,
            ir_version=ox.IR_VERSION,
        )
        gen_int8 = ox.session(gen_int8_path)

        # ---- quality on a fixed batch: fixed captions, fixed noise -----------------------------
        quality_emb = _embed(self.text_fp32, captions.quality, model.max_length)
        quality_noise = (
            np.random.default_rng(NOISE_SEED + 1)
            .standard_normal((len(quality_emb), model.noise_dim))
            .astype(np.float32)
        )
        reference = _generate(self.gen_fp32, quality_noise, quality_emb)
        generator_only = q.image_quality(reference, _generate(gen_int8, quality_noise, quality_emb))
        log.info("int8 generator vs fp32: %s", generator_only)

        # ---- text encoder: int8 only where it measurably pays ----------------------------------
        text_choice, text_info = self.choose_text_encoder(
            gen_int8, quality_noise, quality_emb, reference
        )
        text_int8 = ox.session(text_choice) if text_choice is not None else self.text_fp32
        # The variant end to end: int8 text encoder (if any) → int8 generator, against fp32 → fp32.
        images = _generate(
            gen_int8, quality_noise, _embed(text_int8, captions.quality, model.max_length)
        )
        quality = q.image_quality(reference, images)
        if self.oracle is not None and captions.quality_attributes is not None:
            oracle = self.oracle[0]
            quality.update(
                oracle_accuracy(
                    oracle, {"fp32": reference, "int8": images}, captions.quality_attributes
                )
            )
        passed = quality["psnr_db"] >= options.min_psnr_db
        if not passed and not options.allow_lossy:
            raise q.QualityGateError(
                f"int8 variant fails the quality gate: PSNR {quality['psnr_db']:.2f} dB < "
                f"{options.min_psnr_db:g} dB (SSIM {quality['ssim']:.4f}, generator alone "
                f"{generator_only['psnr_db']:.2f} dB) on {len(reference)} fixed captions; "
                "nothing written (--allow-lossy ships it marked as failed)"
            )
        if not passed:
            log.warning(
                "int8 variant fails the quality gate (%.2f dB); shipped because of --allow-lossy",
                quality["psnr_db"],
            )
        files = {"generator.int8": gen_int8_path}
        text_key = "text_encoder.fp32"
        if text_choice is not None:
            files["text_encoder.int8"] = text_choice
            text_key = "text_encoder.int8"
        quantization = {
            "method": "static int8 generator; text encoder by measurement",
            "generator": {
                **gen_details,
                "quality_vs_fp32": generator_only,
                "optimized_ops": q.op_counts(gen_int8_path),
            },
            "text_encoder": text_info,
            "calibration": {
                **captions.source,
                "captions": len(captions.calibration),
                "caption_prefixes": len(captions.calibration_prefixes),
                "noise": f"standard normal, numpy default_rng({NOISE_SEED})",
                "batch": CALIBRATION_BATCH,
            },
            "quality_gate": {
                "metric": "psnr_db",
                "min_psnr_db": options.min_psnr_db,
                "captions": len(captions.quality),
                "composition": "held-out captions, word prefixes of a quarter of them, and "
                "export.onnx_export.PARITY_CAPTIONS (operator-style, 1 to 190 characters)",
                "noise": f"standard normal, numpy default_rng({NOISE_SEED + 1})",
                "passed": passed,
                "allow_lossy": options.allow_lossy,
            },
        }
        if self.oracle is not None and options.oracle_file is not None:
            quantization["oracle"] = {
                "file": options.oracle_file.name,
                "sha256": b.sha256_file(options.oracle_file),
                "passed_honesty_checks": self.oracle[1],
                "scored": "whole held-out captions (quality keys oracle_*)",
            }
        variant = b.Variant(text_key, "generator.int8", passed, quality, {})
        return variant, quantization, files, (text_int8, gen_int8)

    def choose_text_encoder(
        self, gen_int8: Any, noise: np.ndarray, fp32_embeddings: np.ndarray, reference: np.ndarray
    ) -> tuple[Path | None, dict[str, Any]]:
        """Build the int8 candidates, measure them against fp32 here, keep the best that pays."""
        model, options = self.model, self.gate
        candidates = _text_encoder_candidates(
            self.text_path, self.work, self.encoder, self.captions.calibration_all
        )
        # Two workloads: one caption at full length on one thread (the latency a robot sees for
        # a new command) and a batch of held-out captions padded as the runtime pads them
        # (to the longest one's `min_input_length`) on two threads (batched throughput).
        ids, lengths = ox.example_char_ids([ox.PARITY_CAPTIONS[0]], model.max_length)
        one = {b.CHAR_IDS: ids, b.LENGTHS: lengths}
        batch_captions = self.captions.quality[:TEXT_SPEED_BATCH]
        width = max(model.min_input_length(tokenizer.encode(c).length) for c in batch_captions)
        ids, lengths = ox.example_char_ids(batch_captions, width)
        many = {b.CHAR_IDS: ids, b.LENGTHS: lengths}
        paths = {"fp32": self.text_path} | {k: p for k, (p, _) in candidates.items()}
        sessions = {"fp32": self.text_fp32} | {k: ox.session(p) for k, (p, _) in candidates.items()}
        batch_sessions = {k: ox.session(p, threads=2) for k, p in paths.items()}
        calls: dict[str, Callable[[], object]] = {}
        for k in paths:
            calls[f"{k}|b1"] = lambda s=sessions[k]: s.run(None, one)
            calls[f"{k}|batch"] = lambda s=batch_sessions[k]: s.run(None, many)
        times = interleaved(calls, rounds=max(options.latency_rounds, 10), warmup=2)
        report: dict[str, Any] = {
            "fp32_ms_b1_t1": round(times["fp32|b1"], 4),
            f"fp32_ms_b{len(batch_captions)}_t2": round(times["fp32|batch"], 4),
            "batch": f"{len(batch_captions)} held-out captions padded to {width} characters",
            "candidates": {},
        }
        best: tuple[float, str] | None = None
        for name, (_, details) in candidates.items():
            emb = _embed(sessions[name], self.captions.quality, model.max_length)
            quality = q.embedding_quality(fp32_embeddings, emb)
            images = _generate(gen_int8, noise, emb)
            quality["psnr_db_with_int8_generator"] = q.image_quality(reference, images)["psnr_db"]
            speedup = times["fp32|b1"] / times[f"{name}|b1"]
            batch_speedup = times["fp32|batch"] / times[f"{name}|batch"]
            report["candidates"][name] = {
                **details,
                "ms_b1_t1": round(times[f"{name}|b1"], 4),
                "speedup_vs_fp32": round(speedup, 3),
                f"ms_b{len(batch_captions)}_t2": round(times[f"{name}|batch"], 4),
                "batch_speedup_vs_fp32": round(batch_speedup, 3),
                **quality,
            }
            failed = []
            if speedup < TEXT_INT8_MIN_SPEEDUP:
                failed.append(f"{speedup:.2f}× < {TEXT_INT8_MIN_SPEEDUP}× faster")
            if quality["cosine_min"] < TEXT_INT8_MIN_COSINE:
                failed.append(f"cosine {quality['cosine_min']:.4f} < {TEXT_INT8_MIN_COSINE}")
            if quality["psnr_db_with_int8_generator"] < options.min_psnr_db:
                failed.append(
                    f"images {quality['psnr_db_with_int8_generator']:.1f} dB < "
                    f"{options.min_psnr_db:g} dB"
                )
            report["candidates"][name]["rejected_because"] = failed
            # Ranked by the geometric mean of the two speed-ups: neither workload may be bought
            # with the other.
            score = float(np.sqrt(speedup * batch_speedup))
            if not failed and (best is None or score > best[0]):
                best = (score, name)
        if best is None:
            report["chosen"] = "fp32"
            report["reason"] = (
                "no int8 candidate pays: "
                + "; ".join(
                    f"{name}: {', '.join(c['rejected_because'])}"
                    for name, c in report["candidates"].items()
                )
                + (f" (batch 1, 1 thread, {model.max_length} characters, on the exporting machine)")
            )
            log.info("text encoder stays fp32: %s", report["reason"])
            return None, report
        chosen_times = report["candidates"][best[1]]
        report["chosen"] = best[1]
        report["reason"] = (
            f"{best[1]} ran {chosen_times['speedup_vs_fp32']:.2f}× faster than fp32 at batch 1 "
            f"(1 thread) and {chosen_times['batch_speedup_vs_fp32']:.2f}× at batch "
            f"{len(batch_captions)} (2 threads), the best geometric mean of the int8 candidates "
            "that kept the embeddings and images"
        )
        chosen = self.work / "text_encoder.int8.onnx"
        candidates[best[1]][0].rename(chosen)
        log.info("text encoder int8: %s", report["reason"])
        return chosen, report
