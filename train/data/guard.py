"""Checks a dataset file from outside passes before a byte of its payload is read.

A dataset (ours, a peer `birds.hdf5`, a CUB / Oxford-102 folder) is hostile until checked
(docs/DATA_FORMAT.md § Hostile files): an 8 KB HDF5 file can declare gigabytes that libhdf5
happily allocates, a dataset can live in another file or be a view of other files, a path can be
a FIFO that blocks a reader forever, and a 1 MB PNG can decode to a gigabyte. Every reader calls
in here first:

- `open_hdf5`: the path is a regular file (symlinks resolved, FIFOs and devices refused without
  blocking), then every object of the file is visited once — external links, external storage
  and virtual datasets refused; each dataset's declared size bounded absolutely, by the bytes the
  file really stores for it, and by a compression ratio; chunk sizes bounded.
- `expect`: a dataset's declared dtype kind and shape, before it is read.
- `read_regular`: a source file's bytes (captions, images), size-checked, FIFO-proof.
- `check_image_header`: PNG IHDR / JPEG SOF dimensions, before the image is decoded.

Every refusal is a `DataError` (one line naming the file, the key and the limit).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from train.errors import InputError


class DataError(InputError):
    """A dataset problem; the message names the file and the key (re-exported by `schema`)."""


MAX_DATASET_BYTES = 16 << 30
"""Largest declared dataset (decompressed): CUB at 256 px is 2.3 GB; this leaves room for more."""
MAX_COMPRESSION_RATIO = 100
"""Declared bytes per stored byte of a filtered dataset: images compress a few times, not 100x
(a gzip dataset of zeros compresses ~1000x: the memory bomb this refuses)."""
UNFILTERED_SLACK_BYTES = 1 << 20
"""An unfiltered dataset stores what it declares; up to this much may be unallocated fill."""
MAX_CHUNK_BYTES = 1 << 30
MAX_OBJECTS = 4_000_000
"""Objects visited in one file: a peer birds.hdf5 has ~350 k."""
MAX_DEPTH = 8
MAX_SOURCE_FILE_BYTES = 256 << 20
"""Largest image or caption file a converter reads (CUB's largest JPEG is < 1 MB)."""
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 40_000_000
"""≈ 120 MB decoded as RGB: far above any photo of the supported sets."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C0-CF except DHT C4, JPG C8, DAC CC) carry the frame size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length field


def check_regular_file(path: Path) -> os.stat_result:
    """The path (after symlinks) is a regular file: not a FIFO, device, socket or directory."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: not a regular file ({_kind(info.st_mode)}); refusing to read it")
    return info


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "not a plain file"


def read_regular(path: Path, limit: int = MAX_SOURCE_FILE_BYTES) -> bytes:
    """A regular file's bytes, read through one descriptor opened without blocking (a FIFO put
    in place after a check cannot hang the reader), refused above `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file ({_kind(info.st_mode)}); refusing it")
        if info.st_size > limit:
            raise DataError(f"{path}: {info.st_size} bytes, more than the {limit} allowed")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{path}: grew past the {limit} bytes allowed while it was read")
    return data


_CHECKED: dict[str, tuple[int, ...]] = {}
"""Path → identity (device, inode, size, mtime, ctime) of files `check_file` passed in this
process: opening the same unchanged file again (peer detection then reading, each loader worker
forked after the check) skips the walk, which costs ~100 µs an object."""


def open_hdf5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only once `check_file` passes on it (the caller closes it)."""
    info = check_regular_file(path)
    identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise DataError(
            f"{path}: not a readable HDF5 file (truncated or corrupted?): {lines[0]}"
        ) from None
    if _CHECKED.get(str(path)) == identity:
        return f
    try:
        check_file(f, path, info.st_size)
    except BaseException:
        f.close()
        raise
    if len(_CHECKED) >= 256:
        _CHECKED.clear()
    _CHECKED[str(path)] = identity
    return f


def check_file(f: h5py.File, path: Path, file_size: int) -> None:
    """Visit every link and every object once, following no link out of the file; refuse
    external links, external storage, virtual datasets and declared sizes the file cannot back.

    Low-level visits (H5Lvisit, H5Ovisit) rather than a walk of h5py groups: a peer birds.hdf5
    has ~350 k objects, and the high-level walk cost ~190 µs an object (over a minute a file)."""
    count = 0

    def link(name: bytes, info: h5py.h5l.LinkInfo) -> None:
        nonlocal count
        count += 1
        if count > MAX_OBJECTS:
            raise DataError(f"{path}: more than {MAX_OBJECTS} objects")
        where = f"{path}:/{name.decode('utf-8', 'replace')}"
        if name.count(b"/") >= MAX_DEPTH:
            raise DataError(f"{where}: nested deeper than {MAX_DEPTH} groups")
        if info.type == h5py.h5l.TYPE_EXTERNAL:
            target = f.id.links.get_val(name)  # (file name, object path) as bytes
            raise DataError(
                f"{where}: an external link (to {target[0].decode('utf-8', 'replace')}:"
                f"{target[1].decode('utf-8', 'replace')}); a dataset file must hold its own data"
            )
        if info.type not in (h5py.h5l.TYPE_HARD, h5py.h5l.TYPE_SOFT):
            raise DataError(f"{where}: a user-defined link; refusing it")

    def dataset(name: bytes, info: h5py.h5o.ObjInfo) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:
            where = f"{path}:/{name.decode('utf-8', 'replace')}"
            check_dataset(h5py.h5o.open(f.id, name), where, file_size)

    # Every link once, soft and external links not followed; then every object once, through
    # hard links only.
    _visit(f.id.links.visit, link)
    _visit(lambda callback, info: h5py.h5o.visit(f.id, callback, info=info), dataset)


def _visit(visitor: Callable[..., object], callback: Callable[[bytes, object], None]) -> None:
    """Run an h5py visit whose callback may raise: an exception raised inside h5py's C callback
    is not propagated (a SystemError follows), so the callback's exception is returned instead
    (a non-None value ends the visit) and raised here."""

    def guarded(name: bytes, info: object) -> BaseException | None:
        try:
            callback(name, info)
        except Exception as err:  # re-raised below, outside the C callback
            return err
        return None

    problem = visitor(guarded, info=True)
    if isinstance(problem, BaseException):
        raise problem


def check_dataset(dataset: h5py.h5d.DatasetID, where: str, file_size: int) -> None:
    """External storage, virtual layout, declared size and chunk size, from metadata only."""
    plist = dataset.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise DataError(f"{where}: a virtual dataset (a view of other files); refusing it")
    if plist.get_external_count():
        outside = plist.get_external(0)[0].decode("utf-8", "replace")
        raise DataError(
            f"{where}: stored in an external file ({outside!r}); a dataset file must hold its "
            "own data"
        )
    shape, dtype = dataset.shape, dataset.dtype
    declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if declared > MAX_DATASET_BYTES:
        raise DataError(
            f"{where}: declares {declared} bytes ({dtype} {shape}), more than the "
            f"{MAX_DATASET_BYTES} allowed"
        )
    stored = dataset.get_storage_size()
    if stored > file_size:
        raise DataError(f"{where}: claims {stored} stored bytes in a {file_size}-byte file")
    if plist.get_nfilters():
        if declared > max(stored, 1) * MAX_COMPRESSION_RATIO:
            raise DataError(
                f"{where}: declares {declared} bytes stored in {stored} (more than "
                f"{MAX_COMPRESSION_RATIO}x compression: a decompression bomb?)"
            )
    elif declared > stored + UNFILTERED_SLACK_BYTES:
        raise DataError(
            f"{where}: declares {declared} bytes ({dtype} {shape}) but the file stores "
            f"{stored} of them (a size bomb or a truncated write)"
        )
    if layout == h5py.h5d.CHUNKED:
        chunks = plist.get_chunk()
        chunk = int(np.prod(chunks, dtype=np.float64)) * dtype.itemsize
        if chunk > MAX_CHUNK_BYTES or chunk > 2 * declared + UNFILTERED_SLACK_BYTES:
            raise DataError(f"{where}: chunk {chunks} is {chunk} bytes, larger than allowed")


def expect(ds: h5py.Dataset, where: str, kinds: str, shape: Sequence[int | None]) -> None:
    """Before reading: dtype kind in `kinds` (numpy kind letters, "O" for variable length) and
    the declared shape (None: any size on that axis)."""
    kind = "O" if h5py.check_vlen_dtype(ds.dtype) is not None else ds.dtype.kind
    ok = kind in kinds and len(ds.shape) == len(shape)
    ok = ok and all(want is None or got == want for got, want in zip(ds.shape, shape, strict=False))
    if not ok:
        wanted = ", ".join("N" if s is None else str(s) for s in shape)
        raise DataError(
            f"{where}: declared {ds.dtype} {ds.shape}, expected kind {kinds!r} ({wanted})"
        )


def image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame; None when neither."""
    if isinstance(data, bytes):
        head = data[: 1 << 16]
    else:
        head = np.asarray(data, dtype=np.uint8).ravel()[: 1 << 16].tobytes()
    if head.startswith(_PNG_MAGIC) and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if not head.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        length = struct.unpack(">H", head[pos + 2 : pos + 4])[0]
        if marker in _JPEG_SOF and pos + 9 <= len(head):
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def check_image_header(data: bytes | np.ndarray, where: str, size: int | None = None) -> None:
    """Refuse an encoded image that is not PNG/JPEG, or whose header declares a size other than
    `size` (when given) or beyond `MAX_IMAGE_SIDE` / `MAX_IMAGE_PIXELS` — before decoding it."""
    dims = image_size(data)
    if dims is None:
        size_of = np.asarray(data).size if not isinstance(data, bytes) else len(data)
        raise DataError(f"{where}: undecodable image bytes ({size_of} bytes; not PNG or JPEG)")
    width, height = dims
    if size is not None and (width, height) != (size, size):
        raise DataError(
            f"{where}: image is {width}×{height}, expected {size}×{size} (the file's "
            "image_size; read from the image header, before decoding)"
        )
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE) or (
        width * height > MAX_IMAGE_PIXELS
    ):
        raise DataError(
            f"{where}: image header says {width}×{height}, beyond the {MAX_IMAGE_SIDE} px side "
            f"/ {MAX_IMAGE_PIXELS} pixel limit"
        )
