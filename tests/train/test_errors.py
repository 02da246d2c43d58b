"""One error family: every "your input is wrong" error derives from train.errors.InputError, each
main reports it as one line with exit 2, and a bare ValueError (a bug) is never swallowed."""

from __future__ import annotations

import pytest

from train import checkpoint, distributed, errors, recipe
from train.data import convert, schema
from train.gan import loop
from train.quality import evaluate, metrics, oracle


@pytest.mark.parametrize(
    "error",
    [
        schema.DataError,
        convert.ItemError,
        convert.UsageError,
        checkpoint.CheckpointError,
        errors.ConfigError,
        distributed.DeviceError,
        oracle.OracleError,
        evaluate.EvalError,
        metrics.MetricUnavailableError,
        recipe.RecipeError,
    ],
)
def test_errors_every_bad_input_error_is_an_input_error(error: type[Exception]) -> None:
    assert issubclass(error, errors.InputError)
    assert issubclass(error, errors.BAD_INPUT)


def test_errors_first_line_is_the_first_non_empty_line() -> None:
    assert errors.first_line(RuntimeError("\n  zip: bad member\nframe 2\n")) == "zip: bad member"
    assert errors.first_line(KeyError()) == "KeyError"


def test_errors_main_reports_input_errors_in_one_line_and_lets_bugs_raise(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def bad_input(*args: object, **kwargs: object) -> None:
        raise schema.DataError("data.h5:/train/images: shape (2, 8, 8) is not (N, H, W, 3)")

    monkeypatch.setattr(loop, "train", bad_input)
    assert loop.main(["--dry-run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "rescue-train gan: data.h5:/train/images: shape (2, 8, 8) is not (N, H, W, 3)\n"

    def bug(*args: object, **kwargs: object) -> None:
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(loop, "train", bug)
    with pytest.raises(ValueError, match="internal invariant"):
        loop.main(["--dry-run", "--no-progress"])
