"""Center loss (Wen et al., ECCV 2016; BoT trick 6)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..numerics import full_precision
from ..pieces import PieceContext, StepOutputs, TrainingPiece, register_piece


class CenterLoss(nn.Module):
    """``mean_i ||f_i - c_{y_i}||^2`` with one learnable centre per identity.

    The centres have their own optimiser (SGD, lr 0.5 in the BoT).  As in the
    BoT reference, the trainer divides the centres' gradient by the loss
    weight before their step, so the weight scales only the gradient reaching
    the network: see :func:`unweight_center_gradients`.
    """

    def __init__(self, num_classes: int, feature_dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feature_dim))

    def forward(self, features: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        return (features - self.centers[pids]).pow(2).sum(dim=1).mean()


def unweight_center_gradients(center_loss: CenterLoss, weight: float) -> None:
    """Undo the loss weight on the centres' gradient (BoT: ``grad *= 1 / weight``)."""
    if center_loss.centers.grad is not None and weight > 0:
        center_loss.centers.grad.mul_(1.0 / weight)


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
            raise ValueError("center loss needs one embedding; set loss.center_weight=0 for multi-branch models")
        return {"center": self.weight * self.loss(full_precision(out.features[0]), out.pids)}

    def after_backward(self) -> None:
        unweight_center_gradients(self.loss, self.weight)

    def state_dict(self) -> dict:
        return {"module": self.loss.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


@register_piece("center_loss")
def _center_loss(ctx: PieceContext) -> CenterLossPiece | None:
    cfg = ctx.recipe.loss
    if cfg.center_weight <= 0:
        return None
    return CenterLossPiece(ctx.num_classes, ctx.feature_dim, cfg.center_weight, cfg.center_lr)
