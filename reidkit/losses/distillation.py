"""Student-Teacher Distillation (STD) of the Progressive Transfer Learning paper (Yu et al., Eq. 4).

    L_distill = (1 - lambda) * L_CE + lambda * L_l1(student feature, teacher feature),  lambda = 0.8

The teacher (in the paper, the PTL network fine-tuned on the target data) is
frozen in eval mode; the student is a plain backbone.  :class:`FeatureDistillationLoss`
is the ``L_l1`` term; the recipe sets the weights (``loss.ce_weight: 0.2``,
``distillation.weight: 0.8``), and the trainer feeds the teacher the same
augmented batch as the student.  Both sides give the feature they are tested
with (the paper: "the output of the 1x1 Conv-layer" for both): the teacher its
test embedding, the student, when its BNNeck is tested after the BatchNorm, its
training embedding through that BatchNorm (the batch's statistics, as in its
training forward pass, without a second update of the running ones).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..numerics import full_precision


class FeatureDistillationLoss(nn.Module):
    """Mean absolute difference between the student's embedding and the (constant) teacher's."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"distillation: the student's features are {tuple(student.shape)} but the teacher's "
                             f"{tuple(teacher.shape)}; the two models need the same embedding size")
        return F.l1_loss(full_precision(student), full_precision(teacher.detach()))
