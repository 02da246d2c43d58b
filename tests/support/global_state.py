"""Process-wide state that a command's `main`, called in-process by a test, may change.

`python -m train gan --threads 1` is right to set torch's thread count for its process; inside
pytest that process is the whole suite, and the next test file would run its convolutions on one
thread instead of two (a different kernel choice, so last-bit differences). The root conftest
snapshots this state before every test and restores it after (docs/PROTOCOL.md § Determinism).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Signals a command installs handlers for (train's trainers and `rescue-edge serve`).
_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s)


def _torch() -> Any:
    """torch if some test already imported it; never imported here (the robot venv has none)."""
    return sys.modules.get("torch")


def _is_pytest_handler(handler: logging.Handler) -> bool:
    # pytest installs and removes its capture handlers per test phase (setup / call / teardown),
    # so the handlers present at teardown are not those present at setup: leave pytest's alone.
    return type(handler).__module__.startswith("_pytest")


@dataclass
class GlobalState:
    """A snapshot of the state; `restore()` puts it back and says what had leaked."""

    environ: dict[str, str]
    cwd: str
    python_random: object
    numpy_random: dict[str, Any]
    root_level: int
    root_handlers: list[logging.Handler]
    logging_disabled: int
    logger_levels: dict[str, int]
    signal_handlers: dict[int, Any]
    torch_state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(cls) -> GlobalState:
        loggers = logging.Logger.manager.loggerDict
        state = cls(
            environ=dict(os.environ),
            cwd=os.getcwd(),
            python_random=random.getstate(),
            numpy_random=np.random.get_state(legacy=False),
            root_level=logging.root.level,
            root_handlers=list(logging.root.handlers),
            logging_disabled=logging.root.manager.disable,
            logger_levels={
                name: lg.level for name, lg in loggers.items() if isinstance(lg, logging.Logger)
            },
            signal_handlers={s: signal.getsignal(s) for s in _SIGNALS},
        )
        torch = _torch()
        if torch is not None:
            state.torch_state = {
                "threads": torch.get_num_threads(),
                "default_dtype": torch.get_default_dtype(),
                "rng": torch.get_rng_state(),
                "deterministic": torch.are_deterministic_algorithms_enabled(),
                "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
                "matmul_precision": torch.get_float32_matmul_precision(),
                "grad_enabled": torch.is_grad_enabled(),
            }
        return state

    def restore(self) -> list[str]:
        """Put every captured value back; returns the names of those that had changed."""
        changed: list[str] = []
        if dict(os.environ) != self.environ:
            changed.append("environment")
            os.environ.clear()
            os.environ.update(self.environ)
        if os.getcwd() != self.cwd:
            changed.append("working directory")
            os.chdir(self.cwd)
        # RNG states are restored without comparing: a test that drew numbers moved them, and
        # that is not a leak worth reporting, but the next test must not inherit the position.
        random.setstate(self.python_random)  # type: ignore[arg-type]
        np.random.set_state(self.numpy_random)
        self._restore_logging(changed)
        for signum, handler in self.signal_handlers.items():
            if signal.getsignal(signum) is not handler and handler is not None:
                changed.append(f"handler of {signal.Signals(signum).name}")
                signal.signal(signum, handler)
        torch = _torch()
        if torch is not None and self.torch_state:
            self._restore_torch(torch, changed)
        return changed

    def _restore_logging(self, changed: list[str]) -> None:
        root = logging.root
        if root.level != self.root_level:
            changed.append("root logging level")
            root.setLevel(self.root_level)
        for handler in list(root.handlers):
            if handler not in self.root_handlers and not _is_pytest_handler(handler):
                changed.append(f"root logging handler {type(handler).__name__}")
                root.removeHandler(handler)
                handler.close()
        if root.manager.disable != self.logging_disabled:
            changed.append("logging.disable")
            logging.disable(self.logging_disabled)
        for name, lg in logging.Logger.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                level = self.logger_levels.get(name, logging.NOTSET)
                if lg.level != level:
                    changed.append(f"level of logger {name!r}")
                    lg.setLevel(level)

    def _restore_torch(self, torch: Any, changed: list[str]) -> None:
        s = self.torch_state
        if torch.get_num_threads() != s["threads"]:
            changed.append("torch threads")
            torch.set_num_threads(s["threads"])
        if torch.get_default_dtype() != s["default_dtype"]:
            changed.append("torch default dtype")
            torch.set_default_dtype(s["default_dtype"])
        torch.set_rng_state(s["rng"])
        if (
            torch.are_deterministic_algorithms_enabled() != s["deterministic"]
            or torch.is_deterministic_algorithms_warn_only_enabled() != s["deterministic_warn_only"]
        ):
            changed.append("torch deterministic algorithms")
            torch.use_deterministic_algorithms(
                s["deterministic"], warn_only=s["deterministic_warn_only"]
            )
        if torch.get_float32_matmul_precision() != s["matmul_precision"]:
            changed.append("torch float32 matmul precision")
            torch.set_float32_matmul_precision(s["matmul_precision"])
        if torch.is_grad_enabled() != s["grad_enabled"]:
            changed.append("torch grad mode")
            torch.set_grad_enabled(s["grad_enabled"])
