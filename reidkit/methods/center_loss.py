"""Center loss as a method (Wen et al., ECCV 2016; the BoT's sixth trick): ``center_loss.weight`` times the
mean squared distance of each embedding to its identity's learnt centre, the centres trained by their own SGD
(``center_loss.lr``; BoT: 0.5) with the weight divided out of their gradient."""
from __future__ import annotations

import torch
from pydantic import Field

from ..config import Strict
from ..losses.center import CenterLoss, unweight_center_gradients
from ..numerics import full_precision
from ..pieces import PieceContext, StepOutputs, TrainingPiece, register_piece


class CenterLossConfig(Strict):
    """The recipe section ``center_loss``."""

    weight: float = Field(0.0, ge=0)          # beta (BoT: 5e-4, as its recipes set); 0 (the default) switches it off
    lr: float = Field(0.5, gt=0)              # the centres' SGD learning rate (BoT: 0.5)


class CenterLossPiece(TrainingPiece):
    """The center loss as a training piece: its centres, their own SGD (BoT: lr 0.5) and the gradient rescale.

    The loss runs over the global batch's embeddings (``StepOutputs.features``), so
    under data parallelism every process computes the same centre gradient and the
    centres stay identical without communication.
    """

    legacy_keys = {"center": "module", "center_optimizer": "optimizer"}

    def __init__(self, num_classes: int, feature_dim: int, weight: float, lr: float):
        self.loss = CenterLoss(num_classes, feature_dim)
        self.weight = float(weight)
        self.optimizer = torch.optim.SGD(self.loss.parameters(), lr=lr)

    def to(self, device: torch.device) -> CenterLossPiece:
        self.loss.to(device)
        return self

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def extra_loss(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        if len(out.features) > 1:
            raise ValueError("center loss needs one embedding; set center_loss.weight=0 for multi-branch models")
        return {"center_loss": self.weight * self.loss(full_precision(out.features[0]), out.pids)}

    def after_backward(self) -> None:
        unweight_center_gradients(self.loss, self.weight)

    def state_dict(self) -> dict:
        return {"module": self.loss.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


@register_piece("center_loss", config=CenterLossConfig)
def _center_loss(ctx: PieceContext[CenterLossConfig]) -> CenterLossPiece | None:
    """Center loss (Wen et al. 2016; BoT), on when ``center_loss.weight > 0``."""
    cfg = ctx.config
    if cfg.weight <= 0:
        return None
    if ctx.hidden_labels is not None:
        raise ValueError("center_loss learns one centre per identity, and data.labels=hidden leaves the identities "
                         "unknown: set center_loss.weight=0")
    return CenterLossPiece(ctx.num_classes, ctx.feature_dim, cfg.weight, cfg.lr)
