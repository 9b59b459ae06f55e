"""fast-reid's precise BN as a piece (``train.precise_bn``): before each evaluation every BatchNorm's running
statistics are re-measured as plain averages over that many clean training images, for every model trained
(:func:`reidkit.engine.batchnorm_modes.precise_batchnorm`)."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..config import Recipe
from ..data.cache import ImageCache
from ..engine.batchnorm_modes import precise_batchnorm
from ..engine.distributed import DistEnv
from ..pieces import PieceContext, TrainingPiece, register_piece

log = logging.getLogger("reidkit")


class PreciseBNPiece(TrainingPiece):
    """Population BatchNorm statistics of the current weights before every evaluation."""

    def __init__(self, recipe: Recipe, images: ImageCache, device: torch.device, memory_format: torch.memory_format,
                 env: DistEnv):
        self.recipe, self.images, self.device, self.memory_format, self.env = recipe, images, device, memory_format, env

    def before_evaluation(self, models: Sequence[nn.Module], epoch: int) -> None:
        r = self.recipe
        for model in models:
            n = precise_batchnorm(model, self.images, r.train.precise_bn, r.data.test_batch_size, r.augment.mean,
                                  r.augment.std, self.device, self.memory_format, self.env)
        if self.env.is_main:
            log.info("precise BN: BatchNorm statistics re-measured on %d training images (%d model%s)", n,
                     len(models), "s" if len(models) > 1 else "")


@register_piece("precise_bn", order=30)
def _precise_bn(ctx: PieceContext[None]) -> PreciseBNPiece | None:
    """On when ``train.precise_bn`` > 0."""
    if not ctx.recipe.train.precise_bn:
        return None
    if ctx.train_images is None:
        raise ValueError("train.precise_bn needs the training images (PieceContext.train_images)")
    return PreciseBNPiece(ctx.recipe, ctx.train_images, ctx.device, ctx.memory_format, ctx.env)
