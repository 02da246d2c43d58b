"""Data-parallel training on CPU with gloo: torchrun with 2 processes keeps the replicas identical
and, with synchronised batch norm, computes what one process computes on the global batch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from train import checkpoint as ck
from train import distributed, models
from train.gan import trainer as gan
from train.gan.config import GanTrainConfig, validate

REPO = Path(__file__).resolve().parents[3]
STEPS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


WORKER = textwrap.dedent(
    """
    import json, sys, torch
    from train import distributed
    from train.gan import trainer as gan
    from train.gan.config import GanTrainConfig, validate

    out, text_encoder = sys.argv[1], sys.argv[2]
    env = distributed.init_distributed("cpu")
    config = validate(GanTrainConfig(
        text_encoder=text_encoder, ngf=8, ndf=8, batch_size=8, captions_per_sample=2,
        embedding_cache="off", progress=False, device="cpu", amp="off",
        **(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})), env.world_size)
    trainer = gan.GanTrainer(config, env, split=gan.generated_split(64, captions=4, seed=0))
    record = {}
    for i, batch in enumerate(trainer.loader.batches(0)):
        metrics = trainer.train_step(batch)
        if i == 0:
            record["metrics_1"] = {k: float(v) for k, v in metrics.items()}
            record["state_1"] = gan._plain_state(trainer.generator) | {
                "D." + k: v for k, v in gan._plain_state(trainer.discriminator).items()}
        if i + 1 == int(sys.argv[3]):
            break
    record["state_n"] = gan._plain_state(trainer.generator) | {
        "D." + k: v for k, v in gan._plain_state(trainer.discriminator).items()}
    torch.save(record, f"{out}/rank{env.rank}.pt")
    distributed.shutdown()
    """
)


def _tiny_text_encoder(path: Path) -> Path:
    torch.manual_seed(0)
    te = models.TextEncoderConfig(conv_channels=(16, 16, 16), rnn_hidden=16, embedding_dim=32)
    checkpoint = ck.new_checkpoint(
        "text_encoder",
        models={"text_encoder": models.CharCnnRnn(te).state_dict()},
        model_configs={"text_encoder": dataclasses.asdict(te)},
    )
    return ck.save_checkpoint(checkpoint, path)


def _single_process(text_encoder: Path, **extra: object) -> dict:
    config = validate(
        GanTrainConfig(
            text_encoder=str(text_encoder), ngf=8, ndf=8, batch_size=8, captions_per_sample=2,
            embedding_cache="off", progress=False, device="cpu", amp="off", **extra,
        )
    )  # fmt: skip
    trainer = gan.GanTrainer(
        config, distributed.DistEnv(), split=gan.generated_split(64, captions=4, seed=0)
    )
    metrics = trainer.train_step(next(trainer.loader.batches(0)))
    state = gan._plain_state(trainer.generator) | {
        "D." + k: v for k, v in gan._plain_state(trainer.discriminator).items()
    }
    return {"metrics_1": {k: float(v) for k, v in metrics.items()}, "state_1": state}


def _two_processes(tmp_path: Path, text_encoder: Path, extra: dict | None = None) -> list[dict]:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(worker), str(tmp_path), str(text_encoder), str(STEPS), json.dumps(extra or {}),
    ]  # fmt: skip
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # A double backward through a bare all_reduce would be silently wrong; torch warns.
    assert "an autograd kernel was not registered" not in done.stderr
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_gan_ddp_r1_and_augmentation_stay_identical_and_match_one_process(
    tmp_path: Path,
) -> None:
    text_encoder = _tiny_text_encoder(tmp_path / "te.pt")
    extra = {"r1_gamma": 1.0, "d_augment": "translation,cutout", "grad_norm_every": 1}
    ranks = _two_processes(tmp_path, text_encoder, extra)
    for key, value in ranks[0]["state_n"].items():
        assert torch.equal(value, ranks[1]["state_n"][key]), key
    single = _single_process(text_encoder, **extra)
    # The penalty's input gradients cross ranks through synchronised batch norm, so the
    # ranks' mean equals one process's penalty on the global batch (same augmentation draws).
    for name in ("D/r1_penalty", "gan_cls/real", "gan_cls/fake"):
        ddp = (ranks[0]["metrics_1"][name] + ranks[1]["metrics_1"][name]) / 2
        assert ddp == pytest.approx(single["metrics_1"][name], rel=1e-3), name


def test_gan_ddp_two_gloo_processes_stay_identical_and_sync_batch_norm(tmp_path: Path) -> None:
    text_encoder = _tiny_text_encoder(tmp_path / "te.pt")
    ranks = _two_processes(tmp_path, text_encoder)

    # Gradients are averaged, so after several steps both replicas hold bitwise the same weights
    # and batch-norm buffers.
    for key, value in ranks[0]["state_n"].items():
        assert torch.equal(value, ranks[1]["state_n"][key]), key

    # One process on the global batch of 8 (each rank held 4 of those samples).
    single = _single_process(text_encoder)
    bn_keys = [k for k in single["state_1"] if k.endswith(("running_mean", "running_var"))]
    assert len(bn_keys) == 20
    for key in bn_keys:
        # Statistics over the global batch. Per-rank statistics of 4 samples would differ by
        # ~1e-2. G's come from its forward before any update: equal to rounding. D's also from
        # the G step after D's update, where Adam has moved the bias of D's text projection
        # (whose true gradient is 0 under the batch norm after it) by ±lr on rounding noise,
        # which differs with the reduction order.
        atol = 1e-4 if key.startswith("D.") else 1e-6
        torch.testing.assert_close(
            ranks[0]["state_1"][key], single["state_1"][key], atol=atol, rtol=0
        )
    for name in ("gan_cls/real", "gan_cls/wrong", "gan_cls/fake", "D(x)/real_right_text"):
        # Each rank's loss is the mean over its half: their average is the global batch's.
        ddp = (ranks[0]["metrics_1"][name] + ranks[1]["metrics_1"][name]) / 2
        assert ddp == pytest.approx(single["metrics_1"][name], rel=1e-4), name
    # Feature matching uses global batch means on every rank.
    for rank in ranks:
        assert rank["metrics_1"]["generator/feature_matching"] == pytest.approx(
            single["metrics_1"]["generator/feature_matching"], rel=1e-3
        )


def test_cpu_sync_batch_norm_is_plain_batch_norm_in_one_process_and_loads_its_state() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm1d(4)
    )
    synced = distributed.convert_sync_batchnorm(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), torch.device("cpu")
    )
    assert isinstance(synced[1], distributed.CpuSyncBatchNorm)
    synced.load_state_dict(net[:2].state_dict())
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(synced(x), net[:2](x))
    torch.testing.assert_close(synced[1].running_var, net[1].running_var)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    plain.load_state_dict(synced.state_dict())  # checkpoints rebuild with plain batch norm


CACHE_WORKER = textwrap.dedent(
    """
    import sys, torch
    from train import checkpoint as ck, distributed
    from train.gan.text_embeddings import load_or_compute

    out, text_encoder = sys.argv[1], sys.argv[2]
    env = distributed.init_distributed("cpu")
    encoder = ck.build_model(ck.load_checkpoint(text_encoder, kind="text_encoder"), "text_encoder")
    captions = [[f"a person in red number {i}", f"someone in blue {i}"] for i in range(12)]
    # Node-local caches: only rank 0's folder holds one.
    table = load_or_compute(encoder.eval(), "sha", captions, device=torch.device("cpu"),
                            cache_dir=f"{out}/node{env.rank}", rank=env.rank,
                            world_size=env.world_size)
    torch.save({"table": table.table}, f"{out}/table{env.rank}.pt")
    distributed.shutdown()
    """
)


def test_embedding_cache_on_one_node_only_does_not_hang_the_others(tmp_path: Path) -> None:
    from train.gan.text_embeddings import load_or_compute

    text_encoder = _tiny_text_encoder(tmp_path / "te.pt")
    encoder = ck.build_model(ck.load_checkpoint(text_encoder, kind="text_encoder"), "text_encoder")
    captions = [[f"a person in red number {i}", f"someone in blue {i}"] for i in range(12)]
    expected = load_or_compute(
        encoder.eval(), "sha", captions, device=torch.device("cpu"), cache_dir=tmp_path / "node0"
    ).table
    worker = tmp_path / "worker.py"
    worker.write_text(CACHE_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(worker), str(tmp_path), str(text_encoder),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(2):
        table = torch.load(tmp_path / f"table{rank}.pt", weights_only=True)["table"]
        torch.testing.assert_close(table, expected)
