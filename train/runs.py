"""Run folders: numbered directories holding a run's resolved config, metrics and checkpoint.

stylegan3's layout: `<out>/00000/`, `<out>/00001/`, ... (or `<out>/00000-<description>/`, as the
GAN names its runs) each created before step 0 with the
resolved config inside, so a run is self-describing even if it dies in its first minute. Metrics
are JSON lines (one object per line, appended and flushed), readable while the run is going.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from edge_runtime import atomic

RUN_DIGITS = 5
_RUN_NAME = re.compile(r"(\d+)(?:-.*)?", re.DOTALL)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (prog: argument --flag: problem), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """Write JSON to a temp file beside `path`, fsync, rename: never a half-written file."""
    return atomic.write_json(path, data, sort_keys=sort_keys, make_parents=True)


def run_number(path: Path) -> int | None:
    """The run number of a run folder's name (`00003` or `00003-description`), else None."""
    match = _RUN_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def run_dirs(out: str | os.PathLike[str]) -> list[Path]:
    """The numbered run folders under `out`, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and run_number(p) is not None]
    return sorted(found, key=lambda p: (run_number(p), p.name))


def new_run_dir(out: str | os.PathLike[str], description: str | None = None) -> Path:
    """Create the next numbered folder under `out`, `NNNNN` or `NNNNN-description` (race-free:
    mkdir fails if another run took the number, and the next one is tried)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    number = max((run_number(p) or 0 for p in run_dirs(out)), default=-1) + 1
    suffix = f"-{description}" if description else ""
    while True:
        path = out / f"{number:0{RUN_DIGITS}d}{suffix}"
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
        atomic.write_text(path, "".join(line + "\n" for line in kept))
    return dropped


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
