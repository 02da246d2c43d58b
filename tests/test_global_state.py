"""The suite's guard against order dependence: what a test changes process-wide is put back."""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import signal

import numpy as np
import pytest
from global_state import GlobalState

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_global_state_restores_what_a_command_main_changes(tmp_path) -> None:
    state = GlobalState.capture()
    before_random, before_numpy = random.random(), np.random.random()
    random.setstate(state.python_random)  # type: ignore[arg-type]
    np.random.set_state(state.numpy_random)
    leaked = logging.StreamHandler()
    previous_sigterm = signal.getsignal(signal.SIGTERM)

    os.environ["RESCUE_T2I_LEAK"] = "1"
    os.chdir(tmp_path)
    random.seed(123)
    np.random.seed(123)
    logging.root.addHandler(leaked)
    logging.root.setLevel(logging.DEBUG - 1)
    logging.getLogger("train.some_command").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: None)

    changed = state.restore()

    assert "RESCUE_T2I_LEAK" not in os.environ
    assert os.getcwd() == state.cwd
    assert (random.random(), np.random.random()) == (before_random, before_numpy)
    assert leaked not in logging.root.handlers
    assert logging.root.level == state.root_level
    assert logging.getLogger("train.some_command").level == state.logger_levels.get(
        "train.some_command", logging.NOTSET
    )
    assert signal.getsignal(signal.SIGTERM) is previous_sigterm
    for name in ("environment", "working directory", "root logging level", "handler of SIGTERM"):
        assert name in changed


def test_global_state_reports_nothing_when_nothing_changed() -> None:
    state = GlobalState.capture()
    random.random()  # drawing numbers moves the RNG but is not a leak worth naming
    assert state.restore() == []


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_global_state_restores_torch_threads_dtype_and_rng() -> None:
    import torch

    state = GlobalState.capture()
    expected_draw = torch.rand(3)
    torch.set_rng_state(state.torch_state["rng"])
    threads = torch.get_num_threads()

    torch.set_num_threads(1 if threads > 1 else 2)  # what `--threads 1` does in-process
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(99)
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)

    changed = state.restore()

    assert torch.get_num_threads() == threads
    assert torch.get_default_dtype() == torch.float32
    assert torch.is_grad_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.rand(3), expected_draw)
    for name in ("torch threads", "torch default dtype", "torch grad mode"):
        assert name in changed
