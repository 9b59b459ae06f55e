"""Data parallelism through ``torch.distributed``: processes started by ``torchrun``, NCCL on GPUs, gloo on CPUs.

    torchrun --nproc-per-node 4 -m reidkit train RECIPE [key=value ...]

Every process runs the same training loop on its share of each global batch
(:func:`reidkit.data.samplers.shard_bounds`).  The pieces that make N processes train
the model one process would with the same global batch:

* :func:`gather_rows`: the embeddings of every process, gathered *with their
  gradients*, so batch-hard / camera-aware mining and the center loss see the global
  batch;
* synchronised BatchNorm (``train.sync_bn``): torch's ``SyncBatchNorm`` on GPUs,
  :class:`GlobalBatchNorm` (the same statistics from all-reduced sums) on CPUs,
  where torch's has no kernels;
* ``DistributedDataParallel`` averages the parameter gradients.  Each process's loss
  is its share of the identity loss (weighted by its share of the batch) plus the
  losses over the gathered batch, so the average of the processes' gradients is the
  gradient of the one-process loss.
"""
from __future__ import annotations

import datetime
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..numerics import exact_batch_norm, full_precision, needs_exact_statistics

log = logging.getLogger("reidkit")


class DistributedError(RuntimeError):
    """A collective failed or timed out: another process died, hung, or was killed."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands among the data-parallel ones (``world_size == 1``: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """``2 processes (gloo), 2 on this machine`` for logs."""
        backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"
        return f"{self.world_size} processes ({backend}), {self.local_world_size} on this machine"

    @classmethod
    def current(cls) -> DistEnv:
        """The initialised process group's view, or a lone process."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                   int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))


#: the environment of a process that is not one of several (the default of functions that take a ``DistEnv``)
ONE_PROCESS = DistEnv()


def launched_by_torchrun() -> bool:
    """``torchrun`` (or another launcher of torch.distributed) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def init_from_env(device_type: str, timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group ``torchrun`` describes in the environment (a no-op for a lone process).

    NCCL when the processes train on GPUs, gloo otherwise; ``timeout_s`` bounds how long a
    collective waits for a process that died or hangs.
    """
    if not launched_by_torchrun():
        return DistEnv()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistEnv.current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _all_gather_rows(x: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
    """Every process's rows in rank order (padded to the largest count for the collective)."""
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class _GatherRows(torch.autograd.Function):
    """:func:`_all_gather_rows` whose backward returns each process its rows' gradient summed over the
    processes (every process computed the same global loss terms)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.counts, ctx.rank = counts, rank
        return _all_gather_rows(x, counts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.counts[:ctx.rank])
        return grad[start:start + ctx.counts[ctx.rank]], None, None


def gather_rows(x: torch.Tensor, counts: tuple[int, ...] | None = None) -> torch.Tensor:
    """Every process's ``x`` stacked in rank order, differentiable (identity for a lone process).

    ``counts``: the rows each process holds (default: all alike).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    counts = tuple(counts) if counts is not None else (x.shape[0],) * dist.get_world_size()
    if x.shape[0] != counts[dist.get_rank()]:
        raise ValueError(f"process {dist.get_rank()} holds {x.shape[0]} rows, expected {counts[dist.get_rank()]}")
    if x.requires_grad:
        return _GatherRows.apply(x, counts, dist.get_rank())
    return _all_gather_rows(x.detach(), counts)


def all_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the processes (unchanged for a lone process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    out = values.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def broadcast_object(obj, src: int = 0):
    """``obj`` of process ``src`` on every process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; its gradient is the sum of every process's gradient (each process's loss
    depends on the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.detach().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.detach().clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover every process's batch, on any backend.

    The mean and the (biased) variance come from all-reduced sums, in two passes
    (sum, then sum of squared deviations) for accuracy; the all-reduces carry
    gradients, so the backward pass is that of BatchNorm over the global batch.
    The running variance is updated with the unbiased global variance, as
    ``torch.nn.BatchNorm`` does.  Outside training, or alone, it is plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = (self.training and dist.is_available() and dist.is_initialized()
                  and dist.get_world_size() > 1)
        if not synced:
            return exact_batch_norm(self, x) if needs_exact_statistics(self, x) else super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = full_precision(x)
        count = torch.tensor([xf.numel() / xf.shape[1]], device=x.device)
        totals = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                assert self.num_batches_tracked is not None and self.running_mean is not None \
                    and self.running_var is not None
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return y.to(x.dtype)


def convert_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` synchronised over the processes (torch's SyncBatchNorm on GPUs,
    :class:`GlobalBatchNorm` elsewhere), keeping its parameters, statistics and train/eval mode."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_to_global(model)


def _convert_to_global(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        bn = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                bn.weight, bn.bias = module.weight, module.bias
        if module.track_running_stats:
            bn.running_mean, bn.running_var = module.running_mean, module.running_var
            bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        module.add_module(name, _convert_to_global(child))
    return module


def data_parallel(model: nn.Module, device: torch.device, find_unused_parameters: bool = False,
                  broadcast_buffers: bool = True) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when a process group exists (also of one process, as
    ``torchrun --nproc-per-node 1`` makes); unchanged otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    ddp = nn.parallel.DistributedDataParallel
    # torch >= 2.14 renames broadcast_buffers (buffers are synchronised at start either way)
    buffers: dict[str, Any] = ({"forward_sync_buffers": broadcast_buffers}
               if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
               else {"broadcast_buffers": broadcast_buffers})
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters, gradient_as_bucket_view=True, **buffers)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_collective_failure(error: BaseException) -> bool:
    """A failure of the process group rather than of this process's own computation."""
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(error).lower()
    return any(s in text for s in ("gloo", "nccl", "connection closed", "connection reset", "timed out",
                                   "broken pipe", "process group"))


__all__ = ["DistEnv", "DistributedError", "init_from_env", "shutdown", "gather_rows", "all_mean",
           "broadcast_object", "barrier", "GlobalBatchNorm", "convert_batchnorm", "data_parallel", "unwrap",
           "launched_by_torchrun", "is_collective_failure"]
