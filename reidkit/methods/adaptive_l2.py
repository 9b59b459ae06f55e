"""Adaptive L2 regularisation as a method (Ni, Fang and Huttunen, ICPR 2020; docs/ADAPTIVE_L2.md): the recipe
section ``adaptive_l2`` switches on ``sum_n lambda_n ||w_n||^2`` with ``lambda_n = amplitude * hard_sigmoid(
theta_n)`` learnt (:class:`reidkit.losses.adaptive_l2.AdaptiveL2Regularizer`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from pydantic import Field

from ..config import Strict
from ..files import write_text_atomic
from ..losses.adaptive_l2 import AdaptiveL2Regularizer
from ..pieces import PieceContext, StepOutputs, TrainingPiece, register_piece

log = logging.getLogger("reidkit")


class AdaptiveL2Config(Strict):
    """The recipe section ``adaptive_l2``: lambda_n = amplitude * hard_sigmoid(theta_n), learnt."""

    amplitude: float = Field(0.0, ge=0)       # A; 0 switches it off (the paper: 0.005)
    c: float = Field(2.5, gt=0)               # hard sigmoid half-width
    theta_init: float = 0.0                   # every theta starts here (0: lambda = A / 2)


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


@register_piece("adaptive_l2", config=AdaptiveL2Config)
def _adaptive_l2(ctx: PieceContext[AdaptiveL2Config]) -> AdaptiveL2Piece | None:
    """Adaptive L2 over the model's trainable tensors when ``adaptive_l2.amplitude > 0``."""
    cfg, optim = ctx.config, ctx.recipe.optim
    if cfg.amplitude <= 0:
        return None
    if optim.weight_decay > 0 or optim.weight_decay_bias > 0:
        log.warning("adaptive L2 is on and optim.weight_decay=%g / weight_decay_bias=%g add a fixed L2 on top; "
                    "the paper sets both to 0", optim.weight_decay, optim.weight_decay_bias)
    return AdaptiveL2Piece(AdaptiveL2Regularizer.for_model(ctx.model, cfg.amplitude, cfg.c, cfg.theta_init))
