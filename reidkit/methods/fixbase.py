"""OSNet's "fixbase" epochs as a piece (Zhou et al., ICCV 2019): for the first ``train.fixbase_epochs`` epochs
only ``train.open_layers`` train (the others get no gradient and stay in eval mode), then everything does;
for every model trained (deep mutual learning's peers too)."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch.nn as nn

from ..engine.freeze import find_modules, open_all_layers, open_layers
from ..pieces import PieceContext, TrainingPiece, register_piece

log = logging.getLogger("reidkit")


class FixbasePiece(TrainingPiece):
    """Opens only ``layers`` before epoch ``epochs`` (0-based), every originally trainable parameter after."""

    def __init__(self, epochs: int, layers: list[str], speaks: bool = True):
        self.epochs, self.layers, self.speaks = epochs, list(layers), speaks
        self.trainable: list[set[nn.Parameter]] = []
        self.announced = False

    def setup(self, models: Sequence[nn.Module]) -> None:
        for model in models:
            find_modules(model, self.layers)           # a wrong name fails now, not at epoch 1
        # what each model trains once the fixbase epochs are over (parameters fixed by design stay fixed)
        self.trainable = [{p for p in model.parameters() if p.requires_grad} for model in models]

    def on_epoch_start(self, models: Sequence[nn.Module], epoch: int) -> None:
        for model, trainable in zip(models, self.trainable, strict=True):
            if epoch < self.epochs:
                open_layers(model, self.layers)
            else:
                open_all_layers(model, trainable)
        if epoch < self.epochs and not self.announced and self.speaks:
            log.info("epochs 1-%d: training only %s", self.epochs, ", ".join(self.layers))
        self.announced = True


@register_piece("fixbase", order=10)
def _fixbase(ctx: PieceContext[None]) -> FixbasePiece | None:
    """On when ``train.fixbase_epochs`` > 0."""
    t = ctx.recipe.train
    return FixbasePiece(t.fixbase_epochs, t.open_layers, ctx.env.is_main) if t.fixbase_epochs else None
