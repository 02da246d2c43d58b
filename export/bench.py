"""`python -m export.bench` (`make bench`): generator and text-encoder speed, variants interleaved.

For each batch size and thread count it prints milliseconds per call (median of interleaved rounds)
of every variant, and each variant's speed as a ratio to onnxruntime fp32 of the original
ConvTranspose graph and to torch eager, measured in the same run. It measures only: nothing here
passes or fails on a time.

Without --checkpoint it uses the paper-sized networks (Reed's char-CNN-RNN, DCGAN-64 with ngf 64)
with random weights and batch-norm statistics taken from data (as training leaves them), so
activations have trained-like ranges: speed does not depend on the values, and the int8 quality
lines are indicative only. int8 graphs are calibrated on real captions when a dataset is available
(--data, default data/rescue_scenes.h5), else on Gaussian embeddings.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edge_runtime import bundle as b
from edge_runtime.machine import cpu_info
from export import onnx_export as ox
from export import quantize as q
from export.calibration import calibration_feeds, load_captions
from export.int8 import _text_encoder_candidates
from export.pipeline import DEFAULT_FP32_FORM, DEFAULT_SUBPIXEL, load_models
from export.prepare import SUBPIXEL_FORMS, prepare_generator
from export.tiny import batch_norm_from_data
from train import models
from train.checkpoint import CheckpointError
from train.data.schema import DataError
from train.timing import interleaved

log = logging.getLogger(__name__)

DEFAULT_DATA = Path("data/rescue_scenes.h5")
ORIGINAL = "ORT fp32 ConvTranspose"
EAGER = "torch eager"
TEXT_FP32 = "ORT fp32"


def _paper_generator(embeddings: np.ndarray) -> models.Generator:
    torch.manual_seed(1)
    generator = models.Generator(models.GANConfig())
    batch_norm_from_data(generator, embeddings)
    return generator.eval()


def _block(
    batch: int,
    threads: int,
    times: dict[str, float],
    baselines: tuple[str, ...],
    sizes: dict[str, int],
    *,
    digits: int = 2,
) -> str:
    """One configuration: a row per variant with ms, ms/image, ratios and file size."""
    head = ["variant", "ms", "ms/image", *(f"× {base}" for base in baselines), "MB"]
    rows = [head]
    for name, ms in times.items():
        rows.append(
            [
                name,
                f"{ms:.{digits}f}",
                f"{ms / batch:.{digits}f}",
                *(f"{times[base] / ms:.2f}" for base in baselines),
                f"{sizes[name] / 1e6:.2f}" if name in sizes else "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}"]
    for i, row in enumerate(rows):
        cells = [
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells))
        if i == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _run_configs(
    make: Callable[[int, int], dict[str, Callable[[], object]]],
    batches: list[int],
    threads: list[int],
    rounds: int,
) -> dict[tuple[int, int], dict[str, float]]:
    out = {}
    for t in threads:
        torch.set_num_threads(t)
        for n in batches:
            log.info("timing batch %d, %d thread(s)", n, t)
            out[(n, t)] = interleaved(make(n, t), rounds=rounds, warmup=3)
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="GAN checkpoint (default: paper-sized, random)")
    p.add_argument("--data", type=Path, help=f"calibration dataset (default {DEFAULT_DATA})")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds per configuration")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--forms", nargs="+", choices=SUBPIXEL_FORMS, default=list(SUBPIXEL_FORMS))
    p.add_argument("--skip-text", action="store_true", help="generator tables only")
    p.add_argument(
        "--readback-only", action="store_true",
        help="only the read-back table (fp32 vs dynamic int8 heads at E = 1024 and 256)",
    )  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build every variant, time them interleaved, print the tables (stdout)."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    if args.rounds < 3 or min(args.batches) < 1 or min(args.threads) < 1:
        print("export.bench: error: --rounds ≥ 3, --batches and --threads ≥ 1", file=sys.stderr)
        return 2
    for path, flag in ((args.checkpoint, "--checkpoint"), (args.data, "--data")):
        if path is not None and not path.is_file():
            print(f"export.bench: error: {flag} {path}: file not found", file=sys.stderr)
            return 2

    if args.readback_only:
        with tempfile.TemporaryDirectory(prefix="rescue-bench-") as tmp:
            _print_readback(args, Path(tmp))
        return 0
    data = args.data or (DEFAULT_DATA if DEFAULT_DATA.is_file() else None)
    try:
        captions = load_captions(data, 512) if data else None
        if args.checkpoint:
            _, encoder, generator = load_models(args.checkpoint)
    except (CheckpointError, DataError) as err:
        print(f"export.bench: error: {err}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="rescue-bench-") as tmp:
        work = Path(tmp)
        text_path = work / "text_encoder.onnx"
        if not args.checkpoint:
            torch.manual_seed(0)
            encoder = models.CharCnnRnn(models.TextEncoderConfig()).eval()
        ox.export_text_encoder(encoder, text_path)
        text_fp32 = ox.session(text_path)
        max_len = encoder.config.max_length
        if captions is not None:
            ids, lengths = ox.example_char_ids(captions.calibration_all, max_len)
            calib_emb = text_fp32.run(None, {b.CHAR_IDS: ids, b.LENGTHS: lengths})[0]
            ids, lengths = ox.example_char_ids(captions.quality, max_len)
            quality_emb = text_fp32.run(None, {b.CHAR_IDS: ids, b.LENGTHS: lengths})[0]
            calibration = (
                f"{len(captions.calibration)} captions + {len(captions.calibration_prefixes)} "
                f"prefixes from {data}"
            )
        else:
            rng = np.random.default_rng(0)
            calib_emb = rng.standard_normal((512, encoder.config.embedding_dim)).astype(np.float32)
            quality_emb = rng.standard_normal((64, encoder.config.embedding_dim)).astype(np.float32)
            calibration = "Gaussian embeddings (no dataset)"
        if not args.checkpoint:
            generator = _paper_generator(calib_emb)
        _print_generator(
            args,
            generator,
            work,
            calib_emb=calib_emb,
            quality_emb=quality_emb,
            calibration=calibration,
        )
        if not args.skip_text:
            texts = captions.calibration_all if captions else list(ox.PARITY_CAPTIONS) * 103
            _print_text_encoder(args, encoder, work, text_path, texts[:512])
        _print_readback(args, work)
    return 0


def _print_readback(args: argparse.Namespace, work: Path) -> None:
    """Read-back heads (`ReadBackConfig()` sizes, random weights: speed does not depend on the
    values) at two embedding sizes: fp32, the dynamic int8 export builds, and torch eager."""
    from export import readback as rb

    for dim in (1024, 256):
        torch.manual_seed(0)
        heads = models.ReadBack(models.ReadBackConfig(embedding_dim=dim)).eval()
        graphs = {"ORT fp32": work / f"readback{dim}.onnx"}
        rb.export_graph(heads, graphs["ORT fp32"])
        graphs["ORT int8 dynamic"] = work / f"readback{dim}.int8.onnx"
        q.quantize_text_encoder_dynamic(
            graphs["ORT fp32"], graphs["ORT int8 dynamic"], ox.IR_VERSION, rb.INT8_OP_TYPES
        )
        sizes = {name: path.stat().st_size for name, path in graphs.items()}

        def calls(
            n: int, t: int, heads: models.ReadBack = heads, graphs: dict[str, Path] = graphs
        ) -> dict[str, Callable[[], object]]:
            emb = np.random.default_rng(0).standard_normal((n, heads.config.embedding_dim))
            emb = emb.astype(np.float32)
            tensor = torch.from_numpy(emb)

            def eager() -> object:
                with torch.inference_mode():
                    return heads.probabilities(tensor)

            out: dict[str, Callable[[], object]] = {EAGER: eager}
            for name, path in graphs.items():
                sess = ox.session(path, threads=t)
                out[name] = lambda s=sess: s.run(None, {b.TEXT_EMBEDDING: emb})
            return out

        times = _run_configs(calls, args.batches, args.threads, max(args.rounds, 200))
        print(f"## read-back (embedding {dim}, hidden {heads.config.hidden}; ms per call)")
        for (n, t), row in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            print(_block(n, t, row, ("ORT fp32", EAGER), sizes, digits=4))


def _print_generator(
    args: argparse.Namespace,
    generator: models.Generator,
    work: Path,
    *,
    calib_emb: np.ndarray,
    quality_emb: np.ndarray,
    calibration: str,
) -> None:
    noise_dim, emb_dim = generator.config.noise_dim, generator.config.embedding_dim
    noise = np.random.default_rng(1).standard_normal((len(calib_emb), noise_dim))
    feeds = calibration_feeds(noise.astype(np.float32), calib_emb)
    graphs: dict[str, Path] = {ORIGINAL: work / "generator.original.onnx"}
    ox.export_generator(generator, noise_dim, emb_dim, graphs[ORIGINAL])
    folded = f"ORT fp32 folded {DEFAULT_FP32_FORM}"
    graphs[folded] = work / "generator.folded.onnx"
    ox.export_generator(
        prepare_generator(generator, "convtranspose"), noise_dim, emb_dim, graphs[folded]
    )
    for form in args.forms:
        fp32, int8 = work / f"generator.{form}.onnx", work / f"generator.{form}.int8.onnx"
        ox.export_generator(prepare_generator(generator, form), noise_dim, emb_dim, fp32)
        q.quantize_generator(
            fp32,
            int8,
            feeds,
            settings=q.GeneratorQuantization(),
            output_name=b.IMAGE,
            text_input=b.TEXT_EMBEDDING,
            ir_version=ox.IR_VERSION,
        )
        graphs[f"ORT fp32 rewritten {form}"] = fp32
        graphs[f"ORT int8 rewritten {form}"] = int8
    sizes = {name: path.stat().st_size for name, path in graphs.items()}

    def calls(n: int, t: int) -> dict[str, Callable[[], object]]:
        z = np.random.default_rng(n).standard_normal((n, noise_dim)).astype(np.float32)
        e = np.ascontiguousarray(np.resize(calib_emb, (n, emb_dim)))
        zt, et = torch.from_numpy(z), torch.from_numpy(e)

        def eager() -> object:
            with torch.inference_mode():
                return generator(zt, et)

        out: dict[str, Callable[[], object]] = {EAGER: eager}
        for name, path in graphs.items():
            sess = ox.session(path, threads=t)
            out[name] = lambda s=sess: s.run(None, {b.NOISE: z, b.TEXT_EMBEDDING: e})
        return out

    times = _run_configs(calls, args.batches, args.threads, args.rounds)
    config = generator.config
    print(f"# machine: {cpu_info().describe()}")
    print(f"# {args.rounds} interleaved rounds per configuration, median ms per call")
    print(
        f"## generator (ngf {config.ngf}, noise {noise_dim}, embedding {emb_dim}, "
        f"residual {config.residual}); int8 calibrated on {calibration}"
    )
    for (n, t), row in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(_block(n, t, row, (ORIGINAL, EAGER), sizes))
    z = np.random.default_rng(2).standard_normal((len(quality_emb), noise_dim)).astype(np.float32)
    reference = ox.session(graphs[folded]).run(None, {b.NOISE: z, b.TEXT_EMBEDDING: quality_emb})[0]
    for form in args.forms:
        name = f"ORT int8 rewritten {form}"
        got = ox.session(graphs[name]).run(None, {b.NOISE: z, b.TEXT_EMBEDDING: quality_emb})[0]
        quality = q.image_quality(reference, got)
        print(
            f"# {name}: {sizes[name] / sizes[ORIGINAL]:.1%} of the original fp32 file; vs fp32 on "
            f"{len(z)} images: PSNR {quality['psnr_db']:.2f} dB, SSIM {quality['ssim']:.4f}"
            f"{' (shipped form)' if form == DEFAULT_SUBPIXEL else ''}"
        )
    counts = q.op_counts(graphs[f"ORT int8 rewritten {args.forms[0]}"])
    print(f"# optimised int8 {args.forms[0]} graph as onnxruntime runs it: {counts}")


def _print_text_encoder(
    args: argparse.Namespace,
    encoder: models.CharCnnRnn,
    work: Path,
    text_path: Path,
    texts: list[str],
) -> None:
    candidates = _text_encoder_candidates(text_path, work, encoder, texts)
    graphs = {TEXT_FP32: text_path} | {f"ORT int8 {k}": p for k, (p, _) in candidates.items()}
    sizes = {name: path.stat().st_size for name, path in graphs.items()}
    max_len = encoder.config.max_length

    def calls(n: int, t: int) -> dict[str, Callable[[], object]]:
        ids, lengths = ox.example_char_ids(texts[:n], max_len)
        it, lt = torch.from_numpy(ids), torch.from_numpy(lengths)

        def eager() -> object:
            with torch.inference_mode():
                return encoder(it, lt)

        out: dict[str, Callable[[], object]] = {EAGER: eager}
        for name, path in graphs.items():
            sess = ox.session(path, threads=t)
            out[name] = lambda s=sess: s.run(None, {b.CHAR_IDS: ids, b.LENGTHS: lengths})
        return out

    times = _run_configs(calls, args.batches, args.threads, args.rounds)
    config = encoder.config
    print(
        f"## text encoder (convs {config.conv_channels}, {config.rnn.upper()} "
        f"{config.rnn_hidden}, embedding {config.embedding_dim}, {max_len} characters)"
    )
    for (n, t), row in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(_block(n, t, row, (TEXT_FP32, EAGER), sizes))


if __name__ == "__main__":
    sys.exit(main())
