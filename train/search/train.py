"""`python -m train search-scorer`: fine-tune the frame scorer on search scenes (issue 20).

Starts from a text-encoder checkpoint (kind "text_encoder": its `text_encoder` stays frozen — the
bundle's text encoder must embed captions exactly as during training — and its `image_encoder`
becomes the scorer's trunk and head, `FrameScorer.from_image_encoder`).

Objective, per frame and query caption (each scale's cells are the candidates):

- *ranking*: softmax cross-entropy over all cells of both scales, the target spread over the
  cells assigned to the described person (frames where the person is present): the person
  beats background, debris, coloured objects and the other people of the same frame;
- *presence*: binary cross-entropy of every cell's score, 1 on the assigned cells, 0 elsewhere
  (all cells of absent frames included): scores are comparable across frames, so one threshold
  can say "not here";
- *box*: smooth-L1 on the box offsets of cells assigned to any person (caption-free);
- *near miss*: the described person's own cells against a caption of a *near miss* — the same
  person with the pose, the helmet or the colour changed, matching nobody in the frame: binary
  cross-entropy pushes every cell's score for it to 0, and a softmax over the two captions at the
  person's cells prefers the true one. Without it the frequent failure was the right colour on
  the wrong person (pose or helmet ignored), and absent frames scored as high as present ones.

A cell is assigned to a person when the person's longer side fits its scale (16..72 px at the
scale) and the person's centre lies within 0.2 windows of the window's centre (the nearest cell
when none does). Queries: the frame's stored query captions, or, half the time, a fresh caption
of a random person of the frame (more people described per frame).

After training: the absent threshold is the `--absent-quantile` quantile of the best score on the
val split's absent frames; then test and test_unseen are evaluated with the robot's own rule
(`edge_runtime.search.detect`) and the figures written to metrics.json in the run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge_runtime import search as es
from train import checkpoint as ck
from train.data.attributes import ATTRIBUTE_VALUES, Attributes
from train.data.phrasing import Family, phrase_for
from train.data.search_scenes import SearchSplit, read_search, render_split
from train.distributed import cpu_computes_bf16
from train.errors import InputError
from train.models import CharCnnRnn, ImageEncoder, config_from_dict
from train.search.scorer import WINDOW, FrameScorer, ScorerConfig, config_to_dict, encode_targets
from train.text.joint_embedding import encode_captions, images_to_tensor

log = logging.getLogger(__name__)

KIND = "search_scorer"
NMS_IOU = 0.3
TOP_K = 5
_CENTRE_TOLERANCE = 0.2
_FIT = (16.0, 72.0)
"""Longest side of a person, in pixels of a scale, for a cell of that scale to be assigned."""


@dataclass(frozen=True)
class SearchTrainConfig:
    """Everything that determines a scorer run (saved in the checkpoint)."""

    data: str = "data/rescue_search.h5"
    text_encoder: str = ""
    """Text-encoder checkpoint (kind text_encoder)."""
    steps: int = 1500
    batch_size: int = 8
    lr: float = 1e-3
    trunk_lr: float = 3e-4
    """The pretrained trunk and head move slower than the new layers."""
    box_weight: float = 2.0
    presence_weight: float = 1.0
    positive_weight: float = 20.0
    """BCE weight of an assigned cell: ~3 of ~200 cells are positive."""
    absent_quantile: float = 0.95
    joint_dim: int = 128
    seed: int = 0
    threads: int = 1
    amp: str = "off"
    """Autocast: "bf16" runs the trunk's forward and backward in CPU bf16 (`resolve_amp`)."""
    log_every: int = 50
    init: str = ""
    """A scorer checkpoint to start from instead of the image encoder (a second round of
    fine-tuning, same text encoder: checked)."""
    dry_run: bool = False


# ----------------------------------------------------------------------------------------------
# Targets


def assign(boxes: np.ndarray, config: ScorerConfig, frame_size: int) -> list[list[np.ndarray]]:
    """Per person, per scale: bool (h, w) of the cells assigned to that person."""
    out = []
    cells = config.cells(frame_size)
    for box in boxes:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        longest = max(box[2] - box[0], box[3] - box[1])
        masks, best = [], (math.inf, 0, 0, 0)
        for k, (scale, (h, w)) in enumerate(zip(config.scales, cells, strict=True)):
            factor = round(1 / scale)
            window = WINDOW * factor
            xs = (np.arange(w) * config.stride + WINDOW / 2) * factor
            ys = (np.arange(h) * config.stride + WINDOW / 2) * factor
            dx, dy = np.abs(xs - cx) / window, np.abs(ys - cy) / window
            fits = _FIT[0] <= longest / factor <= _FIT[1]
            mask = (dy[:, None] <= _CENTRE_TOLERANCE) & (dx[None, :] <= _CENTRE_TOLERANCE) & fits
            masks.append(mask)
            # Fallback: nearest cell of the scale whose window best matches the person's size.
            size_miss = abs(math.log(max(longest, 1) / factor / 40))
            i, j = int(np.argmin(dy)), int(np.argmin(dx))
            cost = size_miss + dx[j] + dy[i]
            if cost < best[0]:
                best = (cost, k, i, j)
        if not any(m.any() for m in masks):
            _, k, i, j = best
            masks[k][i, j] = True
        out.append(masks)
    return out


# ----------------------------------------------------------------------------------------------
# Data


def _near_miss(
    attrs: Attributes, others: set[tuple[str, str, str]], rng: np.random.Generator
) -> Attributes:
    """`attrs` with one of pose, helmet or colour changed so that it matches nobody in `others`
    ((colour, pose, helmet) of the frame's people); `attrs` itself when no change does."""
    for _ in range(20):
        which = int(rng.integers(3))
        values = {0: "pose", 1: "helmet", 2: "colour"}[which]
        options = [v for v in ATTRIBUTE_VALUES[values] if v != getattr(attrs, values)]
        changed = dataclasses.replace(attrs, **{values: options[int(rng.integers(len(options)))]})
        if (changed.colour, changed.pose, changed.helmet) not in others:
            return changed
    return attrs


def _person_caption(attrs: Attributes, rng: np.random.Generator) -> str:
    stated = {"colour", "pose", "helmet"}
    if rng.random() < 0.5:
        stated.add("terrain")
    return phrase_for(attrs, stated, Family.TRAIN, rng).caption


class Batches:
    """Random training batches: frames (flipped half the time), query embeddings, targets."""

    def __init__(
        self,
        split: SearchSplit,
        frame_size: int,
        encoder: CharCnnRnn,
        config: ScorerConfig,
        seed: int,
    ) -> None:
        self.split, self.size, self.config = split, frame_size, config
        self.rng = np.random.default_rng([seed, 7])
        n, c = len(split), len(split.query_captions[0])
        flat = [t for row in split.query_captions for t in row]
        self.query_emb = encode_captions(encoder, flat).view(n, c, -1)  # (N, C, E)
        # Two fresh captions per person (any person can be the query), encoded once.
        rng = np.random.default_rng([seed, 8])
        people = split.boxes.shape[1]
        texts, misses = [], []
        for i in range(n):
            count = int(split.people_counts[i])
            present = [
                Attributes.from_indices(split.person_attributes[i, j].tolist())
                for j in range(count)
            ]
            triples = {(a.colour, a.pose, a.helmet) for a in present}
            for j in range(people):
                if j < count:
                    a = present[j]
                    texts += [_person_caption(a, rng) for _ in range(2)]
                    misses += [_person_caption(_near_miss(a, triples, rng), rng) for _ in range(2)]
                else:
                    texts += ["person", "person"]  # padding, never used
                    misses += ["person", "person"]
        self.person_emb = encode_captions(encoder, texts).view(n, people, 2, -1)
        self.miss_emb = encode_captions(encoder, misses).view(n, people, 2, -1)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Any]]:
        """(frames (B, 3, S, S), text (B, E), near-miss text (B, E), per row (boxes (n, 4),
        query index or -1, near-miss person index or -1))."""
        rows = self.rng.integers(0, len(self.split), size)
        frames = self.split.frames[rows].copy()
        texts, targets, misses = [], [], []
        for b, i in enumerate(rows):
            n = int(self.split.people_counts[i])
            boxes = self.split.boxes[i, :n].copy()
            if self.rng.random() < 0.5:  # no caption states a side of the frame: flip freely
                frames[b] = frames[b, :, ::-1]
                boxes[:, [0, 2]] = self.size - boxes[:, [2, 0]]
            if n and self.rng.random() < 0.5:
                j = int(self.rng.integers(n))
                texts.append(self.person_emb[i, j, int(self.rng.integers(2))])
            else:
                c = int(self.rng.integers(self.query_emb.shape[1]))
                texts.append(self.query_emb[i, c])
                j = int(self.split.query_person[i])
            # The near miss of a random person of the frame (any frame with people).
            m = int(self.rng.integers(n)) if n else -1
            misses.append(self.miss_emb[i, max(m, 0), int(self.rng.integers(2))])
            targets.append((boxes, j, m))
        return images_to_tensor(frames), torch.stack(texts), torch.stack(misses), targets


def losses(
    scorer: FrameScorer,
    frames: torch.Tensor,
    text: torch.Tensor,
    targets: list[Any],
    config: SearchTrainConfig,
    *,
    miss_text: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The named terms of the objective (module docstring) on one batch."""
    sc = scorer.config
    size = frames.shape[-1]
    t = scorer.text(text)
    # The convolutional trunk is where the time goes: it alone runs under autocast (bf16 where
    # the config asks for it); scores and losses are computed in fp32 from its outputs.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.amp == "bf16"):
        per_scale = [scorer.cells(frames, s) for s in sc.scales]  # (cells, raw box offsets)
    per_scale = [(c.float(), r.float()) for c, r in per_scale]
    logits = torch.cat([scorer.logits(c, t).flatten(1) for c, _ in per_scale], 1)  # (B, M)
    labels = torch.zeros_like(logits)
    rank_terms, box_terms, miss_terms = [], [], []
    miss_logits = None
    if miss_text is not None:
        tm = scorer.text(miss_text)
        miss_logits = torch.cat([scorer.logits(c, tm).flatten(1) for c, _ in per_scale], 1)
    for b, (boxes, query, *rest) in enumerate(targets):
        masks = assign(boxes, sc, size)
        miss = rest[0] if rest else -1
        if miss_logits is not None and miss >= 0:
            own = torch.from_numpy(np.concatenate([m.ravel() for m in masks[miss]]))
            # At the person's cells its near miss scores low on its own (BCE below) and below
            # a true caption of that person when the row's query is that person.
            if miss == query:
                pair = torch.stack([logits[b, own], miss_logits[b, own]], 1)  # (cells, 2)
                miss_terms.append(F.cross_entropy(pair, torch.zeros(len(pair), dtype=torch.long)))
        if query >= 0:
            labels[b] = torch.from_numpy(np.concatenate([m.ravel() for m in masks[query]])).float()
            log_p = F.log_softmax(logits[b], 0)
            rank_terms.append(-torch.logsumexp(log_p[labels[b] > 0], 0))
        for person, person_masks in enumerate(masks):
            box = torch.from_numpy(boxes[person])
            for k, scale in enumerate(sc.scales):
                mask = torch.from_numpy(person_masks[k])
                if not mask.any():
                    continue
                raw = per_scale[k][1][b]  # (4, h, w)
                h, w = raw.shape[1:]
                goal = encode_targets(box, round(1 / scale), sc.stride, h, w)
                box_terms.append(F.smooth_l1_loss(raw[:, mask], goal[:, mask], beta=0.1))
    weight = 1 + (config.positive_weight - 1) * labels
    presence = F.binary_cross_entropy_with_logits(logits, labels, weight=weight)
    zero = logits.sum() * 0
    rank = torch.stack(rank_terms).mean() if rank_terms else zero
    box = torch.stack(box_terms).mean() if box_terms else zero
    near = zero
    if miss_logits is not None:
        # Every cell's score for a near miss → 0 (it describes nobody in the frame).
        near = F.binary_cross_entropy_with_logits(miss_logits, torch.zeros_like(miss_logits))
        near = near * config.positive_weight / 4
        if miss_terms:
            near = near + torch.stack(miss_terms).mean()
    total = rank + config.presence_weight * presence + config.box_weight * box + near
    return {"total": total, "rank": rank, "presence": presence, "box": box, "near_miss": near}


# ----------------------------------------------------------------------------------------------
# Evaluation with the robot's rule


@torch.no_grad()
def score_split(
    run: Any, split: SearchSplit, text: np.ndarray, frame_size: int
) -> list[list[es.Detection]]:
    """Detections per frame; `run(frame_input (1, 3, S, S), text (1, E))` returns the maps."""
    out = []
    for i in range(len(split)):
        maps = run(es.frame_to_input(split.frames[i]), text[i : i + 1])
        scores = [m[0] for m in maps[0::2]]
        boxes = [m[0] for m in maps[1::2]]
        out.append(
            es.detect(scores, boxes, iou_threshold=NMS_IOU, top_k=TOP_K, frame_size=frame_size)
        )
    return out


def judge(
    split: SearchSplit, detections: list[list[es.Detection]], threshold: float
) -> dict[str, float]:
    """Top-1 IoU ≥ 0.5 on present frames; absent frames below the threshold; present frames
    found (top-1 right and above the threshold). Judge: the renderer's ground-truth boxes."""
    right, found, present, rejected, absent = 0, 0, 0, 0, 0
    for i, dets in enumerate(detections):
        best = dets[0] if dets else None
        q = int(split.query_person[i])
        if q < 0:
            absent += 1
            rejected += best is None or best.score < threshold
            continue
        present += 1
        ok = best is not None and es.iou(np.array(best.box), split.boxes[i, q])[0, 0] >= 0.5
        right += bool(ok)
        found += bool(ok and best.score >= threshold)
    return {
        "top1_iou50": right / max(present, 1),
        "found_above_threshold": found / max(present, 1),
        "absent_rejected": rejected / max(absent, 1),
        "present_frames": present,
        "absent_frames": absent,
    }


def best_scores(detections: list[list[es.Detection]]) -> np.ndarray:
    return np.array([d[0].score if d else 0.0 for d in detections])


def torch_runner(scorer: FrameScorer) -> Any:
    scorer.eval()

    def run(frame: np.ndarray, text: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in scorer(torch.from_numpy(frame), torch.from_numpy(text))]

    return run


# ----------------------------------------------------------------------------------------------
# Checkpoint


def load_scorer(path: str | Path) -> tuple[FrameScorer, CharCnnRnn, dict[str, Any]]:
    """(scorer, its frozen text encoder, the checkpoint's `search` record) from a scorer
    checkpoint alone."""
    checkpoint = ck.load_checkpoint(path, kind=KIND)
    where = str(path)
    try:
        config = config_from_dict(ScorerConfig, checkpoint["model_configs"]["frame_scorer"], where)
        scorer = FrameScorer(config)
        scorer.load_state_dict(checkpoint["models"]["frame_scorer"])
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise ck.CheckpointError(f"{where}: frame_scorer does not load: {err}") from None
    encoder = ck.build_model(checkpoint, "text_encoder", where)
    assert isinstance(encoder, CharCnnRnn)
    search = checkpoint.get("search")
    if not isinstance(search, dict) or "threshold" not in search:
        raise ck.CheckpointError(f"{where}: no 'search' record (threshold)")
    config = checkpoint.get("config") or {}
    record = {
        **search,
        "metrics": checkpoint.get("metrics") or {},
        "absent_quantile": config.get("absent_quantile", 0.95),
    }
    return scorer.eval(), encoder.eval(), record


def _text_for_queries(encoder: CharCnnRnn, split: SearchSplit) -> np.ndarray:
    """The first stored caption of every frame: the operator's query, (N, E) float32."""
    return encode_captions(encoder, [row[0] for row in split.query_captions]).numpy()


# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train search-scorer",
        description="Fine-tune the frame scorer (search assist, issue 20) from a text-encoder "
        "checkpoint on search scenes; calibrate the absent threshold on val; evaluate.",
    )
    p.add_argument("--data", default="data/rescue_search.h5", help="search-scene HDF5")
    p.add_argument("--text-encoder", required=True, help="text-encoder checkpoint.pt")
    p.add_argument("--out", default="runs/search", help="run folder (created)")
    p.add_argument("--steps", type=_positive, default=1500)
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--joint-dim", type=_positive, default=128)
    p.add_argument("--absent-quantile", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "off"),
        default="auto",
        help="autocast: auto = bf16 on CPUs with bf16 hardware (AVX-512 BF16 / AMX), else fp32",
    )
    p.add_argument("--init", default="", help="start from this scorer checkpoint (same encoder)")
    p.add_argument("--dry-run", action="store_true", help="one step on rendered frames")
    return p


def resolve_amp(amp: str) -> str:
    """Resolve `--amp`: auto is "bf16" where the CPU computes bf16 natively, else "off" (emulated
    bf16 on AVX2 CPUs is many times slower than fp32: docs/GAN_TRAINING.md § Speed on CPU)."""
    if amp == "auto":
        return "bf16" if cpu_computes_bf16() else "off"
    if amp == "bf16" and not cpu_computes_bf16():
        log.warning("--amp bf16: this CPU has no native bf16; it is emulated and far slower")
    return amp


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _splits(config: SearchTrainConfig) -> tuple[dict[str, SearchSplit], int]:
    if config.dry_run:  # tiny rendered splits at 128×128: one real step in seconds
        names = ("train", "val", "test", "test_unseen")
        return {name: render_split(name, 4, config.seed, 128) for name in names}, 128
    out, size = {}, 0
    for name in ("train", "val", "test", "test_unseen"):
        out[name], size = read_search(config.data, name)
    return out, size


def train(config: SearchTrainConfig, run_dir: Path) -> dict[str, Any]:
    """Fine-tune, calibrate, evaluate; save run_dir/checkpoint.pt and metrics.json."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    text_ck = ck.load_checkpoint(config.text_encoder, kind="text_encoder")
    encoder = ck.build_model(text_ck, "text_encoder", config.text_encoder)
    image = ck.build_model(text_ck, "image_encoder", config.text_encoder)
    assert isinstance(encoder, CharCnnRnn) and isinstance(image, ImageEncoder)
    for p in encoder.parameters():
        p.requires_grad_(False)
    splits, size = _splits(config)
    scorer_config = ScorerConfig(
        channels=tuple(image.config.channels),
        embedding_dim=image.config.embedding_dim,
        # A projection never widens: small (test) encoders score in their own size.
        joint_dim=min(config.joint_dim, image.config.embedding_dim),
        frame_size=size,
    )
    scorer = FrameScorer.from_image_encoder(image, scorer_config)
    if config.init:
        start_from, start_text, _ = load_scorer(config.init)
        if start_from.config != scorer_config:
            raise ck.CheckpointError(f"{config.init}: scorer config differs from this run's")
        same = all(
            torch.equal(a, b)
            for a, b in zip(
                start_text.state_dict().values(), encoder.state_dict().values(), strict=True
            )
        )
        if not same:
            raise ck.CheckpointError(f"{config.init}: trained against another text encoder")
        scorer.load_state_dict(start_from.state_dict())
    batches = Batches(splits["train"], size, encoder, scorer_config, config.seed)
    log.info("training %d steps of %d frames, autocast %s", config.steps, config.batch_size,
             config.amp)  # fmt: skip
    slow = list(scorer.trunk.parameters()) + list(scorer.head.parameters())
    slow_ids = {id(p) for p in slow}
    fast = [p for p in scorer.parameters() if id(p) not in slow_ids]
    optimizer = torch.optim.AdamW(
        [{"params": slow, "lr": config.trunk_lr}, {"params": fast, "lr": config.lr}],
        weight_decay=1e-4,
    )
    base = [g["lr"] for g in optimizer.param_groups]
    steps = 1 if config.dry_run else config.steps
    start = time.perf_counter()
    scorer.train()
    for step in range(1, steps + 1):
        # Linear warm-up over 5 % of the run, cosine decay after.
        progress = step / steps
        factor = min(1.0, progress / 0.05) * 0.5 * (1 + math.cos(math.pi * progress))
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * max(factor, 0.02)
        frames, text, miss, targets = batches.batch(config.batch_size)
        terms = losses(scorer, frames, text, targets, config, miss_text=miss)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), 5.0)
        optimizer.step()
        if step % config.log_every == 0 or step == steps:
            log.info(
                "step %d/%d: %s, %.1f min", step, steps,
                ", ".join(f"{k} {v.item():.3f}" for k, v in terms.items()),
                (time.perf_counter() - start) / 60,
            )  # fmt: skip
    train_minutes = (time.perf_counter() - start) / 60
    scorer.eval()
    run = torch_runner(scorer)
    val = splits["val"]
    val_dets = score_split(run, val, _text_for_queries(encoder, val), size)
    absent = best_scores(val_dets)[val.query_person < 0]
    threshold = float(np.quantile(absent, config.absent_quantile)) if len(absent) else 0.5
    threshold = min(max(threshold, 1e-4), 1 - 1e-4)
    metrics: dict[str, Any] = {
        "threshold": threshold,
        "train_minutes": round(train_minutes, 2),
        "val": judge(val, val_dets, threshold),
    }
    for name in ("test", "test_unseen"):
        split = splits[name]
        dets = score_split(run, split, _text_for_queries(encoder, split), size)
        metrics[name] = judge(split, dets, threshold)
    log.info("metrics: %s", json.dumps(metrics))
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = ck.new_checkpoint(
        KIND,
        models={"frame_scorer": scorer.state_dict(), "text_encoder": encoder.state_dict()},
        model_configs={
            "frame_scorer": config_to_dict(scorer_config),
            "text_encoder": dataclasses.asdict(encoder.config),
        },
        config=dataclasses.asdict(config),
        search={"threshold": threshold, "nms_iou": NMS_IOU, "top_k": TOP_K},
        text_encoder_checkpoint_sha256=ck_sha256(config.text_encoder),
        metrics=metrics,
        step=steps,
    )
    ck.save_checkpoint(checkpoint, run_dir / "checkpoint.pt")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def ck_sha256(path: str) -> str:
    """Hex sha256 of a file (the text-encoder checkpoint the scorer was trained against)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train, print the metrics as one JSON line."""
    args = build_parser().parse_args(argv)
    if not 0.5 <= args.absent_quantile < 1.0:
        print("search-scorer: --absent-quantile must be in [0.5, 1)", file=sys.stderr)
        return 2
    config = SearchTrainConfig(
        data=args.data,
        text_encoder=args.text_encoder,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        joint_dim=args.joint_dim,
        absent_quantile=args.absent_quantile,
        seed=args.seed,
        threads=args.threads,
        amp=resolve_amp(args.amp),
        init=args.init,
        dry_run=args.dry_run,
    )
    try:
        metrics = train(config, Path(args.out))
    except InputError as err:
        print(f"search-scorer: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0
