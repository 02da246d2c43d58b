"""The CPU a figure was measured on, in one line: model, logical CPUs and the instruction sets
that change our speeds (bf16 autocast pays only with AVX-512 BF16 / AMX; int8 with VNNI).

Figures from different CPU families are not comparable (docs/QUALITY.md § 3.17: the same
60-minute recipe bought 5,059 GAN steps in fp32 on an AVX2 Zen 3 and 9,552 in bf16 on an
AVX-512 BF16 EPYC), so every benchmark and report names the CPU with this. Standard library
only: the robot's benchmark, export's and the trainer's reports share it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

INSTRUCTION_SETS: tuple[tuple[str, str], ...] = (
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_bf16", "BF16"),
    ("amx_tile", "AMX"),
    ("asimd", "NEON"),
    ("asimddp", "dot-product"),
    ("bf16", "BF16"),
)
"""(/proc/cpuinfo flag, name shown), in the order shown: x86's `flags`, Arm's `Features`."""


@dataclass(frozen=True)
class CpuInfo:
    model: str
    """"AMD EPYC 7B13"; where the kernel gives no name, the machine type ("x86_64")."""
    family_model: str | None
    """x86 "family 25 model 1": virtual machines often show only "AMD EPYC" as the name."""
    logical_cpus: int | None
    flags: frozenset[str]

    @property
    def instruction_sets(self) -> tuple[str, ...]:
        shown: list[str] = []
        for flag, name in INSTRUCTION_SETS:
            if flag in self.flags and name not in shown:
                shown.append(name)
        return tuple(shown)

    def describe(self) -> str:
        """`AMD EPYC (family 25 model 1), 2 logical CPUs, AVX2 FMA`."""
        parts = [self.model + (f" ({self.family_model})" if self.family_model else "")]
        if self.logical_cpus:
            parts.append(f"{self.logical_cpus} logical CPUs")
        sets = self.instruction_sets
        parts.append(" ".join(sets) if sets else "none of AVX2/AVX-512/NEON")
        return ", ".join(parts)


def parse_cpuinfo(text: str, logical_cpus: int | None, fallback_model: str) -> CpuInfo:
    """A /proc/cpuinfo text: flags from the first processor's block (the cores of a box are
    alike), the board lines ("Model", "Hardware") from wherever an Arm kernel puts them."""
    first: dict[str, str] = {}
    anywhere: dict[str, str] = {}
    in_first = True
    for line in text.splitlines():
        if not line.strip():
            in_first = in_first and not first
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        anywhere.setdefault(key, value)
        if in_first:
            first.setdefault(key, value)
    # x86 gives "model name" (and a numeric "model"); a Raspberry Pi gives its board as
    # "Model : Raspberry Pi 4 Model B" and often no "model name"; other Arm kernels "Hardware".
    board = anywhere.get("model", "")
    model = (
        first.get("model name")
        or (board if board and not board.isdigit() else "")
        or anywhere.get("hardware")
        or fallback_model
    )
    family_model = None
    if "cpu family" in first and first.get("model", "").isdigit():
        family_model = f"family {first['cpu family']} model {first['model']}"
    flags = frozenset((first.get("flags") or first.get("features") or "").split())
    return CpuInfo(model, family_model, logical_cpus, flags)


def cpu_info() -> CpuInfo:
    """This machine's CPU; without a readable /proc/cpuinfo (macOS, Windows) the name Python
    knows and no flags."""
    fallback = platform.processor() or platform.machine() or "unknown CPU"
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, os.cpu_count(), fallback)
