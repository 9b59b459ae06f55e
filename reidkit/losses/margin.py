"""Margin-based identity losses on cosine logits (``loss.id_loss``), as fast-reid's stronger baselines use them.

The head's ``classifier: cosine`` gives ``cos_j = <f_i / |f_i|, W_j / |W_j|>`` for every class j; each loss puts
its margin on the cosines, scales them by ``s`` and takes the (label-smoothed) cross-entropy:

* CosFace (Wang et al., CVPR 2018): the target's logit ``s (cos_y - m)``, the others ``s cos_j``;
* ArcFace (Deng et al., CVPR 2019): the target's ``s cos(theta_y + m)``; where ``theta_y + m`` passes pi
  (``cos_y <= cos(pi - m)``) the curve continues as ``cos_y - m sin(m)``, so that the logit keeps falling with
  theta (InsightFace's rule, and fast-reid's before its v1.2, whose ``ArcSoftmax`` now has none);
* Circle loss (Sun et al., CVPR 2020), its class-level (softmax) form, Eq. 6 with the relaxation of Eq. 8: the
  target's ``s a_p (cos_y - d_p)``, the others ``s a_n (cos_j - d_n)``, with ``a_p = [1 + m - cos_y]_+`` and
  ``a_n = [cos_j + m]_+`` weighing each by how far it is from its optimum (as constants: no gradient flows
  through them), ``d_p = 1 - m``, ``d_n = m``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cross_entropy import CrossEntropyLabelSmooth

#: each loss's scale and margin when the recipe gives none: CosFace as its paper (s 64, m 0.35; fast-reid's FastFace
#: config uses 0.4), Circle as fast-reid's SBS configs (SCALE 64, MARGIN 0.35; Circle loss's paper uses gamma 128 /
#: m 0.25 for ReID), ArcFace as its paper (64, 0.5)
DEFAULTS = {"cosface": (64.0, 0.35), "arcface": (64.0, 0.5), "circle": (64.0, 0.35)}


def cosface_logits(cos: torch.Tensor, targets: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    target = F.one_hot(targets, cos.shape[1]).bool()
    return scale * torch.where(target, cos - margin, cos)


def arcface_logits(cos: torch.Tensor, targets: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    target = F.one_hot(targets, cos.shape[1]).bool()
    c = cos.clamp(-1.0, 1.0)
    sin = (1.0 - c * c).clamp(min=0.0).sqrt()
    shifted = c * math.cos(margin) - sin * math.sin(margin)             # cos(theta + m)
    shifted = torch.where(c > math.cos(math.pi - margin), shifted, c - margin * math.sin(margin))
    return scale * torch.where(target, shifted, c)


def circle_logits(cos: torch.Tensor, targets: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    target = F.one_hot(targets, cos.shape[1]).bool()
    alpha_p = (1.0 + margin - cos.detach()).clamp(min=0.0)
    alpha_n = (cos.detach() + margin).clamp(min=0.0)
    return scale * torch.where(target, alpha_p * (cos - (1.0 - margin)), alpha_n * (cos - margin))


LOGITS = {"cosface": cosface_logits, "arcface": arcface_logits, "circle": circle_logits}


class MarginIdentityLoss(nn.Module):
    """``kind`` (cosface | arcface | circle) on cosine logits, then the label-smoothed cross-entropy."""

    def __init__(self, kind: str, scale: float | None = None, margin: float | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        if kind not in LOGITS:
            raise ValueError(f"unknown margin loss {kind!r}; choose from {', '.join(LOGITS)}")
        default_scale, default_margin = DEFAULTS[kind]
        self.kind = kind
        self.scale = float(default_scale if scale is None else scale)
        self.margin = float(default_margin if margin is None else margin)
        self.ce = CrossEntropyLabelSmooth(label_smoothing)

    def forward(self, cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if cos.detach().abs().max() > 1.0 + 1e-4:
            raise ValueError(f"loss.id_loss={self.kind} needs cosine logits (model.classifier=cosine); got values "
                             f"up to {float(cos.detach().abs().max()):.3g}")
        return self.ce(LOGITS[self.kind](cos, targets, self.scale, self.margin), targets)
