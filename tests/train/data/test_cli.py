"""`python -m train data …` dispatch, and the benchmark's output format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import cli as train_cli
from train.data import bench
from train.data import cli as data_cli


def test_data_cli_lists_every_subcommand_and_rejects_unknown_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert data_cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("synth", "convert-cub", "convert-oxford", "import-peer", "info", "bench"):
        assert name in out
    assert data_cli.main(["render"]) == 2
    assert "unknown subcommand 'render'" in capsys.readouterr().err
    assert data_cli.main([]) == 2


def test_train_cli_routes_data_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.h5"
    args = ["data", "synth", "--out", str(out), "--train", "12", "--test", "3", "--unseen", "3"]
    assert train_cli.main([*args, "--workers", "1"]) == 0
    capsys.readouterr()
    assert train_cli.main(["data", "info", str(out), "--verify"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["splits"]["train"]["images"] == 12
    assert described["splits"]["test_unseen"]["captions_per_image"] == 10
    assert described["num_classes"] == 864


def test_data_bench_prints_one_json_object_per_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--train", "16", "--test", "4", "--unseen", "4", "--sample", "8", "--peer-images", "3"]
    assert bench.main([*argv, "--workers", "2", "--keep", str(tmp_path / "b.h5")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    metrics = [line["metric"] for line in lines]
    assert metrics == [
        "machine",
        "render_ms_per_image",
        "captions_ms_per_image",
        "synth_seconds",
        "read_split_train_seconds",
        "peer_read_ms_per_image",
        "peer_read_ms_per_image",
        "peer_read_thread_speedup",
    ]
    assert all(line.get("value", 1) > 0 for line in lines)
    assert (tmp_path / "b.h5").is_file()
