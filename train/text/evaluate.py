"""`python -m train eval-text`: text → image R-precision of a text-encoder checkpoint.

Protocol (docs/TEXT_ENCODER.md § Evaluation): each query is one caption of a split's image; its
candidates are that image and 99 images of the same split whose class differs (rescue-scenes: the
class id is the full attribute combination, so "class differs" = "some attribute differs"; CUB:
another species).
It is retrieved when its own image scores strictly highest under θ(v)·φ(t). Measured on `test`
(seen attribute combinations) and `test_unseen` (colour × terrain pairs never trained on), with
clean captions and with each perturbation of `train.text.perturb` separately. Every variant of a
split uses the same queries and the same candidate sets, so differences between variants are paired
and not sampling noise. Everything is seeded.

A split with per-caption `caption_stated` labels (`test_phrasing`, measured by default where the
file has it; docs/DATA_FORMAT.md § Operator phrasing) gives two rows: `<split>` from its full
captions, as above, and `<split>:partial` from its partial ones, whose distractors must contradict
a *stated* attribute (`train.text.retrieval.partial_r_precision`): an image differing only in what
the caption leaves open fits it as well as the true one.

Read-back (docs/TEXT_ENCODER.md § Read-back): where the checkpoint carries the read-back heads,
the same queries under every variant are also read back with the robot's decision rule
(`edge_runtime.readback`, via `train.text.readback`): stated attributes right, "not stated"
recognised (partial captions), rescue captions flagged off-domain (false alarms); and the
committed held-out off-domain list (`train/text/off_domain_eval.txt`) flagged off-domain.

Results are appended as JSON lines to `eval_text.jsonl` beside the checkpoint (the run folder),
and a table goes to stdout.
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train import options
from train.checkpoint import build_model, load_checkpoint
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES
from train.data.files import read_info, read_split
from train.data.phrasing import ALL_STATED, heldout_value_phrases
from train.data.schema import SplitData
from train.data.synth import PHRASING_SPLIT
from train.errors import BAD_INPUT, ConfigError
from train.models import ReadBack
from train.options import REQUIRED, option
from train.runs import MetricsLog, OneLineParser
from train.text import colour_name_eval
from train.text.joint_embedding import CaptionError, JointEmbedding
from train.text.off_domain import eval_sentences
from train.text.perturb import PERTURBATIONS
from train.text.readback import decide_embeddings, score_captions
from train.text.retrieval import attribute_separation, partial_r_precision, r_precision

log = logging.getLogger(__name__)

DEFAULT_SPLITS = ("test", "test_unseen")
OPTIONAL_SPLITS = (PHRASING_SPLIT,)
"""Measured by default when the file has them (older files do not)."""
PARTIAL_SUFFIX = ":partial"
VARIANTS = ("clean", *PERTURBATIONS)
RESULTS_FILE = "eval_text.jsonl"
METRIC = "r_precision_text_to_image"
SEPARATION = "attribute_separation"
READBACK = "readback"
READBACK_BY_WORD = "readback_by_word"
OFF_DOMAIN_SPLIT = "off_domain_eval"
"""The row name of the committed held-out off-domain list in the read-back records."""


@dataclass(frozen=True)
class EvalConfig:
    """What one evaluation measures."""

    candidates: int = 100
    """Candidates per query, the true image included (chance = 1 / candidates)."""
    captions_per_image: int = 2
    """Queries per image (which captions: seeded); more queries, smaller standard error."""
    seed: int = 0
    variants: tuple[str, ...] = VARIANTS
    """"clean" and/or perturbation names from `train.text.perturb.PERTURBATIONS`."""

    def __post_init__(self) -> None:
        if self.candidates < 2:
            raise ConfigError(f"candidates must be at least 2, got {self.candidates}")
        if self.captions_per_image < 1:
            raise ConfigError(f"captions_per_image must be ≥ 1, got {self.captions_per_image}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")


def _stable_seed(*parts: str | int) -> list[int]:
    """A numpy seed sequence from strings and ints (crc32: stable across processes)."""
    return [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]


def select_queries(
    split: SplitData, captions_per_image: int, seed: int, name: str
) -> tuple[list[str], np.ndarray]:
    """Seeded choice of captions: (texts, image index per text), `captions_per_image` per image."""
    per_image = min(len(c) for c in split.captions) if split.captions else 0
    if captions_per_image > per_image:
        raise ConfigError(
            f"split {name!r} has {per_image} captions per image, {captions_per_image} requested "
            "(--captions-per-image)"
        )
    rng = np.random.default_rng(_stable_seed(seed, name, "queries"))
    texts: list[str] = []
    images: list[int] = []
    for i, row in enumerate(split.captions):
        for c in rng.choice(len(row), captions_per_image, replace=False):
            texts.append(row[int(c)])
            images.append(i)
    return texts, np.asarray(images, dtype=np.int64)


def select_stated_queries(
    split: SplitData, captions_per_image: int, seed: int, name: str, *, full: bool
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Like `select_queries` among an image's full (or partial) captions only: (texts, image
    index per text, stated bitmask per text); an image with fewer such captions gives fewer."""
    assert split.caption_stated is not None
    rng = np.random.default_rng(_stable_seed(seed, name, "full" if full else "partial"))
    texts: list[str] = []
    images: list[int] = []
    masks: list[int] = []
    for i, row in enumerate(split.captions):
        stated = split.caption_stated[i]
        pool = [j for j in range(len(row)) if (int(stated[j]) == ALL_STATED) == full]
        for j in rng.permutation(pool)[:captions_per_image] if pool else []:
            texts.append(row[int(j)])
            images.append(i)
            masks.append(int(stated[int(j)]))
    return texts, np.asarray(images, dtype=np.int64), np.asarray(masks, dtype=np.int64)


def perturb_all(texts: Sequence[str], variant: str, seed: int, name: str) -> list[str]:
    """The captions under one variant, reproducibly ("clean" returns them unchanged)."""
    if variant == "clean":
        return list(texts)
    rng = np.random.default_rng(_stable_seed(seed, name, variant))
    return [PERTURBATIONS[variant](t, rng) for t in texts]


def evaluate(
    model: JointEmbedding,
    splits: Mapping[str, SplitData],
    config: EvalConfig,
    attribute_names: Sequence[str] = (),
    readback: ReadBack | None = None,
) -> list[dict[str, Any]]:
    """R-precision per split and variant, one record (dict) each; where a split has attributes,
    also the clean captions' `attribute_separation` per attribute (named by `attribute_names`);
    with `readback`, the read-back records (`READBACK`) of the same queries and of the held-out
    off-domain list."""
    records: list[dict[str, Any]] = []
    if readback is not None:
        records += _off_domain_records(model, readback, config)
        records += colour_name_eval.records(
            lambda texts: model.encode_texts(texts).numpy(), readback, config.seed
        )
    model.eval()
    for name, split in splits.items():
        started = time.perf_counter()
        image_embeddings = model.encode_images(split.images).numpy()  # (N, E)
        labels = np.asarray(split.class_ids)
        if split.caption_stated is None:
            texts, image_of = select_queries(split, config.captions_per_image, config.seed, name)
        else:
            texts, image_of, _ = select_stated_queries(
                split, config.captions_per_image, config.seed, name, full=True
            )
            if split.attributes is not None:
                records += _partial_records(
                    model, split, image_embeddings, config, name, readback=readback
                )
        for variant in config.variants:
            text_embeddings = _encode(model, texts, variant, config.seed, name)  # (Q, E)
            if readback is not None and split.attributes is not None:
                stated = np.full(len(texts), ALL_STATED, dtype=np.int64)
                truth = np.asarray(split.attributes)[image_of]
                records.append(
                    _readback_record(
                        readback, text_embeddings, truth, stated, split=name, variant=variant
                    )
                )
                if variant == "clean" and split.caption_stated is not None:
                    records += _by_word_records(
                        readback, text_embeddings, texts, truth, stated, split=name
                    )
            result = r_precision(
                text_embeddings,
                image_embeddings,
                labels[image_of],
                labels,
                true_index=image_of,
                num_candidates=config.candidates,
                seed=zlib.crc32(f"{config.seed}:{name}".encode()),  # same candidates per variant
            )
            records.append(_record(name, variant, result, config))
            if variant == "clean" and split.attributes is not None:
                separation = attribute_separation(text_embeddings, image_of, split.attributes)
                for a, value in enumerate(separation.tolist()):
                    name_a = attribute_names[a] if a < len(attribute_names) else f"attribute {a}"
                    records.append(
                        {
                            "metric": SEPARATION,
                            "split": name,
                            "attribute": name_a,
                            "value": None if np.isnan(value) else value,
                            "queries": len(texts),
                            "seed": config.seed,
                        }
                    )
        log.info(
            "%s: %d queries × %d variants in %.1f s",
            name,
            len(texts),
            len(config.variants),
            time.perf_counter() - started,
        )
    return records


def _partial_records(
    model: JointEmbedding,
    split: SplitData,
    image_embeddings: np.ndarray,
    config: EvalConfig,
    name: str,
    *,
    readback: ReadBack | None = None,
) -> list[dict[str, Any]]:
    """`<name>:partial` R-precision records, one per variant (see the module docstring), and
    their read-back records with `readback`."""
    texts, image_of, stated = select_stated_queries(
        split, config.captions_per_image, config.seed, name, full=False
    )
    if not texts:
        return []
    records = []
    row = name + PARTIAL_SUFFIX
    for variant in config.variants:
        text_embeddings = _encode(model, texts, variant, config.seed, row)  # (Q, E)
        result = partial_r_precision(
            text_embeddings,
            image_embeddings,
            stated,
            np.asarray(split.attributes),
            true_index=image_of,
            num_candidates=config.candidates,
            seed=zlib.crc32(f"{config.seed}:{row}".encode()),  # same candidates per variant
        )
        record = _record(row, variant, result, config)
        records.append(record | {"distractors": "contradict a stated attribute"})
        if readback is not None:
            truth = np.asarray(split.attributes)[image_of]
            records.append(
                _readback_record(
                    readback, text_embeddings, truth, stated, split=row, variant=variant
                )
            )
            if variant == "clean":
                records += _by_word_records(
                    readback, text_embeddings, texts, truth, stated, split=row
                )
    return records


def _by_word_records(
    readback: ReadBack,
    embeddings: np.ndarray,
    texts: Sequence[str],
    truth: np.ndarray,
    stated: np.ndarray,
    *,
    split: str,
) -> list[dict[str, Any]]:
    """Read-back of clean held-out-phrasing captions per attribute, split by whether the caption
    states the attribute with one of the phrasing's held-out words for its true value ("held-out
    word") or with a training word in a held-out form ("training word"): which of the two the
    encoder fails to generalise to (docs/TEXT_ENCODER.md § Read-back). Rescue-scenes attributes
    only; [] for another dataset's."""
    sizes = readback.config.value_counts
    if len(sizes) != len(ATTRIBUTE_NAMES) or any(
        n != len(ATTRIBUTE_VALUES[a]) for a, n in zip(ATTRIBUTE_NAMES, sizes, strict=True)
    ):
        return []
    heldout = heldout_value_phrases()
    chosen = decide_embeddings(readback, embeddings)[:, : len(sizes)]  # (Q, A)
    lowered = [t.lower() for t in texts]
    records = []
    for a, name in enumerate(ATTRIBUTE_NAMES):
        rows = np.flatnonzero((stated >> a) & 1)
        if not rows.size:
            continue
        is_heldout = np.array(
            [
                any(p in lowered[q] for p in heldout[name][ATTRIBUTE_VALUES[name][truth[q, a]]])
                for q in rows
            ]
        )
        for words, mask in (("training word", ~is_heldout), ("held-out word", is_heldout)):
            if not mask.any():
                continue
            picked = rows[mask]
            records.append(
                {
                    "metric": READBACK_BY_WORD,
                    "split": split,
                    "attribute": name,
                    "words": words,
                    "captions": int(picked.size),
                    "right": float((chosen[picked, a] == truth[picked, a]).mean()),
                    "read_unstated": float((chosen[picked, a] == sizes[a]).mean()),
                }
            )
    return records


def _readback_record(
    readback: ReadBack,
    embeddings: np.ndarray,
    truth: np.ndarray,
    stated: np.ndarray,
    *,
    split: str,
    variant: str,
) -> dict[str, Any]:
    """One read-back line: rescue captions' embeddings (Q, E), their images' values (Q, A)."""
    chosen = decide_embeddings(readback, embeddings)
    sizes = readback.config.value_counts
    return {"metric": READBACK, "split": split, "variant": variant} | score_captions(
        chosen, truth, stated, sizes
    )


def _off_domain_records(
    model: JointEmbedding, readback: ReadBack, config: EvalConfig
) -> list[dict[str, Any]]:
    """The held-out off-domain list under every variant: share flagged off-domain, and share of
    its attribute readings that are "?" (it states none)."""
    sentences = eval_sentences()
    records = []
    for variant in config.variants:
        embeddings = _encode(model, sentences, variant, config.seed, OFF_DOMAIN_SPLIT)
        chosen = decide_embeddings(readback, embeddings)
        count = len(readback.config.value_counts)
        unstated = chosen[:, :count] == np.asarray(readback.config.value_counts)[None]
        records.append(
            {
                "metric": READBACK,
                "split": OFF_DOMAIN_SPLIT,
                "variant": variant,
                "captions": len(sentences),
                "off_domain_flagged": float(chosen[:, count].mean()),
                "not_stated_right": float(unstated.mean()),
            }
        )
    return records


def _encode(model: Any, texts: Sequence[str], variant: str, seed: int, split: str) -> np.ndarray:
    """Text embeddings (Q, E) of `texts` under a perturbation variant; a caption the tokenizer
    refuses is one line naming the split and variant."""
    queries = perturb_all(texts, variant, seed, split)
    try:
        return model.encode_texts(queries).numpy()
    except CaptionError as err:
        raise CaptionError(f"split {split!r}, variant {variant!r}: {err}") from None


def _record(split: str, variant: str, result: Any, config: EvalConfig) -> dict[str, Any]:
    """One R-precision line of eval_text.jsonl."""
    return {
        "metric": METRIC,
        "split": split,
        "variant": variant,
        "value": result.value,
        "stderr": result.stderr,
        "queries": result.queries,
        "candidates": result.candidates,
        "captions_per_image": config.captions_per_image,
        "seed": config.seed,
    }


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """Rows = splits, columns = variants, in percent; plus the largest drop from clean; then the
    attribute separation table where there is one."""
    records_in = records
    separation = [r for r in records if r.get("metric") == SEPARATION]
    readback = [r for r in records if r.get("metric") == READBACK]
    records = [r for r in records if r.get("metric", METRIC) == METRIC]
    splits = list(dict.fromkeys(r["split"] for r in records))
    variants = list(dict.fromkeys(r["variant"] for r in records))
    value = {(r["split"], r["variant"]): 100.0 * r["value"] for r in records}
    show_drop = "clean" in variants and len(variants) > 1
    header = ["split", *variants, *(["max drop"] if show_drop else [])]
    rows = []
    for s in splits:
        row = [s] + [f"{value[s, v]:.1f}" if (s, v) in value else "-" for v in variants]
        if show_drop:
            drops = [value[s, "clean"] - value[s, v] for v in variants if v != "clean"]
            row.append(f"{max(drops):.1f}")
        rows.append(row)
    queries = records[0]["queries"] if records else 0
    candidates = records[0]["candidates"] if records else 0
    lines = _aligned(
        header,
        rows,
        f"(text→image R-precision, %; 1 true among {candidates}, chance "
        f"{100.0 / max(candidates, 1):.0f} %; {queries} queries per split)",
    )
    if separation:
        lines += ["", _separation_table(separation)]
    if readback:
        lines += ["", format_readback_table(readback)]
    by_word = [r for r in records_in if r.get("metric") == READBACK_BY_WORD]
    if by_word:
        lines += ["", format_by_word_table(by_word)]
    colour_names = [
        r for r in records_in if r.get("metric") == colour_name_eval.READBACK_COLOUR_NAMES
    ]
    if colour_names:
        lines += ["", format_colour_names_table(colour_names)]
    return "\n".join(lines)


def format_colour_names_table(records: Sequence[dict[str, Any]]) -> str:
    """Rows = (name set, kind, name form); columns = the colour-name read-back, in percent."""
    header = ["names", "kind", "form", "commands", "colour right", "colour '?'", "others right",
              "off-domain", "worst colour"]  # fmt: skip
    rows = [
        [r["names"], r["kind"], r["form"], str(r["commands"]), _pct(r["colour_right"]),
         _pct(r["colour_unstated"]), _pct(r["others_right"]), _pct(r["flagged"]),
         f"{r['worst_colour']} {_pct(r['worst_colour_right'])}"]
        for r in records
    ]  # fmt: skip
    lines = _aligned(
        header,
        rows,
        "(read-back of training-family commands naming their colour with an xkcd survey name, %: "
        "plain = each colour's own word, trained = the lexicon's names, rare = names that pass "
        "its rule but never reached training; worst colour = the colour read right least often; "
        "judge: the commands' labels; train.text.colour_name_eval)",
    )
    return "\n".join(lines)


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]], note: str) -> list[str]:
    """The header and rows as right-aligned columns, one line each, then the note line."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    return [
        "  ".join(str(x).rjust(w) for x, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ] + [note]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def format_readback_table(records: Sequence[dict[str, Any]]) -> str:
    """Rows = (split, variant); columns = the read-back figures, in percent."""
    header = ["split", "variant", "stated right", "all stated", "not stated", "off-domain"]
    rows = []
    for r in records:
        off = r.get("off_domain_flagged", r.get("false_alarm"))
        rows.append(
            [
                r["split"],
                r["variant"],
                _pct(r.get("stated_right")),
                _pct(r.get("captions_all_stated_right")),
                _pct(r.get("not_stated_right")),
                _pct(off),
            ]
        )
    lines = _aligned(
        header,
        rows,
        "(read-back, %, the robot's decision rule (edge_runtime.readback): stated attributes "
        "read right, captions with all stated right, unstated read as '?', flagged off-domain "
        f"(on {OFF_DOMAIN_SPLIT}: wanted; on rescue captions: false alarms))",
    )
    return "\n".join(lines)


def format_by_word_table(records: Sequence[dict[str, Any]]) -> str:
    """Rows = (split, attribute, words); columns = captions, read right, read '?', in percent."""
    header = ["split", "attribute", "words", "captions", "right", "read '?'"]
    rows = [
        [
            r["split"],
            r["attribute"],
            r["words"],
            str(r["captions"]),
            _pct(r["right"]),
            _pct(r["read_unstated"]),
        ]
        for r in records
    ]
    lines = _aligned(
        header,
        rows,
        "(read-back of clean held-out phrasings per stated attribute, %: stated with a held-out "
        "word for its value, or with a training word in a held-out form)",
    )
    return "\n".join(lines)


def _separation_table(records: Sequence[dict[str, Any]]) -> str:
    splits = list(dict.fromkeys(r["split"] for r in records))
    names = list(dict.fromkeys(r["attribute"] for r in records))
    value = {(r["split"], r["attribute"]): r["value"] for r in records}
    header = ["split", *names]
    rows = [
        [s] + ["-" if value.get((s, a)) is None else f"{100.0 * value[s, a]:.1f}" for a in names]
        for s in splits
    ]
    lines = _aligned(
        header,
        rows,
        "(attribute separation, %: clean captions nearer their own attribute combination than "
        "to every combination differing in that attribute alone; train.text.retrieval)",
    )
    return "\n".join(lines)


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    data: str | Path,
    splits: Sequence[str],
    config: EvalConfig,
    *,
    results_path: str | Path | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Load, evaluate, append records (with provenance) to `results_path` (default: beside it)."""
    checkpoint_path = Path(checkpoint_path)
    if checkpoint is None:
        checkpoint = load_checkpoint(checkpoint_path, kind="text_encoder")
    model = JointEmbedding.from_checkpoint(checkpoint, str(checkpoint_path))
    readback = None
    if "readback" in checkpoint.get("models", {}):
        built = build_model(checkpoint, "readback", str(checkpoint_path))
        assert isinstance(built, ReadBack)
        readback = built
    loaded = {name: read_split(data, name) for name in splits}
    records = evaluate(model, loaded, config, read_info(data).attribute_names, readback)
    results_path = Path(results_path or checkpoint_path.parent / RESULTS_FILE)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with MetricsLog(results_path) as out:
        for r in records:
            r.update(
                checkpoint=str(checkpoint_path),
                step=int(checkpoint.get("step", 0)),
                data=str(data),
                time=stamp,
            )
            out.write(r)
    return records


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


_E = EvalConfig()


@dataclass(frozen=True)
class EvalTextFlags:
    """The eval-text command line, each flag declared once (defaults: `EvalConfig`'s)."""

    checkpoint: str = option(REQUIRED, "text-encoder checkpoint.pt", required=True)
    data: str | None = option(
        None, "HDF5 dataset (default: the one the checkpoint trained on)", show_default=False
    )
    splits: tuple[str, ...] | None = option(
        None,
        f"splits (default: {' '.join(DEFAULT_SPLITS)}, and {' '.join(OPTIONAL_SPLITS)} "
        "where present)",
        show_default=False,
        nargs="+",
    )
    # No help for these three: their flag names say it, and --help stays as it was.
    candidates: int = option(_E.candidates, "", show_default=False, at_least=2)
    captions_per_image: int = option(_E.captions_per_image, "", show_default=False, at_least=1)
    variants: tuple[str, ...] = option(
        _E.variants,
        f"clean and/or perturbations ({', '.join(VARIANTS)})",
        show_default=False,
        nargs="+",
    )
    seed: int = option(_E.seed, "", show_default=False)
    threads: int | None = option(
        None, "torch threads (default: all cores)", show_default=False, at_least=1
    )
    out: str | None = option(
        None, f"results file (default: {RESULTS_FILE} beside the checkpoint)", show_default=False
    )


def build_parser() -> OneLineParser:
    """The eval-text flags, generated from `EvalTextFlags`."""
    parser = OneLineParser(
        prog="python -m train eval-text",
        description="Text→image R-precision of a text-encoder checkpoint (clean and perturbed "
        "captions); appends JSON lines beside the checkpoint and prints a table.",
    )
    return options.build_parser(EvalTextFlags, parser, given_only=False)


def parse_flags(argv: list[str] | None) -> EvalTextFlags:
    """argv → frozen `EvalTextFlags`, ranges and variant names checked (ConfigError names the
    flag)."""
    given = vars(build_parser().parse_args(argv))
    for name in ("splits", "variants"):  # nargs="+" parses to a list; the flags are frozen
        if given[name] is not None:
            given[name] = tuple(given[name])
    flags = EvalTextFlags(**given)
    options.check_ranges(flags)
    unknown = [v for v in flags.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants: unknown {unknown} (known: {', '.join(VARIANTS)})")
    return flags


def main(argv: list[str] | None = None) -> int:
    """Evaluate; 0 on success, 2 on bad input (one line on stderr)."""
    try:
        args = parse_flags(argv)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        checkpoint = load_checkpoint(args.checkpoint, kind="text_encoder")
        data = args.data or checkpoint.get("config", {}).get("data")
        if not data:
            raise ConfigError("--data is required (the checkpoint names no dataset)")
        info = read_info(data)
        default = (*DEFAULT_SPLITS, *OPTIONAL_SPLITS)
        splits = args.splits or [s for s in default if s in info.splits]
        missing = [s for s in splits if s not in info.splits]
        if missing or not splits:
            raise ConfigError(
                f"--splits: {data} has no split {missing or list(DEFAULT_SPLITS)} "
                f"(has {', '.join(info.splits)})"
            )
        config = EvalConfig(
            candidates=args.candidates,
            captions_per_image=args.captions_per_image,
            seed=args.seed,
            variants=args.variants,
        )
        records = evaluate_checkpoint(
            args.checkpoint, data, splits, config, results_path=args.out, checkpoint=checkpoint
        )
    except BAD_INPUT as err:
        print(f"eval-text: {err}", file=sys.stderr)
        return 2
    print(format_table(records))
    return 0
