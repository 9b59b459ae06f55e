"""Student-Teacher Distillation (STD) of the Progressive Transfer Learning paper (seed 003, Eq. 4).

    L_distill = (1 - lambda) * L_CE + lambda * L_l1(student feature, teacher feature),  lambda = 0.8

The teacher (in the paper, the PTL network fine-tuned on the target data) is
frozen in eval mode; the student is a plain backbone.  :class:`FeatureDistillationLoss`
is the ``L_l1`` term; the recipe sets the weights (``loss.ce_weight: 0.2``,
``loss.distill.weight: 0.8``), and the trainer feeds the teacher the same
augmented batch as the student.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FeatureDistillationLoss(nn.Module):
    """Mean absolute difference between the student's embedding and the (constant) teacher's."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"distillation: the student's features are {tuple(student.shape)} but the teacher's "
                             f"{tuple(teacher.shape)}; the two models need the same embedding size")
        return F.l1_loss(student.float(), teacher.detach().float())
