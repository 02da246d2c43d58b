"""The train package's error family, and the one helper for "first line of an error".

Every "your input is wrong" error in `train/` (a flag, a dataset, a checkpoint, a device name)
derives from `InputError`; each command's `main` catches `BAD_INPUT` once and prints one line,
exit 2. A bare `ValueError` is a bug, never reported as bad input: it gets its traceback.
"""

from __future__ import annotations

from edge_runtime.bundle import BundleError
from edge_runtime.tokenizer import CaptionError


class InputError(ValueError):
    """Bad input to a train command; the message is one line naming the file, key or flag.

    A ValueError too, so callers that caught the older ValueError-based classes still do."""


class ConfigError(InputError):
    """A flag (or combination) that cannot work; the message starts with the flag's name."""


BAD_INPUT: tuple[type[Exception], ...] = (InputError, CaptionError, BundleError)
"""What a `main` reports as bad input: ours, and the robot contract's (captions, bundles)."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
