"""Atomic file writes: a temp file beside the target, fsync, rename, fsync the directory.

A reader, a crash or a power cut sees the old file or the new one at the path, never part of one.
This is the project's one home for that: `edge_runtime` is the lowest floor and this module uses
only the standard library, so `train/` and `export/` import it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# A new file only (never follow a planted one); mode 0o666, not mkstemp's 0o600, so the result
# gets the usual umask like any other file the user writes.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, durable: bool = True, make_parents: bool = False
) -> Iterator[Path]:
    """A fresh temp path beside `path` for the caller to create and fill (e.g. with h5py); on a
    clean exit it is fsynced and renamed over `path`, on an exception removed."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], *, durable: bool = True, make_parents: bool = False
) -> Iterator[IO[bytes]]:
    """A binary file to write `path` through (torch.save, np.savez, ...), replaced atomically."""
    with (
        atomic_path(path, durable=durable, make_parents=make_parents) as tmp,
        os.fdopen(os.open(tmp, _CREATE, 0o666), "wb") as f,
    ):
        yield f


def write_bytes(
    path: str | os.PathLike[str], data: bytes, *, durable: bool = True, make_parents: bool = False
) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path, durable=durable, make_parents=make_parents) as tmp:
        fd = os.open(tmp, _CREATE, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    return Path(path)


def write_text(
    path: str | os.PathLike[str], text: str, *, durable: bool = True, make_parents: bool = False
) -> Path:
    """Write UTF-8 `text` to `path` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"), durable=durable, make_parents=make_parents)


def write_json(
    path: str | os.PathLike[str],
    data: Any,
    *,
    sort_keys: bool = False,
    default: Any = None,
    durable: bool = True,
    make_parents: bool = False,
) -> Path:
    """Write `data` as indented JSON (one trailing newline) to `path` atomically."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys, default=default)
    return write_text(path, text + "\n", durable=durable, make_parents=make_parents)
