"""One path from flags to a frozen config: each option is declared once, on its config field.

    ngf: int = option(64, "generator width", at_least=1, group="networks")

declares the field's default, its flag (`--ngf`, from the name), help, type (the annotation), and
allowed range. `build_parser` generates the command line from the dataclass; `check_ranges`
checks a config (from flags, from a checkpoint on `--resume`, or from code) against the declared
ranges and raises `ConfigError` naming the flag; `resume_config` is a saved config plus a named
set of fields that may change. Cross-flag checks stay with each trainer, after `check_ranges`
and before any work (stylegan3's train.py; esptool's argparse `type=` validators do the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from train.errors import ConfigError

Config = TypeVar("Config")

_KEY = "train.options"


@dataclass(frozen=True)
class Option:
    """How one config field appears on the command line."""

    help: str
    group: str | None = None
    """Help section; None = the parser's own "options" section."""
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    show_default: bool = True
    """Append " (default: …)" to the help."""
    store_true: bool = False
    """A plain switch (`--dry-run`) rather than a `--x / --no-x` pair."""
    parse: Callable[[str], Any] | None = None
    """argparse `type=` for values the annotation cannot parse (e.g. "384,512,512")."""
    nargs: str | None = None
    const: Any = None
    target: tuple[str, ...] | None = None
    """For a flags dataclass: the config field this flag sets (nested: ("text_encoder", "rnn"))."""
    exclusive: str | None = None
    """Flags naming the same `exclusive` group cannot be given together (argparse says so)."""
    positional: bool = False
    """An argument named by position (`info FILE`), not a flag; required, so declared with
    `option(REQUIRED, …, positional=True)`; its name in help and errors is the field's."""
    required: bool = False
    """The flag must be given (argparse says so); declare it with `option(REQUIRED, …)`. On a
    member of an `exclusive` group: one flag of the group must be given (each keeps a default)."""

    def range_problem(self, value: Any) -> str | None:
        """Why `value` is outside the declared range or choices, else None."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            names = [f'"{c}"' for c in self.choices]
            return "must be " + (", ".join(names[:-1]) + " or " + names[-1])
        low = self.at_least if self.at_least is not None else self.above
        high = self.at_most if self.at_most is not None else self.below
        # Written as "not inside" so that NaN, which compares False to everything, is outside.
        too_low = (self.at_least is not None and not value >= self.at_least) or (
            self.above is not None and not value > self.above
        )
        too_high = (self.at_most is not None and not value <= self.at_most) or (
            self.below is not None and not value < self.below
        )
        if not (too_low or too_high):
            return None
        if low is not None and high is not None:
            left = "[" if self.at_least is not None else "("
            right = "]" if self.at_most is not None else ")"
            return f"must lie in {left}{low:g}, {high:g}{right}"
        if self.at_least is not None:
            return f"must be ≥ {self.at_least:g}"
        if self.above is not None:
            return f"must be > {self.above:g}"
        if self.at_most is not None:
            return f"must be ≤ {self.at_most:g}"
        return f"must be < {self.below:g}"


REQUIRED: Any = dataclasses.MISSING
"""The "default" of a required flag: its field gets none, as a dataclass field without one."""


def option(default: Any, help: str, **how: Any) -> Any:
    """A dataclass field whose flag is declared by `Option(help, **how)`."""
    spec = Option(help, **how)
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults need default_factory")
    if spec.exclusive is not None and default is REQUIRED:
        raise TypeError("a flag of an exclusive group needs a default: the others may be given")
    if spec.exclusive is None and (spec.required or spec.positional) != (default is REQUIRED):
        raise TypeError(
            "a required flag or positional argument is declared as "
            "option(REQUIRED, …, required=True or positional=True)"
        )
    return dataclasses.field(default=default, metadata={_KEY: spec})


def flag(field: str) -> str:
    """The flag of a config field: `batch_size` → `--batch-size`."""
    return "--" + field.replace("_", "-")


def _named(field: str, spec: Option) -> str:
    """How help and errors name a field: its flag, or a positional argument's own name."""
    return field if spec.positional else flag(field)


def options(config_type: type) -> dict[str, tuple[Option, Any, type]]:
    """field name → (its Option, default, value type) for every declared field, in order."""
    hints = typing.get_type_hints(config_type)
    out = {}
    for f in dataclasses.fields(config_type):
        spec = f.metadata.get(_KEY)
        if spec is not None:
            out[f.name] = (spec, f.default, _value_type(hints[f.name]))
    return out


def _value_type(hint: Any) -> type:
    """int for `int` and `int | None`, str for `tuple[str, ...]` (one flag, several values)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            hint = args[0]
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0]
    if isinstance(hint, type):
        return hint
    raise TypeError(f"option type {hint!r} is not a plain type")


def build_parser(
    config_type: type,
    parser: argparse.ArgumentParser,
    *,
    after: Mapping[str, Callable[[Any], None]] | None = None,
    given_only: bool = True,
    ranges_in_parser: bool = False,
) -> argparse.ArgumentParser:
    """Add one flag per declared field of `config_type` to `parser`, in field order.

    With `given_only`, flags default to `argparse.SUPPRESS`, so `vars(args)` holds only what was
    given (what `--resume` compares); otherwise to the field's default (a flags dataclass whose
    None means "not given"). `after[field](group)` adds arguments right after that field's.
    With `ranges_in_parser`, argparse itself rejects a value outside its declared range (its
    `type=` checks it, as esptool's validators do), for commands whose parser reports bad flags;
    `check_ranges` still guards configs that did not come from the parser.
    """
    declared = options(config_type)
    one_required = {s.exclusive for s, _, _ in declared.values() if s.exclusive and s.required}
    sections: dict[str | None, Any] = {None: parser}
    exclusive: dict[str, Any] = {}
    for name, (spec, default, value_type) in declared.items():
        if spec.group not in sections:
            sections[spec.group] = parser.add_argument_group(spec.group)
        group = sections[spec.group]
        if spec.exclusive is not None:
            if spec.exclusive not in exclusive:
                exclusive[spec.exclusive] = group.add_mutually_exclusive_group(
                    required=spec.exclusive in one_required
                )
            group = exclusive[spec.exclusive]
        shown = spec.show_default and not (spec.required or spec.positional)
        text = f"{spec.help} (default: {default})" if shown else spec.help
        # A positional argument's name is its dest; argparse refuses both.
        kw: dict[str, Any] = {"help": text} if spec.positional else {"dest": name, "help": text}
        if spec.required and spec.exclusive is None:
            kw["required"] = True
        elif not spec.positional:
            kw["default"] = argparse.SUPPRESS if given_only else default
        if spec.store_true:
            kw["action"] = "store_true"
        elif value_type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            if spec.parse is not None or value_type is not str:
                kw["type"] = spec.parse or value_type
            if ranges_in_parser and spec.choices is None:
                kw["type"] = _in_range(name, spec, kw.get("type", str))
            if spec.nargs is not None:
                kw["nargs"] = spec.nargs
            if spec.nargs == "?":
                kw["const"] = spec.const
            if spec.metavar is not None:
                kw["metavar"] = spec.metavar
            if spec.choices is not None:
                kw["choices"] = spec.choices
        group.add_argument(_named(name, spec), **kw)
        if after and name in after:
            after[name](group)
    return parser


def _in_range(name: str, spec: Option, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse `type=`: `parse`, then the declared range ("--flag value: must …")."""

    def checked(text: str) -> Any:
        value = parse(text)
        problem = spec.range_problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{_named(name, spec)} {value}: {problem}")
        return value

    # argparse names a value `parse` rejects by the function's name: "invalid int value: 'x'".
    checked.__name__ = getattr(parse, "__name__", repr(parse))
    return checked


def check_ranges(config: Any) -> None:
    """Raise `ConfigError` ("--flag value: must …") for the first field outside its range."""
    for name, (spec, _, _) in options(type(config)).items():
        value = getattr(config, name)
        problem = spec.range_problem(value)
        if problem:
            raise ConfigError(f"{_named(name, spec)} {value}: {problem}")


def resume_config(saved: Config, given: Mapping[str, Any], resumable: Collection[str]) -> Config:
    """The saved config with the given flags applied; a flag outside `resumable` may only
    repeat the saved value (anything else would change the steps already taken)."""
    for name, value in given.items():
        if name not in resumable and value != getattr(saved, name):
            raise ConfigError(
                f"{flag(name)} {value}: differs from the resumed run's {getattr(saved, name)!r}; "
                "--resume continues the saved run (only stop conditions, logging and device "
                "may change)"
            )
    return dataclasses.replace(saved, **given)  # type: ignore[type-var]
