"""Test tiers: pure (no torch) always runs; torch tests skip themselves where torch is absent
(the robot install); GPU tests are marked `gpu` and skip without CUDA."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from global_state import GlobalState

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROBOT_INSTALL = os.environ.get("RESCUE_ROBOT_INSTALL") == "1"
HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = False
    if HAS_TORCH:
        import torch

        has_cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def restore_global_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test changes process-wide (torch threads, default dtype, RNGs, logging handlers,
    environment, working directory, signal handlers) is put back, so no test depends on the order
    the suite runs in (`make test` shuffles it; tests/support/global_state.py).
    RESCUE_TEST_REPORT_LEAKS=1 names each test that changed something (run with `-s`)."""
    state = GlobalState.capture()
    yield
    leaked = state.restore()
    if leaked and os.environ.get("RESCUE_TEST_REPORT_LEAKS") == "1":
        print(f"\n{request.node.nodeid} left changed: {', '.join(leaked)}", file=sys.stderr)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny models gain nothing from 2 threads, and on a busy 2-core box OpenMP waits on a
    descheduled thread can make each op 50× slower. Test modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
