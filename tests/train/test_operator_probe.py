"""scripts/operator_probe.py: its command list parses, bad lines are named, images are scored on
the stated attributes only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from train.data.attributes import ATTRIBUTE_NAMES
from train.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def probe() -> Any:
    spec = importlib.util.spec_from_file_location(
        "operator_probe", ROOT / "scripts/operator_probe.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_committed_commands_parse_and_mix_full_and_partial(probe: Any) -> None:
    commands = probe.read_commands(ROOT / "docs" / "operator_probe.tsv")
    assert len(commands) == 40
    stated = [sum(v != "?" for v in truth) for _, truth in commands]
    assert min(stated) == 1 and max(stated) == len(ATTRIBUTE_NAMES)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("red jacket\tred\tmud", "2 attribute columns"),
        ("red jacket\tcrimson\t?\t?\t?\t?", "colour 'crimson' is not one of"),
        ("helmet on\t?\t?\t?\t?\tmaybe", "helmet 'maybe'"),
    ],
)
def test_a_bad_line_is_named_by_file_and_number(
    probe: Any, tmp_path: Path, line: str, words: str
) -> None:
    path = tmp_path / "commands.tsv"
    path.write_text("# header\nsomeone in red\tred\t?\t?\t?\t?\n" + line + "\n")
    with pytest.raises(InputError, match=f"commands.tsv:3: {words}"):
        probe.read_commands(path)
    path.write_text("# only a comment\n")
    with pytest.raises(InputError, match="no commands"):
        probe.read_commands(path)


def test_images_are_right_when_every_stated_attribute_is(probe: Any) -> None:
    # colour red (0), pose lying (2); terrain, position and helmet open.
    truth = ("red", "?", "lying", "?", "?")
    labels = np.array([[0, 5, 2, 0, 1], [0, 1, 1, 2, 0], [1, 0, 2, 1, 1]])
    assert probe.stated_right(labels, truth).tolist() == [True, False, False]
