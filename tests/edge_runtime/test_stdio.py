"""edge_runtime.stdio: bounded stdin lines and a quiet end on a closed stdout, for every CLI."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.stdio import BadLine, bounded_lines

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_bundle"
HAS_TORCH = importlib.util.find_spec("torch") is not None
PEAK_MB = (
    # VmHWM, not getrusage's ru_maxrss: after fork + exec Linux keeps the parent's (pytest's)
    # high-water mark in ru_maxrss, while VmHWM belongs to this process image alone.
    "import re, sys\n"
    "from edge_runtime.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print(int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) // 1024, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)
"""Runs `rescue-edge ARGS` and prints its peak resident memory in MB as stderr's last line."""


def test_bounded_lines_skips_a_long_line_without_holding_it() -> None:
    long = b"x" * 5_000_000
    stream = io.BufferedReader(io.BytesIO(b"short one\n" + long + b"\nnext\n\xff\xfe\nlast"))
    got = list(bounded_lines(stream, 100))
    assert got == [
        "short one\n",
        BadLine("longer than 100 bytes; skipped"),
        "next\n",
        BadLine("not UTF-8 (byte 0)"),
        "last",
    ]


def test_bounded_lines_accepts_a_line_of_exactly_the_limit() -> None:
    text = "a" * 64
    assert list(bounded_lines(io.StringIO(f"{text}\n{text}b\n"), 64)) == [
        f"{text}\n",
        BadLine("longer than 64 bytes; skipped"),
    ]


def test_serve_stdin_memory_stays_bounded_on_a_huge_line(tmp_path: Path) -> None:
    # 200 MB without a newline, then a real caption: the huge line is refused in pieces (peak
    # memory far below its size) and the next line is still served.
    argv = [sys.executable, "-c", PEAK_MB, "serve", "--stdin", "--bundle", str(TINY),
            "--out", str(tmp_path), "--precision", "fp32", "--no-fsync"]  # fmt: skip
    child = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdin is not None
    chunk = b"y" * (1 << 20)
    try:
        for _ in range(200):
            child.stdin.write(chunk)
        child.stdin.write(b"\nperson in red\n")
    finally:
        child.stdin.close()
    assert child.stdout is not None and child.stderr is not None
    out, err = child.stdout.read(), child.stderr.read()
    child.wait(timeout=120)
    lines = err.decode().strip().splitlines()
    peak_mb = int(lines[-1])
    print(f"serve --stdin, 200 MB line: peak RSS {peak_mb} MB")
    assert child.returncode == 1  # one failed line
    assert "line 1: longer than 512 bytes; skipped" in lines[0]
    replies = out.decode().split("\n")
    assert replies[0] == "" and replies[1].endswith(".png")
    assert peak_mb < 200


@pytest.mark.parametrize(
    "argv",
    [
        ["edge_runtime", "info", str(TINY)],
        ["edge_runtime", "--help"],
        pytest.param(
            ["train", "--help"], marks=pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
        ),
        pytest.param(
            ["export", "--help"], marks=pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
        ),
    ],
)
def test_cli_ends_quietly_when_stdout_is_closed(argv: list[str]) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader is gone before the command writes (`| head -0`)
    err = child.stderr.read().decode()
    assert child.wait(timeout=60) in (0, 1)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
