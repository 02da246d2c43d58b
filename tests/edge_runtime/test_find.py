"""Search assist on the robot: box decoding and NMS, the manifest's `search` section under
hostile edits, `rescue-edge find` on the committed tiny search bundle, and serial `find` over a
real pty cable (docs/SEARCH.md, docs/PROTOCOL.md § find)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import serial

from edge_runtime import bundle as b
from edge_runtime import find, protocol, search
from edge_runtime.cli import main
from edge_runtime.client import BadReplyError, OperatorClient, parse_boxes
from edge_runtime.engine import Engine
from edge_runtime.find import CaptureGrabber, FrameSource, FrameSourceError, find_in_frame
from edge_runtime.images import decode_png
from edge_runtime.protocol import Code, ProtocolError, format_request, parse_request
from edge_runtime.service import Service, ServiceConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_SEARCH = FIXTURES / "tiny_search_bundle"
TINY = FIXTURES / "tiny_bundle"
CAPTION = "a person in orange lying on rubble with a helmet"


@pytest.fixture(scope="module")
def search_engine() -> Engine:
    return Engine(TINY_SEARCH, precision="fp32", threads=1)


def _frames(folder: Path, count: int = 3, size: tuple[int, int] = (200, 150)) -> Path:
    """Noise frames of a size other than the bundle's (boxes must come back in frame pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        frame = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"frame{k}.png"), frame)
    return folder


# -- pure: candidates, IoU, NMS ---------------------------------------------------------------


def test_search_iou_and_nms_keep_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.95, 0.5, 0.1], np.float32)
    assert search.iou(boxes[0], boxes[1])[0, 0] == pytest.approx(81 / 119)
    assert search.iou(boxes[0], boxes[2])[0, 0] == 0.0
    assert search.nms(boxes, scores, 0.3, 5) == [1, 2]
    assert search.nms(boxes, scores, 0.3, 1) == [1]
    assert search.nms(boxes, scores, 0.99, 5) == [1, 0, 2]  # 3 is 0 again: IoU 1


def test_search_detect_reads_every_scale_and_clips_to_the_frame() -> None:
    scores = [np.array([[0.1, 0.8]], np.float32), np.array([[0.3]], np.float32)]
    boxes = [
        np.array([[[0, 50]], [[0, 0]], [[40, 90]], [[40, 200]]], np.float32),  # (4, 1, 2)
        np.array([[[-5]], [[-5]], [[60]], [[60]]], np.float32),  # (4, 1, 1)
    ]
    dets = search.detect(scores, boxes, iou_threshold=0.9, top_k=5, frame_size=128)
    assert [round(d.score, 2) for d in dets] == [0.8, 0.3, 0.1]
    assert dets[0].box == (50.0, 0.0, 90.0, 128.0)  # y1 200 clipped to the frame
    assert dets[1].box == (0.0, 0.0, 60.0, 60.0)


# -- the manifest's search section -----------------------------------------------------------


def _manifest() -> dict[str, Any]:
    return json.loads((TINY_SEARCH / b.MANIFEST_NAME).read_text())


_DELETE = object()
HOSTILE_SEARCH = [
    ("search/threshold", 0.0, "threshold"),
    ("search/threshold", 1.0, "threshold"),
    ("search/threshold", "0.5", "threshold"),
    ("search/threshold", True, "threshold"),
    ("search/nms_iou", 0.0, "nms_iou"),
    ("search/top_k", 0, "top_k"),
    ("search/top_k", 17, "top_k"),
    ("search/frame_size", 63, "frame_size"),
    ("search/frame_size", 4096, "frame_size"),
    ("search/scales", [], "scales"),
    ("search/scales", [{"factor": 1, "cells": [5, 5]}] * 5, "scales"),
    ("search/scales/0/factor", 0, "factor"),
    ("search/scales/0/cells", [5], "cells"),
    ("search/scales/0/cells", [0, 5], "cells"),
    ("search/scales/0/cells", [5, 5.0], "cells"),
    ("search/scales/0/extra", 1, "extra"),
    ("search/calibration", {"x": "y"}, "finite"),
    ("search/extra", 1, "extra"),
    ("search", _DELETE, "search"),
    ("schema_version", 2, "schema_version 3"),
    ("variants/fp32/frame_scorer", _DELETE, "frame_scorer"),
    ("variants/int8/frame_scorer", "generator.fp32", "frame_scorer"),
    ("variants/int8/frame_scorer", "nope", "unknown graph"),
    ("graphs/frame_scorer.fp32/outputs/0/name", "scores_9", "outputs"),
    ("graphs/frame_scorer.fp32/outputs/0/shape", ["batch", 6, 5], "shape"),
    ("graphs/frame_scorer.fp32/inputs/0/shape", ["batch", 3, 64, 64], "shape"),
    ("graphs/frame_scorer.fp32/inputs/1/shape", ["batch", 31], "shape"),
]


@pytest.mark.parametrize(("path", "value", "message"), HOSTILE_SEARCH)
def test_bundle_refuses_a_hostile_search_section(path: str, value: Any, message: str) -> None:
    d = _manifest()
    keys = path.split("/")
    target: Any = d
    for key in keys[:-1]:  # numeric parts index lists (scales/0, outputs/0)
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    with pytest.raises(b.BundleError, match=message):
        b.Manifest.from_dict(d, "manifest.json")


def test_bundle_refuses_a_frame_scorer_graph_without_search_section() -> None:
    d = _manifest()
    del d["search"]
    for variant in d["variants"].values():
        del variant["frame_scorer"]
    with pytest.raises(b.BundleError, match="no 'search' field"):
        b.Manifest.from_dict(d, "manifest.json")


def test_bundle_search_roundtrips_and_old_bundles_still_load() -> None:
    manifest = b.load_bundle(TINY_SEARCH).manifest
    assert manifest.search is not None and manifest.schema_version == 3
    again = b.Manifest.from_dict(copy.deepcopy(manifest.to_dict()), "x")
    assert again.search == manifest.search
    old = b.load_bundle(TINY).manifest
    assert old.search is None and old.to_dict()["schema_version"] == b.KNOWN_WORDS_SCHEMA_VERSION
    # Without its read-back vocabulary the same bundle is written as schema 2 again.
    assert old.readback is not None
    plain = dataclasses.replace(
        old, readback=dataclasses.replace(old.readback, known_words=()), schema_version=1
    )
    assert plain.to_dict()["schema_version"] == 2
    assert all(v.frame_scorer is None for v in old.variants.values())


# -- rescue-edge find --------------------------------------------------------------------------


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_find_cli_writes_boxes_and_overlays_per_frame(tmp_path: Path) -> None:
    frames = _frames(tmp_path / "frames")
    code, out, err = _run(
        ["find", CAPTION, "--frames", str(frames), "--bundle", str(TINY_SEARCH),
         "--out", str(tmp_path / "out"), "--bench", "--precision", "int8"]
    )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["frame"] for line in lines] == ["frame0.png", "frame1.png", "frame2.png"]
    for line in lines:
        assert 1 <= len(line["boxes"]) <= 5
        for x0, y0, x1, y1, score in line["boxes"]:
            assert 0 <= x0 <= x1 <= 200 and 0 <= y0 <= y1 <= 150 and 0 <= score <= 1
        scores = [box[4] for box in line["boxes"]]
        assert scores == sorted(scores, reverse=True)
        overlay = decode_png(Path(line["overlay"]).read_bytes())
        assert overlay.shape[0] > 150 and overlay.shape[1] > 2 * 150  # frame + reference beside
    assert "frames/s" in err and "peak memory" in err and "int8" in err


def test_find_cli_refuses_a_bundle_without_frame_scorer_and_a_missing_folder(
    tmp_path: Path,
) -> None:
    frames = _frames(tmp_path / "frames", count=1)
    code, out, err = _run(["find", CAPTION, "--frames", str(frames), "--bundle", str(TINY)])
    assert code == 2 and out == "" and "no frame scorer" in err and len(err.splitlines()) == 1
    code, _, err = _run(
        ["find", CAPTION, "--frames", str(tmp_path / "none"), "--bundle", str(TINY_SEARCH)]
    )
    assert code == 2 and "not a folder" in err and len(err.splitlines()) == 1


def _clip(path: Path, count: int = 4) -> Path:
    """A real MJPG video whose frame k is uniformly grey level 40·k."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 120))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for k in range(count):
        writer.write(np.full((120, 160, 3), 40 * k, np.uint8))
    writer.release()
    return path


def test_find_reads_a_video_through_opencv(tmp_path: Path, search_engine: Engine) -> None:
    path = _clip(tmp_path / "clip.avi")
    frames = list(FrameSource(video=path).frames())
    assert [f for f, _ in frames] == [f"video{k:06d}" for k in range(4)]
    embedding = search_engine.embed([CAPTION])
    found = find_in_frame(search_engine, embedding, frames[0][1], frames[0][0])
    assert found.heat.shape == (128, 128) and found.detections


# -- the service's frame grabber: opened once, reopened after a failure, closed -----------------


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str | int]:
    """Every capture the grabber opens (the real OpenCV opener, counted)."""
    opened: list[str | int] = []
    real = find._open_capture

    def counted(source: str | int) -> Any:
        opened.append(source)
        return real(source)

    monkeypatch.setattr(find, "_open_capture", counted)
    return opened


def test_grabber_opens_a_video_once_and_walks_its_frames(tmp_path: Path, opens: list) -> None:
    path = _clip(tmp_path / "clip.avi", count=4)
    grabber = FrameSource(video=path).open_latest(timeout_s=10.0)
    assert opens == []  # lazily: nothing opened before the first request
    try:
        got = [grabber.latest() for _ in range(10)]
    finally:
        grabber.close()
    assert opens == [str(path)]
    # One frame per request, from the file's start again after its end.
    assert [frame_id for frame_id, _ in got] == [f"video{k % 4:06d}" for k in range(10)]
    levels = [round(float(frame.mean())) for _, frame in got]
    assert all(abs(level - 40 * (k % 4)) <= 3 for k, level in enumerate(levels)), levels
    assert got[0][1].shape == (120, 160, 3)


class _Unplugged:
    """A capture whose camera is pulled after `frames` grabs (the only case a real device
    cannot be made to show on demand)."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def set(self, prop: int, value: float) -> bool:
        return False

    def grab(self) -> bool:
        time.sleep(0.005)  # a camera delivers frames at its own pace
        self.frames -= 1
        return self.frames >= 0

    def retrieve(self) -> tuple[bool, np.ndarray]:
        return True, np.zeros((48, 64, 3), np.uint8)

    def release(self) -> None:
        self.released = True


def test_grabber_reopens_a_camera_after_a_failed_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    captures = [_Unplugged(frames=3), _Unplugged(frames=10**6)]
    opened = iter(captures)
    monkeypatch.setattr(find, "_open_capture", lambda source: next(opened))
    grabber = CaptureGrabber(7, "camera", live=True, timeout_s=5.0)
    try:
        grabber.latest()  # opens the first capture, which dies within three grabs
        assert grabber._thread is not None
        grabber._thread.join(5.0)  # the camera is pulled between requests
        assert captures[0].released
        (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warning.startswith("camera 7: read failed") and "\n" not in warning
        frame_id, frame = grabber.latest()  # the next request opens it again and is served
        assert frame_id.startswith("camera") and frame.shape == (48, 64, 3)
    finally:
        grabber.close()
    assert captures[1].released


def test_grabber_fails_the_request_whose_read_fails_then_serves_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A file is read on demand, so the failing read is certainly the waiting request's.
    captures = [_Unplugged(frames=1), _Unplugged(frames=10**6)]
    opened = iter(captures)
    monkeypatch.setattr(find, "_open_capture", lambda source: next(opened))
    grabber = CaptureGrabber("clip.avi", "video", live=False, timeout_s=5.0)
    try:
        assert grabber.latest()[0] == "video000000"
        with pytest.raises(FrameSourceError) as failed:
            grabber.latest()
        assert str(failed.value).startswith("video clip.avi: read failed")
        assert "\n" not in str(failed.value) and captures[0].released
        assert grabber.latest()[0] == "video000000"  # reopened
    finally:
        grabber.close()


def test_grabber_close_stops_its_reader_and_releases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    captures: list[Any] = []
    real = find._open_capture

    def kept(source: str | int) -> Any:
        captures.append(real(source))
        return captures[-1]

    monkeypatch.setattr(find, "_open_capture", kept)
    grabber = FrameSource(video=_clip(tmp_path / "clip.avi")).open_latest()
    grabber.latest()
    reader = grabber._thread
    assert reader is not None and reader.daemon and reader.is_alive()
    assert len(captures) == 1 and captures[0].isOpened()
    grabber.close()
    assert not reader.is_alive() and not captures[0].isOpened()
    with pytest.raises(FrameSourceError, match=r"^video .*clip\.avi: closed$"):
        grabber.latest()


def test_grabber_bounds_the_wait_for_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    stalled = threading.Event()

    class Stalled(_Unplugged):
        def grab(self) -> bool:
            stalled.wait(10.0)  # a camera that stops delivering without failing
            return False

    monkeypatch.setattr(find, "_open_capture", lambda source: Stalled(frames=0))
    grabber = CaptureGrabber(3, "camera", live=True, timeout_s=0.2)
    try:
        start = time.monotonic()
        with pytest.raises(FrameSourceError, match=r"^camera 3: no frame within 0\.2 s$"):
            grabber.latest()
        assert time.monotonic() - start < 2.0
    finally:
        stalled.set()
        grabber.close()


def test_grabber_names_a_camera_it_cannot_open_in_one_line() -> None:
    grabber = CaptureGrabber(63, "camera", live=True)
    try:
        with pytest.raises(FrameSourceError) as failed:
            grabber.latest()
    finally:
        grabber.close()
    assert str(failed.value) == "camera 63: OpenCV cannot open it"


# -- protocol and client -----------------------------------------------------------------------


def test_protocol_parses_and_formats_find() -> None:
    request = parse_request(b"7 find k=3 -- person in red")
    assert request is not None
    assert (request.command, request.top_k, request.caption) == ("find", 3, "person in red")
    line = format_request("8", "find", caption="person\nin red", top_k=2)
    again = parse_request(line.rstrip(b"\r\n"))
    assert again is not None and (again.top_k, again.caption) == (2, "person in red")
    for bad in (b"9 find k=0 person", b"9 find k=17 person", b"9 find n=2 person"):
        with pytest.raises(ProtocolError) as info:
            parse_request(bad)
        assert info.value.code == Code.BAD_ARGS


def test_client_refuses_hostile_boxes() -> None:
    def reply(boxes: str) -> protocol.Reply:
        return protocol.parse_reply(protocol.format_reply("done", "1", [("boxes", boxes)]))

    assert parse_boxes(reply("1:2:30:40:0.913,5:5:9:9:0.100"), 2) == [
        (1, 2, 30, 40, 0.913),
        (5, 5, 9, 9, 0.1),
    ]
    assert parse_boxes(reply(""), 2) == []
    for bad in ("1:2:30:40", "30:2:1:40:0.500", "1:2:3:4:1.500", "1:2:3:4:0.5;rm", "a:b:c:d:e"):
        with pytest.raises(BadReplyError):
            parse_boxes(reply(bad), 5)
    with pytest.raises(BadReplyError):
        parse_boxes(reply(",".join(["1:1:2:2:0.100"] * 3)), 2)


# -- serial find over a pty --------------------------------------------------------------------


@pytest.fixture
def search_service(
    search_engine: Engine, cable: Any, tmp_path: Path
) -> Iterator[Callable[..., Service]]:
    started: list[tuple[Service, threading.Thread]] = []

    def start(**overrides: object) -> Service:
        options: dict[str, object] = {"port": str(cable.robot_path), "out_dir": tmp_path / "out"}
        options.update(overrides)
        service = Service(search_engine, ServiceConfig(**options))  # type: ignore[arg-type]
        thread = threading.Thread(target=service.run, name="service", daemon=True)
        thread.start()
        started.append((service, thread))
        deadline = time.monotonic() + 10
        while not service.link.is_open:
            assert time.monotonic() < deadline, "service did not open the port"
            time.sleep(0.01)
        return service

    yield start
    for service, thread in started:
        service.request_stop()
        thread.join(timeout=20)
        assert not thread.is_alive()


def test_serial_find_replies_boxes_and_the_overlay_is_fetchable(
    search_service, reader, cable, tmp_path: Path
) -> None:
    frames = _frames(tmp_path / "camera", count=2)
    search_service(frames=FrameSource(folder=frames))
    reader.send(format_request("f1", "find", caption=CAPTION, top_k=3))
    ack, done = reader.until("f1")
    assert (ack.kind, ack.get("cmd")) == ("ack", "find")
    assert (done.kind, done.get("cmd")) == ("done", "find"), done
    assert done.get("frame") in ("frame0_png", "frame1_png")
    assert done.get("present") in ("0", "1")
    boxes = done.values("boxes")
    assert 1 <= len(boxes) <= 3
    for box in boxes:
        x0, y0, x1, y1, score = box.split(":")
        assert 0 <= int(x0) <= int(x1) <= 200 and 0 <= int(y0) <= int(y1) <= 150
        assert 0.0 <= float(score) <= 1.0
    (name,), (digest,) = done.values("files"), done.values("sha256")
    data = (tmp_path / "out" / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    # The overlay comes over the link like any image.
    reader.send(format_request("f2", "fetch", file=name, count=1))
    ack, chunk, _ = reader.until("f2")
    assert ack.get("sha256") == digest and chunk.kind == "data"


def test_serial_find_through_the_operator_client(search_service, cable, tmp_path: Path) -> None:
    frames = _frames(tmp_path / "camera", count=1)
    search_service(frames=FrameSource(folder=frames))
    port = serial.Serial(cable.operator_path, 115200, timeout=0.05)
    with OperatorClient(port, timeout=10.0) as client:
        result = client.find(CAPTION, k=2)
        assert result.frame == "frame0_png" and 1 <= len(result.boxes) <= 2
        path = client.fetch(result.overlay[0], tmp_path / "received", result.overlay[1])
        assert decode_png(path.read_bytes()).shape[2] == 3


def test_serial_find_without_frame_source_or_scorer_answers_no_search(
    search_service, reader, tmp_path: Path
) -> None:
    search_service()  # a search bundle, but no frame source named at start
    reader.send(format_request("n1", "find", caption=CAPTION))
    (err,) = reader.until("n1")
    assert (err.kind, err.code) == ("err", Code.NO_SEARCH)
    assert "frame source" in err.text and str(tmp_path) not in err.text


def test_serial_find_keeps_a_video_open_across_requests(
    search_service, reader, tmp_path: Path, opens: list
) -> None:
    service = search_service(frames=FrameSource(video=_clip(tmp_path / "clip.avi", count=4)))
    for k in range(3):
        reader.send(format_request(f"v{k}", "find", caption=CAPTION, top_k=1))
        _, done = reader.until(f"v{k}")
        assert (done.kind, done.get("frame")) == ("done", f"video{k:06d}"), done
    assert len(opens) == 1
    grabber = service._frames
    assert isinstance(grabber, CaptureGrabber) and grabber._thread is not None
    service.request_stop()
    grabber._thread.join(timeout=20)
    assert not grabber._thread.is_alive()  # closed when the service stopped


def test_serial_find_names_no_robot_path_when_the_source_fails(
    search_service, reader, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    search_service(frames=FrameSource(folder=empty))
    reader.send(format_request("e1", "find", caption=CAPTION))
    _, err = reader.until("e1")
    assert (err.kind, err.code) == ("err", Code.NO_SEARCH)
    assert str(tmp_path) not in err.text


def test_protocol_doc_find_example_is_what_the_parser_says() -> None:
    """docs/PROTOCOL.md § Find: every reply's checksum is real, every request gets the reply
    shown after it (and an error reply the code the parser raises)."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
    if not doc.is_file():
        pytest.skip("docs/ is not part of an installed package")
    block = doc.read_text().split("## Find", 1)[1].split("```")[1]
    lines = [line for line in block.splitlines() if line.strip()]
    checked = 0
    for i, line in enumerate(lines):
        if line.startswith("$"):
            protocol.parse_reply(line.encode() + b"\r\n")
            continue
        reply = protocol.parse_reply(lines[i + 1].encode() + b"\r\n")
        try:
            request = parse_request(line.encode())
        except ProtocolError as err:
            assert (reply.kind, reply.code, reply.id) == ("err", err.code, err.request_id)
        else:
            assert request is not None and request.command == "find"
            assert (reply.kind, reply.id, reply.get("cmd")) == ("ack", request.id, "find")
            done = protocol.parse_reply(lines[i + 2].encode() + b"\r\n")
            assert len(done.values("boxes")) <= (request.top_k or 16)
        checked += 1
    assert checked == 2


def test_info_runs_the_frame_scorer_of_every_variant() -> None:
    code, out, err = _run(["info", str(TINY_SEARCH)])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["inference_check"] == {"fp32": "ok", "int8": "ok"}
    assert summary["search"]["frame_size"] == 128
    assert summary["variants"]["int8"]["frame_scorer"] == "frame_scorer.int8"


def test_find_cli_names_a_camera_it_cannot_open_in_one_line() -> None:
    code, out, err = _run(["find", CAPTION, "--camera", "63", "--bundle", str(TINY_SEARCH)])
    assert code == 2 and out == "" and "camera 63" in err and len(err.splitlines()) == 1


def _demo_module(out: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """scripts/demo.py as a module (it is a script, not a package), writing under `out`."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
    spec = importlib.util.spec_from_file_location("rescue_demo", path)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, demo)  # its dataclass resolves names there
    spec.loader.exec_module(demo)
    demo.OUT = out
    return demo


def test_demo_search_step_judges_each_find_over_the_link_by_the_true_box(
    search_service, cable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's search step (issue 20): each frame becomes the watched folder's only image, the
    operator's `find` answer is judged against the ground truth, and the sheet is written."""
    demo = _demo_module(tmp_path, monkeypatch)
    camera = tmp_path / "camera"
    camera.mkdir()
    (camera / "stale.png").write_bytes(b"an older frame that must not be searched")
    search_service(frames=FrameSource(folder=camera))
    frame = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    port = serial.Serial(cable.operator_path, 115200, timeout=0.05)
    with OperatorClient(port, timeout=10.0) as client:

        def ask(name: str, truth: Any) -> dict[str, Any]:
            query = demo.SearchQuery(name, frame, CAPTION, truth)
            return demo.find_over_link(client, query, camera, tmp_path / "received")

        absent = ask("absent", None)
        assert absent["frame"] == "absent" and absent["iou"] is None
        assert absent["right"] is (not absent["present"])  # nobody there: right iff "not seen"
        assert [p.name for p in camera.iterdir()] == ["absent.png"]
        best = absent["boxes"][0][:4]
        on_best = ask("on-best", tuple(float(v) for v in best))
        assert on_best["iou"] == pytest.approx(1.0) and on_best["right"] is True
        elsewhere = (best[2] + 5.0, best[3] + 5.0, best[2] + 20.0, best[3] + 20.0)
        missed = ask("elsewhere", elsewhere)
        assert missed["iou"] == 0.0 and missed["right"] is False
    finds = [absent, on_best, missed]
    queries = [demo.SearchQuery(f["frame"], frame, CAPTION, f["truth"]) for f in finds]
    sheet = cv2.imread(str(demo.search_sheet(finds, queries)), cv2.IMREAD_COLOR)
    assert sheet is not None and sheet.shape[0] > 3 * 64
    report = "\n".join(demo.search_lines([], finds))
    assert "**1 of 3** right by the ground truth" in report
