"""Precision helpers: losses and statistics run in at least float32, and in float64 when the model does;
BatchNorm statistics stay exact in channels_last on the CPU."""
from __future__ import annotations

import threading

import torch
import torch.nn as nn


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 (from half / bfloat16 under autocast), or unchanged when float32 or float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# -- BatchNorm statistics in channels_last on the CPU ----------------------------------------------------------
# torch's CPU BatchNorm kernel for channels_last input sums each channel row after row in float32, one running
# sum per channel over N * H * W values (524,288 for a batch of 64 at 128x64): its batch mean and variance are
# about 1000x less exact than the default layout's (relative error ~1e-4 against ~1e-7), and from-scratch
# OSNet x0.25 amplifies that into a gradient 3-19% away from the float64 one (1% in the default layout).
# :class:`ExactBatchNorm2d` computes the statistics with torch's pairwise sums instead and keeps torch's own
# kernels for the normalisation and the backward pass (docs/RESULTS.md, issue 16).

def needs_exact_statistics(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> bool:
    """Whether ``bn`` would normalise ``x`` with batch statistics from torch's inexact channels_last CPU
    kernel: a training-mode (or statistics-free) 4-D float32/float64 channels_last CPU input."""
    batch_statistics = bn.training or bn.running_mean is None
    return (batch_statistics and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in (torch.float32, torch.float64)
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


_scratch = threading.local()


def _scratch_like(rows: torch.Tensor) -> torch.Tensor:
    """A buffer of ``rows``' shape and dtype, reused from call to call in this thread (a fresh allocation of this
    size costs more than the arithmetic: the allocator maps and faults in new pages each time)."""
    buf = getattr(_scratch, "buffer", None)
    if buf is None or buf.dtype != rows.dtype or buf.numel() < rows.numel():
        buf = _scratch.buffer = torch.empty(rows.numel(), dtype=rows.dtype)
    return buf[:rows.numel()].view(rows.shape)


def channel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a channels_last ``N x C x H x W`` CPU tensor, by pairwise sums
    (the squared deviations summed in a second pass)."""
    rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])          # a view: channels_last is N x H x W x C
    mean = rows.sum(0) / rows.shape[0]
    deviations = torch.sub(rows, mean, out=_scratch_like(rows))
    var = deviations.square_().sum(0) / rows.shape[0]
    return mean, var


class _NormaliseWithStatistics(torch.autograd.Function):
    """Training-mode BatchNorm from given batch statistics: torch's kernels for the elementwise forward and
    for the backward (which differentiates through the statistics, as training-mode BatchNorm does)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                mean: torch.Tensor, var: torch.Tensor, eps: float) -> torch.Tensor:
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous(memory_format=torch.channels_last), x, weight, None, None, mean, invstd, True, ctx.eps,
            [need[0], weight is not None and need[1], need[2]])
        return dx, dw, db, None, None, None


def exact_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` in training mode with exact batch statistics; the running statistics are updated as
    ``torch.nn.BatchNorm2d`` updates them (momentum, or a cumulative average when it is None; unbiased
    variance)."""
    n = x.numel() // x.shape[1]                                   # values per channel
    if bn.training and n < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    with torch.no_grad():
        mean, var = channel_statistics(x.detach())
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            assert bn.num_batches_tracked is not None and bn.running_var is not None
            bn.num_batches_tracked.add_(1)
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
            bn.running_var.mul_(1 - m).add_(var * (n / (n - 1)), alpha=m)
    return _NormaliseWithStatistics.apply(x, bn.weight, bn.bias, mean, var, bn.eps)


class ExactBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose batch statistics are exact for channels_last CPU input (see above); in every
    other case, and in eval mode, it is ``nn.BatchNorm2d`` itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_exact_statistics(self, x):
            self._check_input_dim(x)
            return exact_batch_norm(self, x)
        return super().forward(x)


def exact_cpu_batchnorm(model: nn.Module, device: torch.device | str,
                        memory_format: torch.memory_format) -> nn.Module:
    """Make every plain ``nn.BatchNorm2d`` of ``model`` an :class:`ExactBatchNorm2d` in place (the same module
    objects, parameters, buffers and state_dict keys) when it trains in channels_last on the CPU; else leave
    ``model`` as it is.  Returns ``model``."""
    if torch.device(device).type == "cpu" and memory_format == torch.channels_last:
        for m in model.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = ExactBatchNorm2d
    return model


def place_model(model: nn.Module, device: torch.device | str, memory_format: torch.memory_format) -> nn.Module:
    """A model where it trains: on ``device``, in ``memory_format``, with exact BatchNorm statistics where
    channels_last on a CPU needs them (:func:`exact_cpu_batchnorm`).  Every model a run trains is placed so."""
    return exact_cpu_batchnorm(model.to(device).to(memory_format=memory_format), device, memory_format)
