"""Give a BatchNorm-folded network real BatchNorm statistics again, without changing what it computes.

An export that folds each BatchNorm into the convolution before it (ONNX, TensorRT) leaves identity
BatchNorms behind when it is imported: running mean 0, variance 1, and convolution weights whose scale is
whatever the folding made it.  In train mode such a BatchNorm normalises with batch statistics that have
nothing to do with those, and fine-tuning destroys the model in a few steps.  :func:`recalibrate_batchnorm`
measures, on real images, each BatchNorm's input per channel (mean ``m``, variance ``v``), divides the
producing layer's output channel by ``s = sqrt(v)`` (so its output has unit variance, as at initialisation)
and sets the BatchNorm to running statistics ``(m / s, 1)`` with scale and shift chosen so that the eval-mode
function is exactly the one imported.  Train-mode batch statistics then match the running ones.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_producers(model: nn.Module) -> list[tuple[nn.Conv2d | nn.Linear, _BatchNorm]]:
    """``(layer, batchnorm)`` for every BatchNorm and the convolution or linear layer that feeds it: the sibling
    ``conv2`` (a lite 3x3: pointwise then depthwise) or ``conv`` of a ``bn``, or item ``0`` of a sequential
    whose item ``1`` is the BatchNorm."""
    modules = dict(model.named_modules())
    pairs = []
    for name, m in modules.items():
        if not isinstance(m, _BatchNorm):
            continue
        parent, _, leaf = name.rpartition(".")
        prefix = f"{parent}." if parent else ""
        candidates = [f"{prefix}conv2", f"{prefix}conv"] if leaf == "bn" else (
            [f"{prefix}{int(leaf) - 1}"] if leaf.isdigit() else [])
        producer = next((modules[c] for c in candidates if isinstance(modules.get(c), (nn.Conv2d, nn.Linear))), None)
        if producer is None:
            raise ValueError(f"{type(model).__name__}: no convolution or linear layer found before BatchNorm {name}")
        pairs.append((producer, m))
    return pairs


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Measure every BatchNorm's input on ``batches`` (normalised images, eval mode) and rescale as the module
    docstring says; returns how many BatchNorms were recalibrated.  The eval-mode function is unchanged."""
    pairs = batchnorm_producers(model)
    sums: dict[int, list] = {}

    def hook(bn: nn.Module, inputs: tuple, _output) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        acc = sums.setdefault(id(bn), [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + x.sum(dims)
        acc[2] = acc[2] + (x * x).sum(dims)

    handles = [bn.register_forward_hook(hook) for _, bn in pairs]
    was_training = model.training
    model.eval()
    try:
        for images in batches:
            model(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for producer, bn in pairs:
        n, s1, s2 = sums[id(bn)]
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp(min=1e-12)
        scale = var.sqrt()
        assert bn.running_mean is not None and bn.running_var is not None and bn.weight is not None
        a = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()          # y = a z + b, as imported
        b = bn.bias.double() - a * bn.running_mean.double()
        weight, bias = producer.weight, producer.bias
        weight.div_(scale.view((-1,) + (1,) * (weight.dim() - 1)).to(weight.dtype))
        if bias is not None:
            bias.div_(scale.to(bias.dtype))
        running_mean, running_var = mean / scale, var / (scale * scale)
        bn.running_mean.copy_(running_mean)
        bn.running_var.copy_(running_var)
        bn.weight.copy_(a * scale * (running_var + bn.eps).sqrt())
        bn.bias.copy_(b + a * mean)
    return len(pairs)
