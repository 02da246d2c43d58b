"""The export package's error family.

`ExportError` is the base of "export cannot produce a faithful bundle" (graph parity, the int8
quality gate). Bad input (checkpoint, dataset, captions, an existing bundle) is train's and the
runtime's family, `train.errors.BAD_INPUT`. `export.cli.main` catches both once: one line.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """Export cannot produce a faithful bundle; the message names the graph and the problem."""
