"""Search scenes (train/data/search_scenes.py): boxes match what is drawn, splits keep the held-out
colour×terrain pairs out, the file round-trips, and hostile files fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from train.data.attributes import ATTRIBUTE_VALUES, UNSEEN_PAIRS, Attributes
from train.data.guard import DataError
from train.data.search_scenes import (
    MAX_PEOPLE,
    draw_frame,
    main,
    read_search,
    render_frame,
    render_split,
    write_search,
)


def test_search_boxes_are_exactly_the_drawn_figures() -> None:
    people = [
        Attributes("orange", "snow", "lying", "left", "yes"),
        Attributes("blue", "snow", "standing", "left", "no"),
    ]
    rng = np.random.default_rng(3)
    frame, boxes, visible, placed = render_frame("snow", people, rng, 192)
    assert frame.shape == (192, 192, 3) and len(boxes) == len(placed) == 2
    # The same draws on a blank terrain show only the figures: diff the frame against one
    # rendered without people, inside and outside the boxes.
    empty, *_ = render_frame("snow", [], np.random.default_rng(3), 192)
    for box in boxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 192
    orange = np.array([250, 128, 16])
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    inside = np.abs(frame[y0:y1, x0:x1].astype(int) - orange).sum(-1) < 90
    assert inside.sum() > 20  # the orange clothing is inside its box
    outside = np.abs(frame.astype(int) - orange).sum(-1) < 90
    outside[y0:y1, x0:x1] = False
    assert outside.sum() <= 12  # and (almost: noise, distractors) nowhere else
    assert placed[0].terrain == "snow" and ((visible > 0) & (visible <= 1)).all()
    assert empty.shape == frame.shape


def test_search_boxes_stay_in_the_frame_and_are_not_degenerate() -> None:
    for index in range(10):
        item = draw_frame("train", index, 0, 256)
        for box in item.boxes:
            assert box[0] >= 0 and box[2] <= 256 and box[1] >= 0 and box[3] <= 256
            assert box[2] - box[0] >= 8 and box[3] - box[1] >= 8


def test_search_splits_hold_out_the_unseen_pairs() -> None:
    for index in range(40):
        item = draw_frame("train", index, 0, 128)
        assert all((p.colour, p.terrain) not in UNSEEN_PAIRS for p in item.people)
        assert (item.query.colour, item.query.terrain) not in UNSEEN_PAIRS
        unseen = draw_frame("test_unseen", index, 0, 128)
        assert (unseen.query.colour, unseen.query.terrain) in UNSEEN_PAIRS
        for frame in (item, unseen):
            triples = {(p.colour, p.pose, p.helmet) for p in frame.people}
            assert len(triples) == len(frame.people) <= MAX_PEOPLE
            if frame.query_person >= 0:
                person = frame.people[frame.query_person]
                assert (person.colour, person.pose, person.helmet) == (
                    frame.query.colour, frame.query.pose, frame.query.helmet,
                )  # fmt: skip
            else:
                assert (frame.query.colour, frame.query.pose, frame.query.helmet) not in triples
            words = {w.strip(",") for c in frame.captions for w in c.split()}
            assert not words & {"left", "right", "centre", "center", "middle"}


def test_search_frames_depend_only_on_the_seed() -> None:
    a, b = draw_frame("val", 7, 3, 128), draw_frame("val", 7, 3, 128)
    np.testing.assert_array_equal(a.frame, b.frame)
    assert a.captions == b.captions
    assert not np.array_equal(a.frame, draw_frame("val", 7, 4, 128).frame)


def test_search_file_roundtrips(tmp_path: Path) -> None:
    split = render_split("test", 6, 0, 128)
    path = write_search(tmp_path / "s.h5", {"test": split}, size=128)
    back, size = read_search(path, "test")
    assert size == 128
    np.testing.assert_array_equal(back.frames, split.frames)
    np.testing.assert_array_equal(back.boxes, split.boxes)
    assert back.query_captions == split.query_captions
    assert (back.query_person == split.query_person).all()


def test_search_cli_writes_every_split(tmp_path: Path, capsys) -> None:
    out = tmp_path / "search.h5"
    args = ["--out", str(out), "--size", "128", "--train", "2", "--val", "1", "--test", "1"]
    assert main([*args, "--unseen", "1"]) == 0
    assert '"size": 128' in capsys.readouterr().out
    for name in ("train", "val", "test", "test_unseen"):
        split, _ = read_search(out, name)
        assert len(split) >= 1
    assert main([*args, "--unseen", "1"]) == 2  # exists: --force needed
    with pytest.raises(SystemExit):
        main(["--size", "100"])


def _hostile(path: Path, edit) -> Path:
    write_search(path, {"test": render_split("test", 3, 0, 128)}, size=128)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _replace(key: str, value: np.ndarray):
    def edit(f: h5py.File) -> None:
        del f["test"][key]
        f["test"][key] = value

    return edit


HOSTILE = [
    ("schema", lambda f: f.attrs.__setitem__("schema", "other"), "schema"),
    ("frame size", lambda f: f.attrs.__setitem__("frame_size", 100000), "frame_size"),
    ("names", lambda f: f.attrs.__setitem__("attribute_names", "[[[["), "attribute_names"),
    ("no boxes", lambda f: f["test"].__delitem__("boxes"), "/test/boxes: missing"),
    ("box outside", _replace("boxes", np.full((3, 4, 4), 500, np.float32)), "/test/boxes"),
    ("box nan", _replace("boxes", np.full((3, 4, 4), np.nan, np.float32)), "/test/boxes"),
    ("counts", _replace("people_counts", np.full(3, 9, np.int8)), "people_counts"),
    ("query", _replace("query_person", np.full(3, 7, np.int8)), "query_person"),
    ("attrs", _replace("query_attributes", np.full((3, 5), 40, np.int16)), "query_attributes"),
    ("frames shape", _replace("frames", np.zeros((3, 64, 64, 3), np.uint8)), "/test/frames"),
    ("frames dtype", _replace("frames", np.zeros((3, 128, 128, 3), np.float32)), "/test/frames"),
]


@pytest.mark.parametrize(("name", "edit", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_search_reader_refuses_hostile_files(tmp_path: Path, name: str, edit, message) -> None:
    path = _hostile(tmp_path / "h.h5", edit)
    with pytest.raises(DataError, match=message) as info:
        read_search(path, "test")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_search_reader_names_a_missing_split_and_file(tmp_path: Path) -> None:
    path = write_search(tmp_path / "s.h5", {"test": render_split("test", 1, 0, 128)}, size=128)
    with pytest.raises(DataError, match="no split 'train'"):
        read_search(path, "train")
    with pytest.raises(DataError, match="not found"):
        read_search(tmp_path / "none.h5", "test")
    assert ATTRIBUTE_VALUES["position"]  # the vocabulary the schema indexes
