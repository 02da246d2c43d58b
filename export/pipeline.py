"""Checkpoint → verified bundle: rebuild, prepare, export, check parity, quantize, gate, write.

Every step that can lose fidelity is measured before anything is written: the PyTorch rewrite
against the trained generator (≤ `REWRITE_TOLERANCE`), each fp32 graph against PyTorch
(≤ `onnx_export.PARITY_TOLERANCE`), and the int8 variant against fp32 (PSNR ≥ `min_psnr_db`
unless the caller allows a lossy bundle). The bundle is then written atomically by
`edge_runtime.bundle.write_bundle`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import platform
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_runtime import bundle as b
from edge_runtime import tokenizer
from export import onnx_export as ox
from export import quantize as q
from export.prepare import GENERATOR_FORMS, SUBPIXEL_FORMS, prepare_generator
from train import checkpoint as ck
from train.models import CharCnnRnn, Generator
from train.timing import interleaved

log = logging.getLogger(__name__)

REWRITE_TOLERANCE = 1e-5
"""Max abs difference between the prepared and the trained generator in PyTorch (float64)."""
DEFAULT_SUBPIXEL = "2x2"
"""Form of the graph quantized to int8: the fastest int8 in `make bench` (docs/EXPORT.md)."""
DEFAULT_FP32_FORM = "convtranspose"
"""Form of the shipped fp32 generator: batch norm folded, transposed convolutions kept, which ran
faster in fp32 than any sub-pixel form in `make bench` (docs/EXPORT.md)."""
MIN_CALIBRATION = 300
QUALITY_BATCH = 64
"""Captions (with fixed noise) in the batch on which int8 quality is measured against fp32."""
CALIBRATION_BATCH = 16
PREFIX_FRACTION = 0.25
"""Calibration also sees this many (relative to the whole captions) word prefixes of training
captions. Operators type short commands ("person in red"); training captions are all long. With
whole captions only, activation ranges of short captions were never seen and their int8 images
lost most of their fidelity; a quarter prefixes fixed it (docs/EXPORT.md § What export does,
in order)."""
NOISE_SEED = 20160517  # Reed et al.'s ICML 2016 date: any fixed seed, recorded in the manifest
TEXT_INT8_MIN_SPEEDUP = 1.1
"""An int8 text encoder ships only if it runs at least this much faster than fp32 here."""
TEXT_SPEED_BATCH = 32
"""Batch (of held-out captions, two threads) on which text-encoder candidates are also timed."""
TEXT_INT8_MIN_COSINE = 0.99
"""... and its embeddings keep at least this cosine similarity to fp32's on the quality batch."""


@dataclass(frozen=True)
class ExportOptions:
    """Everything `export_bundle` needs; the CLI builds it from flags."""

    checkpoint: Path
    out: Path
    quantize: bool = False
    data: Path | None = None
    """Dataset HDF5 for calibration; None: the checkpoint's `config["data"]`."""
    force: bool = False
    allow_lossy: bool = False
    oracle: Path | None = None
    """Optional attribute-oracle checkpoint: its accuracy on fp32 and int8 images is recorded."""
    force_oracle: bool = False
    """Use an oracle that fails its honesty checks (its accuracies are marked untrusted)."""
    name: str | None = None
    subpixel: str = DEFAULT_SUBPIXEL
    """Sub-pixel form of the int8 generator (`export.prepare.SUBPIXEL_FORMS`)."""
    fp32_form: str = DEFAULT_FP32_FORM
    """Form of the fp32 generator (`export.prepare.GENERATOR_FORMS`)."""
    calibration_size: int = 512
    min_psnr_db: float = 30.0
    latency_rounds: int = 20


@dataclass
class Captions:
    """Calibration and quality captions drawn from a dataset."""

    calibration: list[str]
    """Whole training captions (at least `MIN_CALIBRATION`)."""
    calibration_prefixes: list[str]
    """Word prefixes of other training captions (see `PREFIX_FRACTION`)."""
    quality: list[str]
    """Held-out captions, then word prefixes of held-out captions, then `PARITY_CAPTIONS`."""
    quality_attributes: np.ndarray | None
    """Attributes of the first `len(quality_attributes)` quality captions (the whole ones)."""
    source: dict[str, Any]
    path: Path
    """The dataset file."""

    @property
    def calibration_all(self) -> list[str]:
        """Everything the int8 graphs are calibrated on."""
        return self.calibration + self.calibration_prefixes


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def load_models(path: Path) -> tuple[dict[str, Any], CharCnnRnn, Generator]:
    """The GAN checkpoint and its text encoder and generator, rebuilt from the file alone."""
    checkpoint = ck.load_checkpoint(path, kind="gan")
    encoder = ck.build_model(checkpoint, "text_encoder", str(path))
    generator = ck.build_model(checkpoint, "generator", str(path))
    assert isinstance(encoder, CharCnnRnn) and isinstance(generator, Generator)
    if encoder.config.embedding_dim != generator.config.embedding_dim:
        raise ck.CheckpointError(
            f"{path}: text encoder emits {encoder.config.embedding_dim}-d embeddings but the "
            f"generator takes {generator.config.embedding_dim}-d"
        )
    return checkpoint, encoder, generator


def data_path(options: ExportOptions, checkpoint: dict[str, Any]) -> Path | None:
    """--data, else the dataset the checkpoint was trained on (None when neither is known)."""
    if options.data is not None:
        return options.data
    config = checkpoint.get("config")
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, str) or not data:
        return None
    if not Path(data).is_file():
        raise ox.ExportError(
            f"{options.checkpoint}: was trained on {data}, which is not here; pass --data"
        )
    return Path(data)


def _read_captions(path: Path, split: str) -> tuple[list[str], np.ndarray | None]:
    # Only the captions (and attributes) are needed: reading them directly, through the schema's
    # checked opener, avoids decoding every image of a large split.
    from train.data import files, schema

    with files.open_checked(path) as f:
        if split not in f:
            raise schema.DataError(f"{path}: no split {split!r} (has {sorted(f.keys())})")
        group = f[split]
        if "captions" not in group:
            raise schema.DataError(f"{path}:/{split}: missing dataset 'captions'")
        rows = group["captions"][()]
        attributes = group["attributes"][()] if "attributes" in group else None
    captions = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for row in rows for c in row]
    per_image = rows.shape[1] if rows.ndim == 2 else 1
    if attributes is not None:
        attributes = np.repeat(attributes, per_image, axis=0)  # one row per caption
    return captions, attributes


def _encodable(captions: Sequence[str]) -> np.ndarray:
    ok = []
    for i, caption in enumerate(captions):
        try:
            tokenizer.encode(caption)
        except tokenizer.CaptionError:
            continue
        ok.append(i)
    return np.asarray(ok, dtype=np.int64)


def _word_prefix(caption: str, rng: np.random.Generator) -> str:
    words = caption.split()
    return " ".join(words[: rng.integers(1, len(words))]) if len(words) > 1 else caption


def load_captions(path: Path, calibration_size: int, quality_size: int = QUALITY_BATCH) -> Captions:
    """Calibration captions from the train split; quality captions from "test" when present."""
    from train.data import files, schema

    info = files.read_info(path)
    train, _ = _read_captions(path, "train")
    valid = _encodable(train)
    rng = np.random.default_rng(NOISE_SEED)
    held_out = "test" in info.splits
    n_prefixes = round(calibration_size * PREFIX_FRACTION)
    need = calibration_size + (0 if held_out else quality_size)
    if len(valid) < need:
        raise schema.DataError(
            f"{path}:/train: {len(valid)} usable captions, calibration needs {need}"
        )
    picked = rng.choice(valid, size=need, replace=False)
    calibration = [train[i] for i in picked[:calibration_size]]
    prefixes = [_word_prefix(train[i], rng) for i in rng.choice(valid, size=n_prefixes)]
    if held_out:
        test, attributes = _read_captions(path, "test")
        test_valid = _encodable(test)
        if len(test_valid) < quality_size:
            raise schema.DataError(
                f"{path}:/test: {len(test_valid)} usable captions, need {quality_size}"
            )
        idx = rng.choice(test_valid, size=quality_size, replace=False)
        quality = [test[i] for i in idx]
        quality_attributes = attributes[idx] if attributes is not None else None
    else:
        quality = [train[i] for i in picked[calibration_size:]]
        quality_attributes = None
    quality_prefixes = [_word_prefix(c, rng) for c in quality[: quality_size // 4]]
    return Captions(
        calibration=calibration,
        calibration_prefixes=prefixes,
        quality=[*quality, *quality_prefixes, *ox.PARITY_CAPTIONS],
        quality_attributes=quality_attributes,
        source={
            "dataset": info.dataset,
            "file": path.name,
            "sha256": b.sha256_file(path),
            "calibration_split": "train",
            "quality_split": "test" if held_out else "train (held out from calibration)",
        },
        path=path,
    )


def _embed(session: Any, captions: Sequence[str], length: int, batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(captions), batch):
        ids, lengths = ox.example_char_ids(captions[i : i + batch], length)
        out.append(session.run([b.TEXT_EMBEDDING], {b.CHAR_IDS: ids, b.LENGTHS: lengths})[0])
    return np.concatenate(out)


def _generate(
    session: Any, noise: np.ndarray, embeddings: np.ndarray, batch: int = 16
) -> np.ndarray:
    return np.concatenate(
        [
            session.run(
                [b.IMAGE],
                {b.NOISE: noise[i : i + batch], b.TEXT_EMBEDDING: embeddings[i : i + batch]},
            )[0]
            for i in range(0, len(noise), batch)
        ]
    )


def check_rewrite(
    generator: Generator, prepared: torch.nn.Module, noise: np.ndarray, embeddings: np.ndarray
) -> float:
    """Max abs difference of the prepared generator from the trained one, both evaluated in
    float64 (with their float32 weights as shipped)."""
    # float64 arithmetic isolates what the rewrite changed (the folded weights' float32 rounding,
    # ~1e-6 on images) from float32 evaluation noise, which for a whole trained generator is of
    # the same order as 1e-5 in either model alone; float32 behaviour is checked by ONNX parity.
    # Real caption embeddings, not random vectors: batch norm was fitted to the former.
    z, e = torch.from_numpy(noise).double(), torch.from_numpy(embeddings).double()
    with torch.no_grad():
        reference = copy.deepcopy(generator).double()(z, e)
        diff = float((copy.deepcopy(prepared).double()(z, e) - reference).abs().max())
    if not diff <= REWRITE_TOLERANCE:
        raise ox.ExportError(
            f"generator rewrite differs from the trained generator by {diff:.3g} "
            f"(max allowed {REWRITE_TOLERANCE:g})"
        )
    return diff


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


def _latencies(
    sessions: dict[str, tuple[Any, Any]], model: b.ModelSpec, rounds: int
) -> dict[str, dict[str, float]]:
    """Per variant: text encoder at batch 1 (full length), generator at batch 1 and 16; 1 thread."""
    ids, lengths = ox.example_char_ids([ox.PARITY_CAPTIONS[0]], model.max_length)
    rng = np.random.default_rng(NOISE_SEED)
    feeds = {
        n: (
            rng.standard_normal((n, model.noise_dim)).astype(np.float32),
            rng.standard_normal((n, model.embedding_dim)).astype(np.float32),
        )
        for n in (1, 16)
    }
    calls: dict[str, Callable[[], object]] = {}
    for variant, (text, gen) in sessions.items():
        calls[f"{variant}|text_encoder_b1_t1"] = lambda s=text: s.run(
            None, {b.CHAR_IDS: ids, b.LENGTHS: lengths}
        )
        for n, (noise, emb) in feeds.items():
            calls[f"{variant}|generator_b{n}_t1"] = lambda s=gen, z=noise, e=emb: s.run(
                None, {b.NOISE: z, b.TEXT_EMBEDDING: e}
            )
    times = interleaved(calls, rounds=rounds, warmup=2)
    out: dict[str, dict[str, float]] = {v: {} for v in sessions}
    for key, ms in times.items():
        variant, name = key.split("|")
        out[variant][name] = round(ms, 4)
    return out


def oracle_accuracy(
    oracle: Any, images: dict[str, np.ndarray], attributes: np.ndarray
) -> dict[str, float]:
    """The attribute oracle's accuracy on each precision's images of the whole captions:
    `oracle_accuracy_<precision>` (mean over attributes) and `oracle_<attribute>_<precision>`."""
    from train.quality.oracle import accuracy_per_attribute, predict

    names = oracle.config.attribute_names
    out: dict[str, float] = {}
    for precision, batch in images.items():
        # Only the whole held-out captions have attributes; they come first in the batch.
        labels = predict(oracle, batch[: len(attributes)]).labels
        accuracy = accuracy_per_attribute(labels, attributes, names)
        out[f"oracle_accuracy_{precision}"] = round(float(np.mean(list(accuracy.values()))), 4)
        out.update({f"oracle_{n}_{precision}": round(a, 4) for n, a in accuracy.items()})
    return out


def _load_oracle(path: Path, data: Path, captions: Captions, force: bool) -> Any:
    """The oracle's network, and whether it passed its honesty checks on `data`."""
    from train.quality.oracle import OracleError, load_oracle

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


def export_bundle(options: ExportOptions) -> b.Manifest:
    """Run the whole export; raise a one-line error (CheckpointError, DataError, ExportError,
    QualityGateError, BundleError) on any problem, before `options.out` is touched."""
    if options.subpixel not in SUBPIXEL_FORMS:
        raise ox.ExportError(
            f"unknown sub-pixel form {options.subpixel!r} (choose from {SUBPIXEL_FORMS})"
        )
    if options.fp32_form not in GENERATOR_FORMS:
        raise ox.ExportError(
            f"unknown generator form {options.fp32_form!r} (choose from {GENERATOR_FORMS})"
        )
    if options.out.exists() and not options.force:
        raise b.BundleError(f"{options.out}: already exists (use --force to replace it)")
    checkpoint, encoder, generator = load_models(options.checkpoint)
    gan_config = generator.config
    text_config = encoder.config
    model = b.ModelSpec(
        noise_dim=gan_config.noise_dim,
        embedding_dim=text_config.embedding_dim,
        image_size=gan_config.image_size,
        max_length=text_config.max_length,
        length_stride=text_config.length_stride,
        length_extra=text_config.length_extra,
    )
    captions: Captions | None = None
    oracle = None
    if options.quantize:
        data = data_path(options, checkpoint)
        if data is None:
            raise ox.ExportError(
                f"{options.checkpoint}: --quantize needs calibration captions: pass --data "
                "(the checkpoint names no dataset in config['data'])"
            )
        captions = load_captions(data, options.calibration_size)
        if options.oracle is not None:
            oracle = _load_oracle(options.oracle, data, captions, options.force_oracle)

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="rescue-export-") as tmp:
        work = Path(tmp)
        # ---- fp32 graphs ------------------------------------------------------------------
        text_path = work / "text_encoder.onnx"
        ox.export_text_encoder(encoder, text_path)
        text_parity = ox.text_encoder_parity(encoder, text_path)
        text_session = ox.session(text_path)
        parity_embeddings = _embed(text_session, ox.PARITY_CAPTIONS, model.max_length)
        parity_noise = ox.parity_inputs(model.noise_dim)
        checks: dict[str, dict[str, float]] = {}

        def generator_graph(form: str, path: Path) -> Path:
            prepared = prepare_generator(generator, form)  # type: ignore[arg-type]
            rewrite = check_rewrite(generator, prepared, parity_noise, parity_embeddings)
            ox.export_generator(prepared, gan_config.noise_dim, model.embedding_dim, path)
            # Against the *trained* generator: covers the rewrite and the export together.
            parity = ox.generator_parity(generator, path, parity_embeddings, parity_noise)
            checks[form] = {
                "rewrite_max_abs_diff_torch_float64": rewrite,
                "parity_max_abs_diff": parity,
            }
            log.info(
                "generator %s: rewrite %.2g (torch, float64), onnxruntime parity %.2g",
                form,
                rewrite,
                parity,
            )
            return path

        gen_path = generator_graph(options.fp32_form, work / "generator.onnx")
        log.info("text encoder: onnxruntime parity %.2g", text_parity)
        graphs = {
            "text_encoder.fp32": _graph_spec(text_path.name, b.TEXT_ENCODER, "fp32", model),
            "generator.fp32": _graph_spec(gen_path.name, b.GENERATOR, "fp32", model),
        }
        files: dict[str, Path] = {"text_encoder.fp32": text_path, "generator.fp32": gen_path}
        variants = {"fp32": b.Variant("text_encoder.fp32", "generator.fp32", True, {}, {})}
        quantization: dict[str, Any] = {"method": "none"}
        sessions = {"fp32": (text_session, ox.session(gen_path))}

        # ---- int8 graphs --------------------------------------------------------------------
        if captions is not None:
            source = (
                gen_path
                if options.subpixel == options.fp32_form
                else generator_graph(options.subpixel, work / "generator.rewritten.onnx")
            )
            variant, quantization, int8_files, int8_sessions = _Int8Build(
                options,
                encoder,
                model,
                captions,
                work,
                text_path,
                source,
                *sessions["fp32"],
                oracle,
            ).run()
            files.update(int8_files)
            for key, path in int8_files.items():
                role, precision = key.split(".")
                graphs[key] = _graph_spec(path.name, role, precision, model)
            variants["int8"] = variant
            sessions["int8"] = int8_sessions

        latency = _latencies(sessions, model, options.latency_rounds)
        variants = {k: dataclasses.replace(v, latency_ms=latency[k]) for k, v in variants.items()}
        manifest = b.Manifest(
            name=options.name or options.out.name,
            model=model,
            graphs=graphs,
            variants=variants,
            quantization=quantization,
            provenance=_provenance(options, checkpoint, text_parity, checks),
        )
        written = b.write_bundle(options.out, manifest, files, force=options.force)
    log.info(
        "wrote %s (%s)",
        options.out,
        ", ".join(f"{k} {g.size_bytes} B" for k, g in written.graphs.items()),
    )
    return written


@dataclass
class _Int8Build:
    """The int8 variant under construction: inputs shared by its steps."""

    options: ExportOptions
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
        options, model, captions = self.options, self.model, self.captions
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
            calibration_feeds(calib_noise, calib_emb),
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
        if self.oracle is not None and options.oracle is not None:
            quantization["oracle"] = {
                "file": options.oracle.name,
                "sha256": b.sha256_file(options.oracle),
                "passed_honesty_checks": self.oracle[1],
                "scored": "whole held-out captions (quality keys oracle_*)",
            }
        variant = b.Variant(text_key, "generator.int8", passed, quality, {})
        return variant, quantization, files, (text_int8, gen_int8)

    def choose_text_encoder(
        self, gen_int8: Any, noise: np.ndarray, fp32_embeddings: np.ndarray, reference: np.ndarray
    ) -> tuple[Path | None, dict[str, Any]]:
        """Build the int8 candidates, measure them against fp32 here, keep the best that pays."""
        model, options = self.model, self.options
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


def calibration_feeds(noise: np.ndarray, embeddings: np.ndarray) -> list[q.Feed]:
    """Generator calibration batches: {noise, text_embedding} of `CALIBRATION_BATCH` rows."""
    return q.batched({b.NOISE: noise, b.TEXT_EMBEDDING: embeddings}, CALIBRATION_BATCH)


def _graph_spec(file: str, role: str, precision: str, model: b.ModelSpec) -> b.GraphSpec:
    if role == b.TEXT_ENCODER:
        inputs = (
            b.TensorSpec(b.CHAR_IDS, "int64", (b.BATCH_DIM, b.TIME_DIM)),
            b.TensorSpec(b.LENGTHS, "int64", (b.BATCH_DIM,)),
        )
        outputs = (b.TensorSpec(b.TEXT_EMBEDDING, "float32", (b.BATCH_DIM, model.embedding_dim)),)
    else:
        inputs = (
            b.TensorSpec(b.NOISE, "float32", (b.BATCH_DIM, model.noise_dim)),
            b.TensorSpec(b.TEXT_EMBEDDING, "float32", (b.BATCH_DIM, model.embedding_dim)),
        )
        size = model.image_size
        outputs = (
            b.TensorSpec(b.IMAGE, "float32", (b.BATCH_DIM, model.image_channels, size, size)),
        )
    return b.GraphSpec(
        file=file, role=role, precision=precision, inputs=inputs, outputs=outputs, opset=ox.OPSET
    )


def _provenance(
    options: ExportOptions,
    checkpoint: dict[str, Any],
    text_parity: float,
    generator_checks: dict[str, dict[str, float]],
) -> dict[str, Any]:
    return {
        "checkpoint_file": options.checkpoint.name,
        "checkpoint_sha256": b.sha256_file(options.checkpoint),
        "checkpoint_kind": checkpoint.get("kind"),
        "checkpoint_step": checkpoint.get("step"),
        "checkpoint_epoch": checkpoint.get("epoch"),
        "git_commit": _git_commit(),
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "exporter": "torch.onnx TorchScript (dynamo=False)",
        "opset": ox.OPSET,
        "ir_version": ox.IR_VERSION,
        "min_onnxruntime": ox.OLDEST_ONNXRUNTIME,
        "generator_graphs": {
            "fp32_form": options.fp32_form,
            "int8_form": options.subpixel if options.quantize else None,
            "batch_norm": "folded into the preceding layer",
            "first_layer": "Gemm + Reshape",
            "checks": generator_checks,
        },
        "text_encoder_parity_max_abs_diff": text_parity,
        "libraries": _versions(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
