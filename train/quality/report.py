"""The evaluation report: `report.md` with a sample grid and a per-attribute chart (PNG, OpenCV).

- `samples.png`: per split, a few captions of distinct classes; each row shows the caption, the
  real image it came from, then one generated image per seed, framed green when the oracle finds
  every attribute right and red otherwise.
- `attributes.png`: accuracy per attribute and split as bars, the real-image ceiling as a tick,
  the noise floor as a grey bar, and the 95 % target as a dashed line.
- `report.md`: the run header, the honesty of the oracle and of the second judge, then one table
  per metric (attribute accuracy once per judge, and both judges side by side), with the issue's
  rescue-scenes targets checked where they apply; every figure names its judge.

Every file is written to a temporary name and renamed, so a report is never half written.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime import atomic

REPORT_FILE = "report.md"
SAMPLES_FILE = "samples.png"
CHART_FILE = "attributes.png"

TARGET_ATTRIBUTE = 0.95
TARGET_ALL_CORRECT = {"test": 0.85, "test_unseen": 0.60}
TARGET_FID_RATIO = 3.0
TARGET_STATED = 0.97
"""Issue 17: every stated attribute of a partial caption right in ≥ 97 % of the images."""
TARGET_UNSTATED_ENTROPY = 0.6
TARGET_SATURATED_SHARE = 0.05
"""Issue 16: D's adversarial loss under `train.gan.trainer.SATURATED_BELOW` on ≤ 5 % of steps."""
"""Issue 17: normalised entropy across 8 seeds of each attribute a partial caption leaves open."""
ENTROPY_SEEDS = 8

_GREEN = (60, 170, 60)  # BGR
_RED = (50, 50, 220)
_GREY = (150, 150, 150)
_SPLIT_COLOURS = [(200, 120, 40), (40, 140, 230), (150, 80, 160), (90, 160, 90)]  # BGR


def write_png(path: str | os.PathLike[str], bgr: np.ndarray) -> Path:
    """PNG-encode a uint8 BGR image and write it atomically."""
    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    return atomic.write_bytes(path, data.tobytes(), make_parents=True)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _text(
    canvas: np.ndarray,
    text: str,
    x: int,
    y: int,
    *,
    scale: float = 0.4,
    colour: tuple[int, int, int] = (20, 20, 20),
) -> None:
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def pick_rows(class_ids: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` items of distinct classes, spread over the set."""
    _, first = np.unique(class_ids, return_index=True)
    first = np.sort(first)
    if len(first) <= count:
        return first
    return first[np.linspace(0, len(first) - 1, count).round().astype(np.int64)]


def sample_grid(
    context: Any, rows_per_split: int = 6, seeds_shown: int = 6, scale: int = 2
) -> np.ndarray:
    """The sample grid described in the module docstring, as a uint8 BGR image."""
    cell = 64 * scale
    pad = 6
    blocks = []
    for split, s in context.splits.items():
        rows = pick_rows(s.class_ids, rows_per_split)
        seeds = min(s.seeds, seeds_shown)
        correct = None
        if context.oracle is not None and s.attributes is not None:
            labels = context.predictions(split, "generated").labels.reshape(s.seeds, len(s), -1)
            truth = np.asarray(s.attributes)[None]  # (1, n, A); -1 = not stated
            correct = ((labels == truth) | (truth < 0)).all(2)  # (S, n)
        cols = seeds + 1
        width = cols * (cell + pad) + pad
        title_h, caption_h = 24, 30
        height = title_h + len(rows) * (caption_h + cell + pad) + pad
        block = np.full((height, max(width, 640), 3), 255, np.uint8)
        _text(
            block,
            f"{split}: real | {seeds} seeds (green = oracle: all attributes right)",
            pad,
            17,
            scale=0.5,
        )
        y = title_h
        for i in rows:
            for k, line in enumerate(textwrap.wrap(s.captions[i], 95)[:2]):
                _text(block, line, pad, y + 12 + 13 * k, scale=0.38)
            y += caption_h
            tiles = ([s.real[i]] if s.real is not None else [None]) + [
                s.generated[k, i] for k in range(seeds)
            ]
            for c, tile in enumerate(tiles):
                x = pad + c * (cell + pad)
                if tile is None:
                    _text(block, "no real", x + 10, y + cell // 2)
                    continue
                big = cv2.resize(tile[:, :, ::-1], (cell, cell), interpolation=cv2.INTER_NEAREST)
                block[y : y + cell, x : x + cell] = big
                if c > 0 and correct is not None:
                    colour = _GREEN if correct[c - 1, i] else _RED
                    cv2.rectangle(block, (x - 2, y - 2), (x + cell + 1, y + cell + 1), colour, 2)
            y += cell + pad
        blocks.append(block)
    width = max(b.shape[1] for b in blocks) if blocks else 64
    blocks = [
        np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks
    ]
    return np.concatenate(blocks) if blocks else np.full((64, 64, 3), 255, np.uint8)


def attribute_chart(records: Sequence[dict[str, Any]], width: int = 760) -> np.ndarray:
    """Bars of accuracy per attribute (groups) and split (colours) as a uint8 BGR image."""
    rows = [r for r in records if r.get("metric") == "attributes" and "accuracy" in r]
    height, left, bottom, top = 340, 50, 60, 30
    canvas = np.full((height, width, 3), 255, np.uint8)
    if not rows:
        _text(canvas, "no attribute accuracy measured", left, height // 2, scale=0.6)
        return canvas
    names = [*rows[0]["accuracy"], "all correct"]
    plot_h = height - top - bottom
    group_w = (width - left - 20) / len(names)
    bar_w = max(int(group_w * 0.8 / len(rows)), 4)

    def y_of(value: float) -> int:
        value = 0.0 if math.isnan(value) else value  # NaN: never stated in this set
        return int(top + plot_h * (1 - min(max(value, 0.0), 1.0)))

    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        cv2.line(canvas, (left, y_of(v)), (width - 10, y_of(v)), (225, 225, 225), 1)
        _text(canvas, f"{int(100 * v)}%", 6, y_of(v) + 4, scale=0.35)
    for x in range(left, width - 10, 12):  # the 95 % target, dashed
        cv2.line(canvas, (x, y_of(TARGET_ATTRIBUTE)), (x + 6, y_of(TARGET_ATTRIBUTE)), _RED, 1)
    for g, name in enumerate(names):
        x0 = int(left + g * group_w + group_w * 0.1)
        for r, row in enumerate(rows):
            colour = _SPLIT_COLOURS[r % len(_SPLIT_COLOURS)]
            if name == "all correct":
                value, real, noise = (
                    row["all_correct"],
                    row.get("real_all_correct"),
                    row.get("noise_all_correct"),
                )
            else:
                value = row["accuracy"][name]
                real = row.get("real_accuracy", {}).get(name)
                noise = row.get("noise_accuracy", {}).get(name)
            x = x0 + r * bar_w
            cv2.rectangle(canvas, (x, y_of(value)), (x + bar_w - 2, y_of(0)), colour, -1)
            if noise is not None:  # a grey tick: what images of nothing score on these labels
                cv2.line(canvas, (x - 1, y_of(noise)), (x + bar_w - 1, y_of(noise)), _GREY, 3)
            if real is not None:  # a black tick: the oracle on the real images (the ceiling)
                cv2.line(canvas, (x - 1, y_of(real)), (x + bar_w - 1, y_of(real)), (0, 0, 0), 2)
        _text(canvas, name, int(left + g * group_w + 4), height - bottom + 18, scale=0.4)
    for r, row in enumerate(rows):
        colour = _SPLIT_COLOURS[r % len(_SPLIT_COLOURS)]
        x = left + r * 150
        cv2.rectangle(canvas, (x, height - 22), (x + 12, height - 10), colour, -1)
        _text(canvas, str(row["split"]), x + 16, height - 11, scale=0.4)
    x = left + len(rows) * 150
    _text(
        canvas,
        "grey tick: noise floor  black tick: real images  red: 95 % target",
        x,
        height - 11,
        scale=0.35,
    )
    return canvas


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    # NaN: an attribute no caption of the set states (a captions file, a small --limit).
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _check(ok: bool) -> str:
    return "✓" if ok else "✗"


def _attribute_table(attrs: list[dict[str, Any]], role: str) -> list[str]:
    """One judge's attribute table (generated, real ceiling, noise floor per split)."""
    out: list[str] = []
    if not attrs:
        return out
    names = list(attrs[0]["accuracy"])
    honest = "" if attrs[0].get("honest", True) else " — FAILED its honesty checks"
    judge = f": {attrs[0]['judged_by']}" if "judged_by" in attrs[0] else ""
    out += [
        f"### Attribute accuracy ({role}{judge}{honest}), %",
        "",
        "| split | " + " | ".join(names) + " | all correct | target |",
        "|---" * (len(names) + 3) + "|",
    ]
    for r in attrs:
        target_all = TARGET_ALL_CORRECT.get(r["split"])
        ok = (
            all(v >= TARGET_ATTRIBUTE for v in r["accuracy"].values())
            if r["split"] == "test"
            else True
        )
        if target_all is not None:
            ok = ok and r["all_correct"] >= target_all
        cells = [
            "–" if math.isnan(v) else f"{_pct(v)} ± {_pct(r['accuracy_std_over_seeds'][k])}"
            for k, v in r["accuracy"].items()
        ]
        target = _check(ok) if target_all is not None else ""
        out.append(
            f"| {r['split']} generated | "
            + " | ".join(cells)
            + f" | {_pct(r['all_correct'])} | {target} |"
        )
        if "real_accuracy" in r:
            cells = [_pct(v) for v in r["real_accuracy"].values()]
            out.append(
                f"| {r['split']} real (ceiling) | "
                + " | ".join(cells)
                + f" | {_pct(r.get('real_all_correct'))} | |"
            )
        cells = [_pct(v) for v in r["noise_accuracy"].values()]
        out.append(
            f"| {r['split']} noise (floor) | "
            + " | ".join(cells)
            + f" | {_pct(r['noise_all_correct'])} | |"
        )
    out += [
        "",
        "Targets (rescue-scenes): every attribute ≥ 95 % on test; all correct ≥ 85 % "
        "on test and ≥ 60 % on test_unseen. ± is the standard deviation over seeds.",
        "",
    ]
    return out


def _judges_side_by_side(by_metric: dict[str, list[dict[str, Any]]]) -> list[str]:
    """All correct and the weakest attribute by both judges, per split (when both ran)."""
    oracle = {r["split"]: r for r in by_metric.get("attributes", []) if "accuracy" in r}
    judge = {r["split"]: r for r in by_metric.get("attributes_judge", []) if "accuracy" in r}
    both = [s for s in oracle if s in judge]
    if not both:
        return []
    out = [
        "### The two judges side by side, %",
        "",
        "| split | all correct: oracle | all correct: second judge "
        "| weakest attribute: oracle | weakest attribute: second judge |",
        "|---|---|---|---|---|",
    ]
    for split in both:
        cells = [split, _pct(oracle[split]["all_correct"]), _pct(judge[split]["all_correct"])]
        for r in (oracle[split], judge[split]):
            scored = {k: v for k, v in r["accuracy"].items() if not math.isnan(v)}  # NaN: unstated
            name, value = min(scored.items(), key=lambda kv: kv[1]) if scored else ("–", None)
            cells.append(f"{name} {_pct(value)}")
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "The oracle shares its network design with the image encoder the generator trains "
        "against; the second judge does not (docs/QUALITY.md § 1.1). A gap between them is a "
        "generator pleasing the oracle's kind of network rather than drawing the scene.",
        "",
    ]
    return out


def partial_tables(by_metric: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Partial captions: stated attributes right and unstated-attribute entropy, per judge
    (`by_metric`: metric name → its records); also the recipe's and the demo's REPORT.md."""
    out: list[str] = []
    rows = [
        (role, r)
        for metric, role in (("attributes", "oracle"), ("attributes_judge", "second judge"))
        for r in by_metric.get(metric, [])
        if "partial" in r and r["partial"].get("captions")
    ]
    if rows:
        names = list(rows[0][1]["partial"]["accuracy"])
        out += [
            "### Partial captions: stated attributes right, %",
            "",
            "| split | judge | partial captions | all stated right | "
            + " | ".join(f"{n} (stated)" for n in names)
            + " | target (each ≥ 97 %) | full captions: all right |",
            "|---" * (len(names) + 6) + "|",
        ]
        for role, r in rows:
            p = r["partial"]
            given = [v for v in p["accuracy"].values() if v is not None]
            ok = bool(given) and min(given) >= TARGET_STATED
            full = r.get("full", {})
            out.append(
                f"| {r['split']} | {role}: {r['judged_by']} | {p['captions']} | "
                f"{_pct(p['all_stated_correct'])} | "
                + " | ".join(_pct(v) for v in p["accuracy"].values())
                + f" | {_check(ok)} | {_pct(full.get('all_stated_correct'))} |"
            )
        out += [
            "",
            "Only what a caption states is scored; the rest is the noise's to choose. A stated "
            "attribute's figure is over the partial captions that state it.",
            "",
        ]
    rows = [
        (role, r)
        for metric, role in (
            ("unstated_entropy", "oracle"),
            ("unstated_entropy_judge", "second judge"),
        )
        for r in by_metric.get(metric, [])
        if "entropy" in r
    ]
    if rows:
        names = list(rows[0][1]["entropy"])
        out += [
            "### Partial captions: entropy of the unstated attributes across seeds",
            "",
            "| split | judge | seeds | partial captions | "
            + " | ".join(names)
            + " | overall | target (≥ 0.6 at 8 seeds) |",
            "|---" * (len(names) + 6) + "|",
        ]
        for role, r in rows:
            overall = r["overall"]
            ok = overall is not None and overall >= TARGET_UNSTATED_ENTROPY
            target = _check(ok) if r["seeds"] == ENTROPY_SEEDS else "(needs --seeds 8)"
            out.append(
                f"| {r['split']} | {role}: {r['judged_by']} | {r['seeds']} | {r['captions']} | "
                + " | ".join("–" if v is None else f"{v:.2f}" for v in r["entropy"].values())
                + f" | {'–' if overall is None else f'{overall:.2f}'} | {target} |"
            )
        out += [
            "",
            "For each partial caption and each attribute it leaves open: the entropy of the "
            "judge's readings over the seeds ÷ log(min(seeds, values)); 0 = the noise never "
            "changes it, 1 = as varied as that many draws can be. Overall: the mean over every "
            "(caption, open attribute) pair (docs/QUALITY.md § 2.1).",
            "",
        ]
    return out


def markdown_tables(records: Sequence[dict[str, Any]], attribute_names: Sequence[str]) -> str:
    """The metric tables of a report (also used by the recipe's report)."""
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_metric.setdefault(r["metric"], []).append(r)
    out: list[str] = []
    for metric, role in (("attributes", "oracle"), ("attributes_judge", "second judge")):
        out += _attribute_table([r for r in by_metric.get(metric, []) if "accuracy" in r], role)
    out += _judges_side_by_side(by_metric)
    out += partial_tables(by_metric)
    for metric, title in (("fid", "FID"), ("kid", "KID")):
        rows = [r for r in by_metric.get(metric, []) if "value" in r]
        if not rows:
            continue
        # KID is unbiased (its baseline is ~0, even negative): compare by difference, not ratio.
        last = "ratio | target (≤ 3×)" if metric == "fid" else "excess over baseline"
        out += [
            f"### {title} in the oracle's feature space",
            "",
            f"| split | generated | real-vs-real baseline | images per set | {last} |",
            "|---|---|---|---|---|" + ("---|" if metric == "fid" else ""),
        ]
        for r in rows:
            fmt = "{:.3f}" if metric == "fid" else "{:.5f}"
            cells = [
                r["split"],
                f"{fmt.format(r['value'])} ± {fmt.format(r['std'])}",
                fmt.format(r["baseline"]),
                str(r["images_per_set"]),
            ]
            if metric == "fid":
                ratio = r.get("ratio")
                cells += (
                    [f"{ratio:.2f}×", _check(ratio <= TARGET_FID_RATIO)] if ratio else ["–", ""]
                )
            else:
                cells.append(fmt.format(r["value"] - r["baseline"]))
            out.append("| " + " | ".join(cells) + " |")
        out += [
            "",
            "Generated images of half A's captions vs real half B, against real A vs real "
            "B; both folds, every seed (train/quality/metrics.py).",
            "",
        ]
    rows = [r for r in by_metric.get("diversity", []) if "pixel_l1" in r]
    if rows:
        out += [
            "### Diversity across seeds of one caption",
            "",
            "| split | oracle-feature L2 | real same-class | ratio "
            "| pixel L1 (0–255) | real same-class | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:

            def f(key: str, fmt: str = "{:.2f}", r: dict[str, Any] = r) -> str:
                return fmt.format(r[key]) if key in r else "–"

            out.append(
                f"| {r['split']} | {f('feature_l2')} | {f('real_feature_l2')} | "
                f"{f('feature_ratio')} | {f('pixel_l1')} | {f('real_pixel_l1')} | "
                f"{f('pixel_ratio')} |"
            )
        out.append("")
    rows = [r for r in by_metric.get("hf_energy", []) if "value" in r]
    if rows:
        out += [
            "### High-frequency energy (mean |Laplacian| of grey levels)",
            "",
            "| split | generated | real | ratio (1 = as sharp as the renders) |",
            "|---|---|---|---|",
        ]
        for r in rows:
            ratio = f"{r['ratio']:.2f}×" if r.get("ratio") is not None else "–"
            out.append(
                f"| {r['split']} | {r['value']:.2f} ± {r['std_over_seeds']:.2f} | "
                f"{r['real']:.2f} | {ratio} |"
            )
        out += ["", "Above 1: speckle or fringes the real renders lack; below 1: blur.", ""]
    rows = [r for r in by_metric.get("r_precision", []) if "value" in r]
    if rows:
        out += [
            f"### R-precision ({independence(rows[0].get('independent'))}), %",
            "",
            "| split | generated | real images | candidates | chance |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {r['split']} | {_pct(r['value'])} ± {_pct(r['std_over_seeds'])} | "
                f"{_pct(r.get('real_value'))} | {r['candidates']} | {_pct(r['chance'])} |"
            )
        out.append("")
    rows = [r for r in by_metric.get("inception", []) if "inception_score" in r]
    if rows:
        out += ["### Inception metrics", "", "| split | IS | FID (Inception) |", "|---|---|---|"]
        for r in rows:
            out.append(
                f"| {r['split']} | {r['inception_score']:.2f} ± "
                f"{r['inception_score_std']:.2f} | {r['fid_inception']:.2f} |"
            )
        out.append("")
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        out += ["### Not measured", ""]
        out += [
            f"- {r['metric']}{' (' + r['split'] + ')' if 'split' in r else ''}: {r['skipped']}"
            for r in skipped
        ]
        out.append("")
    return "\n".join(out)


def saturation_text(saturated: int | None, steps: int | None) -> str:
    """`1,984 of 8,000 steps (24.8 %) ✗`: the training steps on which D's adversarial loss fell
    under `train.gan.trainer.SATURATED_BELOW`, against the ≤ 5 % target; "not recorded" for a
    checkpoint from before the trainer counted them."""
    if saturated is None or not steps:
        return "not recorded"
    share = saturated / steps
    met = _check(share <= TARGET_SATURATED_SHARE)
    return f"{saturated:,} of {steps:,} steps ({_pct(share)} %) {met}"


def independence(independent: bool | None) -> str:
    """How R-precision's encoder is labelled wherever the figure is printed."""
    if independent is None:
        return "image-text encoder of unknown relation to the generator"
    if independent:
        return "independent image-text encoder: not the one the generator trained against"
    return "not independent: the image encoder the generator trained against"


def write_report(result: Any) -> Path:
    """Write samples.png, attributes.png and report.md into `result.out`; returns the report."""
    out = Path(result.out)
    context = result.context
    write_png(out / SAMPLES_FILE, sample_grid(context))
    write_png(out / CHART_FILE, attribute_chart(result.records))
    h = result.header
    lines = [
        f"# Evaluation: {h['label']}",
        "",
        f"- source: `{h['source']}` ({h['kind']}, {h['precision']})",
        f"- data: `{h['data']}`" + (f", captions `{h['captions']}`" if h.get("captions") else ""),
        f"- seeds per caption: {h['seeds']} (first {h['seed']}); "
        + ", ".join(f"{k}: {len(v)} captions" for k, v in context.splits.items()),
        f"- took {h['seconds']} s",
    ]
    if h["kind"] == "checkpoint":
        lines.append(
            "- D saturated (adversarial loss < 0.01) in training: "
            + saturation_text(h.get("d_saturated_steps"), h.get("training_steps"))
            + f" (target ≤ {_pct(TARGET_SATURATED_SHARE)} %)"
        )
    lines.append("")
    for role, loaded in (("Oracle", context.oracle), ("Second judge", context.judge)):
        if loaded is None:
            continue
        honesty = loaded.honesty
        verdict = "passed" if honesty.passed else "**FAILED — numbers below are not trustworthy**"
        lines += [
            f"{role} `{loaded.path}` (design {loaded.model.config.design}): honesty checks "
            f"{verdict}.",
            "",
            "```",
            honesty.summary(),
            "```",
            "",
        ]
    lines += [
        markdown_tables(result.records, context.attribute_names),
        "",
        f"![samples]({SAMPLES_FILE})",
        "",
        f"![attributes]({CHART_FILE})",
        "",
    ]
    return atomic.write_bytes(
        out / REPORT_FILE, "\n".join(lines).encode("utf-8"), make_parents=True
    )


def ablation_table(
    rows: Sequence[tuple[str, dict[str, Any]]],
    saturation: Sequence[tuple[int | None, int | None]] | None = None,
) -> str:
    """Markdown: one row per (label, evaluate.summary(records)) — the recipe's ablation; with
    `saturation`, one (D-saturated steps, steps) per row, a last column for it."""
    splits = ["test", "test_unseen"]
    header = ["run"]
    judged = any("judge_all_correct" in row for _, summary in rows for row in summary.values())
    for s in splits:
        header += [f"{s} min attr %", f"{s} all correct %"]
        header += [f"{s} all correct, 2nd judge %"] if judged else []
        header += [f"{s} FID (×baseline)", f"{s} HF ×real", f"{s} diversity", f"{s} R-prec %"]
    header += ["D saturated"] if saturation is not None else []
    out = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for i, (label, summary) in enumerate(rows):
        cells = [label]
        for s in splits:
            row = summary.get(s, {})
            acc = row.get("accuracy")
            cells.append(_pct(min(acc.values())) if acc else "–")
            cells.append(_pct(row.get("all_correct")))
            if judged:
                cells.append(_pct(row.get("judge_all_correct")))
            if "fid" in row and row.get("fid_baseline"):
                cells.append(f"{row['fid']:.2f} ({row['fid'] / row['fid_baseline']:.1f}×)")
            else:
                cells.append("–")
            cells.append(f"{row['hf_ratio']:.2f}" if "hf_ratio" in row else "–")
            cells.append(f"{row['diversity_ratio']:.2f}" if "diversity_ratio" in row else "–")
            r_prec = _pct(row.get("r_precision"))
            if row.get("r_precision_independent") is False:
                r_prec += " (not independent)"
            cells.append(r_prec)
        if saturation is not None:
            cells.append(saturation_text(*saturation[i]))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
