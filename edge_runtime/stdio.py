"""Standard streams for the command lines: bounded line reading and a quiet closed pipe.

Standard library only; `train` and `export` use `quiet_on_closed_pipe` too.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

CLOSED_PIPE_EXIT = 1
"""Exit status when stdout's reader went away (`rescue-edge info | head -1`): output was lost."""


@dataclass(frozen=True)
class BadLine:
    """An input line refused before it was held whole (too long) or decoded (not UTF-8)."""

    reason: str


def bounded_lines(stream: IO[Any], max_line: int) -> Iterator[str | BadLine]:
    """The lines of `stream` (its bytes when it has a binary buffer), never holding more than
    `max_line` + 1 bytes of one: a longer line is skipped in bounded pieces and reported."""
    source = getattr(stream, "buffer", stream)
    while True:
        raw = source.readline(max_line + 1)
        if not raw:
            return
        newline = b"\n" if isinstance(raw, bytes) else "\n"
        if len(raw) > max_line and not raw.endswith(newline):
            while (rest := source.readline(1 << 16)) and not rest.endswith(newline):
                pass
            yield BadLine(f"longer than {max_line} bytes; skipped")
            continue
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield BadLine(f"not UTF-8 (byte {err.start})")
                continue
        yield raw


def quiet_on_closed_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's `main` so that a reader closing stdout early ends it quietly.

    Python's recipe (docs: signal, "Note on SIGPIPE"): on BrokenPipeError point stdout at
    /dev/null, so the interpreter's final flush does not raise again, and exit without a
    traceback. The command's own output is flushed inside the wrapper so the error, if any,
    arrives here rather than at shutdown.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            try:
                return main(*args, **kwargs)
            finally:  # also on SystemExit (argparse's --help): flush while we can still catch
                sys.stdout.flush()
        except BrokenPipeError:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):  # stdout without a descriptor (tests swap it)
                pass
            return CLOSED_PIPE_EXIT

    return wrapper
