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

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import cast

import torch
import torch.nn as nn

from ..files import write_text_atomic
from ..pieces import PieceContext, StepOutputs, TrainingPiece, register_piece

log = logging.getLogger("reidkit")

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


class AdaptiveL2Piece(TrainingPiece):
    """Adaptive L2 as a training piece: the penalty term, the factors trained by the main optimiser
    without weight decay, the mean factor per category each epoch (the paper's Fig. 3) and every
    tensor's final factor in ``adaptive_l2_factors.json`` (its Fig. 4)."""

    legacy_keys = {"adaptive_l2": "module"}

    def __init__(self, regularizer: AdaptiveL2Regularizer):
        self.regularizer = regularizer

    def to(self, device: torch.device) -> AdaptiveL2Piece:
        self.regularizer.to(device)
        return self

    def parameter_groups(self) -> list[dict]:
        return [{"params": [self.regularizer.theta], "weight_decay": 0.0, "name": "adaptive_l2"}]

    def extra_loss(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        return {"adaptive_l2": self.regularizer()}

    def epoch_diagnostics(self, step_means: dict[str, float]) -> dict[str, float]:
        return self.regularizer.factors_by_category()

    def panel(self) -> dict:
        return {"title": "adaptive L2 factors", "ylabel": "mean regularisation factor"}

    def state_dict(self) -> dict:
        return {"module": self.regularizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.regularizer.load_state_dict(state["module"])

    def write_outputs(self, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / "adaptive_l2_factors.json"
        write_text_atomic(path, json.dumps(self.regularizer.named_factors(), indent=1))
        return [path]


@register_piece("adaptive_l2")
def _adaptive_l2(ctx: PieceContext) -> AdaptiveL2Piece | None:
    """Adaptive L2 over the model's trainable tensors when ``loss.adaptive_l2.amplitude > 0``."""
    cfg, optim = ctx.recipe.loss.adaptive_l2, ctx.recipe.optim
    if cfg.amplitude <= 0:
        return None
    if optim.weight_decay > 0 or optim.weight_decay_bias > 0:
        log.warning("adaptive L2 is on and optim.weight_decay=%g / weight_decay_bias=%g add a fixed L2 on top; "
                    "the paper sets both to 0", optim.weight_decay, optim.weight_decay_bias)
    return AdaptiveL2Piece(AdaptiveL2Regularizer.for_model(ctx.model, cfg.amplitude, cfg.c, cfg.theta_init))
