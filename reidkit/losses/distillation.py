"""Student-Teacher Distillation (STD) of the Progressive Transfer Learning paper (Yu et al., Eq. 4).

    L_distill = (1 - lambda) * L_CE + lambda * L_l1(student feature, teacher feature),  lambda = 0.8

The teacher (in the paper, the PTL network fine-tuned on the target data) is
frozen in eval mode; the student is a plain backbone.  :class:`FeatureDistillationLoss`
is the ``L_l1`` term; the recipe sets the weights (``loss.ce_weight: 0.2``,
``loss.distill.weight: 0.8``), and the trainer feeds the teacher the same
augmented batch as the student.  Both sides give the feature they are tested
with (the paper: "the output of the 1x1 Conv-layer" for both): the teacher its
test embedding, the student, when its BNNeck is tested after the BatchNorm, its
training embedding through that BatchNorm (the batch's statistics, as in its
training forward pass, without a second update of the running ones).
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..numerics import full_precision
from ..pieces import PieceContext, StepOutputs, TrainingPiece, register_piece

log = logging.getLogger("reidkit")


class FeatureDistillationLoss(nn.Module):
    """Mean absolute difference between the student's embedding and the (constant) teacher's."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"distillation: the student's features are {tuple(student.shape)} but the teacher's "
                             f"{tuple(teacher.shape)}; the two models need the same embedding size")
        return F.l1_loss(full_precision(student), full_precision(teacher.detach()))


class DistillationPiece(TrainingPiece):
    """Student-teacher distillation as a training piece: the frozen teacher embeds the same augmented
    batch (under the loop's autocast) and ``weight * L1`` pulls the student's training embedding to it."""

    def __init__(self, teacher: nn.Module, weight: float, student_head: nn.Module | None = None):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight = float(weight)
        self.loss = FeatureDistillationLoss()
        # the student's BNNeck when it is tested after its BatchNorm: the distilled feature goes through it
        bn = getattr(student_head, "bottleneck", None)
        tested_after_bn = getattr(student_head, "test_feature", None) == "after_bn"
        self.student_bn = bn if isinstance(bn, nn.BatchNorm1d) and tested_after_bn else None

    def tested_feature(self, f_t: torch.Tensor) -> torch.Tensor:
        """The student's training embedding as it is tested (through its BNNeck's BatchNorm, batch statistics)."""
        bn = self.student_bn
        if bn is None:
            return f_t
        return F.batch_norm(f_t, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)

    def to(self, device: torch.device) -> DistillationPiece:
        self.teacher.to(device)
        return self

    def extra_loss(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        if len(out.features) > 1:
            raise ValueError("distillation needs a single-branch student")
        with torch.no_grad():
            teacher_features = out.gather(self.teacher(out.inputs))
        return {"distill": self.weight * self.loss(self.tested_feature(out.features[0]), teacher_features)}


@register_piece("distillation")
def _distillation(ctx: PieceContext) -> DistillationPiece | None:
    cfg = ctx.recipe.loss.distill
    if not cfg.teacher:
        return None
    if not cfg.arch:
        raise ValueError(f"loss.distill.teacher={cfg.teacher}: name its model with loss.distill.arch")
    # each side on the feature it is tested with: the teacher's test embedding, the student's through its BNNeck
    if ctx.load_model is None:
        raise ValueError("distillation needs the trainer's model loader (PieceContext.load_model)")
    teacher = ctx.load_model(cfg.arch, cfg.teacher).to(memory_format=ctx.memory_format)
    log.info("distilling from %s (%s, frozen), on the features each is tested with", cfg.teacher, cfg.arch)
    return DistillationPiece(teacher, cfg.weight, getattr(ctx.model, "head", None))
