"""PyTorch → ONNX for both graphs: explicit exporter, pinned opset/IR, checker, parity.

Exporter: the TorchScript path (`dynamo=False`). Since torch 2.9 `torch.onnx.export` defaults to
the dynamo path, which has exported `nn.GRU` with the wrong `linear_before_reset` in some
onnxscript versions (DESIGN.md); the TorchScript path maps nn.GRU/nn.LSTM to the ONNX GRU/LSTM
ops directly. Parity against torch is checked after every export either way.

Opset 17, IR version 8: onnxruntime has run opset 17 since 1.13 and IR 8 since 1.11, so these
graphs load on the 1.16–1.18 releases JetPack 6 and Raspberry Pi OS carry (tests/export checks
the oldest we claim, `OLDEST_ONNXRUNTIME`, in a throwaway venv).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edge_runtime import bundle as b
from edge_runtime import tokenizer
from edge_runtime.engine import SPIN_CONFIG_KEY
from export.errors import ExportError

log = logging.getLogger(__name__)

OPSET = 17
IR_VERSION = 8
OLDEST_ONNXRUNTIME = "1.16.3"
"""The oldest onnxruntime release these bundles are claimed (and tested) to load on."""
PARITY_TOLERANCE = 1e-4
"""Max abs difference allowed between onnxruntime fp32 and torch on the parity batch."""

PARITY_CAPTIONS = (
    "survivor in an orange jacket lying on rubble, left side",
    "a person wearing a yellow helmet sitting near the wall",
    "rescuer in blue standing on grass at the center",
    "x",
    "injured man under a collapsed concrete slab, partly covered in dust and debris, only his "
    "red sleeve and right hand visible between two broken beams on the far right of the scene",
)
"""Fixed captions for parity: short, typical, one character, and long (> 150 characters)."""


class _TextEncoderGraph(nn.Module):
    """Names the text encoder's signature for export: (char_ids, lengths) → text_embedding."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, char_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(char_ids, lengths)


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> onnx.ModelProto:
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that GRU/LSTM batch sizes
        # other than the traced one may differ; parity (at several batch sizes) is the real check.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    model.ir_version = IR_VERSION
    model.producer_name = "rescue-t2i export"
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.save(model, str(path))
    return model


def example_char_ids(
    captions: Sequence[str], length: int = tokenizer.MAX_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """Captions → (char_ids int64 (B, length), lengths int64 (B,)) as the robot feeds them."""
    rows, lengths = tokenizer.encode_batch(captions, length)
    return np.asarray(rows, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def export_text_encoder(encoder: nn.Module, path: Path) -> onnx.ModelProto:
    """Export the char-CNN-RNN with dynamic `batch` and `time` axes (batch norm folded)."""
    ids, lengths = example_char_ids(PARITY_CAPTIONS[:2], encoder.config.max_length)
    if getattr(encoder.config, "batch_norm", False):
        # Not every onnxruntime fuses Conv + BatchNormalization, and folded weights quantize as
        # one tensor; CharCnnRnn folds its own (it knows which norm follows which convolution).
        encoder = encoder.fold_batch_norm()
    return _export(
        _TextEncoderGraph(encoder).eval(),
        (torch.from_numpy(ids), torch.from_numpy(lengths)),
        path,
        inputs=[b.CHAR_IDS, b.LENGTHS],
        outputs=[b.TEXT_EMBEDDING],
        dynamic_axes={
            b.CHAR_IDS: {0: b.BATCH_DIM, 1: b.TIME_DIM},
            b.LENGTHS: {0: b.BATCH_DIM},
            b.TEXT_EMBEDDING: {0: b.BATCH_DIM},
        },
    )


def export_generator(
    generator: nn.Module, noise_dim: int, embedding_dim: int, path: Path
) -> onnx.ModelProto:
    """Export a generator (trained or `ExportGenerator`) with a dynamic `batch` axis."""
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(2, noise_dim, generator=gen), torch.randn(2, embedding_dim, generator=gen))
    return _export(
        generator.eval(),
        args,
        path,
        inputs=[b.NOISE, b.TEXT_EMBEDDING],
        outputs=[b.IMAGE],
        dynamic_axes={
            b.NOISE: {0: b.BATCH_DIM},
            b.TEXT_EMBEDDING: {0: b.BATCH_DIM},
            b.IMAGE: {0: b.BATCH_DIM},
        },
    )


def session(path: Path | bytes, threads: int = 1, optimized_path: Path | None = None) -> Any:
    """A CPU onnxruntime session with a fixed thread count (and optionally the optimised dump);
    `path` may also be a model's bytes (what `edge_runtime.bundle.load_bundle` hands over)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if threads > 1:
        # As on the robot (edge_runtime.engine): spinning pools of the sessions measured one
        # after another would take each other's cores.

        options.add_session_config_entry(SPIN_CONFIG_KEY, "0")
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def parity_inputs(
    noise_dim: int, seed: int = 1234, batch: int = len(PARITY_CAPTIONS)
) -> np.ndarray:
    """The fixed standard-normal noise of the parity and quality batches."""
    return np.random.default_rng(seed).standard_normal((batch, noise_dim)).astype(np.float32)


def check_parity(
    name: str, torch_out: np.ndarray, ort_out: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> float:
    """Max abs difference; raise `ExportError` naming `name` when it exceeds `tolerance`."""
    if torch_out.shape != ort_out.shape:
        raise ExportError(
            f"{name}: onnxruntime output shape {ort_out.shape} != torch {torch_out.shape}"
        )
    diff = float(np.max(np.abs(torch_out.astype(np.float64) - ort_out)))
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportError(
            f"{name}: onnxruntime fp32 differs from torch by {diff:.3g} (max allowed {tolerance:g})"
        )
    return diff


def text_encoder_parity(encoder: nn.Module, path: Path) -> float:
    """Compare onnxruntime and torch on the parity captions at several padded lengths."""
    sess = session(path)
    worst = 0.0
    config = encoder.config
    longest = max(len(tokenizer.encode(c).ids) for c in PARITY_CAPTIONS)
    # Full padding, the shortest the manifest allows for the longest caption, and batch 1.
    for captions, length in (
        (PARITY_CAPTIONS, config.max_length),
        (PARITY_CAPTIONS, config.min_input_length(longest)),
        (
            PARITY_CAPTIONS[:1],
            config.min_input_length(len(tokenizer.encode(PARITY_CAPTIONS[0]).ids)),
        ),
    ):
        ids, lengths = example_char_ids(captions, length)
        with torch.no_grad():
            expected = encoder(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
        got = sess.run([b.TEXT_EMBEDDING], {b.CHAR_IDS: ids, b.LENGTHS: lengths})[0]
        worst = max(worst, check_parity(f"{path.name} (time={length})", expected, got))
    return worst


def generator_parity(
    generator: nn.Module, path: Path, embeddings: np.ndarray, noise: np.ndarray
) -> float:
    """Compare onnxruntime and torch on fixed noise and embeddings, at batch B and batch 1."""
    sess = session(path)
    worst = 0.0
    for sl in (slice(None), slice(0, 1)):
        with torch.no_grad():
            expected = generator(
                torch.from_numpy(noise[sl]), torch.from_numpy(embeddings[sl])
            ).numpy()
        got = sess.run([b.IMAGE], {b.NOISE: noise[sl], b.TEXT_EMBEDDING: embeddings[sl]})[0]
        worst = max(worst, check_parity(f"{path.name} (batch {len(expected)})", expected, got))
    return worst


def op_types(model: onnx.ModelProto) -> set[str]:
    """Every node type in the main graph."""
    return {node.op_type for node in model.graph.node}
