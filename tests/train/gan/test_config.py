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


def _resolved(**fields) -> GanTrainConfig:
    return validate(GanTrainConfig(device="cpu", embedding_cache="off", **fields))


TERMS = (
    "nonsat_weight", "wrong_weight", "fake_weight", "int_weight", "fm_weight", "match_weight",
    "l1_weight", "ms_weight", "open_weight", "label_smoothing", "hard_negative_fraction",
)  # fmt: skip


def test_objective_default_resolves_to_the_weights_trained_before_objectives_had_names() -> None:
    c = _resolved()
    assert c.objective == "default"
    assert {k: getattr(c, k) for k in TERMS} == {
        "nonsat_weight": 1.0, "wrong_weight": 0.5, "fake_weight": 0.5, "int_weight": 1.0,
        "fm_weight": 1.0, "match_weight": 1.0, "l1_weight": 0.0, "ms_weight": 0.0,
        "open_weight": 0.0, "label_smoothing": 0.0, "hard_negative_fraction": 0.0,
    }  # fmt: skip


def test_objective_paper_is_reeds_gan_cls_and_gan_int_weighted_per_sample() -> None:
    c = _resolved(objective="paper")
    assert (c.wrong_weight, c.fake_weight) == (0.5, 0.5)
    assert c.fm_weight == c.match_weight == c.l1_weight == c.ms_weight == c.open_weight == 0.0
    assert c.label_smoothing == c.hard_negative_fraction == 0.0
    # One BCE mean over B right-text + B/2 interpolated fakes: each sample weighs 1/(3B/2).
    assert c.nonsat_weight == pytest.approx(2 / 3) and c.int_weight == pytest.approx(1 / 3)
    b, n = 64, 32
    assert c.nonsat_weight / b == pytest.approx(c.int_weight / n)  # 1:1 per sample
    quarter = _resolved(objective="paper", int_fraction=0.25)
    assert quarter.nonsat_weight / 64 == pytest.approx(quarter.int_weight / 16)
    # Today's default weighs an interpolated sample 2× a right-text one.
    d = _resolved()
    assert (d.int_weight / n) / (d.nonsat_weight / b) == pytest.approx(2.0)


def test_objective_seed_is_the_paper_plus_feature_matching() -> None:
    paper, seed = _resolved(objective="paper"), _resolved(objective="seed")
    differs = {k for k in TERMS if getattr(paper, k) != getattr(seed, k)}
    assert differs == {"fm_weight"} and seed.fm_weight == 1.0


def test_objective_weight_flags_override_and_resolved_weights_reach_the_saved_config() -> None:
    c = _resolved(objective="paper", fm_weight=0.25, int_weight=0.0)
    assert c.fm_weight == 0.25 and c.int_weight == 0.0 and c.nonsat_weight == pytest.approx(2 / 3)
    saved = gan_config.config_to_dict(c)
    assert all(saved[k] is not None for k in TERMS) and saved["objective"] == "paper"
    assert gan_config.config_from_checkpoint(saved, "x.pt") == c
    # A checkpoint from before objectives had names: its explicit weights, none of the new terms.
    old = {k: v for k, v in saved.items() if k not in ("objective", "nonsat_weight")}
    old.update(fm_weight=1.0, match_weight=1.0, int_weight=1.0)
    legacy = gan_config.config_from_checkpoint(old, "old.pt")
    assert legacy.objective == "default" and legacy.nonsat_weight == 1.0


def test_objective_flags_parse_and_bad_values_name_the_flag() -> None:
    parser = gan_config.build_parser()
    args = vars(parser.parse_args(["--objective", "seed", "--fm-weight", "2"]))
    assert args == {"objective": "seed", "fm_weight": 2.0, "resume": None}
    assert set(gan_config.OBJECTIVES) == {"paper", "seed", "default"}
    with pytest.raises(gan_config.ConfigError, match=r"^--int-weight -1.0: must be ≥ 0"):
        _resolved(objective="paper", int_weight=-1.0)
    assert "per --objective" in parser.format_help()
