"""Flags declared once on a config dataclass: parser, ranges and resume all come from it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from train.errors import ConfigError
from train.options import REQUIRED, build_parser, check_ranges, option, resume_config


@dataclass(frozen=True)
class Toy:
    width: int = option(64, "network width", group="networks", at_least=1)
    rate: float = option(0.5, "a fraction", at_least=0, at_most=1)
    smoothing: float = option(0.0, "label smoothing", at_least=0, below=0.5)
    decay: float = option(0.5, "decay factor", above=0, at_most=1)
    mode: str = option("text", "mismatch mode", choices=("text", "image"))
    flip: bool = option(True, "random flips")
    steps: int | None = option(None, "step cap", at_least=1)
    dry_run: bool = option(False, "one step", show_default=False, store_true=True)


def test_options_parser_has_one_flag_per_field_with_type_default_and_toggles() -> None:
    parser = build_parser(Toy, argparse.ArgumentParser(prog="toy"))
    given = vars(parser.parse_args(["--width", "8", "--no-flip", "--steps", "3", "--dry-run"]))
    assert given == {"width": 8, "flip": False, "steps": 3, "dry_run": True}  # only what was given
    assert Toy(**given) == Toy(width=8, flip=False, steps=3, dry_run=True)
    text = parser.format_help()
    assert "network width (default: 64)" in text and "networks:" in text
    assert "--flip, --no-flip" in text and "one step (default" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "audio"])  # choices come from the declaration


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 0}, "--width 0: must be ≥ 1"),
        ({"rate": 1.5}, "--rate 1.5: must lie in [0, 1]"),
        ({"smoothing": 0.5}, "--smoothing 0.5: must lie in [0, 0.5)"),
        ({"decay": 0.0}, "--decay 0.0: must lie in (0, 1]"),
        ({"mode": "audio"}, '--mode audio: must be "text" or "image"'),
        ({"steps": 0}, "--steps 0: must be ≥ 1"),
    ],
)
def test_options_check_ranges_names_the_flag_and_the_range(changes: dict, message: str) -> None:
    check_ranges(Toy())  # the defaults are in range
    with pytest.raises(ConfigError) as err:
        check_ranges(Toy(**changes))
    assert str(err.value) == message


def test_options_resume_config_allows_only_the_named_overrides() -> None:
    saved = Toy(width=16, steps=100)
    assert resume_config(saved, {"steps": 200, "width": 16}, {"steps"}) == Toy(width=16, steps=200)
    with pytest.raises(ConfigError, match="--width 32: differs from the resumed run's 16"):
        resume_config(saved, {"width": 32}, {"steps"})


@dataclass(frozen=True)
class Judged:
    oracle: str | None = option(None, "judge with this", exclusive="judge", metavar="CKPT")
    train_oracle: bool = option(False, "train a judge", store_true=True, exclusive="judge")


def test_options_exclusive_flags_cannot_be_given_together(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser(Judged, argparse.ArgumentParser(prog="toy"), given_only=False)
    assert vars(parser.parse_args(["--train-oracle"])) == {"oracle": None, "train_oracle": True}
    assert "[--oracle CKPT | --train-oracle]" in parser.format_usage()
    with pytest.raises(SystemExit):
        parser.parse_args(["--oracle", "o.pt", "--train-oracle"])
    assert "not allowed with argument --oracle" in capsys.readouterr().err


@dataclass(frozen=True)
class Copy:
    source: Path = option(REQUIRED, "file to copy", required=True)
    out: Path = option(REQUIRED, "where to write it", required=True)
    force: bool = option(False, "replace --out", store_true=True)


def test_options_required_flags_must_be_given_and_have_no_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser(Copy, argparse.ArgumentParser(prog="toy"), given_only=False)
    given = vars(parser.parse_args(["--source", "a.h5", "--out", "b"]))
    assert Copy(**given) == Copy(source=Path("a.h5"), out=Path("b"))  # typed by the annotation
    with pytest.raises(TypeError):
        Copy()  # type: ignore[call-arg]  # no default: code must name them too
    assert "usage: toy [-h] --source SOURCE --out OUT [--force]" in parser.format_usage()
    assert "file to copy\n" in parser.format_help()  # no "(default: …)" for a required flag
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "b"])
    assert "the following arguments are required: --source" in capsys.readouterr().err


def test_options_required_is_declared_with_the_required_default_only() -> None:
    with pytest.raises(TypeError, match="REQUIRED"):
        option(REQUIRED, "no flag says it is required")
    with pytest.raises(TypeError, match="REQUIRED"):
        option(Path("x"), "a default makes required meaningless", required=True)


@dataclass(frozen=True)
class Source:
    checkpoint: str | None = option(None, "a checkpoint", exclusive="source", required=True)
    bundle: str | None = option(None, "a bundle", exclusive="source", required=True)


def test_options_a_required_exclusive_group_takes_exactly_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser(Source, argparse.ArgumentParser(prog="toy"), given_only=False)
    assert vars(parser.parse_args(["--bundle", "b"])) == {"checkpoint": None, "bundle": "b"}
    assert "usage: toy [-h] (--checkpoint CHECKPOINT | --bundle BUNDLE)" in parser.format_usage()
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "one of the arguments --checkpoint --bundle is required" in capsys.readouterr().err
    with pytest.raises(TypeError, match="exclusive group needs a default"):
        option(REQUIRED, "either", exclusive="source", required=True)


def test_options_ranges_in_parser_reject_in_argparse_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser(Toy, argparse.ArgumentParser(prog="toy"), ranges_in_parser=True)
    assert vars(parser.parse_args(["--width", "3", "--rate", "1"])) == {"width": 3, "rate": 1.0}
    for argv, message in [
        (["--width", "0"], "argument --width: --width 0: must be ≥ 1"),
        (["--rate", "nan"], "argument --rate: --rate nan: must lie in [0, 1]"),
        (["--width", "many"], "argument --width: invalid int value: 'many'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_options_nan_is_outside_every_range() -> None:
    with pytest.raises(ConfigError, match="--rate nan: must lie in"):
        check_ranges(Toy(rate=float("nan")))
    with pytest.raises(ConfigError, match="--width nan: must be ≥ 1"):
        check_ranges(Toy(width=float("nan")))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Describe:
    path: Path = option(REQUIRED, "file to describe", positional=True)
    timeout: float = option(600.0, "seconds", above=0)


def test_options_positional_arguments_are_required_and_named_by_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser(Describe, argparse.ArgumentParser(prog="toy"), given_only=False)
    given = vars(parser.parse_args(["--timeout", "5", "a.h5"]))
    assert Describe(**given) == Describe(path=Path("a.h5"), timeout=5.0)
    assert "usage: toy [-h] [--timeout TIMEOUT] path" in parser.format_usage()
    assert "  path               file to describe\n" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "the following arguments are required: path" in capsys.readouterr().err
    with pytest.raises(TypeError, match="REQUIRED"):
        option(Path("x"), "a positional argument is always given", positional=True)
