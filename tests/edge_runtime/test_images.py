"""Images to disk: PNG round trip, atomic writes, confined service-made names, contact sheets."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest

from edge_runtime import images
from edge_runtime.images import OutputDir, OutputError


def _rgb(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_png_round_trip_keeps_rgb_exactly() -> None:
    image = _rgb()
    image[0, 0] = (255, 0, 0)  # red stays red: no BGR mix-up on either side
    decoded = images.decode_png(images.encode_png(image))
    np.testing.assert_array_equal(decoded, image)
    assert tuple(decoded[0, 0]) == (255, 0, 0)
    with pytest.raises(ValueError, match="not a decodable image"):
        images.decode_png(b"not a png")


def test_upscale_repeats_pixels() -> None:
    image = _rgb(size=2)
    big = images.upscale(image, 8)
    assert big.shape == (8, 8, 3)
    np.testing.assert_array_equal(big[:4, :4], np.broadcast_to(image[0, 0], (4, 4, 3)))


def test_write_atomic_replaces_whole_files_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "a.png"
    images.write_atomic(target, b"first")
    images.write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~_umask()  # the usual permissions, not a temp file's 0600


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_write_atomic_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "a.png"
    images.write_atomic(target, b"old")

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OutputError, match=r"cannot write .*a\.png: No space left on device"):
        images.write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_output_dir_names_are_fresh_sanitised_and_confined(tmp_path) -> None:
    out = OutputDir(tmp_path / "out")
    out.ensure()
    names = out.names("../x y;rm", 42, range(2))
    assert all(n.endswith(f"____x_y_rm_s42_{k}.png") for k, n in enumerate(names))
    assert all("/" not in n for n in names)
    out.save([(n, b"png") for n in names])
    again = out.names("../x y;rm", 42, range(2))
    assert set(again).isdisjoint(names) and "-2_" in again[0]  # same second: never overwrite
    with pytest.raises(OutputError, match="not a plain result name"):
        out.save([("../escape.png", b"x")])
    with pytest.raises(OutputError, match="not a plain result name"):
        out.save([(".hidden", b"x")])


def test_output_dir_read_refuses_links_dot_files_and_directories(tmp_path) -> None:
    out = OutputDir(tmp_path)
    (tmp_path / "secret").write_bytes(b"s")
    (tmp_path / "link.png").symlink_to(tmp_path / "secret")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "ok.png").write_bytes(b"fine")
    assert out.read("ok.png") == b"fine"
    for name in ("link.png", "dir.png", ".secret", "../secret", "missing.png"):
        with pytest.raises(OSError):
            out.read(name)


def test_output_dir_that_cannot_exist_is_one_clear_error(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create output directory .*file/images"):
        OutputDir(tmp_path / "file" / "images").ensure()


def test_contact_sheet_title_newline_starts_a_line(tmp_path) -> None:
    """The demo puts the robot's read-back on its own line under the operator's caption."""
    tiles = np.stack([_rgb(k) for k in range(2)])
    caption = "operator: anyone in red?"
    readback = "robot understood as: colour=red (0.98) terrain=? (0.91)"
    joined = images.contact_sheet(tiles, f"{caption} {readback}", ["a", "b"], tile=160)
    split = images.contact_sheet(tiles, f"{caption}\n{readback}", ["a", "b"], tile=160)
    assert images._wrap(f"{caption}\n{readback}", 10_000, 0.5) == [caption, readback]
    assert split.shape[0] > joined.shape[0]  # one more header line: the read-back's own


def test_contact_sheet_draws_the_caption_above_a_grid(tmp_path) -> None:
    tiles = np.stack([_rgb(k) for k in range(5)])
    sheet = images.contact_sheet(
        tiles, "survivor in an orange jacket " * 4, [f"#{k}" for k in range(5)], tile=96
    )
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    cols = 3  # ceil(sqrt(5))
    assert sheet.shape[1] >= cols * 96
    header = sheet[:40]
    assert (header > 100).any(), "caption text drawn in the header"
    # The first tile appears verbatim (upscaled) somewhere in the sheet.
    big = images.upscale(tiles[0], 96)
    found = any(
        np.array_equal(sheet[y : y + 96, 8 : 8 + 96], big) for y in range(sheet.shape[0] - 95)
    )
    assert found
