"""int8 graphs with onnxruntime's quantization tools, and the quality measures that gate them.

Generator: static QDQ (per-channel int8 weights) on the rewritten graph, calibrated on real
training captions through the text encoder plus sampled noise. onnxruntime fuses each
DequantizeLinear → Conv → QuantizeLinear group into QLinearConv when it loads the graph; the tanh at
the end stays float (it is excluded, so the image is never rounded to 256 levels twice).

Text encoder: candidates are built and measured (see `export.pipeline`); this module only builds
them: dynamic int8 (Gemm/MatMul, and LSTM → DynamicQuantizeLSTM; onnxruntime has no int8 GRU),
static int8 convolutions (QLinearConv), and both together; never dynamic ConvInteger, which
DESIGN.md measured slower.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from export.errors import ExportError
from export.onnx_export import session

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


class QualityGateError(ExportError):
    """The int8 graphs lost too much quality against fp32; the message carries the numbers."""


@dataclass(frozen=True)
class GeneratorQuantization:
    """How the generator is quantized (recorded in the manifest's quantization section)."""

    activation_type: str = "uint8"
    """"uint8" (u8s8: the fast kernels on x86 without VNNI and on ARM) or "int8"."""
    reduce_range: bool = True
    """7-bit weights: avoids the u8s8 multiply-add saturation of AVX2 kernels without VNNI."""
    calibrate_method: str = "MinMax"
    """onnxruntime CalibrationMethod name: "MinMax", "Percentile" or "Entropy"."""
    exclude_last_conv: bool = False
    """Keep the final convolution (to RGB) in fp32 as well as the tanh."""
    text_projection_fp32: bool = True
    """Keep the layer that reads the text embedding (Linear, a tiny share of the MACs) in fp32.
    Per-tensor 8-bit input quantization of the embedding cost several dB of PSNR (docs/EXPORT.md
    § What export does, in order): the folded batch norm amplifies the embedding's small
    caption-to-caption differences, which the rounding step is not small against."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "static",
            "format": "QDQ",
            "per_channel": True,
            "weight_type": "int8",
            "activation_type": self.activation_type,
            "reduce_range": self.reduce_range,
            "calibrate_method": self.calibrate_method,
            "exclude_last_conv": self.exclude_last_conv,
            "text_projection_fp32": self.text_projection_fp32,
        }


class FeedReader:
    """An onnxruntime `CalibrationDataReader` over a list of feeds (one batch each)."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = list(feeds)
        self._it: Iterator[Feed] = iter(self._feeds)

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


class _NoPreprocessAdvice(logging.Filter):
    """Drops onnxruntime.quantization's "Please consider pre-processing" root-logger warning
    (and its "already quantized" one, see `filter`).

    The advice is for graphs without static shapes or constant folding; the exporter already
    writes both (shape inference + constant folding), and running `quant_pre_process` anyway adds
    opset imports (ai.onnx.ml 5, ...) that older onnxruntime releases refuse.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # "already quantized": said when dynamic int8 is applied on top of static QDQ
        # convolutions, which is the intended "static-conv+dynamic" text-encoder candidate;
        # "parameters ... not specified" (info): a tensor left to dynamic quantization.
        return not any(
            advice in message
            for advice in ("pre-processing", "already quantized", "Quantization parameters for")
        )


@contextlib.contextmanager
def _quiet_advice() -> Iterator[None]:
    root = logging.getLogger()
    advice = _NoPreprocessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def _as_reader(feeds: Sequence[Feed]) -> Any:
    # Subclass lazily: onnxruntime.quantization is slow to import and not needed for fp32 export.
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(FeedReader, CalibrationDataReader):
        pass

    return _Reader(feeds)


def batched(feeds: Mapping[str, np.ndarray], batch: int) -> list[Feed]:
    """Split equal-length arrays into feeds of `batch` rows."""
    n = len(next(iter(feeds.values())))
    return [{k: v[i : i + batch] for k, v in feeds.items()} for i in range(0, n, batch)]


def _tail_nodes(model: onnx.ModelProto, output: str, stop_at: str) -> list[str]:
    """Names of the nodes on the path from the last `stop_at` node to `output`, inclusive."""
    producers = {o: n for n in model.graph.node for o in n.output}
    names: list[str] = []
    tensor = output
    while tensor in producers:
        node = producers[tensor]
        names.append(node.name)
        if node.op_type == stop_at:
            return names
        tensor = node.input[0]
    raise ValueError(f"no {stop_at} node on the path to {output!r}")


def _fix_versions(path: Path, ir_version: int) -> None:
    model = onnx.load(str(path))
    # The quantizer stamps its own IR version; the ops it emits (opset 13 QDQ with axis) are
    # valid at ours, which the robots' onnxruntime releases read.
    model.ir_version = min(model.ir_version, ir_version)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def quantize_generator(
    fp32_path: Path,
    out_path: Path,
    feeds: Sequence[Feed],
    *,
    settings: GeneratorQuantization,
    output_name: str,
    text_input: str,
    ir_version: int,
) -> dict[str, Any]:
    """Static int8 QDQ per-channel generator; returns the details for the manifest."""
    # Lazy, as in _as_reader: onnxruntime.quantization is slow to import, only --quantize needs it.
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    # The image tail (tanh, clamp) stays float: quantizing it would round the image to 8 bits.
    exclude = _tail_nodes(model, output_name, "Conv" if settings.exclude_last_conv else "Tanh")
    if settings.text_projection_fp32:
        exclude += [n.name for n in model.graph.node if text_input in n.input]
    with _quiet_advice():
        quantize_static(
            str(fp32_path),
            str(out_path),
            _as_reader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=settings.reduce_range,
            activation_type=QuantType.QUInt8
            if settings.activation_type == "uint8"
            else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
            # Calibration with the CPU provider only; the box may have no other.
            calibration_providers=["CPUExecutionProvider"],
        )
    _fix_versions(out_path, ir_version)
    return {**settings.to_dict(), "excluded_nodes": exclude}


def quantize_text_encoder_dynamic(
    in_path: Path, out_path: Path, ir_version: int, op_types: Sequence[str]
) -> dict[str, Any]:
    """Dynamic int8 for `op_types` (Gemm/MatMul/LSTM; never Conv: ConvInteger is slow).

    `in_path` is the fp32 graph or one whose convolutions are already static QDQ int8
    (`quantize_text_encoder_static_convs`): the QDQ nodes are left as they are."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: see _as_reader

    with _quiet_advice():
        quantize_dynamic(
            str(in_path),
            str(out_path),
            op_types_to_quantize=list(op_types),
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QInt8,
        )
    _fix_versions(out_path, ir_version)
    return {"method": "dynamic", "op_types": list(op_types), "weight_type": "int8"}


def quantize_text_encoder_static_convs(
    fp32_path: Path,
    out_path: Path,
    feeds: Sequence[Feed],
    ir_version: int,
) -> dict[str, Any]:
    """Static int8 QDQ for the 1-D convolutions only (QLinearConv); the RNN stays fp32."""
    return quantize_static_convs(fp32_path, out_path, feeds, ir_version, reduce_range=True)


def quantize_static_convs(
    fp32_path: Path,
    out_path: Path,
    feeds: Sequence[Feed],
    ir_version: int,
    *,
    reduce_range: bool,
) -> dict[str, Any]:
    """Static int8 QDQ on Conv only (per channel, MinMax calibration on `feeds`); everything else
    stays fp32. Returns the manifest's description of the method."""
    # Lazy, as in _as_reader: onnxruntime.quantization is slow to import, only --quantize needs it.
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet_advice():
        quantize_static(
            str(fp32_path),
            str(out_path),
            _as_reader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
        )
    _fix_versions(out_path, ir_version)
    return {
        "method": "static",
        "format": "QDQ",
        "op_types": ["Conv"],
        "per_channel": True,
        "activation_type": "uint8",
        "weight_type": "int8",
        "reduce_range": reduce_range,
    }


# --------------------------------------------------------------------------------------------
# Quality measures. Hand-written because they are a few lines and the export install should not
# pull in scikit-image; SSIM follows Wang et al. 2004 (11×11 Gaussian, σ = 1.5, K = 0.01, 0.03).
# --------------------------------------------------------------------------------------------


def to_unit(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Generator output (B, C, H, W) in `value_range` → float64 in [0, 1]."""
    lo, hi = value_range
    return np.clip((images.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR of images in [0, 1] over the whole batch (capped at 100 dB for identical images)."""
    mse = float(np.mean((reference - test) ** 2))
    return 100.0 if mse <= 1e-10 else min(100.0, 10.0 * math.log10(1.0 / mse))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean SSIM of (B, C, H, W) images in [0, 1], channel by channel."""
    c1, c2 = 0.01**2, 0.03**2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    values = []
    for ref_img, test_img in zip(reference, test, strict=True):
        for x, y in zip(ref_img, test_img, strict=True):
            mx, my = blur(x), blur(y)
            sxx = blur(x * x) - mx * mx
            syy = blur(y * y) - my * my
            sxy = blur(x * y) - mx * my
            num = (2 * mx * my + c1) * (2 * sxy + c2)
            den = (mx * mx + my * my + c1) * (sxx + syy + c2)
            values.append(float(np.mean(num / den)))
    return float(np.mean(values))


def image_quality(
    reference: np.ndarray, test: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)
) -> dict[str, float]:
    """{"psnr_db", "psnr_db_worst_image", "ssim", "max_abs_diff"} of `test` against `reference`."""
    ref, got = to_unit(reference, value_range), to_unit(test, value_range)
    worst = min(psnr_db(r[None], g[None]) for r, g in zip(ref, got, strict=True))
    return {
        "psnr_db": round(psnr_db(ref, got), 3),
        "psnr_db_worst_image": round(worst, 3),
        "ssim": round(ssim(ref, got), 5),
        "max_abs_diff": round(float(np.max(np.abs(ref - got))), 6),
    }


def embedding_quality(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Cosine similarity (worst row) and relative L2 error of text embeddings."""
    ref, got = reference.astype(np.float64), test.astype(np.float64)
    cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    rel = np.linalg.norm(ref - got) / (np.linalg.norm(ref) + 1e-12)
    return {"cosine_min": round(float(cos.min()), 6), "relative_l2": round(float(rel), 6)}


def op_counts(path: Path, optimized: Path | None = None) -> dict[str, int]:
    """Node types and counts of a graph as onnxruntime optimises it (dumped to `optimized`)."""
    with tempfile.TemporaryDirectory() as tmp:
        dump = optimized or Path(tmp) / "optimized.onnx"
        session(path, optimized_path=dump)
        model = onnx.load(str(dump))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
