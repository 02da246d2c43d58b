"""Reading any accepted file: our schema directly, a peer GAN-CLS file converted in memory."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import h5py
import numpy as np
import pytest

from train.data import files, peer, schema
from train.data.schema import DataError


def _tiny_peer_file(path: Path) -> Path:
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with h5py.File(path, "w") as f:
        entry = f.create_group("train/Bird_0001_1_0")
        entry.create_dataset("img", data=np.void(png))
        entry.create_dataset("txt", data="a bird")
    return path


def test_open_checked_points_peer_layout_files_to_import_peer(tmp_path: Path) -> None:
    path = _tiny_peer_file(tmp_path / "birds.hdf5")
    with pytest.raises(DataError, match="import-peer") as err:
        files.open_checked(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_files_read_peer_files_that_the_schema_alone_refuses(
    tmp_path: Path, fx: SimpleNamespace
) -> None:
    birds = fx.write_peer_file(tmp_path / "birds.hdf5")
    assert files.is_peer_file(birds)
    assert files.read_info(birds).layout == peer.LAYOUT
    assert len(files.read_split(birds, "train")) == 4
    # The schema module is our format only: a peer file is "not ours", one line naming the key.
    with pytest.raises(DataError, match="root attribute 'schema'"):
        schema.read_info(birds)


def test_files_read_our_schema_exactly_as_the_schema_does(
    tmp_path: Path, fx: SimpleNamespace
) -> None:
    ours = tmp_path / "ours.h5"
    assert peer.main([str(fx.write_peer_file(tmp_path / "birds.hdf5")), "--out", str(ours)]) == 0
    assert not files.is_peer_file(ours)
    assert files.read_info(ours) == schema.read_info(ours)
    a, b = files.read_split(ours, "test"), schema.read_split(ours, "test")
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    with files.open_checked(ours) as f:
        assert f.attrs["schema"] == schema.SCHEMA
