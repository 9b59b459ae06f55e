"""Adaptive L2 regularisation (Ni, Fang and Huttunen, "Adaptive L2 Regularization in Person
Re-Identification", ICPR 2020).

Every trainable tensor ``w_n`` gets a trainable scalar ``theta_n`` and the loss
becomes (Eq. 8)

    L_lambda = L + sum_n A * f(theta_n) * ||w_n||^2,
    f(x) = clip(x / (2c) + 0.5, 0, 1)      (the hard sigmoid, Eq. 5; c = 2.5)

so the regularisation factors ``lambda_n = A f(theta_n)`` are learned by
backpropagation with the network instead of being one hand-picked weight decay.
The hard sigmoid keeps them in ``[0, A]`` (negative factors would let the
penalty run away, the collapse the paper describes).  The authors' code starts
every ``theta`` at 0 (``lambda = A / 2``) with ``A = 0.005`` for convolution
kernels and biases, BatchNorm gamma and beta, and dense kernels.

The regulariser holds the ``theta`` vector (give it to the optimiser, without
weight decay) and references to the model's tensors; it does not own them.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import torch
import torch.nn as nn

#: Parameter categories of the paper's Fig. 3 / 4 (plus dense biases).
CATEGORIES = ("conv_kernel", "conv_bias", "bn_gamma", "bn_beta", "dense_kernel", "dense_bias")

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def hard_sigmoid(x: torch.Tensor, c: float = 2.5) -> torch.Tensor:
    """``clip(x / (2c) + 0.5, 0, 1)`` (Eq. 5): 0 below ``-c``, 1 above ``c``."""
    return (x / (2 * c) + 0.5).clamp(0.0, 1.0)


def parameter_category(module: nn.Module, param_name: str) -> str | None:
    """The paper's category of ``module``'s own parameter ``param_name`` (None: not one of them)."""
    is_weight = param_name == "weight"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv_kernel" if is_weight else "conv_bias"
    if isinstance(module, _NORMS):
        return "bn_gamma" if is_weight else "bn_beta"
    if isinstance(module, nn.Linear):
        return "dense_kernel" if is_weight else "dense_bias"
    return None


class AdaptiveL2Regularizer(nn.Module):
    """``sum_n A_n * hard_sigmoid(theta_n) * ||w_n||^2`` over the given tensors.

    Args:
        tensors: ``(name, parameter, category)`` triples to regularise.
        amplitude: ``A``, one value or one per category (a missing category is
            not regularised).
        c: the hard sigmoid's half-width.
        theta_init: the starting value of every ``theta``.
    """

    def __init__(self, tensors: Iterable[tuple[str, nn.Parameter, str]],
                 amplitude: float | Mapping[str, float] = 0.005, c: float = 2.5, theta_init: float = 0.0):
        super().__init__()
        if c <= 0:
            raise ValueError(f"adaptive L2: c must be positive, got {c}")
        amplitudes = amplitude if isinstance(amplitude, Mapping) else {k: float(amplitude) for k in CATEGORIES}
        unknown = set(amplitudes) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"adaptive L2: unknown categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
        kept = [(n, p, k) for n, p, k in tensors if amplitudes.get(k, 0.0) > 0]
        if not kept:
            raise ValueError("adaptive L2: nothing to regularise (no trainable tensor in a category with A > 0)")
        self.names = [n for n, _, _ in kept]
        self.categories = [k for _, _, k in kept]
        self._tensors = [p for _, p, _ in kept]           # references, not submodules: the model owns them
        self.c = float(c)
        self.register_buffer("amplitude", torch.tensor([amplitudes[k] for k in self.categories]))
        self.theta = nn.Parameter(torch.full((len(kept),), float(theta_init)))

    @classmethod
    def for_model(cls, model: nn.Module, amplitude: float | Mapping[str, float] = 0.005, c: float = 2.5,
                  theta_init: float = 0.0) -> AdaptiveL2Regularizer:
        """Every trainable parameter of ``model`` in one of :data:`CATEGORIES`."""
        tensors = []
        for module_name, module in model.named_modules():
            for param_name, p in module.named_parameters(recurse=False):
                category = parameter_category(module, param_name)
                if p.requires_grad and category is not None:
                    tensors.append((f"{module_name}.{param_name}" if module_name else param_name, p, category))
        return cls(tensors, amplitude, c, theta_init)

    def factors(self) -> torch.Tensor:
        """``lambda_n = A_n hard_sigmoid(theta_n)``, differentiable in ``theta``."""
        amplitude = cast(torch.Tensor, self.amplitude)         # a buffer
        return amplitude * hard_sigmoid(self.theta, self.c)

    def forward(self) -> torch.Tensor:
        squared_norms = torch.stack([p.pow(2).sum() for p in self._tensors]).to(self.theta.dtype)
        return (self.factors() * squared_norms).sum()

    @torch.no_grad()
    def factors_by_category(self) -> dict[str, float]:
        """Mean factor of each category present (what the paper's Fig. 3 follows over training)."""
        lam = self.factors()
        out = {}
        for category in CATEGORIES:
            idx = [i for i, k in enumerate(self.categories) if k == category]
            if idx:
                out[category] = float(lam[idx].mean())
        return out

    @torch.no_grad()
    def named_factors(self) -> dict[str, float]:
        """``{tensor name: lambda}`` (the paper's Fig. 4 histogram is of these)."""
        return dict(zip(self.names, self.factors().tolist()))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if state_dict["theta"].shape != self.theta.shape:
            raise ValueError(f"adaptive L2: the checkpoint has {state_dict['theta'].numel()} factors, "
                             f"this model {self.theta.numel()}")
        return super().load_state_dict(state_dict, strict, assign)
