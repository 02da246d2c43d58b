"""Run folders: numbered directories holding a run's resolved config, metrics and checkpoint.

stylegan3's layout: `<out>/00000/`, `<out>/00001/`, ... each created before step 0 with the
resolved config inside, so a run is self-describing even if it dies in its first minute. Metrics
are JSON lines (one object per line, appended and flushed), readable while the run is going.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

RUN_DIGITS = 5


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (prog: argument --flag: problem), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON to a temp file beside `path`, fsync, rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a config is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_dirs(out: str | os.PathLike[str]) -> list[Path]:
    """The numbered run folders under `out`, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda p: int(p.name))


def new_run_dir(out: str | os.PathLike[str]) -> Path:
    """Create the next numbered folder under `out` (race-free: mkdir fails if taken)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    existing = run_dirs(out)
    number = int(existing[-1].name) + 1 if existing else 0
    while True:
        path = out / f"{number:0{RUN_DIGITS}d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


class MetricsLog:
    """Append-only JSON-lines file; each `write` is one flushed line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (further writes fail)."""
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def truncate_after_step(path: str | os.PathLike[str], step: int) -> int:
    """Drop records with "step" > `step` (written after the checkpoint a run resumes from).

    Returns how many were dropped; rewrites the file atomically.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept: list[str] = []
    dropped = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1  # a line torn by a crash mid-write
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return dropped


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
