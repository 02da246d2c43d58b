"""The one-line CPU description every benchmark and report prints beside its figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime import machine

# Abridged real /proc/cpuinfo texts: two processor blocks each, flags cut to the relevant ones.
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 bmi2 avx512f
"""
XEON_AMX = """processor\t: 0
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz
flags\t\t: avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile avx_vnni
"""
RASPBERRY_PI_4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

processor\t: 1
Features\t: fp asimd evtstrm crc32 cpuid

Hardware\t: BCM2835
Revision\t: c03114
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
JETSON_ORIN = """processor\t: 0
model name\t: ARMv8 Processor rev 1 (v8l)
Features\t: fp asimd asimddp bf16 i8mm
"""


def test_avx2_box_is_named_with_family_model_and_no_avx512() -> None:
    info = machine.parse_cpuinfo(ZEN3, 2, "x86_64")
    # Only the first processor's flags: the second block's avx512f must not leak in.
    assert info.describe() == "AMD EPYC (family 25 model 1), 2 logical CPUs, AVX2 FMA"


def test_bf16_and_amx_are_shown_where_autocast_pays() -> None:
    info = machine.parse_cpuinfo(XEON_AMX, 2, "x86_64")
    assert info.instruction_sets == ("AVX2", "FMA", "AVX-512", "VNNI", "AVX-VNNI", "BF16", "AMX")
    assert info.describe().startswith(
        "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz (family 6 model 207)"
    )


def test_arm_boards_are_named_by_their_model_line_and_features() -> None:
    pi = machine.parse_cpuinfo(RASPBERRY_PI_4, 4, "aarch64")
    assert pi.describe() == "Raspberry Pi 4 Model B Rev 1.4, 4 logical CPUs, NEON"
    assert pi.family_model is None
    orin = machine.parse_cpuinfo(JETSON_ORIN, 8, "aarch64")
    assert orin.instruction_sets == ("NEON", "dot-product", "BF16")
    assert orin.model == "ARMv8 Processor rev 1 (v8l)"


def test_no_cpuinfo_falls_back_to_what_python_knows() -> None:
    info = machine.parse_cpuinfo("", None, "arm")
    assert info.describe() == "arm, none of AVX2/AVX-512/NEON"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_any_cpuinfo_text_gives_one_line(text: str) -> None:
    line = machine.parse_cpuinfo(text, 2, "x86_64").describe()
    assert line and "\n" not in line and "\r" not in line


def test_this_machine_is_described(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert machine.cpu_info().describe()
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    info = machine.cpu_info()
    assert info.flags == frozenset() and info.model
