"""`--amp auto` uses bf16 where the hardware computes it (CUDA, AVX-512 BF16 / AMX CPUs) and fp32
where bf16 would be emulated; an explicit choice is kept."""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path

import pytest

from train import distributed
from train.gan import config as gan_config
from train.gan.config import GanTrainConfig, validate


@pytest.mark.parametrize(("bf16_hardware", "expected"), [(True, "bf16"), (False, "off")])
def test_amp_auto_on_cpu_follows_the_bf16_hardware(monkeypatch, bf16_hardware, expected) -> None:
    monkeypatch.setattr(gan_config, "cpu_computes_bf16", lambda: bf16_hardware)
    config = validate(GanTrainConfig(device="cpu", embedding_cache="off"))
    assert config.amp == expected and config.use_amp == (expected == "bf16")


def test_amp_auto_keeps_fp32_for_several_cpu_processes(monkeypatch) -> None:
    monkeypatch.setattr(gan_config, "cpu_computes_bf16", lambda: True)
    config = validate(GanTrainConfig(device="cpu", embedding_cache="off", batch_size=8), 2)
    assert config.amp == "off"


def test_amp_explicit_choice_is_kept_and_emulated_bf16_warns(monkeypatch, caplog) -> None:
    monkeypatch.setattr(gan_config, "cpu_computes_bf16", lambda: True)
    assert validate(GanTrainConfig(device="cpu", amp="off", embedding_cache="off")).amp == "off"
    monkeypatch.setattr(gan_config, "cpu_computes_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="train.gan.config"):
        config = validate(GanTrainConfig(device="cpu", amp="bf16", embedding_cache="off"))
    assert config.amp == "bf16" and "emulated" in caplog.text


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(), reason="x86 Linux only"
)
def test_cpu_computes_bf16_matches_the_cpus_own_flags() -> None:
    flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    assert flags is not None
    has_bf16 = bool({"avx512_bf16", "amx_bf16", "amx_tile"} & set(flags.group(1).split()))
    assert distributed.cpu_computes_bf16() is has_bf16
