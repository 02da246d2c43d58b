"""`rescue-edge find` and serial `find`: look for the described person in camera frames (issue 20).

A frame (any size, RGB) is resized to the bundle's `search.frame_size`², scored against the
caption's embedding by the frame scorer graph, and read with `edge_runtime.search.detect`; boxes
are mapped back to the frame's own pixels. The overlay puts the frame (boxes with scores, the
best one thick, and a heat map of the best score per place) beside the reference picture the
generator draws for the same caption.

Frame sources are chosen on the robot, never over the link: a folder of images (sorted by name),
a video file, or a camera index (OpenCV capture). A folder's files are size-checked before they
are decoded (`MAX_FRAME_FILE_BYTES`, `MAX_FRAME_PIXELS`): the folder may be a USB stick. The
service keeps a camera or video open across requests (`CaptureGrabber`, docs/SEARCH.md § On the
robot): opening a camera per request costs up to seconds, fails while the device is busy, and
hands back a frame that waited in the driver's buffer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime import search
from edge_runtime.bundle import SearchSpec
from edge_runtime.images import upscale

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
MAX_FRAME_FILE_BYTES = 32 << 20
MAX_FRAME_PIXELS = 40_000_000
"""≈ 120 MB decoded as RGB: a 4K camera frame is 8.3 M pixels."""
MAX_FRAME_SIDE = 8192
FRAME_TIMEOUT_S = 5.0
"""Longest wait of a serial `find` for its frame, opening the camera included."""

log = logging.getLogger(__name__)


class FrameSourceError(ValueError):
    """A frame source that cannot be read; the message names it."""


@dataclass(frozen=True)
class Found:
    """One frame's answer: boxes in the frame's own pixels, best first."""

    frame_id: str
    detections: tuple[search.Detection, ...]
    present: bool
    """The best score reaches the bundle's threshold."""
    heat: np.ndarray
    """float32 (S, S): the best score of any window covering each pixel, scorer input scale."""

    def to_json(self) -> dict[str, Any]:
        """The JSON line `rescue-edge find` prints (and the overlay's name is added to)."""
        return {
            "frame": self.frame_id,
            "present": self.present,
            "boxes": [
                [round(d.x0, 1), round(d.y0, 1), round(d.x1, 1), round(d.y1, 1), round(d.score, 4)]
                for d in self.detections
            ],
        }


def heat_map(scores: list[np.ndarray], spec: SearchSpec) -> np.ndarray:
    """Per pixel of the scorer's input, the best score of the windows covering it (S, S)."""
    size = spec.frame_size
    heat = np.zeros((size, size), np.float32)
    for score, scale in zip(scores, spec.scales, strict=True):
        h, w = score.shape
        stride, window = 16 * scale.factor, 64 * scale.factor
        for i in range(h):
            for j in range(w):
                y, x = i * stride, j * stride
                block = heat[y : y + window, x : x + window]
                np.maximum(block, score[i, j], out=block)
    return heat


def find_in_frame(engine: Any, embedding: np.ndarray, frame: np.ndarray, frame_id: str) -> Found:
    """Score one RGB frame (any size) against a caption's (1, E) embedding."""
    spec: SearchSpec = engine.manifest.search
    size = spec.frame_size
    h, w = frame.shape[:2]
    resized = cv2.resize(
        frame, (size, size), interpolation=cv2.INTER_AREA if w > size else cv2.INTER_LINEAR
    )
    maps = engine.score_frame(search.frame_to_input(resized), embedding)
    scores = [m[0] for m in maps[0::2]]
    boxes = [m[0] for m in maps[1::2]]
    dets = search.detect(
        scores, boxes, iou_threshold=spec.nms_iou, top_k=spec.top_k, frame_size=size
    )
    dets = search.scale_detections(dets, w / size, h / size)
    present = bool(dets) and dets[0].score >= spec.threshold
    return Found(frame_id, tuple(dets), present, heat_map(scores, spec))


def overlay(
    frame: np.ndarray, found: Found, reference: np.ndarray | None, caption: str
) -> np.ndarray:
    """RGB overlay: the frame with heat map and boxes, the reference picture beside it, the caption
    and the verdict on top."""
    h, w = frame.shape[:2]
    heat = cv2.resize(found.heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = (frame.astype(np.float32) * 0.65 + colour.astype(np.float32) * 0.35).astype(np.uint8)
    out = np.ascontiguousarray(out)
    for rank, d in enumerate(found.detections):
        best = rank == 0
        box_colour = (255, 255, 255) if best else (255, 220, 0)
        p0, p1 = (int(d.x0), int(d.y0)), (math.ceil(d.x1) - 1, math.ceil(d.y1) - 1)
        cv2.rectangle(out, p0, p1, (0, 0, 0), 4 if best else 2)
        cv2.rectangle(out, p0, p1, box_colour, 2 if best else 1)
        label = f"{d.score:.2f}"
        cv2.putText(out, label, (p0[0] + 2, max(p0[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 3, cv2.LINE_AA)  # fmt: skip
        cv2.putText(out, label, (p0[0] + 2, max(p0[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    box_colour, 1, cv2.LINE_AA)  # fmt: skip
    pad, header = 8, 40
    ref_side = h
    canvas_w = w + (ref_side + pad if reference is not None else 0) + 2 * pad
    canvas = np.full((h + header + pad, max(canvas_w, 256), 3), 24, np.uint8)
    canvas[header : header + h, pad : pad + w] = out
    if reference is not None:
        canvas[header : header + h, pad + w + pad : pad + w + pad + ref_side] = upscale(
            reference, ref_side
        )
    verdict = "FOUND" if found.present else "not seen"
    best = f" best {found.detections[0].score:.2f}" if found.detections else ""
    text = caption.encode("ascii", "replace").decode("ascii")[:80]
    cv2.putText(canvas, text, (pad, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (235, 235, 235), 1,
                cv2.LINE_AA)  # fmt: skip
    cv2.putText(canvas, f"{found.frame_id}: {verdict}{best}", (pad, 33),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (120, 255, 120) if found.present else
                (255, 170, 120), 1, cv2.LINE_AA)  # fmt: skip
    return canvas


# ----------------------------------------------------------------------------------------------
# Frame sources (named on the robot, never over the link)


def _read_image(path: Path) -> np.ndarray:
    """An image file from a folder: regular, bounded in bytes and in decoded pixels."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise FrameSourceError(f"{path}: cannot open: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FrameSourceError(f"{path}: not a regular file")
        if info.st_size > MAX_FRAME_FILE_BYTES:
            raise FrameSourceError(
                f"{path}: {info.st_size} bytes, more than the {MAX_FRAME_FILE_BYTES} allowed"
            )
        data = os.read(fd, MAX_FRAME_FILE_BYTES + 1)
    finally:
        os.close(fd)
    # OpenCV refuses images above its own pixel limit (CV_IO_MAX_IMAGE_PIXELS, 2^30) before it
    # allocates; ours is checked once decoded.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FrameSourceError(f"{path}: not an image OpenCV can read")
    if image.shape[0] * image.shape[1] > MAX_FRAME_PIXELS:
        raise FrameSourceError(f"{path}: more than {MAX_FRAME_PIXELS} pixels")
    return image[..., ::-1].copy()  # BGR → RGB


def folder_frames(folder: Path, limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, RGB frame) of a folder's images, sorted by name."""
    if not folder.is_dir():
        raise FrameSourceError(f"{folder}: not a folder of frames")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not names:
        raise FrameSourceError(f"{folder}: no {'/'.join(FRAME_SUFFIXES)} files")
    for count, name in enumerate(names):
        if limit is not None and count >= limit:
            return
        yield name, _read_image(folder / name)


def _open_capture(source: str | int) -> Any:
    """An OpenCV capture of a video file or camera index (the one place captures are opened)."""
    # OpenCV's own warnings ("can't open camera by index") would add lines to our one-line error.
    with contextlib.suppress(AttributeError):  # builds without cv2.utils.logging
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2.VideoCapture(source)


def _rgb(frame: np.ndarray, name: str) -> np.ndarray:
    """A captured BGR frame as RGB, refused when larger than `MAX_FRAME_SIDE`."""
    h, w = frame.shape[:2]
    if h > MAX_FRAME_SIDE or w > MAX_FRAME_SIDE:
        raise FrameSourceError(f"{name}: frame {w}×{h} is too large")
    return frame[..., ::-1].copy()


def capture_frames(
    source: str | int, limit: int | None = None, label: str = "frame"
) -> Iterator[tuple[str, np.ndarray]]:
    """(frame id, RGB frame) from a video file or camera index through OpenCV."""
    capture = _open_capture(source)
    if not capture.isOpened():
        raise FrameSourceError(f"{label} {source}: OpenCV cannot open it")
    try:
        index = 0
        while limit is None or index < limit:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield f"{label}{index:06d}", _rgb(frame, f"{label} {source}")
            index += 1
    finally:
        capture.release()


class CaptureGrabber:
    """A camera or video file opened once for many serial `find`s: `latest()` opens it lazily,
    a failed open or read releases it (the next `latest()` opens it again), `close()` ends it.

    One daemon reader thread owns the capture; it alone calls OpenCV, so no capture call ever
    runs on two threads. For a camera (`live`) it `grab()`s every frame as the driver delivers
    it and decodes (`retrieve()`) only the frames a request waits for: the driver's buffer never
    holds old frames, no request pays for opening, and idle decoding costs nothing. Draining the
    buffer per request instead (a few `grab()`s) would cost one frame period per buffered frame,
    and `CAP_PROP_BUFFERSIZE` is honoured by some backends only (it is still set, for them).
    The frame a request gets was grabbed after the request arrived, so it is never stale.

    A video file has no "now": each `latest()` takes the file's next frame and the file starts
    over at its end, so a demo clip walks forward request by request (`live` false: the reader
    grabs only on demand instead of racing through the file).
    """

    def __init__(
        self, source: str | int, label: str, *, live: bool, timeout_s: float = FRAME_TIMEOUT_S
    ) -> None:
        self.source = source
        self.name = f"{label} {source}"
        self.label = label
        self.live = live
        self.timeout_s = timeout_s
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        """A reader thread owns the capture (set by `latest`, cleared by the thread on exit)."""
        self._error = ""
        """Why the last reader stopped ("" while it runs)."""
        self._asked = 0
        """Requests for a frame so far; a frame grabbed after request k serves every j ≤ k."""
        self._served = 0
        self._frame: tuple[str, np.ndarray] | None = None
        self._closed = False

    def latest(self) -> tuple[str, np.ndarray]:
        """(frame id, RGB frame) grabbed after this call began; FrameSourceError (one line
        naming the source) when the capture cannot be opened or read, or gives no frame within
        `timeout_s`."""
        with self._cv:
            if self._closed:
                raise FrameSourceError(f"{self.name}: closed")
            if not self._running:
                self._start()
            self._asked += 1
            ticket = self._asked
            self._cv.notify_all()
            if not self._cv.wait_for(
                lambda: self._served >= ticket or not self._running, self.timeout_s
            ):
                raise FrameSourceError(f"{self.name}: no frame within {self.timeout_s:.1f} s")
            if self._served < ticket:
                raise FrameSourceError(self._error or f"{self.name}: reader stopped")
            assert self._frame is not None
            return self._frame

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the reader and release the capture (waits up to `timeout_s` for the reader)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():  # stuck inside OpenCV; a daemon, so it cannot hold up exit
                log.warning("%s: reader still inside OpenCV after %.1f s", self.name, timeout_s)

    def _start(self) -> None:
        """Start a reader (lock held). The capture is opened there, not here: an open that hangs
        inside OpenCV then holds up no request beyond `timeout_s`."""
        self._running = True
        self._error = ""
        self._thread = threading.Thread(
            target=self._read, name=f"rescue-edge-{self.label}", daemon=True
        )
        self._thread.start()

    def _read(self) -> None:
        capture = None
        error = ""
        try:
            capture = _open_capture(self.source)
            if not capture.isOpened():
                error = f"{self.name}: OpenCV cannot open it"
                return
            with contextlib.suppress(cv2.error):  # honoured by V4L2 and a few others only
                capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            log.info("%s: open", self.name)
            index = -1
            while True:
                with self._cv:
                    if not self.live:
                        self._cv.wait_for(lambda: self._closed or self._asked > self._served)
                    if self._closed:
                        return
                    asked = self._asked
                ok = capture.grab()
                if not ok and not self.live:  # the file's end: from its start again
                    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    index = -1
                    ok = capture.grab()
                if not ok:
                    error = f"{self.name}: read failed (unplugged?); reopened on next request"
                    return
                index += 1
                if asked <= self._served:  # nobody waits (only this thread writes _served)
                    continue
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    error = f"{self.name}: cannot decode a frame; reopened on next request"
                    return
                item = (f"{self.label}{index:06d}", _rgb(frame, self.name))
                with self._cv:
                    self._frame = item
                    self._served = asked
                    self._cv.notify_all()
        except FrameSourceError as err:
            error = str(err)
        except Exception as err:  # cv2.error and friends: the service must keep serving
            error = f"{self.name}: {type(err).__name__}: {str(err).strip().splitlines()[0]}"
        finally:
            if capture is not None:
                with contextlib.suppress(Exception):
                    capture.release()
            if error:
                log.warning("%s", error)
            with self._cv:
                self._running = False
                self._error = error
                self._cv.notify_all()


class FolderLatest:
    """The newest image file in a folder (a camera writing there), read afresh per request."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def latest(self) -> tuple[str, np.ndarray]:
        """(file name, RGB frame) of the folder's newest image."""
        if not self.folder.is_dir():
            raise FrameSourceError(f"{self.folder}: not a folder of frames")
        files = [p for p in self.folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES]
        if not files:
            raise FrameSourceError(f"{self.folder}: no frames yet")
        newest = max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
        return newest.name, _read_image(newest)

    def close(self) -> None:
        """Nothing is held between requests."""


@dataclass(frozen=True)
class FrameSource:
    """Where frames come from: exactly one of a folder, a video file or a camera index."""

    folder: Path | None = None
    video: Path | None = None
    camera: int | None = None

    def describe(self) -> str:
        if self.folder is not None:
            return f"folder {self.folder}"
        if self.video is not None:
            return f"video {self.video}"
        return f"camera {self.camera}"

    def frames(self, limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
        if self.folder is not None:
            return folder_frames(self.folder, limit)
        if self.video is not None:
            if not self.video.is_file():
                raise FrameSourceError(f"--video {self.video}: file not found")
            return capture_frames(str(self.video), limit, "video")
        assert self.camera is not None
        return capture_frames(self.camera, limit, "camera")

    def open_latest(self, timeout_s: float = FRAME_TIMEOUT_S) -> FolderLatest | CaptureGrabber:
        """What serial `find` reads its frame from, opened lazily on the first `latest()`: a
        folder's newest file, a camera's next frame, a video's next frame (see
        `CaptureGrabber`). The caller closes it."""
        if self.folder is not None:
            return FolderLatest(self.folder)
        if self.video is not None:
            return CaptureGrabber(str(self.video), "video", live=False, timeout_s=timeout_s)
        assert self.camera is not None
        return CaptureGrabber(self.camera, "camera", live=True, timeout_s=timeout_s)
