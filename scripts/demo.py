"""`make demo`: the whole product on the embedded rescue-scenes data, from nothing to pictures.

    python scripts/demo.py [OUT]          # OUT defaults to demo_out/

Stages (each one is the product's own command, run as a user would run it):

1. render rescue-scenes                 python -m train data synth
2. recipe: text encoder + GAN, oracle,   python -m train recipe --train-oracle
   evaluation (demo budget)
3. export --quantize                    python -m export --quantize
4. the robot: the serial service on a pseudo-terminal cable, driven by the operator client
   exactly as over a USB radio (`rescue-edge serve --serial`, `edge_runtime.client`)
5. contact sheet of the operator's captions (full, partial, free and misspelled commands; each
   image checked by the attribute oracle on what its caption states) and
   REPORT.md (attribute accuracy, high-frequency energy and diversity against the real renders,
   latency, bundle sizes, where everything is)

The demo budget (DEMO_MINUTES for stage 2's training) is sized so the whole demo stays within
20 minutes on 2 CPU cores; the product's full recipe is `python -m train recipe` (60 minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out").resolve()
PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
DEMO_MINUTES = float(os.environ.get("DEMO_MINUTES", "15"))
"""Training budget of the recipe stage (text encoder + GAN), minutes. 15 since the text encoder
ends by refitting its read-back heads on the frozen encoder (≈ 50 s of encoding captions,
docs/TEXT_ENCODER.md § The refit): the minute is added so the GAN keeps its ≈ 8.6 minutes."""
DEMO_TEXT_STEPS = int(os.environ.get("DEMO_TEXT_STEPS", "600"))
"""600, not 300: a 300-step encoder reads colour wrong in ~12 % and pose in ~28 % of read-backs,
600 steps read both right (docs/TEXT_ENCODER.md § Read-back); a 1,000-step GAN on a 600-step
encoder drew all five right for 41 % of test captions (docs/QUALITY.md § 3.8; an earlier
session's 300-step encoder: 28 %, another machine, so a direction, not a ratio). The 3 extra
minutes come on top of the GAN's time (DEMO_MINUTES 11 → 14, then 15 for the refit): the demo
stays within 20 minutes."""
DEMO_EMA_DECAY = 0.999
"""The demo's GAN keeps a weight average, unlike the 60-minute recipe: at the demo's ~1,500
steps the average (with standing statistics) drew all five right for 75.2 / 42.8 % of test /
unseen captions, the trained weights 67.4 / 40.6 % (docs/QUALITY.md § 3.11)."""
IMAGES_PER_CAPTION = 4

# What an operator might type, with what it asks for (colour, terrain, pose, position, helmet;
# None where the caption leaves the attribute open), so the oracle can say whether each picture
# obeys what was said — and only that. Full commands first (two ask for colour × terrain pairs
# that never occur in training: orange/water, red/snow), then partial commands of one to three
# attributes, free phrasings and misspellings, written for this list, not drawn from the grammar.
Wanted = tuple[str | None, str | None, str | None, str | None, str | None]
OPERATOR_CAPTIONS: list[tuple[str, Wanted]] = [
    ("survivor in an orange jacket lying on rubble, left side, no helmet",
     ("orange", "rubble", "lying", "left", "no")),
    ("worker wearing a helmet, blue coat, standing on grass at the right",
     ("blue", "grass", "standing", "right", "yes")),
    ("casualty in white, seated on the sand, centre of the frame, no hard hat",
     ("white", "sand", "sitting", "center", "no")),
    ("look for a hiker in a green parka lying in the mud on the right, helmet on",
     ("green", "mud", "lying", "right", "yes")),
    ("A MAN IN A PURPLE HOODIE STANDING IN FLOOD WATER AT THE LEFT, WEARING A HELMET",
     ("purple", "water", "standing", "left", "yes")),
    ("person in a black jacket lying flat on broken concrete in the center, helmet off",
     ("black", "rubble", "lying", "center", "no")),
    ("survivr in orang jaket standing in flood watr , right side , no helmet",
     ("orange", "water", "standing", "right", "no")),
    ("person in red sitting in the snow, in the middle, bareheaded",
     ("red", "snow", "sitting", "center", "no")),
    ("anyone in yellow?", ("yellow", None, None, None, None)),
    ("red top, near the left edge", ("red", None, None, "left", None)),
    ("figure down in the mud", (None, "mud", "lying", None, None)),
    ("someone sat on the snow with no helmet", (None, "snow", "sitting", None, "no")),
    ("hard hat, far right", (None, None, None, "right", "yes")),
    ("somebody in purpel on the sand", ("purple", "sand", None, None, None)),
    ("survivr in grean, standng", ("green", None, "standing", None, None)),
    ("BLUE JACKET", ("blue", None, None, None, None)),
]  # fmt: skip


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(title: str, command: list[str], timings: dict[str, float]) -> str:
    """Run one stage, streaming its output; returns its last stdout line."""
    say(f"{title}: {' '.join(command)}")
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    last = ""
    assert process.stdout is not None
    for line in process.stdout:
        print(f"    {line.rstrip()}", flush=True)
        if line.strip():
            last = line.strip()
    if process.wait() != 0:
        raise SystemExit(f"[demo] {title} failed (exit code {process.returncode}); see above")
    timings[title] = time.monotonic() - start
    say(f"{title}: done in {timings[title] / 60:.1f} min")
    return last


def robot_session(bundle: Path, received: Path, timings: dict[str, float]) -> dict[str, Any]:
    """The serial service on a pty cable, the operator's captions sent by the client."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from pty_cable import PtyCable

    from edge_runtime import signing
    from edge_runtime.client import OperatorClient

    say("robot: rescue-edge serve --serial on a pseudo-terminal cable, as the unit runs it")
    start = time.monotonic()
    cable_dir = OUT / "cable"
    cable_dir.mkdir(exist_ok=True)
    cable = PtyCable(cable_dir)
    robot_out = OUT / "robot-images"
    log_file = (OUT / "robot-service.log").open("wb")
    # One key for both ends of the link, as `rescue-edge keygen` makes it (docs/PROTOCOL.md).
    key_file = OUT / "operator.key"
    signing.write_key_file(key_file, signing.generate_key(), force=True)
    key = signing.read_key_file(key_file)
    service = subprocess.Popen(
        [PY, "-m", "edge_runtime", "serve", "--serial", str(cable.robot_path),
         "--bundle", str(bundle), "--out", str(robot_out), "--threads", "2",
         "--key-file", str(key_file)],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    try:
        client = OperatorClient.open(cable.operator_path, timeout=60, key=key)
        try:
            deadline = time.monotonic() + 120
            client.timeout = 2.0  # a ping sent before the service listens is simply lost
            while True:  # the service answers once its bundle is loaded and warmed up
                try:
                    client.ping()
                    client.timeout = 60.0
                    break
                except Exception:
                    if service.poll() is not None or time.monotonic() > deadline:
                        log = OUT / "robot-service.log"
                        raise SystemExit(f"[demo] the service did not come up; see {log}") from None
            status = client.status()
            say(f"robot: up — {json.dumps(status)}")
            for i, (caption, wanted) in enumerate(OPERATOR_CAPTIONS):
                result, paths = client.generate_and_fetch(
                    caption, received / f"{i:02d}", n=IMAGES_PER_CAPTION, seed=100 + i
                )
                say(
                    f"operator> {caption!r}: {len(paths)} images, robot {result.ms:.0f} ms "
                    f"(inference {result.infer_ms:.0f} ms), "
                    f"round trip {result.round_trip_ms:.0f} ms"
                )
                # What the robot said it understood (None: its bundle has no read-back).
                understood = result.readback
                if understood is not None:
                    say(f"robot> {understood.summary()}")
                    if understood.warning_line():
                        say(f"robot> {understood.warning_line()}")
                results.append(
                    {"caption": caption, "wanted": wanted, "paths": [str(p) for p in paths],
                     "robot_ms": result.ms, "infer_ms": result.infer_ms,
                     "round_trip_ms": result.round_trip_ms,
                     "understood": understood.summary() if understood else None,
                     "readback_warning": understood.warning if understood else None}
                )  # fmt: skip
            status = client.status()
        finally:
            client.close()
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
        log_file.close()
        cable.close()
    timings["robot session"] = time.monotonic() - start
    return {"requests": results, "status": status}


def judge_and_sheet(session: dict[str, Any], oracle_path: str, data: Path) -> dict[str, Any]:
    """Oracle verdict per received image; one contact sheet, a row per operator caption."""
    import cv2
    import numpy as np

    from edge_runtime.images import contact_sheet, write_atomic
    from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES
    from train.quality.oracle import load_oracle, predict

    oracle = load_oracle(oracle_path, data, noise_count=100)
    rows, correct, total = [], 0, 0
    right, stated = dict.fromkeys(ATTRIBUTE_NAMES, 0), dict.fromkeys(ATTRIBUTE_NAMES, 0)
    partial_labels, partial_truth = [], []  # for the entropy of what partial commands leave open
    full_correct = full_total = 0
    for request in session["requests"]:
        images = np.stack(
            [cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
             for p in request["paths"]]
        )  # fmt: skip  # (n, 64, 64, 3) uint8 RGB
        if images.shape[1] != 64:
            images = np.stack(
                [cv2.resize(x, (64, 64), interpolation=cv2.INTER_AREA) for x in images]
            )
        labels = predict(oracle.model, images).labels  # (n, 5)
        # Judged on what the caption states only (-1: left to the noise).
        wanted = [
            -1 if v is None else ATTRIBUTE_VALUES[n].index(v)
            for n, v in zip(ATTRIBUTE_NAMES, request["wanted"], strict=True)
        ]
        said = [name for name, want in zip(ATTRIBUTE_NAMES, wanted, strict=True) if want >= 0]
        if len(said) < len(ATTRIBUTE_NAMES):
            partial_labels.append(labels)
            partial_truth.append(wanted)
        verdicts = []
        for row in labels:
            pairs = zip(ATTRIBUTE_NAMES, row, wanted, strict=True)
            misses = [name for name, got, want in pairs if want >= 0 and got != want]
            for name in said:
                right[name] += name not in misses
                stated[name] += 1
            correct += not misses
            total += 1
            if len(said) == len(ATTRIBUTE_NAMES):
                full_correct += not misses
                full_total += 1
            short = {"colour": "col", "terrain": "ter", "position": "pos", "helmet": "helm"}
            verdicts.append(
                f"all {len(said)} stated right"
                if not misses
                else "off: " + ",".join(short.get(m, m) for m in misses)
            )
        request["oracle"] = verdicts
        title = f"operator: {request['caption']}"
        if request.get("understood"):  # the robot's read-back under the caption
            warning = request.get("readback_warning")
            title += f"\nrobot {request['understood']}" + (f" [{warning}]" if warning else "")
        rows.append(contact_sheet(images, title, verdicts, tile=160, columns=len(images)))
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    sheet = np.concatenate(padded)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    assert ok
    write_atomic(OUT / "contact_sheet.png", png.tobytes())
    entropy = None
    if partial_labels:
        from train.quality.metrics import unstated_entropy

        entropy = unstated_entropy(
            np.stack(partial_labels, axis=1),  # (seeds, partial captions, A)
            np.array(partial_truth),
            oracle.model.config.attribute_sizes,
        )
        entropy["per_attribute"] = dict(zip(ATTRIBUTE_NAMES, entropy["per_attribute"], strict=True))
    return {
        "judge": f"attribute oracle `{oracle_path}` (design {oracle.model.config.design})",
        "all_correct": correct / max(total, 1),
        "full_all_correct": full_correct / full_total if full_total else None,
        "full_images": full_total,
        "per_attribute": {k: right[k] / stated[k] for k in ATTRIBUTE_NAMES if stated[k]},
        "images": total,
        "unstated_entropy": entropy,
    }


def bundle_sizes(bundle: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(bundle.glob("*.onnx"))}


def quality_lines(evaluation: dict[str, dict[str, Any]]) -> list[str]:
    """REPORT.md's quality tables: one per evaluated run, one row per split."""
    from train.quality.report import independence

    def pct(m: dict[str, Any], key: str) -> str:
        return f"{100 * m[key]:.1f}" if key in m else "–"

    def ratio(m: dict[str, Any], key: str) -> str:
        return f"{m[key]:.2f}" if key in m else "–"

    names = ("colour", "terrain", "pose", "position", "helmet")
    lines: list[str] = []
    for label, summary in evaluation.items():
        # The demo trains no second judge (its budget); the column appears when one judged.
        judged = any("judge_all_correct" in m for m in summary.values())
        lines += [
            f"**{label}** (accuracy %; FID in the oracle's feature space, × real-vs-real; "
            "HF: mean |Laplacian| ÷ real, 1 = as sharp as the renders; diversity: spread of a "
            "caption's seeds ÷ real same-class spread, oracle features)",
            "",
            "| split | " + " | ".join(names) + " | all correct | "
            + ("2nd judge all correct | " if judged else "")
            + "FID × | HF × | diversity | R-precision |",
            "|---" * (len(names) + 6 + judged) + "|",
        ]  # fmt: skip
        marks = set()
        for split, m in summary.items():
            accuracy = m.get("accuracy", {})
            fid = f"{m['fid'] / m['fid_baseline']:.1f}" if m.get("fid_baseline") else "–"
            cells = [f"{100 * accuracy[n]:.1f}" if n in accuracy else "–" for n in names]
            cells += [pct(m, "all_correct")]
            cells += [pct(m, "judge_all_correct")] if judged else []
            cells += [fid]
            cells += [ratio(m, "hf_ratio"), ratio(m, "diversity_ratio"), pct(m, "r_precision")]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
            if "r_precision" in m:
                marks.add(independence(m.get("r_precision_independent")))
        lines += [""] + [f"R-precision: {mark}." for mark in sorted(marks)]
        lines.append("")
    return lines


def write_report(facts: dict[str, Any], timings: dict[str, float]) -> Path:
    from edge_runtime.images import write_atomic

    evaluation = facts["recipe"].get("evaluation", {})
    lines = ["# rescue-t2i demo", "", f"Whole demo: **{facts['total_s'] / 60:.1f} min**.", ""]
    lines += ["| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += ["", "## Quality (attribute oracle on generated images; recipe evaluation)", ""]
    lines += quality_lines(evaluation)
    judged = facts["operator"]
    entropy = judged["unstated_entropy"]
    full = judged["full_all_correct"]
    lines += [
        "## The operator's captions (served over the serial link)",
        "",
        f"Judge: {judged['judge']}. Each image is judged on the attributes its caption states "
        "only; the rest is the noise's to choose.",
        "",
        f"{judged['images']} images: all stated attributes right in "
        f"**{100 * judged['all_correct']:.0f} %** "
        + (
            f"(full commands, all five right: {100 * full:.0f} % of {judged['full_images']}); "
            if full is not None
            else ""
        )
        + "per stated attribute "
        + ", ".join(f"{k} {100 * v:.0f} %" for k, v in judged["per_attribute"].items())
        + ". See `contact_sheet.png` (the oracle's verdict under each image).",
        "",
    ]
    if entropy is not None:
        per = ", ".join(
            f"{k} {v:.2f}" for k, v in entropy["per_attribute"].items() if v is not None
        )
        lines += [
            f"Partial commands: entropy of each unstated attribute across the {entropy['seeds']} "
            f"seeds (oracle's reading; ÷ log min(seeds, values): 0 = the same every time, 1 = "
            f"as varied as {entropy['seeds']} draws can be): **{entropy['overall']:.2f}** "
            f"overall ({entropy['pairs']} caption × attribute pairs); {per}. Issue 17's target "
            "(≥ 0.6) is defined at 8 seeds: `python -m train evaluate --splits test_phrasing "
            "--seeds 8`.",
            "",
        ]
    lines += [
        "| caption | robot understood | robot ms (n=4) | inference ms | round trip ms | oracle |",
        "|---|---|---|---|---|---|",
    ]
    for r in facts["session"]["requests"]:
        understood = (r.get("understood") or "no read-back").removeprefix("understood as: ")
        if r.get("readback_warning"):
            understood += f" **{r['readback_warning']}**"
        lines.append(
            f"| {r['caption']} | {understood} | {r['robot_ms']:.0f} | {r['infer_ms']:.0f} | "
            f"{r['round_trip_ms']:.0f} | {'; '.join(r['oracle'])} |"
        )
    lines += ["", "## Bundle", "", f"`{facts['bundle']}`", ""]
    lines += [f"- {name}: {size / 1e6:.2f} MB" for name, size in facts["sizes"].items()]
    lines += [f"- manifest variants: {json.dumps(facts['variants'])}", ""]
    lines += ["## Where everything is", ""]
    lines += [f"- {k}: `{v}`" for k, v in facts["paths"].items()]
    lines.append("")
    path = OUT / "REPORT.md"
    write_atomic(path, "\n".join(lines).encode())
    return path


def main() -> int:
    started = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data = OUT / "rescue_scenes.h5"
    if data.exists():
        say(f"render rescue-scenes: reusing {data}")
    else:
        synth = [PY, "-m", "train", "data", "synth", "--out", str(data)]
        run("render rescue-scenes", synth, timings)
    recipe = [
        PY, "-m", "train", "recipe", "--data", str(data), "--out", str(OUT / "recipe"),
        "--minutes", str(DEMO_MINUTES), "--text-steps", str(DEMO_TEXT_STEPS),
        "--captions-per-image", "3", "--train-oracle", "--ema-decay", str(DEMO_EMA_DECAY),
        "--eval-seeds", "2", "--eval-limit", "300",
    ]  # fmt: skip
    summary = json.loads(run("recipe (text encoder + GAN, oracle, evaluation)", recipe, timings))
    run_dir = Path(summary["run_dir"])
    oracle = sorted((run_dir / "oracle").glob("*/checkpoint.pt"))[-1]
    bundle = OUT / "bundle"
    run(
        "export --quantize",
        [PY, "-m", "export", "--checkpoint", summary["checkpoint"], "--out", str(bundle),
         "--quantize", "--oracle", str(oracle), "--force"],
        timings,
    )  # fmt: skip
    received = OUT / "operator-received"
    shutil.rmtree(received, ignore_errors=True)
    session = robot_session(bundle, received, timings)
    judged = judge_and_sheet(session, str(oracle), data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    facts = {
        "recipe": summary,
        "session": session,
        "operator": judged,
        "bundle": str(bundle),
        "sizes": bundle_sizes(bundle),
        "variants": {
            name: {k: v for k, v in variant.items() if k in ("gate_passed", "quality")}
            for name, variant in manifest.get("variants", {}).items()
        },
        "paths": {
            "contact sheet": OUT / "contact_sheet.png",
            "recipe report (ablation-style table)": summary.get("report"),
            "evaluation report": run_dir / "eval" / "default" / "report.md",
            "GAN checkpoint": summary["checkpoint"],
            "bundle": bundle,
            "images the robot wrote": OUT / "robot-images",
            "images the operator received": received,
            "service log": OUT / "robot-service.log",
        },
        "total_s": time.monotonic() - started,
    }
    report = write_report(facts, timings)
    say(
        f"operator captions obeyed: {100 * judged['all_correct']:.0f} % of {judged['images']} "
        "images with every stated attribute right (attribute oracle)"
    )
    say(f"whole demo: {facts['total_s'] / 60:.1f} min")
    say(f"look at: {OUT / 'contact_sheet.png'}")
    say(f"report:  {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
