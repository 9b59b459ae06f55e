"""ExactBatchNorm2d: channels_last CPU BatchNorm with exact batch statistics (reidkit/numerics.py)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from reidkit.engine.distributed import GlobalBatchNorm
from reidkit.models import build_model
from reidkit.numerics import (
    ExactBatchNorm2d,
    channel_statistics,
    exact_batch_norm,
    exact_cpu_batchnorm,
    needs_exact_statistics,
)

CL = torch.channels_last


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def run(bn: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    y = bn(x)
    (y * grad).sum().backward()
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad


def reference(bn: nn.BatchNorm2d, x: torch.Tensor, grad: torch.Tensor):
    """torch's BatchNorm2d in float64, default layout."""
    ref = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in bn.state_dict().items()})
    return ref, run(ref, x.double(), grad.double())


def test_large_channels_last_batch_is_exact():
    """A 64 x 16 x 128 x 64 channels_last batch (a CUHK03 batch's first OSNet stage at 256x128): the output and
    the running statistics within float32 rounding of float64 BatchNorm, the gradients within 3e-5."""
    torch.manual_seed(0)
    x = (torch.randn(64, 16, 128, 64) * 2 + 3).contiguous(memory_format=CL)
    grad = torch.randn(x.shape).contiguous(memory_format=CL)
    bn = ExactBatchNorm2d(16)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    ref_bn, ref = reference(bn, x, grad)
    ours = run(bn, x, grad)
    assert relative(ours[0], ref[0]) < 2e-6                          # the forward pass: float32 rounding
    for a, b in zip(ours[1:], ref[1:]):                              # torch's backward kernel sums N*H*W values
        assert relative(a, b) < 3e-5                                 # in a row (torch's forward one: ~1e-4)
    assert relative(bn.running_mean, ref_bn.running_mean) < 1e-6
    assert relative(bn.running_var, ref_bn.running_var) < 1e-6
    assert int(bn.num_batches_tracked) == 1
    assert ours[0].is_contiguous(memory_format=CL) and ours[1].is_contiguous(memory_format=CL)
    # the default layout is as exact as ours: the test's tolerance is the float32 one, not a loose one
    plain = nn.BatchNorm2d(16)
    plain.load_state_dict(bn.state_dict())
    assert relative(run(plain, x.contiguous(), grad.contiguous())[0], ref[0]) < 2e-6


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), c=st.integers(1, 9), h=st.integers(1, 7), w=st.integers(2, 7),
       momentum=st.sampled_from([0.1, 0.5, None]), affine=st.booleans(), seed=st.integers(0, 10_000))
def test_matches_torch_batchnorm_on_random_shapes(n, c, h, w, momentum, affine, seed):
    """Any shape, momentum (None: cumulative average) and affine setting: the same outputs, gradients and running
    statistics as torch's BatchNorm2d in the default layout, over three training steps and in eval mode."""
    g = torch.Generator().manual_seed(seed)
    ours = ExactBatchNorm2d(c, momentum=momentum, affine=affine)
    theirs = nn.BatchNorm2d(c, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            ours.weight.copy_(torch.rand(c, generator=g) + 0.5)
            ours.bias.copy_(torch.randn(c, generator=g))
    theirs.load_state_dict(ours.state_dict())
    for _ in range(3):
        x = torch.randn(n, c, h, w, generator=g) * 3 + 1
        grad = torch.randn(n, c, h, w, generator=g)
        xa = x.clone().contiguous(memory_format=CL).requires_grad_()
        xb = x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        (ya * grad).sum().backward()
        (yb * grad).sum().backward()
        torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)
    if affine:
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, atol=1e-4, rtol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), atol=1e-5, rtol=1e-5)
    ours.eval(), theirs.eval()
    x = torch.randn(n, c, h, w, generator=g)
    torch.testing.assert_close(ours(x.contiguous(memory_format=CL)), theirs(x), atol=1e-5, rtol=1e-5)


def test_gradcheck_in_float64():
    """The backward pass is the derivative of the forward one (finite differences, float64, channels_last), for the
    input, the weight and the bias."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    weight = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64).requires_grad_()

    def normalise(t, w, b):
        bn = SimpleNamespace(training=True, track_running_stats=False, running_mean=None, weight=w, bias=b, eps=1e-5)
        return exact_batch_norm(bn, t.contiguous(memory_format=CL))  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(normalise, (x, weight, bias))


def test_only_channels_last_batch_statistics_take_the_exact_path():
    bn = nn.BatchNorm2d(4)
    cl = torch.randn(2, 4, 3, 3).contiguous(memory_format=CL)
    assert needs_exact_statistics(bn, cl)
    assert not needs_exact_statistics(bn, cl.contiguous())           # default layout: torch's kernel is exact
    assert not needs_exact_statistics(bn, cl.bfloat16())              # reduced precision: torch's kernel
    bn.eval()
    assert not needs_exact_statistics(bn, cl)                        # running statistics: nothing to sum
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ExactBatchNorm2d(4)(torch.randn(1, 4, 1, 1).contiguous(memory_format=CL) + torch.zeros(1, 4, 1, 1))


def test_channel_statistics_are_exact():
    torch.manual_seed(2)
    x = torch.randn(64, 8, 64, 32) * 0.1 + 40                         # a large mean: a one-pass variance cancels
    mean, var = channel_statistics(x.contiguous(memory_format=CL))
    assert relative(mean, x.double().mean((0, 2, 3))) < 1e-7
    assert relative(var, x.double().var((0, 2, 3), unbiased=False)) < 1e-5


def test_conversion_keeps_modules_weights_and_state_dict():
    """exact_cpu_batchnorm changes the class of plain BatchNorm2d in place on a CPU in channels_last only: the
    optimiser's parameters and the checkpoint keys stay; GPU or default-layout training is left alone."""
    model = build_model("osnet_x0_25", 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    assert exact_cpu_batchnorm(model, "cpu", torch.contiguous_format) is model
    assert not any(isinstance(m, ExactBatchNorm2d) for m in model.modules())
    exact_cpu_batchnorm(model.to(memory_format=CL), "cpu", CL)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(type(m) is ExactBatchNorm2d for m in bns)
    assert list(model.parameters()) == params
    assert set(model.state_dict()) == set(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    global_bn = GlobalBatchNorm(3)
    exact_cpu_batchnorm(global_bn, "cpu", CL)
    assert type(global_bn) is GlobalBatchNorm                        # its own exact path, below


def test_global_batchnorm_alone_is_exact_in_channels_last():
    torch.manual_seed(3)
    x = (torch.randn(64, 8, 128, 64) + 2).contiguous(memory_format=CL)
    bn = GlobalBatchNorm(8)
    expected = F.batch_norm(x.double(), None, None, training=True)
    assert relative(bn(x), expected) < 2e-6


def test_osnet_gradient_in_channels_last_matches_float64():
    """One training step of OSNet x0.25 on a 32 x 3 x 256 x 128 batch: with exact statistics the channels_last
    gradient is as close to float64 as the default layout's (within 1.5x of its error)."""
    torch.manual_seed(4)
    model = build_model("osnet_x0_25", 20).train()
    x, y = torch.randn(32, 3, 256, 128), torch.randint(0, 20, (32,))

    def gradient(m: nn.Module, dtype: torch.dtype, fmt: torch.memory_format) -> torch.Tensor:
        m = m.to(dtype)
        logits, _ = m(x.to(dtype).contiguous(memory_format=fmt))
        F.cross_entropy(logits, y).backward()
        return torch.cat([p.grad.double().flatten() for p in m.parameters()])

    exact = gradient(copy.deepcopy(model), torch.float64, torch.contiguous_format)
    default_layout = relative(gradient(copy.deepcopy(model), torch.float32, torch.contiguous_format), exact)
    ours = relative(gradient(exact_cpu_batchnorm(copy.deepcopy(model).to(memory_format=CL), "cpu", CL),
                             torch.float32, CL), exact)
    assert ours < 1.5 * default_layout + 1e-4
