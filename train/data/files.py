"""Read any dataset file we accept: our schema (`train.data.schema`) or a peer GAN-CLS
`birds.hdf5` / `flowers.hdf5` (`train.data.peer`), converted in memory.

Commands that take a user's `--data` file read it through here; the schema module stays our
format alone, so the format contract imports no converter.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from train.data import peer, schema
from train.data.schema import DataError, DatasetInfo, SplitData


def is_peer_file(path: str | os.PathLike[str]) -> bool:
    """True for a readable HDF5 file in the peer GAN-CLS layout (not our schema)."""
    path = Path(path)
    with schema.open_hdf5(path) as f, schema.damaged_file_guard(str(path)):
        return f.attrs.get("schema") != schema.SCHEMA and peer.is_peer_layout(f)


def read_info(path: str | os.PathLike[str]) -> DatasetInfo:
    """Root attributes and split names (of our schema or of a peer GAN-CLS file)."""
    return peer.peer_info(path) if is_peer_file(path) else schema.read_info(path)


def read_split(path: str | os.PathLike[str], split: str) -> SplitData:
    """Load a whole split into memory, validating every field (peer files are converted)."""
    if is_peer_file(path):
        return peer.read_peer_split(Path(path), split)
    return schema.read_split(path, split)


def open_checked(path: str | os.PathLike[str]) -> h5py.File:
    """Open a file of our schema for lazy, per-worker reads; a peer file gets a pointer to
    `import-peer` (it has no per-image layout to read lazily)."""
    if is_peer_file(path):
        raise DataError(
            f"{path}: a GAN-CLS peer-layout file (birds.hdf5/flowers.hdf5), not schema "
            f"{schema.SCHEMA!r}; convert it with `python -m train data import-peer`, or load it "
            "in memory with train.data.files.read_split"
        )
    return schema.open_checked(path)
