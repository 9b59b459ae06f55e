"""Student-Teacher Distillation as a method (Yu et al., "Progressive Transfer Learning", Eq. 4): the recipe
section ``distillation`` names a frozen teacher, and ``weight * L1`` pulls the student's embedding to the
teacher's on the same augmented batch (:mod:`reidkit.losses.distillation` has the loss)."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from pydantic import Field

from ..config import Strict
from ..losses.distillation import FeatureDistillationLoss
from ..models.heads import TestedFeature
from ..pieces import PieceContext, StepOutputs, TrainingPiece, register_piece

log = logging.getLogger("reidkit")


class DistillationConfig(Strict):
    """The recipe section ``distillation``: ``weight * L1(student, teacher)`` beside the ID loss."""

    teacher: str | None = None             # a reidkit checkpoint (or state_dict) of the teacher; None = off
    arch: str | None = None                # the teacher's registered model name
    weight: float = Field(0.8, ge=0)          # lambda (the paper: 0.8, with loss.ce_weight = 1 - lambda)


class DistillationPiece(TrainingPiece):
    """Student-teacher distillation as a training piece: the frozen teacher embeds the same augmented
    batch (under the loop's autocast) and ``weight * L1`` pulls the student's training embedding to it."""

    def __init__(self, teacher: nn.Module, weight: float, student: nn.Module | None = None):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight = float(weight)
        self.loss = FeatureDistillationLoss()
        # the student's embedding as it is tested: through its BNNeck's BatchNorm when it tests after it
        self.tested_feature = TestedFeature(student) if student is not None else (lambda f_t: f_t)

    def to(self, device: torch.device) -> DistillationPiece:
        self.teacher.to(device)
        return self

    def extra_loss(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        if len(out.features) > 1:
            raise ValueError("distillation needs a single-branch student")
        with torch.no_grad():
            teacher_features = out.gather(self.teacher(out.inputs))
        return {"distillation": self.weight * self.loss(self.tested_feature(out.features[0]), teacher_features)}


@register_piece("distillation", config=DistillationConfig)
def _distillation(ctx: PieceContext[DistillationConfig]) -> DistillationPiece | None:
    """Student-teacher distillation (PTL, Eq. 4), on when ``distillation.teacher`` names a checkpoint."""
    cfg = ctx.config
    if not cfg.teacher:
        return None
    if not cfg.arch:
        raise ValueError(f"distillation.teacher={cfg.teacher}: name its model with distillation.arch")
    # each side on the feature it is tested with: the teacher's test embedding, the student's through its BNNeck
    if ctx.load_model is None:
        raise ValueError("distillation needs the trainer's model loader (PieceContext.load_model)")
    teacher = ctx.load_model(cfg.arch, cfg.teacher).to(memory_format=ctx.memory_format)
    log.info("distilling from %s (%s, frozen), on the features each is tested with", cfg.teacher, cfg.arch)
    return DistillationPiece(teacher, cfg.weight, ctx.model)
