"""Run folders: one numbering for plain (`00003`) and described (`00003-desc`) runs."""

from __future__ import annotations

import json
from pathlib import Path

from train import runs


def test_runs_new_run_dir_numbers_plain_and_described_folders_alike(tmp_path: Path) -> None:
    assert runs.new_run_dir(tmp_path).name == "00000"
    assert runs.new_run_dir(tmp_path, "generated-ngf64-ndf64").name == "00001-generated-ngf64-ndf64"
    (tmp_path / "text-embeddings").mkdir()  # a sibling folder that is not a run
    (tmp_path / "00007-old").mkdir()
    assert runs.new_run_dir(tmp_path).name == "00008"
    assert [p.name for p in runs.run_dirs(tmp_path)] == [
        "00000",
        "00001-generated-ngf64-ndf64",
        "00007-old",
        "00008",
    ]


def test_runs_truncate_after_step_drops_later_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (10, 20, 30)] + ['{"step": 4']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert runs.truncate_after_step(path, 20) == 2
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [10, 20]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_runs_write_json_atomic_creates_parents_and_keeps_key_order(tmp_path: Path) -> None:
    path = runs.write_json_atomic(tmp_path / "run" / "config.json", {"z": 1, "a": 2})
    assert list(json.loads(path.read_text())) == ["z", "a"]
    sorted_path = runs.write_json_atomic(tmp_path / "s.json", {"z": 1, "a": 2}, sort_keys=True)
    assert list(json.loads(sorted_path.read_text())) == ["a", "z"]
