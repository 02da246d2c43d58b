"""Images to disk: PNG bytes, atomic writes, service-made names confined to one directory, and
contact sheets with the caption drawn on them.

No caption ever becomes part of a path: names are built from a UTC time stamp, a sanitised tag
(the request id) and numbers only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_runtime import atomic
from edge_runtime.protocol import FILE_RE

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_FILE_BYTES = 16 << 20
"""Largest file `OutputDir.read` hands out (a 64×64 PNG is ~10 KB; an upscaled sheet < 4 MB)."""


class OutputError(Exception):
    """The output directory cannot take a file (missing, read-only, full); one line."""


NO_SUCH_IMAGE = "no such image"
"""The one answer for every name `read` will not serve: missing, a link, a special file, a hard
link, another owner's file. One wording, so the reply tells a prober nothing about which."""


@dataclass(frozen=True)
class Budget:
    """How much of the disk the output directory may use (docs/PROTOCOL.md § Disk budget)."""

    max_bytes: int | None = None
    """Sum of result file sizes; None: no limit."""
    max_files: int | None = None
    """Number of result files; None: no limit."""
    min_free_bytes: int = 0
    """Free space the filesystem must keep after a write (for the OS, logs, other services)."""


@dataclass(frozen=True)
class Usage:
    """What the output directory holds now (results only: no temp or dot files)."""

    files: int
    bytes: int
    fetched: int
    free_bytes: int


@dataclass(frozen=True)
class _Entry:
    name: str
    size: int
    mtime_ns: int
    fetched: bool


@dataclass(frozen=True)
class Saved:
    """One file written to the output directory."""

    name: str
    """File name inside the output directory (what `fetch` takes)."""
    path: Path
    sha256: str
    size: int


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB → PNG bytes."""
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV only fails here on an empty image
        raise ValueError(f"cannot encode an image of shape {rgb.shape} as PNG")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes → (H, W, 3) uint8 RGB; raises ValueError when they are not an image."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def upscale(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) → (size, size, 3); nearest neighbour, so no detail is invented between pixels."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_NEAREST)


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` through a temp file in the same directory and a rename, so a
    reader (or a power cut) never sees a partial file; raises `OutputError` naming the path."""
    try:
        atomic.write_bytes(path, data, durable=durable)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputError(f"cannot write {path}: {reason}") from None


def safe_tag(text: str, limit: int = 16) -> str:
    """`text` reduced to letters, digits, '_' and '-' (at most `limit`), never empty."""
    return _UNSAFE.sub("_", text)[:limit] or "x"


def utc_stamp(now: float | None = None) -> str:
    """UTC time as 20250131T235959Z: sortable, and the same on every robot whatever its zone."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


class OutputDir:
    """The one directory results go to; every name in it is made here."""

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = Path(path).absolute()
        self.durable = durable

    def ensure(self) -> None:
        """Create the directory (and parents); raises `OutputError`."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"output path {self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(
                f"cannot create output directory {self.path}: {err.strerror}"
            ) from None

    def names(self, tag: str, seed: int, indices: Sequence[int], suffix: str = "png") -> list[str]:
        """Fresh names `<UTC stamp>_<tag>_s<seed>_<k>.png` (…-2, -3 on a clash), none existing."""
        stamp, tag = utc_stamp(), safe_tag(tag)
        for attempt in range(1, 1000):
            prefix = stamp if attempt == 1 else f"{stamp}-{attempt}"
            names = [f"{prefix}_{tag}_s{seed}_{k}.{suffix}" for k in indices]
            if not any((self.path / n).exists() for n in names):
                return names
        raise OutputError(f"{self.path}: no free file name for {tag} (1000 tries)")

    def save(self, files: Sequence[tuple[str, bytes]]) -> list[Saved]:
        """Write (name, bytes) files atomically; on any failure remove those already written
        (a request's results appear together or not at all) and raise `OutputError`."""
        self.ensure()
        saved: list[Saved] = []
        try:
            for name, data in files:
                path = self._confined(name)
                write_atomic(path, data, durable=self.durable)
                saved.append(Saved(name, path, hashlib.sha256(data).hexdigest(), len(data)))
        except OutputError:
            for done in saved:
                with contextlib.suppress(OSError):
                    done.path.unlink()
            raise
        return saved

    def _confined(self, name: str) -> Path:
        if not FILE_RE.fullmatch(name):
            raise OutputError(f"refusing file name {name!r}: not a plain result name")
        path = self.path / name
        # Belt and braces: FILE_RE has no '/', so this holds unless the directory itself moves.
        if path.parent != self.path:
            raise OutputError(f"refusing {name!r}: outside {self.path}")
        return path

    def read(self, name: str) -> bytes:
        """Bytes of result `name`. Only a file this service could have made is served: a
        regular file directly in the directory, not a symbolic link (it could point anywhere),
        not a hard link (its other name may be outside), owned by this process's user, at most
        `MAX_FILE_BYTES`. Anything else raises FileNotFoundError with `NO_SUCH_IMAGE`."""
        if not FILE_RE.fullmatch(name):
            raise FileNotFoundError(errno.ENOENT, NO_SUCH_IMAGE, name)
        try:
            dir_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            raise FileNotFoundError(errno.ENOENT, NO_SUCH_IMAGE, name) from None
        try:
            # Relative to the directory's descriptor: a name cannot escape it between checks.
            fd = os.open(
                name,
                os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0),
                dir_fd=dir_fd,
            )
        except OSError:
            raise FileNotFoundError(errno.ENOENT, NO_SUCH_IMAGE, name) from None
        finally:
            os.close(dir_fd)
        try:
            info = os.fstat(fd)
            if (
                not stat.S_ISREG(info.st_mode)
                or info.st_nlink != 1
                or info.st_uid != os.geteuid()
                or info.st_size > MAX_FILE_BYTES
            ):
                raise FileNotFoundError(errno.ENOENT, NO_SUCH_IMAGE, name)
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(MAX_FILE_BYTES + 1)[:MAX_FILE_BYTES]
        except OSError:
            raise FileNotFoundError(errno.ENOENT, NO_SUCH_IMAGE, name) from None
        finally:
            os.close(fd)

    # -- disk budget ----------------------------------------------------------------------------

    def _entries(self) -> list[_Entry]:
        """The results in the directory: regular files with result names (temp and dot files,
        links and directories are not results)."""
        entries = []
        try:
            scan = os.scandir(self.path)
        except OSError:
            return []
        with scan:
            for item in scan:
                if not FILE_RE.fullmatch(item.name):
                    continue
                try:
                    info = item.stat(follow_symlinks=False)
                except OSError:
                    continue  # deleted meanwhile
                if stat.S_ISREG(info.st_mode):
                    # Fetched results have their write bits cleared (`mark_fetched`): the mark
                    # survives a restart without a side file.
                    fetched = not info.st_mode & stat.S_IWUSR
                    entries.append(_Entry(item.name, info.st_size, info.st_mtime_ns, fetched))
        return entries

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use on the directory's filesystem."""
        try:
            vfs = os.statvfs(self.path)
        except OSError:
            return 0
        return vfs.f_bavail * vfs.f_frsize

    def usage(self) -> Usage:
        """Files, bytes and fetched files in the directory, and the filesystem's free space."""
        entries = self._entries()
        return Usage(
            files=len(entries),
            bytes=sum(e.size for e in entries),
            fetched=sum(e.fetched for e in entries),
            free_bytes=self.free_bytes(),
        )

    def make_room(self, incoming: Sequence[int], budget: Budget) -> list[str]:
        """Delete the oldest results (fetched ones first) until files of the `incoming` sizes fit
        `budget`; returns the names deleted. Raises `OutputError` when they cannot fit even in
        an empty directory (nothing is deleted then)."""
        self.ensure()
        need_bytes, need_files = sum(incoming), len(incoming)
        # A file occupies whole blocks; 4 KiB is the common block size and errs on the safe side.
        need_disk = sum(-(-size // 4096) * 4096 for size in incoming)
        if budget.max_bytes is not None and need_bytes > budget.max_bytes:
            raise OutputError(
                f"{need_files} image(s) of {need_bytes} bytes exceed the output budget of "
                f"{budget.max_bytes} bytes (--out-max-bytes)"
            )
        if budget.max_files is not None and need_files > budget.max_files:
            raise OutputError(
                f"{need_files} image(s) exceed the output budget of {budget.max_files} files "
                "(--out-max-files)"
            )
        entries = sorted(self._entries(), key=lambda e: (not e.fetched, e.mtime_ns, e.name))
        total, count = sum(e.size for e in entries), len(entries)

        def fits(free: int) -> bool:
            return (
                (budget.max_bytes is None or total + need_bytes <= budget.max_bytes)
                and (budget.max_files is None or count + need_files <= budget.max_files)
                and free - need_disk >= budget.min_free_bytes
            )

        deleted: list[str] = []
        free = self.free_bytes()
        for entry in entries:
            if fits(free):
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / entry.name)
            deleted.append(entry.name)
            total, count = total - entry.size, count - 1
            free = self.free_bytes()
        if not fits(free):
            raise OutputError(
                f"{self.path}: {need_disk} bytes needed but only {free} free with a floor of "
                f"{budget.min_free_bytes} (--out-min-free), after deleting {len(deleted)} "
                "older image(s)"
            )
        return deleted

    def mark_fetched(self, name: str) -> None:
        """Record that result `name` was sent whole (its write bits are cleared)."""
        path = self._confined(name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
        except OSError:
            return
        try:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & ~0o222)
        except OSError:
            pass  # the mark only orders deletion; a file that refuses it is pruned later
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        """Remove result `name` (already gone is fine)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._confined(name))


# ------------------------------------------------------------------------------------------
# Contact sheet
# ------------------------------------------------------------------------------------------

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BACKGROUND = 24
_TEXT = (235, 235, 235)
_LABEL = (170, 170, 170)


def _wrap(text: str, width: int, scale: float) -> list[str]:
    """Greedy word wrap of `text` to lines at most `width` pixels wide in Hershey simplex; a
    newline starts a new line (the demo puts the robot's read-back under the caption)."""
    if "\n" in text:
        return [line for part in text.split("\n") for line in _wrap(part, width, scale)]
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if cv2.getTextSize(candidate, _FONT, scale, 1)[0][0] <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def contact_sheet(
    images: np.ndarray,
    title: str,
    labels: Sequence[str],
    tile: int = 128,
    columns: int | None = None,
) -> np.ndarray:
    """(N, H, W, 3) images → one (H', W', 3) uint8 RGB sheet: `title` wrapped on top, images in
    a grid of `tile`-pixel cells (near-square unless `columns` is given), each with its label
    underneath."""
    count = len(images)
    cols = columns if columns else max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    pad, label_h, line_h, scale = 8, 18, 20, 0.5
    width = max(cols * (tile + pad) + pad, 256)
    # The caption as the model read it is ASCII (the tokenizer's alphabet): Hershey fonts draw it.
    title_lines = _wrap(title.encode("ascii", "replace").decode("ascii"), width - 2 * pad, scale)
    header = pad + line_h * len(title_lines) + pad
    height = header + rows * (tile + label_h + pad) + pad
    sheet = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    for i, line in enumerate(title_lines):
        baseline = pad + line_h * (i + 1) - 6
        cv2.putText(sheet, line, (pad, baseline), _FONT, scale, _TEXT, 1, cv2.LINE_AA)
    for k, image in enumerate(images):
        row, col = divmod(k, cols)
        x = pad + col * (tile + pad)
        y = header + row * (tile + label_h + pad)
        sheet[y : y + tile, x : x + tile] = upscale(image, tile)
        if k < len(labels):
            cv2.putText(sheet, labels[k], (x, y + tile + 13), _FONT, 0.4, _LABEL, 1, cv2.LINE_AA)
    return sheet
