"""`rescue-edge` commands called through `main(argv)`, as a shell would run them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.images import decode_png

CAPTION = "survivor in an orange jacket lying on rubble, left side"


def test_cli_generate_writes_decodable_pngs_and_prints_their_paths(
    tiny_bundle, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    assert main(["generate", CAPTION, "-n", "3", "--seed", "4", "--bundle", str(tiny_bundle),
                 "--out", str(out)]) == 0  # fmt: skip
    paths = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert len(paths) == 3 and sorted(paths) == sorted(out.iterdir())
    for path in paths:
        image = decode_png(path.read_bytes())
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert path.name.endswith(f"_cli_s4_{paths.index(path)}.png")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_cli_generate_same_seed_same_pixels(tiny_bundle, tmp_path, capsys, precision) -> None:
    runs = []
    for name, seed in (("a", "21"), ("b", "21"), ("c", "22")):
        argv = ["generate", CAPTION, "--seed", seed, "--bundle", str(tiny_bundle),
                "--precision", precision, "--out", str(tmp_path / name)]  # fmt: skip
        assert main(argv) == 0
        (path,) = capsys.readouterr().out.split()
        runs.append(decode_png(Path(path).read_bytes()))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_cli_generate_upscales_and_draws_a_sheet(tiny_bundle, tmp_path, capsys) -> None:
    argv = ["generate", CAPTION, "-n", "2", "--seed", "1", "--upscale", "128", "--sheet",
            "--bundle", str(tiny_bundle), "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    *images, sheet = [Path(p) for p in capsys.readouterr().out.split()]
    assert [decode_png(p.read_bytes()).shape for p in images] == [(128, 128, 3)] * 2
    assert sheet.name.endswith("_sheet.png")
    sheet_image = decode_png(sheet.read_bytes())
    assert sheet_image.shape[0] > 128 and sheet_image.shape[1] >= 2 * 128


def test_cli_generate_show_says_plainly_when_there_is_no_gui(
    tiny_bundle, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    argv = ["generate", CAPTION, "--show", "--bundle", str(tiny_bundle), "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert len(captured.out.split()) == 1  # the file is still written and printed
    understood, *_, message = captured.err.strip().splitlines()  # the read-back comes first
    assert understood.startswith("understood as: ")
    assert message.startswith("rescue-edge: --show: ") and "written" in message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "🚑"], "caption is empty after normalisation"),
        (["generate", CAPTION, "-n", "0"], "-n: must be 1..256, got 0"),
        (["generate", CAPTION, "--seed", "-3"], "--seed: must be 0..4294967295, got -3"),
        (["generate", CAPTION, "--upscale", "8"], "--upscale: must be 16..4096, got 8"),
        (["generate", CAPTION, "--precision", "fp16"], "--precision fp16: bundle"),
        (["serve", "--serial", "/dev/null", "--queue", "0"], "--queue: must be 1..1024"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(tiny_bundle, tmp_path, capsys, argv, message) -> None:
    assert main([*argv, "--bundle", str(tiny_bundle), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rescue-edge: ") and message in err
    assert not (tmp_path / "o").exists()


def test_cli_finds_the_bundle_from_the_environment(tiny_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RESCUE_EDGE_BUNDLE", str(tmp_path / "nowhere"))
    assert main(["generate", CAPTION, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nowhere: no bundle there ($RESCUE_EDGE_BUNDLE)" in err
    monkeypatch.setenv("RESCUE_EDGE_BUNDLE", str(tiny_bundle))
    monkeypatch.setenv("RESCUE_EDGE_OUT", str(tmp_path / "env-out"))
    assert main(["generate", CAPTION]) == 0
    assert Path(capsys.readouterr().out.strip()).parent == tmp_path / "env-out"


def test_cli_generate_into_an_unusable_directory_fails_in_one_line(
    tiny_bundle, tmp_path, capsys
) -> None:
    (tmp_path / "file").write_text("x")
    argv = ["generate", CAPTION, "--bundle", str(tiny_bundle), "--out", str(tmp_path / "file")]
    assert main(["-q", *argv]) == 1  # -q: errors only, the read-back lines too are left out
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err


def test_cli_serve_stdin_answers_one_line_per_caption(
    tiny_bundle, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{CAPTION}\n\n🚑\nfirefighter on a roof\n"))
    argv = ["serve", "--stdin", "-n", "2", "--seed", "3", "--bundle", str(tiny_bundle),
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 1  # one caption could not be drawn
    captured = capsys.readouterr()
    lines = captured.out.split("\n")[:-1]
    assert len(lines) == 3 and lines[1] == ""
    for line in (lines[0], lines[2]):
        paths = line.split("\t")
        assert len(paths) == 2
        assert all(decode_png(Path(p).read_bytes()).shape == (64, 64, 3) for p in paths)
    assert "line 3: caption is empty after normalisation" in captured.err


def test_cli_info_verifies_and_measures(tiny_bundle, capsys) -> None:
    assert main(["info", str(tiny_bundle), "--measure"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["name"] == "tiny" and set(summary["variants"]) == {"fp32", "int8"}
    measured = summary["measured_here"]
    assert measured["auto_picks"] in ("fp32", "int8")
    assert set(measured["caption_to_image_median_ms"]) == {"fp32", "int8"}


def test_cli_runs_as_a_module(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "generate", "--help"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0 and "--upscale PX" in result.stdout
