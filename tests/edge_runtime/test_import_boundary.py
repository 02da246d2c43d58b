"""edge_runtime must never import torch, h5py, train or export: the robot has none of them."""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edge_runtime

ROBOT_INSTALL = os.environ.get("RESCUE_ROBOT_INSTALL") == "1"

FORBIDDEN = ("torch", "h5py", "train", "export", "onnx", "tensorboard")
STDLIB_ONLY = ("edge_runtime.tokenizer", "edge_runtime.bundle")


def _modules() -> list[str]:
    found = pkgutil.walk_packages(edge_runtime.__path__, "edge_runtime.")
    # Importing __main__ would run the CLI.
    return ["edge_runtime", *sorted(m.name for m in found if not m.name.endswith("__main__"))]


def test_edge_runtime_imports_no_training_module_in_a_fresh_interpreter() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {_modules()!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(edge_runtime.__file__).parent.parent,
    )
    assert json.loads(out.stdout) == []


def test_edge_runtime_contract_modules_are_stdlib_only() -> None:
    stdlib = sys.stdlib_module_names
    for name in STDLIB_ONLY:
        path = Path(edge_runtime.__file__).parent / f"{name.split('.')[1]}.py"
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in stdlib or root in ("__future__", "edge_runtime"), (name, root)


@pytest.mark.skipif(not ROBOT_INSTALL, reason="only in the robot venv of `make test-robot`")
def test_robot_install_has_no_torch_and_uses_installed_package() -> None:
    import importlib.util

    assert importlib.util.find_spec("torch") is None
    assert importlib.util.find_spec("h5py") is None
    assert "site-packages" in edge_runtime.__file__
