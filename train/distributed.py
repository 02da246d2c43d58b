"""Data-parallel plumbing for `torchrun`: process group, synchronised batch norm, global means.

The same trainer code runs single-process (no process group: every helper is the identity) and
under `torchrun --nproc-per-node N [--nnodes M ...]`, which sets RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous variables. CUDA uses NCCL, CPU uses gloo.

Batch norm: GAN batch statistics are part of the model's behaviour (a batch of 64 normalised
together is what Reed trained with), so with `--batch-size` meaning the *global* batch, BN must
see the global batch too, or a 4-GPU run would normalise over 16 images. On CUDA we use
`torch.nn.SyncBatchNorm`. It refuses CPU tensors, so for gloo we hand-write the same thing
(`CpuSyncBatchNorm`): two differentiable all-reduces (mean, then centred sum of squares) per
layer. That keeps CPU multi-process runs — our tests — mathematically equal to one process with
the global batch.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from train.errors import InputError

log = logging.getLogger(__name__)


class DeviceError(InputError):
    """The requested device does not exist here; the message names the flag."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes the run folder and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX-512 BF16 or AMX), so that CPU bf16
    autocast speeds training up instead of emulating bf16 far slower than fp32
    (docs/GAN_TRAINING.md § Speed on CPU). Other families (Arm bf16) are not measured: False."""
    # torch's own probes (private but stable since 2.1); a torch without them gets False, the
    # safe answer: fp32 is never the slow path.
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set the process-group environment."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join the torchrun process group (if any) and pick this process's device.

    `device`: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N". Under torchrun a
    CUDA job uses GPU LOCAL_RANK on each node.
    """
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise DeviceError(f'--device {device}: must be "auto", "cpu", "cuda" or "cuda:N"')
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: CUDA is not available on this machine")
    if not launched_by_torchrun():
        dev = torch.device(device if device != "auto" else ("cuda" if want_cuda else "cpu"))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistEnv(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if want_cuda else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=dev if want_cuda else None,
        )
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown() -> None:
    """Leave the process group (no-op single-process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _DifferentiableAllReduce(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks.

    Hand-written because `torch.distributed.nn.functional.all_reduce` (the same thing) is
    deprecated in torch 2.13 and its named replacement lives in a private module.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Through the Function again, not a bare all_reduce: a double backward (R1's
        # create_graph, train/gan/losses.py) must differentiate this sum over ranks as well.
        return _DifferentiableAllReduce.apply(grad)


def differentiable_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks, differentiable (identity single-process)."""
    return _DifferentiableAllReduce.apply(x) if _active() else x


def global_batch_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the batch across all ranks, differentiable (equal local batch sizes)."""
    local = x.mean(dim=0)
    if not _active():
        return local
    # all_reduce's backward all-reduces the gradient; DDP then averages parameter gradients, so
    # the two factors of world_size cancel and the result is the gradient of the global loss.
    return differentiable_all_reduce(local) / dist.get_world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum a (non-differentiable) tensor over ranks; returns `x` single-process."""
    if _active():
        x = x.clone()
        dist.all_reduce(x)
    return x


def broadcast_flag(value: bool, device: torch.device) -> bool:
    """Rank 0's `value` on every rank (used so all ranks stop on the same step)."""
    if not _active():
        return value
    flag = torch.tensor([1.0 if value else 0.0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def any_rank(value: bool, device: torch.device) -> bool:
    """True on every rank when `value` is true on at least one."""
    if not _active():
        return value
    flag = torch.tensor([1.0 if value else 0.0], device=device)
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def barrier() -> None:
    if _active():
        dist.barrier()


def replicas_identical(module: nn.Module, device: torch.device) -> bool:
    """Whether every rank holds bitwise the same parameters (a cheap fingerprint compare)."""
    if not _active():
        return True
    with torch.no_grad():
        values = [p.detach().double() for p in module.parameters()]
        fingerprint = torch.stack([v.sum() + (v * v).sum() for v in values]).to(device)
        gathered = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, fingerprint)
    return all(torch.equal(g, gathered[0]) for g in gathered)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span all ranks, for gloo/CPU (see module docstring).

    Same parameters, buffers and eval behaviour as `nn.BatchNorm1d/2d`, so state dicts load
    into plain batch norm (checkpoints rebuild with `train.checkpoint.build_model`).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and _active()):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // channels), dtype=x.dtype, device=x.device)
        # Two passes (mean, then centred squares) rather than E[x²] − E[x]², which cancels badly.
        sums = differentiable_all_reduce(torch.cat([x.sum(dims), count.reshape(1)]))
        total = sums[-1]
        mean = sums[:channels] / total  # (C,)
        centred = x - mean.reshape(shape)
        var = differentiable_all_reduce((centred * centred).sum(dims)) / total  # biased, (C,)
        with torch.no_grad():
            momentum = 0.1 if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * total / (total - 1), momentum)
            self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm for its synchronised form (torch's on CUDA, ours elsewhere)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        out = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
