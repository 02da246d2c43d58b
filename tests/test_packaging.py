"""The distribution: console scripts exist, and on a robot install (no torch) the training-side
commands say in one line which extra they need instead of failing with a traceback."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def test_packaging_console_scripts_installed() -> None:
    for script in ("rescue-edge", "rescue-train", "rescue-export"):
        assert (BIN / script).exists(), script


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="robot install only")
@pytest.mark.parametrize(
    ("script", "extra"), [("rescue-train", "train"), ("rescue-export", "export")]
)
def test_packaging_training_commands_on_robot_name_the_extra(script: str, extra: str) -> None:
    done = subprocess.run([BIN / script, "--help"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert f"rescue-t2i[{extra}]" in done.stderr
