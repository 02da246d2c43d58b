"""Test tiers per folder: a test folder's conftest.py declares what its files need, once.

    pytest_pycollect_makemodule = needs(__file__, "torch", "h5py", except_files={"test_perturb.py"})

Without those modules (the robot install), each other test file directly in the folder is
reported as one skipped module, without being imported: no `importorskip` + `# noqa: E402` in
every file. Sub-folders declare their own needs in their own conftest.py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest


class _SkippedModule(pytest.Module):
    reason = ""

    def collect(self) -> Any:
        pytest.skip(self.reason)


def needs(
    conftest_file: str, *modules: str, except_files: Collection[str] = ()
) -> Callable[[Path, pytest.Collector], pytest.Module | None]:
    """A `pytest_pycollect_makemodule` hook skipping the folder's test files without `modules`."""
    folder = Path(conftest_file).resolve().parent
    missing = [m for m in modules if importlib.util.find_spec(m) is None]

    def hook(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
        if not missing or module_path.name in except_files or module_path.parent != folder:
            return None  # the default: import and collect the file
        skipped = _SkippedModule.from_parent(parent, path=module_path)
        skipped.reason = f"needs {', '.join(missing)} (not installed: the robot install?)"
        return skipped

    return hook
