"""``train.bn_stats``: what BatchNorm does while a model trains (update, frozen, recalibrated first)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from ..config import Recipe
from ..data.cache import ImageCache
from ..data.loader import iter_test_batches
from ..models.recalibrate import recalibrate_batchnorm
from .checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger("reidkit")


def requested_mode(recipe: Recipe) -> str:
    """``train.bn_stats``, with ``auto`` resolved to what ``model.pretrained``'s checkpoint asks for (`reidkit
    import-onnx` asks for ``recalibrate``: its folded BatchNorms hold no real statistics), else ``update``."""
    mode, pretrained = recipe.train.bn_stats, recipe.model.pretrained
    if mode != "auto":
        return mode
    asked = None
    if pretrained and pretrained not in ("auto", "none", "imagenet") and Path(pretrained).is_file():
        try:
            asked = load_checkpoint(pretrained).get("bn_stats")
        except CheckpointError:
            asked = None                             # not a reidkit checkpoint: the model's builder reports it
    if asked in ("frozen", "recalibrate"):
        log.info("train.bn_stats=auto: %s BatchNorm statistics, as %s asks (imported weights whose folded "
                 "BatchNorms hold no real statistics)", asked, pretrained)
        return str(asked)
    return "update"


def apply_bn_stats(recipe: Recipe, model: nn.Module, cache: ImageCache, device: torch.device,
                   memory_format: torch.memory_format, images: int = 512) -> bool:
    """Recalibrate ``model``'s BatchNorms on the first ``images`` of ``cache`` when the mode asks for it
    (:func:`reidkit.models.recalibrate.recalibrate_batchnorm`: the function unchanged); returns whether
    BatchNorm statistics stay frozen while training."""
    mode = requested_mode(recipe)
    if mode == "recalibrate":
        batches = (b.contiguous(memory_format=memory_format)
                   for b in iter_test_batches(cache, recipe.data.test_batch_size, recipe.augment.mean,
                                              recipe.augment.std, device=device, limit=images))
        count = recalibrate_batchnorm(model, batches)
        log.info("recalibrated %d BatchNorm layers on %d training images (same function; train and eval mode "
                 "now agree)", count, min(images, len(cache)))
    return mode == "frozen"
