"""Run a command-line `main` in a child process and read back its peak resident memory.

VmHWM from /proc/self/status rather than getrusage's ru_maxrss: after fork + exec Linux keeps the
parent's high-water mark in the child's ru_maxrss (a child of a 350 MB pytest reported 350 MB
while doing nothing), while VmHWM belongs to the new process image alone.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

_WRAPPER = """
import importlib, re, sys
module, argv = sys.argv[1], sys.argv[2:]
try:
    status = importlib.import_module(module).main(argv)
finally:
    hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
    sys.stderr.write(f"PEAK_KB {hwm}\\n")
sys.exit(status)
"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr_lines: list[str]
    """The command's own stderr lines (the peak-memory line removed)."""
    peak_mb: float


def run_main(module: str, argv: list[str], timeout: float = 60, **kwargs: Any) -> Run:
    """`module.main(argv)` in a fresh interpreter; raises subprocess.TimeoutExpired on a hang."""
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, module, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    lines = done.stderr.splitlines()
    peak = [line for line in lines if line.startswith("PEAK_KB ")]
    rest = [line for line in lines if not line.startswith("PEAK_KB ")]
    peak_mb = int(peak[-1].split()[1]) / 1024 if peak else float("nan")
    return Run(done.returncode, done.stdout, rest, peak_mb)
