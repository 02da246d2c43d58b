"""`python -m train evaluate`: judge a GAN checkpoint or an exported bundle.

    python -m train evaluate --checkpoint runs/gan/00003-…/checkpoint.pt \\
        --oracle runs/oracle/00000/checkpoint.pt --out runs/eval/gan3
    python -m train evaluate --bundle bundles/NAME --precision int8 --data data/rescue_scenes.h5 \\
        --oracle runs/oracle/00000/checkpoint.pt --retrieval runs/text/00000/checkpoint.pt \\
        --out runs/eval/NAME-int8
    python -m train evaluate … --captions my_captions.jsonl      # any labelled captions
    python -m train evaluate … --judge runs/judge/00000/checkpoint.pt  # + the second judge

For every evaluated split (`test` and `test_unseen` by default; or the captions file) one caption
per real image (a seeded choice among its ten) is turned into `--seeds` images. Image k of seed s
uses the robot's own noise rule, `edge_runtime.engine.noise_for(seed0 + s, k)`, and images are
quantised to uint8 exactly as the robot does (`to_uint8_rgb`), so a checkpoint, its fp32 bundle
and its int8 bundle are judged on the same captions and noise. Bundles are run by
`edge_runtime.engine.Engine`, the code the robot runs.

Outputs in `--out`: `metrics.jsonl` (one JSON line per metric and split, appended; every line
carries the run header), `report.md` with `samples.png` (real image, then one image per seed,
framed green where the oracle finds every attribute right) and `attributes.png`. The metrics are
described in train/quality/metrics.py; `--metrics` picks any subset.

Every figure names its judge (docs/QUALITY.md § 1.1): attribute accuracy is printed per judge
(`--oracle`, and `--judge`, which must be of another design than the oracle), and R-precision
says whether its image encoder is one the generator trained against ("not independent": the GAN
checkpoint's own encoder, or a `--retrieval` checkpoint with the same image-encoder weights).

Partial captions (issue 17): the `test_phrasing` split is labelled from its `caption_stated` (the
chosen caption's unstated attributes are not scored), as is a `--captions` file that leaves
attributes out (`python -m train data phrasing-captions` writes one). Both attribute metrics then
report "all stated attributes right" and per attribute "stated attribute right" for the partial
captions alone, and `unstated_entropy[_judge]` how the open attributes vary across seeds — use
`--seeds 8`, the count its target is defined at (docs/QUALITY.md § 2.1).

Captions file: one JSON object per line, `{"caption": "...", "attributes": {"colour": "orange",
"terrain": "rubble", "pose": "lying", "position": "left", "helmet": "no"}}` (value names, or
value indices). An attribute the caption does not state may be left out: it is then not scored
for that caption ("survivor in orange, lying, left side" says nothing about a helmet). Blank
lines and lines starting with `#` are skipped. Every malformed line is
reported as `FILE:LINE: problem`, all of them, before any work starts.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_runtime import tokenizer
from edge_runtime.canonical import DRAW_CHOICES, DRAW_UNDERSTOOD
from edge_runtime.engine import Engine, EngineError, noise_for, to_uint8_rgb
from train import checkpoint as ck
from train import options
from train.data.files import read_info, read_split
from train.errors import BAD_INPUT, InputError
from train.options import REQUIRED, option
from train.quality.metrics import (
    METRICS,
    EvalContext,
    SplitImages,
    check_inception_weights,
    run_metrics,
)
from train.quality.oracle import KIND as ORACLE_KIND
from train.quality.oracle import build_oracle, load_oracle
from train.quality.report import write_report
from train.runs import MetricsLog, OneLineParser
from train.text.joint_embedding import JointEmbedding, encode_captions

log = logging.getLogger(__name__)

RESULTS_FILE = "metrics.jsonl"
DEFAULT_SPLITS = ("test", "test_unseen")
DEFAULT_SEEDS = 4
GENERATE_BATCH = 256


class EvalError(InputError):
    """Bad input to evaluate; the message names the flag, file or line."""


# --------------------------------------------------------------------------------------------
# Captions to evaluate
# --------------------------------------------------------------------------------------------


@dataclass
class CaptionSet:
    """Captions of one evaluated split, with what they describe."""

    name: str
    captions: list[str]
    class_ids: np.ndarray
    attributes: np.ndarray | None = None
    real: np.ndarray | None = None


def choose_captions(
    split: Any, name: str, seed: int, limit: int | None = None, sizes: list[int] | None = None
) -> CaptionSet:
    """One caption per image of a `SplitData` (seeded choice among its distinct captions).

    A split with `caption_stated` (`test_phrasing`) labels each chosen caption with what it
    states only (−1 elsewhere), as a `--captions` file would, and a partial caption's class is
    what it states (`sizes`: values per attribute; see `caption_classes`)."""
    n = len(split) if limit is None else min(limit, len(split))
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    counts = split.caption_counts
    captions, columns = [], []
    for i in range(n):
        available = int(counts[i]) if counts is not None else len(split.captions[i])
        columns.append(int(rng.integers(available)))
        captions.append(split.captions[i][columns[-1]])
    class_ids = np.asarray(split.class_ids[:n], np.int64)
    attributes = None if split.attributes is None else np.asarray(split.attributes[:n], np.int64)
    stated = getattr(split, "caption_stated", None)
    if stated is not None and attributes is not None:
        masks = np.asarray(stated, np.int64)[np.arange(n), columns]  # (n,)
        said = (masks[:, None] >> np.arange(attributes.shape[1])) & 1 == 1  # (n, A)
        attributes = np.where(said, attributes, -1)
        if sizes is not None:
            class_ids = np.where(said.all(1), class_ids, caption_classes(attributes, sizes))
    return CaptionSet(
        name=name, captions=captions, class_ids=class_ids, attributes=attributes,
        real=split.images[:n],
    )  # fmt: skip


def caption_classes(attributes: np.ndarray, sizes: list[int]) -> np.ndarray:
    """int64 (n,) class of each labelled caption: the dataset's row-major id of the combination
    for a full caption; for a partial one (−1 = unstated) the same with one extra value per
    attribute for "not stated", offset by 10⁹ — so captions stating the same things share a
    class (R-precision's "another class" is then "states something different")."""
    attributes = np.asarray(attributes, np.int64)
    full = (attributes >= 0).all(1)
    partial_ids = np.zeros(len(attributes), np.int64)
    dataset_ids = np.zeros(len(attributes), np.int64)
    for a, size in enumerate(sizes):
        column = attributes[:, a]
        partial_ids = partial_ids * (size + 1) + np.where(column >= 0, column, size)
        dataset_ids = dataset_ids * size + np.maximum(column, 0)
    return np.where(full, dataset_ids, partial_ids + 10**9)


def read_captions_file(
    path: str | Path, attribute_names: list[str], attribute_values: dict[str, list[str]]
) -> CaptionSet:
    """Parse a captions JSON-lines file; raises `EvalError` listing every bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalError(f"--captions {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise EvalError(f"--captions {path}: not UTF-8 (byte {err.start})") from None
    except OSError as err:
        raise EvalError(f"--captions {path}: cannot read: {err.strerror}") from None

    problems: list[str] = []
    captions: list[str] = []
    labels: list[list[int]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except ValueError as err:
            problems.append(f"{where}: not JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object with 'caption' and 'attributes'")
            continue
        caption = item.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            problems.append(f"{where}: 'caption' missing or not a non-empty string")
            continue
        try:
            tokenizer.encode(caption)
        except tokenizer.CaptionError as err:
            problems.append(f"{where}: caption unusable: {err}")
            continue
        given = item.get("attributes")
        if not isinstance(given, dict):
            problems.append(f"{where}: 'attributes' missing or not an object")
            continue
        unknown = sorted(set(given) - set(attribute_names))
        if unknown:
            problems.append(f"{where}: unknown attribute(s) {unknown} (known: {attribute_names})")
            continue
        if not any(given.get(name) is not None for name in attribute_names):
            problems.append(f"{where}: 'attributes' names none of {attribute_names}")
            continue
        row = []
        for name in attribute_names:
            values = attribute_values[name]
            value = given.get(name)
            if value is None:  # not stated: that attribute is not scored for this caption
                row.append(-1)
                continue
            if isinstance(value, bool) or not isinstance(value, str | int):
                problems.append(f"{where}: attribute {name!r}: {value!r} is not a value name")
                break
            if isinstance(value, int):
                if not 0 <= value < len(values):
                    problems.append(
                        f"{where}: attribute {name!r}: index {value} outside 0..{len(values) - 1}"
                    )
                    break
                row.append(value)
            elif value in values:
                row.append(values.index(value))
            else:
                choices = ", ".join(values)
                problems.append(
                    f"{where}: attribute {name!r}: unknown value {value!r} (one of {choices})"
                )
                break
        else:
            captions.append(caption)
            labels.append(row)
    if problems:
        shown = problems[:20]
        more = f"\n… and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise EvalError("\n".join(shown) + more)
    if not captions:
        raise EvalError(f"--captions {path}: no captions in the file")
    attributes = np.array(labels, np.int64)
    sizes = [len(attribute_values[n]) for n in attribute_names]
    return CaptionSet(path.stem, captions, caption_classes(attributes, sizes), attributes, None)


# --------------------------------------------------------------------------------------------
# Image sources: a checkpoint (torch) or a bundle (the robot's engine)
# --------------------------------------------------------------------------------------------


class CheckpointSource:
    """Generates with the torch networks of a kind="gan" checkpoint (eval mode)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.path = str(path)
        self.checkpoint = ck.load_checkpoint(path, kind="gan")
        self.text_encoder = ck.build_model(self.checkpoint, "text_encoder", self.path)
        self.generator = ck.generator_for_inference(self.checkpoint, self.path)
        self.noise_dim = self.generator.config.noise_dim
        self.precision = "torch-fp32"
        self.description = f"checkpoint {self.path} (step {self.checkpoint.get('step')})"
        self.training = training_counts(self.checkpoint)

    def generate(self, captions: list[str], seed: int, first_index: int = 0) -> np.ndarray:
        """uint8 (n, 64, 64, 3): caption i with noise `noise_for(seed, first_index + i)`."""
        embeddings = encode_captions(self.text_encoder, captions)  # (n, E)
        noise = np.stack(
            [noise_for(seed, first_index + i, self.noise_dim) for i in range(len(captions))]
        )  # (n, noise_dim)
        out = []
        with torch.no_grad():
            for start in range(0, len(captions), GENERATE_BATCH):
                stop = start + GENERATE_BATCH
                images = self.generator(torch.from_numpy(noise[start:stop]), embeddings[start:stop])
                out.append(to_uint8_rgb(images.numpy(), (-1.0, 1.0)))  # (b, 64, 64, 3)
        return np.concatenate(out)

    def retrieval(self) -> Any:
        """The image-text encoder pair the checkpoint carries, or None."""
        if "image_encoder" not in self.checkpoint["models"]:
            return None

        return JointEmbedding.from_checkpoint(self.checkpoint, self.path)


def training_counts(checkpoint: dict[str, Any]) -> dict[str, int | None]:
    """The report header's training history of a GAN checkpoint: its step and the steps on which
    D saturated (the trainer's counter; None in a checkpoint from before it counted them)."""
    saturated = checkpoint.get("counters", {}).get("d_saturated_steps")
    return {
        "training_steps": checkpoint.get("step"),
        "d_saturated_steps": None if saturated is None else int(saturated),
    }


class BundleSource:
    """Generates with `edge_runtime.engine.Engine`: exactly what the robot runs."""

    def __init__(
        self,
        path: str | Path,
        precision: str,
        threads: int | None = None,
        draw: str = DRAW_UNDERSTOOD,
    ) -> None:
        # onnxruntime loads here, only when a bundle is judged (not for a checkpoint or --help).

        self.path = str(path)
        try:
            self.engine = Engine(
                path, precision=precision, threads=threads or 1, cache_size=0, draw=draw
            )
        except EngineError as err:  # the robot's error family, reported as ours
            raise EvalError(str(err)) from None
        self.precision = self.engine.precision
        # Says how it drew only where that is the canonical caption (older bundles have none).
        drawn = ", draws what it understood" if self.engine.draws_understood else ""
        self.description = f"bundle {self.engine.info.bundle_id} ({self.precision}{drawn})"
        self.training: dict[str, int | None] = {}  # a bundle carries no training history

    def generate(self, captions: list[str], seed: int, first_index: int = 0) -> np.ndarray:
        """uint8 (n, 64, 64, 3): caption i with the engine's noise (seed, first_index + i)."""
        items = [(c, seed, first_index + i) for i, c in enumerate(captions)]
        return np.concatenate(
            [
                self.engine.generate_batch(items[start : start + GENERATE_BATCH])
                for start in range(0, len(items), GENERATE_BATCH)
            ]
        )

    def retrieval(self) -> Any:
        return None  # a bundle carries no image encoder: pass --retrieval


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class EvalOptions:
    """A resolved evaluate invocation."""

    out: Path
    checkpoint: str | None = None
    bundle: str | None = None
    precision: str = "fp32"
    draw: str = DRAW_UNDERSTOOD
    """Bundles: `edge_runtime.canonical` (what the robot draws); a checkpoint draws the caption."""
    data: str | None = None
    oracle: str | None = None
    force_oracle: bool = False
    judge: str | None = None
    """The second judge's checkpoint (`python -m train oracle --design judge`)."""
    force_judge: bool = False
    retrieval: str | None = None
    inception_weights: str | None = None
    captions: str | None = None
    splits: tuple[str, ...] = DEFAULT_SPLITS
    seeds: int = DEFAULT_SEEDS
    seed: int = 0
    limit: int | None = None
    metrics: tuple[str, ...] = tuple(METRICS)
    threads: int | None = None
    label: str | None = None
    """Name of this evaluation in reports and ablation tables (default: the source)."""
    report: bool = True
    oracle_noise_images: int | None = None
    """Noise images per family in the oracle's honesty check (None: the oracle's standard)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Extra fields for every record (e.g. the recipe's run name and wall time)."""


@dataclass
class EvalResult:
    """What an evaluation produced."""

    records: list[dict[str, Any]]
    context: EvalContext
    out: Path
    header: dict[str, Any]


def _load_retrieval(path: str) -> tuple[Any, dict[str, Any]]:
    checkpoint = ck.load_checkpoint(path)
    if checkpoint.get("kind") not in ("text_encoder", "gan"):
        raise EvalError(
            f"--retrieval {path}: a {checkpoint.get('kind')!r} checkpoint; need a text_encoder "
            "or gan checkpoint carrying an image_encoder"
        )
    if "image_encoder" not in checkpoint["models"]:
        raise EvalError(f"--retrieval {path}: has no image_encoder")
    return JointEmbedding.from_checkpoint(checkpoint, path), checkpoint["models"]["image_encoder"]


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two state dicts hold the same tensors under the same names."""
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def retrieval_independence(
    source: CheckpointSource | BundleSource, image_encoder: dict[str, Any] | None
) -> bool | None:
    """Whether R-precision's image encoder is not the one the generator trained against:
    `image_encoder` is the `--retrieval` weights (None: the GAN checkpoint's own, not
    independent). A bundle does not carry its encoder, so there it is unknown (None)."""
    if image_encoder is None:
        return False
    if isinstance(source, CheckpointSource):
        own = source.checkpoint["models"].get("image_encoder")
        return own is None or not same_weights(own, image_encoder)
    return None


def load_judge(options: EvalOptions, data: str | Path, honesty_splits: dict[str, Any]) -> Any:
    """The second judge, honesty-checked like the oracle; refused when of the oracle's design."""
    assert options.judge is not None
    # The design first: a refusal should not wait for an honesty check (a few seconds).
    config = build_oracle(ck.load_checkpoint(options.judge, kind=ORACLE_KIND), options.judge).config
    if not config.independent_of_image_encoder:
        raise EvalError(
            f"--judge {options.judge}: design {config.design!r} is the oracle's (and the "
            "generator's image encoder's); the second judge must be of another design "
            "(python -m train oracle --design judge)"
        )
    noise = {"noise_count": options.oracle_noise_images} if options.oracle_noise_images else {}
    return load_oracle(options.judge, data, force=options.force_judge, real=honesty_splits, **noise)


def evaluate(options: EvalOptions) -> EvalResult:
    """Generate, measure, write metrics.jsonl (+ report); the library entry point."""

    started = time.perf_counter()
    source: CheckpointSource | BundleSource
    if options.checkpoint:
        source = CheckpointSource(options.checkpoint, options.threads)
    else:
        assert options.bundle is not None
        source = BundleSource(options.bundle, options.precision, options.threads, options.draw)
    data = options.data
    if data is None and isinstance(source, CheckpointSource):
        saved = (source.checkpoint.get("config") or {}).get("data")
        if saved and Path(saved).is_file():
            data = saved
            log.info("data: %s (from the checkpoint's config)", data)
    if data is None:
        raise EvalError("--data is required (the dataset whose captions and real images to use)")
    info = read_info(data)
    attribute_names = list(info.attribute_names)
    real_splits = {s: read_split(data, s) for s in options.splits if s in info.splits}
    if options.captions:
        if not attribute_names:
            raise EvalError(f"--captions needs a dataset with attributes; {data} has none")
        sets = [read_captions_file(options.captions, attribute_names, info.attribute_values)]
        if options.limit:
            s = sets[0]
            sets = [
                CaptionSet(
                    s.name,
                    s.captions[: options.limit],
                    s.class_ids[: options.limit],
                    None if s.attributes is None else s.attributes[: options.limit],
                )
            ]
    else:
        missing = [s for s in options.splits if s not in info.splits]
        if missing:
            raise EvalError(f"--splits: {data} has no split(s) {missing} (has {info.splits})")
        sizes = [len(info.attribute_values[n]) for n in attribute_names] or None
        sets = [
            choose_captions(real_splits[s], s, options.seed, options.limit, sizes)
            for s in options.splits
        ]

    oracle = judge = None
    if options.oracle or options.judge:
        honesty_splits = {s: v for s, v in real_splits.items() if v.attributes is not None}
        if not honesty_splits:
            honesty_splits = {
                s: read_split(data, s) for s in DEFAULT_SPLITS if s in info.splits
            }  # --captions with --splits naming no labelled split
    if options.oracle:
        noise = {"noise_count": options.oracle_noise_images} if options.oracle_noise_images else {}
        oracle = load_oracle(
            options.oracle, data, force=options.force_oracle, real=honesty_splits, **noise
        )
    if options.judge:
        judge = load_judge(options, data, honesty_splits)
    if options.retrieval:
        retrieval, image_encoder = _load_retrieval(options.retrieval)
        independent = retrieval_independence(source, image_encoder)
    else:
        retrieval, independent = source.retrieval(), False

    splits: dict[str, SplitImages] = {}
    for s in sets:
        t0 = time.perf_counter()
        generated = np.stack(
            [source.generate(s.captions, options.seed + k) for k in range(options.seeds)]
        )  # (S, n, 64, 64, 3)
        log.info(
            "%s: %d captions × %d seeds generated in %.1f s",
            s.name,
            len(s.captions),
            options.seeds,
            time.perf_counter() - t0,
        )
        splits[s.name] = SplitImages(
            s.name, s.captions, s.class_ids, generated, s.attributes, s.real
        )

    context = EvalContext(
        splits=splits,
        attribute_names=tuple(attribute_names),
        oracle=oracle,
        judge=judge,
        retrieval=retrieval,
        retrieval_independent=independent,
        inception_weights=Path(options.inception_weights) if options.inception_weights else None,
        seed=options.seed,
    )
    records = run_metrics(list(options.metrics), context)
    header = {
        "time": round(time.time(), 3),
        "label": options.label or source.description,
        "source": options.checkpoint or options.bundle,
        "kind": "checkpoint" if options.checkpoint else "bundle",
        "precision": source.precision,
        "data": str(data),
        "captions": options.captions,
        "seeds": options.seeds,
        "seed": options.seed,
        "oracle": options.oracle,
        "oracle_honest": None if oracle is None else oracle.honesty.passed,
        "judge": options.judge,
        "judge_honest": None if judge is None else judge.honesty.passed,
        "retrieval": options.retrieval or (None if retrieval is None else "the GAN checkpoint's"),
        "retrieval_independent": None if retrieval is None else independent,
        "seconds": round(time.perf_counter() - started, 1),
        **source.training,
        **options.extra,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    with MetricsLog(options.out / RESULTS_FILE) as out:
        for record in records:
            out.write({**header, **record})
    result = EvalResult(records, context, options.out, header)
    if options.report:
        path = write_report(result)
        log.info("report: %s", path)
    return result


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _given(help: str, metavar: str | None = None, **how: Any) -> Any:
    """A flag that is None unless given (its help says what None means)."""
    return option(None, help, show_default=False, metavar=metavar, **how)


def _switch(help: str) -> Any:
    return option(False, help, show_default=False, store_true=True)


@dataclass(frozen=True, kw_only=True)
class EvaluateFlags:
    """The evaluate command line, each flag declared once (`train.options`); keyword-only, so
    the required --out can stay last, where --help has always listed it."""

    checkpoint: str | None = _given(
        'a kind="gan" checkpoint', "CKPT", exclusive="source", required=True
    )
    bundle: str | None = _given(
        "an exported bundle (run by edge_runtime)", "DIR", exclusive="source", required=True
    )
    precision: str = option("fp32", "bundle variant: fp32, int8, … or auto", show_default=False)
    draw: str | None = _given(
        "how a bundle draws: understood (the default; what the robot draws: the read-back "
        "worded as a training caption, open attributes chosen per image) or caption (the words "
        "themselves, as a checkpoint always draws)",
        choices=DRAW_CHOICES,
    )
    data: str | None = _given("dataset (default: the checkpoint's)", "FILE")
    oracle: str | None = _given('kind="oracle" checkpoint (rescue-scenes)', "CKPT")
    force_oracle: bool = _switch("use an oracle that fails its honesty checks")
    judge: str | None = _given(
        "second attribute judge of another design (python -m train oracle --design judge), "
        "reported beside the oracle",
        "CKPT",
    )
    force_judge: bool = _switch("use a judge that fails its honesty checks")
    retrieval: str | None = _given(
        "image-text encoder for R-precision (text_encoder or gan checkpoint; default: the "
        "GAN checkpoint's own)",
        "CKPT",
    )
    inception_weights: str | None = _given(
        "local torch-fidelity InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth)", "FILE"
    )
    captions: str | None = _given("evaluate these labelled captions", "FILE.jsonl")
    splits: tuple[str, ...] = option(
        DEFAULT_SPLITS, "dataset splits to evaluate", show_default=False, nargs="+"
    )
    seeds: int = option(DEFAULT_SEEDS, "images per caption", show_default=False, at_least=1)
    seed: int = option(0, "first noise seed and caption choice", show_default=False, at_least=0)
    limit: int | None = _given("at most N captions per split (quick looks)", at_least=1)
    metrics: str = option(
        ",".join(METRICS),
        f"comma-separated subset of {','.join(METRICS)} (default: all that can run)",
        show_default=False,
    )
    threads: int | None = _given("torch / onnxruntime threads", at_least=1)
    label: str | None = _given("name of this evaluation in the report")
    no_report: bool = _switch("metrics.jsonl only")
    out: str = option(REQUIRED, "folder for metrics.jsonl + report", metavar="DIR", required=True)


def build_parser() -> OneLineParser:
    """The evaluate flags, generated from `EvaluateFlags`."""
    parser = OneLineParser(
        prog="python -m train evaluate",
        description="Evaluate a GAN checkpoint or an exported bundle (oracle accuracy, FID/KID in "
        "oracle space, diversity, R-precision, Inception metrics).",
    )
    return options.build_parser(EvaluateFlags, parser, given_only=False)


def options_from_args(args: EvaluateFlags) -> EvalOptions:
    """Check the flags (declared ranges, then files and combinations; each problem names its
    flag) and build the options."""
    options.check_ranges(args)
    names = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise EvalError(f"--metrics: unknown {unknown} (known: {', '.join(METRICS)})")
    if args.checkpoint and args.precision != "fp32":
        raise EvalError("--precision selects a bundle variant; a checkpoint runs in torch fp32")
    if args.checkpoint and args.draw == DRAW_UNDERSTOOD:
        raise EvalError(
            "--draw understood needs a bundle's read-back; a checkpoint draws the caption"
        )
    for flag in (
        "checkpoint",
        "oracle",
        "judge",
        "retrieval",
        "data",
        "captions",
        "inception_weights",
    ):
        value = getattr(args, flag)
        if value is not None and not Path(value).is_file():
            raise EvalError(f"--{flag.replace('_', '-')} {value}: no such file")
    if args.bundle is not None and not Path(args.bundle).is_dir():
        raise EvalError(f"--bundle {args.bundle}: no such directory")
    if args.bundle is not None and args.data is None:
        raise EvalError("--data is required with --bundle (a bundle does not name its dataset)")
    if (
        "inception" in names
        and args.inception_weights is None
        and args.metrics != ",".join(METRICS)
    ):
        raise EvalError(
            "--metrics inception needs --inception-weights FILE (a local copy of torch-fidelity's "
            "pt_inception-2015-12-05-6726825d.pth; weights are never downloaded)"
        )
    if args.inception_weights is not None:
        check_inception_weights(args.inception_weights)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out}: exists and is not a directory")
    return EvalOptions(
        out=out,
        checkpoint=args.checkpoint,
        bundle=args.bundle,
        precision=args.precision,
        draw=args.draw or DRAW_UNDERSTOOD,
        data=args.data,
        oracle=args.oracle,
        force_oracle=args.force_oracle,
        judge=args.judge,
        force_judge=args.force_judge,
        retrieval=args.retrieval,
        inception_weights=args.inception_weights,
        captions=args.captions,
        splits=args.splits,
        seeds=args.seeds,
        seed=args.seed,
        limit=args.limit,
        metrics=names,
        threads=args.threads,
        label=args.label,
        report=not args.no_report,
    )


def main(argv: list[str] | None = None) -> int:
    """Evaluate; prints one JSON summary line. 0 ok, 2 bad input (one line on stderr)."""
    given = vars(build_parser().parse_args(argv))
    given["splits"] = tuple(given["splits"])  # nargs="+" parses to a list; the flags are frozen
    try:
        result = evaluate(options_from_args(EvaluateFlags(**given)))
    except BAD_INPUT as err:
        print(f"rescue-train evaluate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary(result.records)))
    return 0


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers of an evaluation, per split (machine-usable)."""
    out: dict[str, Any] = {}
    for r in records:
        split = r.get("split")
        if split is None or "skipped" in r:
            continue
        row = out.setdefault(split, {})
        if r["metric"] == "attributes":
            row["accuracy"] = {k: round(v, 4) for k, v in r["accuracy"].items()}
            row["all_correct"] = round(r["all_correct"], 4)
            if "partial" in r:
                row["partial_all_stated_correct"] = round(r["partial"]["all_stated_correct"], 4)
        elif r["metric"] == "attributes_judge":
            row["judge_accuracy"] = {k: round(v, 4) for k, v in r["accuracy"].items()}
            row["judge_all_correct"] = round(r["all_correct"], 4)
            if "partial" in r:
                row["judge_partial_all_stated_correct"] = round(
                    r["partial"]["all_stated_correct"], 4
                )
        elif r["metric"] in ("unstated_entropy", "unstated_entropy_judge"):
            prefix = "judge_" if r["metric"].endswith("_judge") else ""
            row[f"{prefix}unstated_entropy"] = (
                None if r["overall"] is None else round(r["overall"], 4)
            )
        elif r["metric"] == "hf_energy" and r.get("ratio") is not None:
            row["hf_ratio"] = round(r["ratio"], 4)
        elif r["metric"] in ("fid", "kid"):
            row[r["metric"]] = round(r["value"], 4)
            row[f"{r['metric']}_baseline"] = round(r["baseline"], 4)
        elif r["metric"] == "r_precision":
            row["r_precision"] = round(r["value"], 4)
            row["r_precision_independent"] = r.get("independent")
        elif r["metric"] == "diversity" and "feature_ratio" in r:
            row["diversity_ratio"] = round(r["feature_ratio"], 4)
    return out


if __name__ == "__main__":
    sys.exit(main())
