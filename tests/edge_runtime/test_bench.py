"""The benchmark runs end to end on the tiny bundle and reports every figure (never judges)."""

from __future__ import annotations

import json
import math

from edge_runtime.cli import main


def test_bench_reports_every_figure_for_every_variant(tiny_bundle, capsys) -> None:
    argv = ["bench", "--bundle", str(tiny_bundle), "--iters", "8", "--batch", "4", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["variants"]) == {"fp32", "int8"}
    for figures in report["variants"].values():
        for key in ("unseen_p50_ms", "unseen_p99_ms", "cached_p50_ms", "cached_p99_ms",
                    "batch_unseen_images_per_s", "batch_cached_images_per_s"):  # fmt: skip
            assert math.isfinite(figures[key]) and figures[key] > 0
    assert report["serial"]["serial_ping_p50_ms"] > 0
    startup = report["startup"]
    assert startup["exit_status"] == 0 and startup["startup_to_ready_s"] > 0
    assert startup["rss_mb"] > 10
    assert report["auto_precision"] in ("fp32", "int8")


def test_bench_prints_a_table_with_ratios(tiny_bundle, capsys) -> None:
    argv = ["bench", "--bundle", str(tiny_bundle), "--iters", "5", "--batch", "2",
            "--skip-serial", "--skip-startup"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "int8/fp32" in out and "unseen_p50_ms" in out and "target" in out
