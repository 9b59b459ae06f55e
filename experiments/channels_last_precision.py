"""How exact are fp32 gradients on the CPU in channels_last vs the default layout?

    python -m experiments.channels_last_precision [--arch osnet_x0_25 --batch 64 --height 256 --width 128]

reidkit trains in channels_last on the CPU (``train.channels_last``, the default)
because depthwise convolutions run much faster that way.  This compares one
training step's gradients of the same model and batch, in float32 contiguous
and float32 channels_last, against float64, and the BatchNorm2d forward pass
alone.  Prints the parameters with the largest relative gradient errors
(``|g - g64| / |g64|``).  Found on torch 2.14.1 (docs/RESULTS.md): BatchNorm2d in
channels_last accumulates its statistics far less exactly (10-250x the error
of the default layout).  Training OSNet from scratch in NCHW instead did not
learn faster, so this is not why reidkit's 10-epoch OSNet lagged torchreid's.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from reidkit.models import build_model
from reidkit.numerics import exact_cpu_batchnorm


def step_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype,
                   memory_format: torch.memory_format, exact: bool = False) -> dict[str, torch.Tensor]:
    m = copy.deepcopy(model).to(dtype).to(memory_format=memory_format).train()
    if exact:                                        # what reidkit's Trainer trains with on a CPU
        exact_cpu_batchnorm(m, "cpu", memory_format)
    logits, _ = m(x.to(dtype).contiguous(memory_format=memory_format))
    F.cross_entropy(logits, y).backward()
    return {n: p.grad.double() for n, p in m.named_parameters()}


def overall_error(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """``|g - g64| / |g64|`` over all parameters' gradients at once."""
    flat = torch.cat([g.flatten() for g in reference.values()])
    return float((torch.cat([grads[n].flatten() for n in reference]) - flat).norm() / flat.norm())


def worst_errors(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], k: int = 5):
    # parameters whose exact gradient is ~0 (a bias right before a BatchNorm) have no meaningful relative error
    scale = max(float(g.abs().max()) for g in reference.values())
    errors = [(float((grads[n] - g).norm() / g.norm()), n) for n, g in reference.items()
              if float(g.abs().max()) > 1e-9 * scale]
    return sorted(errors, reverse=True)[:k]


@torch.no_grad()
def batchnorm_forward_error(memory_format: torch.memory_format, mean: float) -> float:
    x = torch.randn(64, 32, 64, 32, generator=torch.Generator().manual_seed(0)) + mean
    reference = nn.BatchNorm2d(32).double().train()(x.double())
    out = nn.BatchNorm2d(32).to(memory_format=memory_format).train()(x.contiguous(memory_format=memory_format))
    return float((out.double() - reference).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="osnet_x0_25")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.arch, 9)
    x = torch.randn(args.batch, 3, args.height, args.width)
    y = torch.randint(0, 9, (args.batch,))
    reference = step_gradients(model, x, y, torch.float64, torch.contiguous_format)
    for name, fmt, exact in (("float32 contiguous", torch.contiguous_format, False),
                             ("float32 channels_last, torch's BatchNorm", torch.channels_last, False),
                             ("float32 channels_last, ExactBatchNorm2d (reidkit's training)", torch.channels_last, True)):
        grads = step_gradients(model, x, y, torch.float32, fmt, exact)
        print(f"{name}: gradient error vs float64 {overall_error(grads, reference):.2e} overall; largest:")
        for err, param in worst_errors(grads, reference):
            print(f"  {err:.2e}  {param}")
    print("BatchNorm2d forward, max |error| vs float64 (64 x 32 x 64 x 32 input)")
    for mean in (0.0, 5.0, 50.0):
        print(f"  input mean {mean:4.0f}: contiguous {batchnorm_forward_error(torch.contiguous_format, mean):.1e}, "
              f"channels_last {batchnorm_forward_error(torch.channels_last, mean):.1e}")


if __name__ == "__main__":
    main()
