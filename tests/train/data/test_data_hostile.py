"""A corpus of hostile dataset files, generated here: size and compression bombs, external
storage, external links, virtual datasets, FIFOs and devices, forged image headers, deep and
absurd JSON attributes. Every one must be refused by `data info --verify` and by `read_split`
(which training calls in-process) with one line, exit 1, no traceback and no hang; a sample runs
as real child processes whose peak memory is measured.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from peak_memory import run_main  # noqa: E402

from train.data import guard, info  # noqa: E402
from train.data.convert import ItemError, load_source_image, read_text_lines  # noqa: E402
from train.data.schema import DataError, SplitData, read_split, write_dataset  # noqa: E402

SIZE = 16
CASE_TIMEOUT_S = 20
PEAK_LIMIT_MB = 300


def _split(n: int = 4) -> SplitData:
    rng = np.random.default_rng(0)
    return SplitData(
        images=rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        captions=[[f"image {i} caption {k}" for k in range(2)] for i in range(n)],
        class_ids=np.arange(n, dtype=np.int64) % 2,
        attributes=np.zeros((n, 1), np.int16),
        names=[f"img_{i}" for i in range(n)],
        caption_counts=np.full(n, 2, np.int16),
    )


def write_base(path: Path, encoding: str | None = None) -> Path:
    return write_dataset(
        path, {"train": _split()}, dataset="toy", image_size=SIZE, attribute_names=["a"],
        attribute_values={"a": ["x"]}, image_encoding=encoding,
    )  # fmt: skip


def png(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width × height (one real, tiny IDAT: the header is the lie)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, an APP0 segment, then a baseline SOF0 declaring width × height."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\0" * 3
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


Edit = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], Path]
    """Writes the hostile file under the given folder and returns its path."""


def _patched(edit: Callable[[h5py.File, Path], None], encoding: str | None = None) -> Callable:
    def make(folder: Path) -> Path:
        path = write_base(folder / "data.h5", encoding)
        with h5py.File(path, "a") as f:
            edit(f, folder)
        return path

    return make


def _replace(key: str, **create: object) -> Callable[[h5py.File, Path], None]:
    def edit(f: h5py.File, _folder: Path) -> None:
        del f["train"][key]
        f["train"].create_dataset(key, **create)

    return edit


def _size_bomb(key: str, shape: tuple[int, ...], dtype: object) -> Case:
    # Declared, never written: the file stays a few KB, a reader allocates the declared size.
    return Case(f"size-bomb:{key}:{shape[0]}", _patched(_replace(key, shape=shape, dtype=dtype)))


def _gzip_bomb(key: str, shape: tuple[int, ...], dtype: object, chunks: object = True) -> Case:
    def edit(f: h5py.File, _folder: Path) -> None:
        del f["train"][key]
        # Zeros compress ~1000x: a small file, a huge read.
        zeros = np.zeros(shape, dtype)
        f["train"].create_dataset(key, data=zeros, compression="gzip", chunks=chunks)

    return Case(f"gzip-bomb:{key}", _patched(edit))


def _external_storage(key: str, shape: tuple[int, ...], dtype: object) -> Case:
    def edit(f: h5py.File, folder: Path) -> None:
        outside = folder / "outside.bin"
        outside.write_bytes(b"\x07" * (int(np.prod(shape)) * np.dtype(dtype).itemsize))
        del f["train"][key]
        f["train"].create_dataset(
            key, shape=shape, dtype=dtype, external=[(str(outside), 0, h5py.h5f.UNLIMITED)]
        )

    return Case(f"external-storage:{key}", _patched(edit))


def _external_link(where: str, target: str = "other") -> Case:
    def edit(f: h5py.File, folder: Path) -> None:
        if target == "other":
            other = write_base(folder / "other.h5")
            filename, path = str(other), "/train" if where == "train" else f"/train/{where}"
        else:
            filename, path = target, "/x"
        if where == "train":
            del f["train"]
            f["train"] = h5py.ExternalLink(filename, path)
        elif where == "extra":
            f["extra"] = h5py.ExternalLink(filename, path)
        else:
            del f["train"][where]
            f["train"][where] = h5py.ExternalLink(filename, path)

    return Case(f"external-link:{where}:{target.replace('/', '_')}", _patched(edit))


def _virtual(key: str) -> Case:
    def edit(f: h5py.File, folder: Path) -> None:
        other = write_base(folder / "other.h5")
        source = h5py.VirtualSource(str(other), f"/train/{key}", shape=f["train"][key].shape,
                                    dtype=f["train"][key].dtype)  # fmt: skip
        layout = h5py.VirtualLayout(shape=source.shape, dtype=source.dtype)
        layout[...] = source
        del f["train"][key]
        f["train"].create_virtual_dataset(key, layout)

    return Case(f"virtual:{key}", _patched(edit))


def _encoded(index: int, data: bytes, label: str) -> Case:
    def edit(f: h5py.File, _folder: Path) -> None:
        f["train"]["images_encoded"][index] = np.frombuffer(data, np.uint8)

    return Case(f"image-header:{label}", _patched(edit, encoding="png"))


def _attribute(key: str, value: object, label: str) -> Case:
    def edit(f: h5py.File, _folder: Path) -> None:
        f.attrs[key] = value

    return Case(f"attribute:{key}:{label}", _patched(edit))


def _special(label: str, make: Callable[[Path], Path]) -> Case:
    return Case(f"not-a-file:{label}", make)


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "data.h5")
    return folder / "data.h5"


def _symlink_to(target: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / "data.h5").symlink_to(target)
        return folder / "data.h5"

    return make


def _symlink_to_fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe")
    (folder / "data.h5").symlink_to(folder / "pipe")
    return folder / "data.h5"


def _directory(folder: Path) -> Path:
    (folder / "data.h5").mkdir()
    return folder / "data.h5"


def _socket(folder: Path) -> Path:
    path = folder / "data.h5"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    finally:
        sock.close()
    return path


def _deep_groups(folder: Path) -> Path:
    path = write_base(folder / "data.h5")
    with h5py.File(path, "a") as f:
        f.create_group("/".join(["deep"] * (guard.MAX_DEPTH + 4)))
    return path


def _chunk_bomb(folder: Path) -> Path:
    path = write_base(folder / "data.h5")
    with h5py.File(path, "a") as f:
        del f["train"]["class_ids"]
        ds = f["train"].create_dataset(
            "class_ids", shape=(4,), maxshape=(None,), chunks=(1 << 24,), dtype=np.int64
        )
        ds[...] = [0, 1, 0, 1]
    return path


def _peer(edit: Callable[[h5py.Group], None]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "birds.hdf5"
        jpg = jpeg_header(10, 10)
        with h5py.File(path, "w") as f:
            for k in range(2):
                entry = f.create_group(f"train/img{k}_{k}")
                entry["img"] = np.void(jpg)
                entry["txt"] = "a small bird"
                entry["class"] = "001.Albatross"
                entry["name"] = f"img{k}"
            edit(f["train"]["img0_0"])
        return path

    return make


def _peer_replace(key: str, **create: object) -> Callable[[h5py.Group], None]:
    def edit(entry: h5py.Group) -> None:
        del entry[key]
        entry.create_dataset(key, **create)

    return edit


def _peer_image(data: bytes) -> Callable[[h5py.Group], None]:
    def edit(entry: h5py.Group) -> None:
        del entry["img"]
        entry["img"] = np.void(data)

    return edit


def _peer_link(entry: h5py.Group) -> None:
    del entry["img"]
    entry["img"] = h5py.ExternalLink("/etc/passwd", "/x")


def corpus() -> list[Case]:
    huge = 1 << 34  # 16 GiB of uint8 images, 128 GiB of int64
    cases = [
        _size_bomb("images", (100_000, SIZE, SIZE, 3), np.uint8),
        _size_bomb("images", (huge // (SIZE * SIZE * 3) + 1, SIZE, SIZE, 3), np.uint8),
        _size_bomb("class_ids", (10**8,), np.int64),
        _size_bomb("class_ids", (huge,), np.int64),
        _size_bomb("attributes", (10**8, 1), np.int16),
        _size_bomb("caption_counts", (10**8,), np.int16),
        _size_bomb("captions", (10**7, 2), h5py.string_dtype()),
        _size_bomb("names", (10**8,), h5py.string_dtype()),
        _gzip_bomb("images", (4096, SIZE, SIZE, 3), np.uint8),
        _gzip_bomb("class_ids", (10**6,), np.int64),
        _gzip_bomb("attributes", (10**6, 1), np.int16, chunks=(10**5, 1)),
        _gzip_bomb("caption_counts", (10**6,), np.int16),
        _external_storage("images", (4, SIZE, SIZE, 3), np.uint8),
        _external_storage("class_ids", (4,), np.int64),
        _external_storage("attributes", (4, 1), np.int16),
        _external_storage("caption_counts", (4,), np.int16),
        _external_link("train"),
        _external_link("images"),
        _external_link("class_ids"),
        _external_link("captions"),
        _external_link("extra"),
        _external_link("extra", "/dev/zero"),
        _external_link("images", "/etc/passwd"),
        _virtual("images"),
        _virtual("class_ids"),
        _virtual("captions"),
        _encoded(0, png(16000, 16000), "png-16000"),
        _encoded(1, png(SIZE + 1, SIZE), "png-wrong-width"),
        _encoded(1, png(0, 0), "png-zero"),
        _encoded(2, jpeg_header(60000, 60000), "jpeg-60000"),
        _encoded(2, jpeg_header(SIZE, SIZE * 2), "jpeg-wrong-height"),
        _encoded(3, b"BM" + b"\0" * 60, "bmp"),
        _encoded(3, b"GIF89a" + b"\0" * 30, "gif"),
        _encoded(0, b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 30, "webp"),
        _encoded(0, b"\x89PNG\r\n\x1a\n", "png-truncated"),
        _encoded(0, b"\xff\xd8\xff\xda" + b"\0" * 20, "jpeg-scan-before-frame"),
        _encoded(0, os.urandom(200), "random"),
        _attribute("provenance", "[" * 100_000, "deep-json"),
        _attribute("attribute_names", "[" + "9" * 5000 + "]", "5000-digits"),
        _attribute("schema_version", 10**12, "huge-version"),
        _attribute("image_size", 10**9, "huge-image-size"),
        _attribute("image_size", -1, "negative-image-size"),
        _attribute("schema", "something-else", "other-schema"),
        _special("fifo", _fifo),
        _special("symlink-to-dev-zero", _symlink_to("/dev/zero")),
        _special("symlink-to-dev-null", _symlink_to("/dev/null")),
        _special("symlink-to-fifo", _symlink_to_fifo),
        _special("directory", _directory),
        _special("socket", _socket),
        _special("dangling-symlink", _symlink_to("/nonexistent/data.h5")),
        Case("structure:deep-groups", _deep_groups),
        Case("structure:chunk-bomb", _chunk_bomb),
        Case(
            "peer:gzip-bomb-img",
            _peer(_peer_replace("img", data=np.zeros(10**7, np.uint8), compression="gzip")),
        ),
        Case("peer:size-bomb-txt", _peer(_peer_replace("txt", shape=(10**8,), dtype="S1"))),
        Case("peer:external-link-img", _peer(_peer_link)),
        Case("peer:png-header-bomb", _peer(_peer_image(png(30000, 30000)))),
        Case("peer:jpeg-header-bomb", _peer(_peer_image(jpeg_header(65000, 65000)))),
    ]
    return cases


CORPUS = {case.id: case for case in corpus()}


class _HangError(Exception):
    """Raised by SIGALRM in a case that took too long."""


def _alarm(_signum: int, _frame: object) -> None:
    raise _HangError


@pytest.fixture
def alarm() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        yield
    except _HangError:
        pytest.fail(f"did not finish in {CASE_TIMEOUT_S} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_corpus_is_large() -> None:
    print(f"hostile dataset files: {len(CORPUS)}")
    assert len(CORPUS) >= 50 and len(CORPUS) == len(corpus())


@pytest.mark.parametrize("case_id", list(CORPUS))
def test_hostile_dataset_is_refused_in_one_line(
    case_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], alarm: None
) -> None:
    path = CORPUS[case_id].make(tmp_path)
    # What `data info --verify` runs in its child, here in-process (the child adds only isolation).
    assert info.main(["--verify", "--in-process", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.startswith(str(path)), captured.err
    # Training's in-process reader refuses it the same way (it never parses provenance).
    if case_id != "attribute:provenance:deep-json":
        with pytest.raises(DataError) as err:
            read_split(path, "train")
        assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


SAMPLE = [
    "size-bomb:images:100000", "gzip-bomb:images", "gzip-bomb:class_ids",
    "external-link:extra:_dev_zero", "image-header:png-16000", "attribute:provenance:deep-json",
    "not-a-file:fifo",
    "not-a-file:symlink-to-dev-zero", "peer:gzip-bomb-img", "peer:png-header-bomb",
]  # fmt: skip


def test_hostile_dataset_sample_in_child_processes_stays_small(tmp_path: Path) -> None:
    peaks = {}
    for case_id in SAMPLE:
        folder = tmp_path / case_id.replace(":", "_")
        folder.mkdir()
        path = CORPUS[case_id].make(folder)
        run = run_main("train.data.info", ["--verify", "--in-process", str(path)], timeout=60)
        peaks[case_id] = run.peak_mb
        assert run.returncode == 1 and len(run.stderr_lines) == 1, run.stderr_lines
        assert "Traceback" not in run.stderr_lines[0]
    print("peak MB per case:", {k: round(v) for k, v in peaks.items()})
    assert all(p <= PEAK_LIMIT_MB for p in peaks.values()), peaks


@pytest.mark.parametrize("case_id", ["not-a-file:fifo", "gzip-bomb:images", "peer:png-header-bomb"])
def test_data_info_verify_command_refuses_in_one_line(case_id: str, tmp_path: Path) -> None:
    """The real `--verify` path (parent + isolated child)."""
    path = CORPUS[case_id].make(tmp_path)
    run = run_main("train.data.info", ["--verify", str(path)], timeout=120)
    assert run.returncode == 1 and len(run.stderr_lines) == 1, run.stderr_lines
    assert run.stderr_lines[0].startswith(str(path))


def test_import_peer_refuses_a_hostile_file_and_writes_nothing(tmp_path: Path) -> None:
    from train.data import peer

    path = CORPUS["peer:external-link-img"].make(tmp_path)
    out = tmp_path / "out.h5"
    assert peer.main([str(path), "--out", str(out)]) == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["birds.hdf5"]


@pytest.mark.parametrize(
    "make",
    [
        lambda d: (os.mkfifo(d / "x.jpg"), d / "x.jpg")[1],
        lambda d: ((d / "x.jpg").symlink_to("/dev/zero"), d / "x.jpg")[1],
        lambda d: ((d / "x.jpg").write_bytes(png(20000, 20000)), d / "x.jpg")[1],
        lambda d: ((d / "x.jpg").write_bytes(jpeg_header(9000, 9000)), d / "x.jpg")[1],
        lambda d: ((d / "x.jpg").mkdir(), d / "x.jpg")[1],
    ],
    ids=["fifo", "dev-zero", "png-bomb", "jpeg-bomb", "directory"],
)
def test_converter_source_images_are_checked_before_reading(
    make: Callable[[Path], Path], tmp_path: Path, alarm: None
) -> None:
    with pytest.raises(ItemError) as err:
        load_source_image(make(tmp_path), "source.jpg", 64)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/urandom"])
def test_converter_caption_files_are_checked_before_reading(
    target: str, tmp_path: Path, alarm: None
) -> None:
    path = tmp_path / "captions.txt"
    if target == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(target)
    with pytest.raises(ItemError, match="not a regular file"):
        read_text_lines(path)


def test_image_size_reads_real_encoder_headers() -> None:
    cv2 = pytest.importorskip("cv2")
    image = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg"):
        ok, data = cv2.imencode(ext, image)
        assert ok and guard.image_size(data.tobytes()) == (53, 37)
    guard.check_image_header(data, "x.jpg", None)


def test_a_valid_file_still_passes_every_check(tmp_path: Path) -> None:
    for encoding in (None, "png"):
        path = write_base(tmp_path / f"ok-{encoding}.h5", encoding)
        assert len(read_split(path, "train")) == 4
    shutil.rmtree(tmp_path)


def test_a_file_changed_after_its_check_is_checked_again(tmp_path: Path) -> None:
    path = write_base(tmp_path / "data.h5")
    assert len(read_split(path, "train")) == 4  # checked and remembered
    with h5py.File(path, "a") as f:
        f["extra"] = h5py.ExternalLink("/dev/zero", "/x")
    with pytest.raises(DataError, match="an external link"):
        read_split(path, "train")
