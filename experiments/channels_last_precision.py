"""How exact are fp32 gradients on the CPU in channels_last vs the default layout?

    python -m experiments.channels_last_precision [--arch osnet_x0_25 --batch 64 --height 256 --width 128]
    python -m experiments.channels_last_precision --data ../shared/data/cuhk03/labeled

reidkit trains in channels_last on the CPU (``train.channels_last``, the default)
because depthwise convolutions run much faster that way.  This compares one
training step's gradients of the same model and batch, in float32 contiguous,
float32 channels_last with torch's BatchNorm2d and float32 channels_last with
reidkit's ``ExactBatchNorm2d`` (what the Trainer uses), against float64, and the
BatchNorm2d forward pass alone.  Found on torch 2.14.1 (docs/RESULTS.md, issue
16): torch's channels_last CPU BatchNorm sums each channel's N*H*W values in a
row, so its batch statistics are ~100-1000x less exact than the default
layout's, and OSNet x0.25's gradient at 256x128 lands 3-5% from float64 (16-19%
on augmented CUHK03 batches) against 1% in the default layout; with exact
statistics channels_last is as exact as the default layout.  Trained in
channels_last with torch's BatchNorm, 10 epochs of torchreid's softmax recipe
ended 4.3 mAP below torchreid on the CPU.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from reidkit.data.cache import ImageCache
from reidkit.data.datasets import build_dataset
from reidkit.data.transforms import normalize
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


def batch(args) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``--batch`` normalised images and labels: the dataset's first training images (every 7th, for several
    identities) with ``--data``, else standard normal noise and 9 random classes."""
    if args.data is None:
        return torch.randn(args.batch, 3, args.height, args.width), torch.randint(0, 9, (args.batch,)), 9
    dataset = build_dataset("cuhk03_labeled", args.data)
    records = dataset.train[::7][:args.batch]
    cache = ImageCache(records, (args.height, args.width), progress=False)
    pids = sorted({r.pid for r in records})
    labels = torch.tensor([pids.index(r.pid) for r in records])
    return normalize(cache.images), labels, len(pids)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="osnet_x0_25")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--data", default=None,
                        help="a CUHK03-labeled root (e.g. ../shared/data/cuhk03/labeled): its first training images "
                             "and identities instead of random noise")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y, classes = batch(args)
    model = build_model(args.arch, classes)
    reference = step_gradients(model, x, y, torch.float64, torch.contiguous_format)
    for name, fmt, exact in (("float32 contiguous", torch.contiguous_format, False),
                             ("float32 channels_last, torch's BatchNorm", torch.channels_last, False),
                             ("float32 channels_last, ExactBatchNorm2d (reidkit's)", torch.channels_last, True)):
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
