"""Checkpoint → verified bundle: rebuild, prepare, export, check parity, quantize, gate, write.

The orchestration; the calibration and quality data are `export.calibration`, the int8 decision
is `export.int8`.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from edge_runtime import bundle as b
from export import canonical_table as ct
from export import onnx_export as ox
from export import readback as rb
from export.calibration import MIN_CALIBRATION, NOISE_SEED, Captions, _embed, load_captions
from export.int8 import Int8Build, Int8Gate, load_export_oracle
from export.prepare import GENERATOR_FORMS, SUBPIXEL_FORMS, prepare_generator
from export.readback import MIN_AGREEMENT, ReadBackBuild, load_readback, readback_spec
from train import checkpoint as ck
from train.models import CharCnnRnn, Generator
from train.options import REQUIRED, option
from train.timing import interleaved

log = logging.getLogger(__name__)

REWRITE_TOLERANCE = 1e-5
"""Max abs difference between the prepared and the trained generator in PyTorch (float64)."""
DEFAULT_SUBPIXEL = "2x2"
"""Form of the graph quantized to int8: the fastest int8 in `make bench` (docs/EXPORT.md)."""
DEFAULT_FP32_FORM = "convtranspose"
"""Form of the shipped fp32 generator: batch norm folded, transposed convolutions kept, which ran
faster in fp32 than any sub-pixel form in `make bench` (docs/EXPORT.md)."""


DEFAULT_CALIBRATION_SIZE = 512
DEFAULT_MIN_PSNR_DB = 30.0


@dataclass(frozen=True)
class ExportOptions:
    """Everything `export_bundle` needs; `ExportFlags.to_options` builds it from the flags."""

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
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    min_psnr_db: float = DEFAULT_MIN_PSNR_DB
    min_readback_agreement: float = MIN_AGREEMENT
    """Read-back gate: share of the int8 variant's decisions equal to fp32's (export.readback)."""
    latency_rounds: int = 20


@dataclass(frozen=True)
class ExportFlags:
    """The `python -m export` command line, each flag declared once (`train.options`); here
    rather than in `export.cli` because the forms' names come from torch-importing modules,
    which the CLI loads only after its missing-extra check."""

    checkpoint: Path = option(REQUIRED, "GAN checkpoint (kind 'gan')", required=True)
    out: Path = option(REQUIRED, "bundle directory to create", required=True)
    quantize: bool = option(
        False, "also build and gate the int8 variant", show_default=False, store_true=True
    )
    data: Path | None = option(
        None,
        "dataset HDF5 whose train captions calibrate int8 "
        "(default: the checkpoint's config['data'])",
        show_default=False,
    )
    force: bool = option(
        False, "replace an existing bundle at --out", show_default=False, store_true=True
    )
    allow_lossy: bool = option(
        False,
        "ship an int8 variant that fails the quality gate (marked gate_passed=false)",
        show_default=False,
        store_true=True,
    )
    oracle: Path | None = option(
        None, "attribute-oracle checkpoint: record its accuracy on int8 vs fp32", show_default=False
    )
    force_oracle: bool = option(
        False,
        "use an --oracle that fails its honesty checks (recorded in the manifest)",
        show_default=False,
        store_true=True,
    )
    name: str | None = option(
        None, "bundle name in the manifest (default: the --out directory name)", show_default=False
    )
    subpixel: str = option(
        DEFAULT_SUBPIXEL,
        f"sub-pixel rewrite of the int8 generator (default {DEFAULT_SUBPIXEL}, "
        "the fastest measured)",
        show_default=False,
        choices=SUBPIXEL_FORMS,
    )
    fp32_form: str = option(
        DEFAULT_FP32_FORM,
        f"form of the fp32 generator (default {DEFAULT_FP32_FORM}: batch norm folded, "
        "transposed convolutions kept, the fastest fp32 measured)",
        show_default=False,
        choices=GENERATOR_FORMS,
    )
    calibration_size: int = option(
        DEFAULT_CALIBRATION_SIZE,
        f"training captions for int8 calibration (at least {MIN_CALIBRATION})",
        show_default=False,
        at_least=MIN_CALIBRATION,
    )
    min_psnr: float = option(
        DEFAULT_MIN_PSNR_DB,
        "quality gate: PSNR of int8 vs fp32 in dB",
        show_default=False,
        above=0,
        below=100,
    )
    min_readback_agreement: float = option(
        MIN_AGREEMENT,
        f"read-back gate: share of int8 decisions equal to fp32's (default {MIN_AGREEMENT:g}; "
        "checkpoints with read-back heads only)",
        show_default=False,
        above=0,
        at_most=1,
    )

    def to_options(self) -> ExportOptions:
        """The export these flags ask for (`--min-psnr` is in dB: `min_psnr_db`)."""
        given = dataclasses.asdict(self)
        given["min_psnr_db"] = given.pop("min_psnr")
        return ExportOptions(**given)


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
    generator = ck.generator_for_inference(checkpoint, str(path))
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


def _latencies(
    sessions: dict[str, tuple[Any, Any]],
    model: b.ModelSpec,
    rounds: int,
    readbacks: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Per variant: text encoder at batch 1 (full length), generator at batch 1 and 16, and the
    read-back at batch 1 when there is one; 1 thread."""
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
        if readbacks:
            calls[f"{variant}|readback_b1_t1"] = lambda s=readbacks[variant], e=feeds[1][1]: s.run(
                None, {b.TEXT_EMBEDDING: e}
            )
    times = interleaved(calls, rounds=rounds, warmup=2)
    out: dict[str, dict[str, float]] = {v: {} for v in sessions}
    for key, ms in times.items():
        variant, name = key.split("|")
        out[variant][name] = round(ms, 4)
    return out


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
    readback = load_readback(checkpoint, options.checkpoint, encoder)
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
            oracle = load_export_oracle(options.oracle, data, captions, options.force_oracle)

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
        spec = None
        if readback is not None:
            spec = readback_spec(known_words=readback.config.known_words)
        readbacks: dict[str, Any] = {}
        build = None
        if readback is not None and spec is not None:
            build = ReadBackBuild(readback, spec, model, work)
            files["readback.fp32"] = build.build_fp32(parity_embeddings)
            graphs["readback.fp32"] = rb.graph_spec("readback.onnx", "fp32", model, spec)
            variants["fp32"] = dataclasses.replace(variants["fp32"], readback="readback.fp32")
            readbacks["fp32"] = build.fp32_session

        # ---- int8 graphs --------------------------------------------------------------------
        if captions is not None:
            source = (
                gen_path
                if options.subpixel == options.fp32_form
                else generator_graph(options.subpixel, work / "generator.rewritten.onnx")
            )
            gate = Int8Gate(
                options.min_psnr_db, options.allow_lossy, options.latency_rounds, options.oracle
            )
            variant, quantization, int8_files, int8_sessions = Int8Build(
                gate,
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
            sessions["int8"] = int8_sessions
            if build is not None and spec is not None:
                text_int8 = int8_sessions[0]
                rb_path, rb_quality, rb_record, rb_passed = build.build_int8(
                    captions.quality,
                    lambda texts: _embed(text_session, texts, model.max_length),
                    lambda texts, s=text_int8: _embed(s, texts, model.max_length),
                    min_agreement=options.min_readback_agreement,
                    rounds=options.latency_rounds,
                    allow_lossy=options.allow_lossy,
                )
                rb_key = "readback.fp32"
                readbacks["int8"] = build.fp32_session
                if rb_path is not None:
                    rb_key = "readback.int8"
                    files[rb_key] = rb_path
                    graphs[rb_key] = rb.graph_spec(rb_path.name, "int8", model, spec)
                    readbacks["int8"] = ox.session(rb_path)
                variant = dataclasses.replace(
                    variant,
                    readback=rb_key,
                    gate_passed=variant.gate_passed and rb_passed,
                    quality={**variant.quality, **rb_quality},
                )
                quantization["readback"] = rb_record
            variants["int8"] = variant

        if spec is not None and spec.canonical is not None:
            # One table per distinct text encoder (a variant whose int8 encoder failed its gate
            # names the fp32 one, and then shares its table).
            tables: dict[str, tuple[str, np.ndarray]] = {}
            for name, variant in variants.items():
                found = tables.get(variant.text_encoder)
                if found is None:
                    key = f"canonical.{name}"
                    table = ct.embeddings(sessions[name][0], model, spec)
                    path = work / f"canonical_embeddings.{name}.onnx"
                    ct.write_graph(table, path)
                    files[key] = path
                    graphs[key] = ct.graph_spec(path.name, name, model)
                    found = tables[variant.text_encoder] = (key, table)
                variants[name] = dataclasses.replace(variant, canonical=found[0])
            log.info(
                "canonical table: %d captions × %d per text encoder (%s)",
                *next(iter(tables.values()))[1].shape,
                ", ".join(k for k, _ in tables.values()),
            )
        latency = _latencies(sessions, model, options.latency_rounds, readbacks)
        variants = {k: dataclasses.replace(v, latency_ms=latency[k]) for k, v in variants.items()}
        manifest = b.Manifest(
            name=options.name or options.out.name,
            model=model,
            graphs=graphs,
            variants=variants,
            quantization=quantization,
            provenance={
                **_provenance(options, checkpoint, text_parity, checks),
                **(
                    {"readback_parity_max_abs_diff": build.parity_max_abs_diff}
                    if build is not None
                    else {}
                ),
            },
            readback=spec,
        )
        written = b.write_bundle(options.out, manifest, files, force=options.force)
    log.info(
        "wrote %s (%s)",
        options.out,
        ", ".join(f"{k} {g.size_bytes} B" for k, g in written.graphs.items()),
    )
    return written


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
