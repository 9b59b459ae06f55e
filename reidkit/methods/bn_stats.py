"""What BatchNorm does while the models train, as a piece (``train.bn_stats``; :mod:`reidkit.engine.batchnorm_modes`):
``frozen`` keeps every BatchNorm in eval mode (the loaded statistics normalise; scale and shift still train),
``recalibrate`` first measures real statistics on training images without changing the function (BN-folded
imports), ``update`` is PyTorch's default; for every model trained."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..config import Recipe
from ..data.cache import ImageCache
from ..engine.batchnorm_modes import recalibrate_on_training_images, requested_mode
from ..engine.freeze import freeze_batchnorm_statistics
from ..pieces import PieceContext, TrainingPiece, register_piece


class BatchNormStatsPiece(TrainingPiece):
    """Recalibrates the models' BatchNorms once (``recalibrate``) or freezes their statistics every epoch."""

    def __init__(self, mode: str, recipe: Recipe, images: ImageCache, device: torch.device,
                 memory_format: torch.memory_format):
        self.mode, self.recipe, self.images = mode, recipe, images
        self.device, self.memory_format = device, memory_format

    def setup(self, models: Sequence[nn.Module]) -> None:
        if self.mode == "recalibrate":
            for model in models:
                recalibrate_on_training_images(model, self.recipe, self.images, self.device, self.memory_format)

    def on_epoch_start(self, models: Sequence[nn.Module], epoch: int) -> None:
        if self.mode == "frozen":
            for model in models:
                freeze_batchnorm_statistics(model)


@register_piece("bn_stats", order=20)
def _bn_stats(ctx: PieceContext[None]) -> BatchNormStatsPiece | None:
    """On when ``train.bn_stats`` (``auto`` resolved from ``model.pretrained``'s checkpoint) is not ``update``."""
    t = ctx.recipe.train
    mode = requested_mode(ctx.recipe)
    if mode == "frozen" and t.precise_bn:
        raise ValueError(f"train.precise_bn={t.precise_bn} re-measures BatchNorm statistics that "
                         f"train.bn_stats=auto freezes for {ctx.recipe.model.pretrained}: set train.bn_stats=update "
                         "or train.precise_bn=0")
    if mode == "update":
        return None
    if ctx.train_images is None:
        raise ValueError(f"train.bn_stats={mode} needs the training images (PieceContext.train_images)")
    return BatchNormStatsPiece(mode, ctx.recipe, ctx.train_images, ctx.device, ctx.memory_format)
