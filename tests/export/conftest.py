"""Shared export fixtures: a tiny GAN checkpoint and caption set, and one quantized export of them.

Exporting takes a few seconds, so the quantized bundle is built once per test session and only
read by the tests that share it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tiers import needs

# The committed tiny bundle is read with onnxruntime alone (the robot install runs it too).
pytest_pycollect_makemodule = needs(__file__, "torch", except_files={"test_tiny.py"})


@pytest.fixture(scope="session", autouse=True)
def _torch_one_thread() -> None:
    # Tiny models on a shared 2-core machine: a second intra-op thread only adds contention
    # (a batch-4 tiny generator took 0.09-0.6 s with 2 threads, 0.01-0.02 s with 1).
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from export.tiny import tiny_dataset

    return tiny_dataset(tmp_path_factory.mktemp("data") / "captions.h5")


@pytest.fixture(scope="session")
def tiny_checkpoint_path(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    from export.tiny import tiny_checkpoint
    from train.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    return save_checkpoint(tiny_checkpoint(seed=3, data=tiny_data), path)


@pytest.fixture(scope="session")
def quantized_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint_path: Path) -> Path:
    from export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(
        ExportOptions(checkpoint=tiny_checkpoint_path, out=out, quantize=True, latency_rounds=3)
    )
    return out
