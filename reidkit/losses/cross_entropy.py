"""Label-smoothed cross-entropy (Szegedy et al. 2016; BoT trick 3)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CrossEntropyLabelSmooth(nn.Module):
    """``-sum_k q_k log p_k`` with ``q = (1 - eps) * onehot(y) + eps / K``, averaged over the batch."""

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        k = logits.shape[1]
        q = torch.full_like(log_p, self.epsilon / k)
        q.scatter_(1, targets.unsqueeze(1), 1.0 - self.epsilon + self.epsilon / k)
        return -(q * log_p).sum(dim=1).mean()
