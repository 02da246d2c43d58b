"""Atomic writes: the old file or the new one at the path, never part of one, never a temp left."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edge_runtime import atomic


def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic.write_bytes(target, b"first")
    atomic.write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    # The umask's mode, like any file the user writes (not mkstemp's 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_atomic_file_failing_midway_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "c.npz"
    atomic.write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="writer died"), atomic.atomic_file(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_atomic_path_renames_what_the_caller_created(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "d.h5"
    with pytest.raises(FileNotFoundError):
        atomic.write_bytes(target, b"x")  # no parents unless asked
    with atomic.atomic_path(target, make_parents=True) as tmp:
        assert tmp.parent == target.parent and not tmp.exists()
        tmp.write_bytes(b"made by a library that wants a path")
    assert target.read_bytes() == b"made by a library that wants a path"
    assert [p.name for p in target.parent.iterdir()] == ["d.h5"]


def test_atomic_write_json_is_indented_with_one_trailing_newline(tmp_path: Path) -> None:
    target = atomic.write_json(tmp_path / "c.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    text = target.read_text(encoding="utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}
