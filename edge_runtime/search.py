"""Search assist on the robot: frame scores → candidate boxes → non-maximum suppression (issue 20).

numpy only (no onnxruntime, no OpenCV): the exporter's gate and the trainer's evaluation use these
same functions, so the figures in docs/SEARCH.md are measured with the robot's own decision rule.

The frame scorer graph (`bundle.FRAME_SCORER`) returns, for each scale i, a score map
`scores_i` (B, h_i, w_i) — the probability that the window of that cell shows the described person
— and a box map `boxes_i` (B, 4, h_i, w_i) — the box (x0, y0, x1, y1, frame pixels) of whoever the
window shows. Every cell of every scale is a candidate; `detect` keeps the best `top_k` after
non-maximum suppression. A frame "contains" the person when its best score reaches the manifest's
`search.threshold` (calibrated on a validation split, docs/SEARCH.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One candidate box in frame pixels, with its score in [0, 1]."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


def frame_to_input(frame: np.ndarray) -> np.ndarray:
    """uint8 (S, S, 3) RGB → float32 (1, 3, S, S) in [-1, 1], the encoder's range."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    x = frame.astype(np.float32).transpose(2, 0, 1)[None]
    return x / np.float32(127.5) - np.float32(1.0)


def candidates(
    scores: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One frame's maps of every scale (scores (h, w), boxes (4, h, w)) → boxes float32 (M, 4),
    scores float32 (M,), M = Σ h·w."""
    all_boxes = [b.reshape(4, -1).T for b in boxes]
    all_scores = [s.reshape(-1) for s in scores]
    return (
        np.concatenate(all_boxes).astype(np.float32),
        np.concatenate(all_scores).astype(np.float32),
    )


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (N, 4) against b (M, 4): float (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int) -> list[int]:
    """Greedy non-maximum suppression: indices of at most `top_k` boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for rank, index in enumerate(order):
        if suppressed[rank]:
            continue
        keep.append(int(index))
        if len(keep) == top_k:
            break
        rest = order[rank + 1 :]
        suppressed[rank + 1 :] |= iou(boxes[index], boxes[rest])[0] > iou_threshold
    return keep


def detect(
    scores: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    *,
    iou_threshold: float,
    top_k: int,
    frame_size: int,
) -> list[Detection]:
    """The best `top_k` boxes of one frame after NMS, clipped to the frame, best first."""
    all_boxes, all_scores = candidates(scores, boxes)
    all_boxes = np.clip(np.nan_to_num(all_boxes), 0, frame_size)
    all_scores = np.nan_to_num(all_scores, nan=0.0)
    keep = nms(all_boxes, all_scores, iou_threshold, top_k)
    return [Detection(*(float(v) for v in all_boxes[i]), score=float(all_scores[i])) for i in keep]


def scale_detections(dets: Sequence[Detection], sx: float, sy: float) -> list[Detection]:
    """Boxes from the scorer's S×S input back to the camera frame's pixels."""
    return [Detection(d.x0 * sx, d.y0 * sy, d.x1 * sx, d.y1 * sy, d.score) for d in dets]
