"""Center loss (Wen et al., ECCV 2016; BoT trick 6)."""
from __future__ import annotations

import torch
import torch.nn as nn


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
