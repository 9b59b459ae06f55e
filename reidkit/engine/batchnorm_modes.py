"""BatchNorm statistics around training: ``train.bn_stats`` (what BatchNorm does while a model trains: update,
frozen, recalibrated first) and ``train.precise_bn`` (population statistics before each evaluation)."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn
from torch.optim.swa_utils import update_bn

from ..config import Recipe
from ..data.cache import ImageCache
from ..data.loader import iter_test_batches, to_device
from ..data.transforms import normalize
from ..models.heads import takes_cameras
from ..models.recalibrate import recalibrate_batchnorm
from .checkpoint import CheckpointError, load_checkpoint
from .distributed import DistEnv, all_mean

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


def recalibrate_on_training_images(model: nn.Module, recipe: Recipe, cache: ImageCache, device: torch.device,
                                   memory_format: torch.memory_format, images: int = 512) -> int:
    """Recalibrate ``model``'s BatchNorms on the first ``images`` of ``cache``
    (:func:`reidkit.models.recalibrate.recalibrate_batchnorm`: the function unchanged); returns how many."""
    batches = (b.contiguous(memory_format=memory_format)
               for b in iter_test_batches(cache, recipe.data.test_batch_size, recipe.augment.mean,
                                          recipe.augment.std, device=device, limit=images))
    count = recalibrate_batchnorm(model, batches)
    log.info("recalibrated %d BatchNorm layers on %d training images (same function; train and eval mode "
             "now agree)", count, min(images, len(cache)))
    return count


class _WithCameras(nn.Module):
    """A model that takes cameras, called with images alone by ``update_bn``: :meth:`feed` sets each batch's
    cameras just before the batch is handed over."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.cameras: torch.Tensor | None = None

    def feed(self, batches: Iterator[torch.Tensor], cameras: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        for s, images in zip(range(0, len(cameras), batch_size), batches):
            self.cameras = cameras[s:s + batch_size]
            yield images

    def forward(self, images: torch.Tensor):
        return self.model(images, self.cameras)


def precise_batchnorm(model: nn.Module, cache: ImageCache, images: int, batch_size: int, mean, std,
                      device: torch.device, memory_format: torch.memory_format, env: DistEnv | None = None) -> int:
    """fast-reid's "precise BN": every BatchNorm's running mean and variance replaced by plain averages over
    ``images`` clean training images spread evenly over ``cache`` (train-mode passes through
    ``torch.optim.swa_utils.update_bn``; parameters and the train-mode function are untouched).

    The running averages a model ends training with weigh its last ten or twenty batches most, and at short
    budgets they move a model's test mAP by points (docs/RESULTS.md, issue 16); population statistics
    measured on the training set do not read the test set.  Under DDP each process measures an equal share
    and the statistics are averaged over the processes.  Returns the number of images measured.
    """
    env = env or DistEnv()
    count = min(images, len(cache))
    share = count // env.world_size
    spread = torch.linspace(0, len(cache) - 1, count).round().long()[env.rank * share:(env.rank + 1) * share]
    stats = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    batches: Iterator[torch.Tensor] = (normalize(to_device(cache.images[spread[s:s + batch_size]], device), **stats)
               .contiguous(memory_format=memory_format) for s in range(0, len(spread), batch_size))
    if takes_cameras(model):                 # TransReID's SIE: each batch with its cameras
        cameras = torch.as_tensor(cache.camids(), dtype=torch.long, device=device)[spread]
        model = _WithCameras(model)
        batches = model.feed(batches, cameras, batch_size)
    update_bn(batches, model)
    if env.enabled:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                    assert m.running_var is not None
                    m.running_mean.copy_(all_mean(m.running_mean))
                    m.running_var.copy_(all_mean(m.running_var))
    return share * env.world_size
