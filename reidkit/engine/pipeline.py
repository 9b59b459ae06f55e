"""The training input pipeline a recipe describes: sampler -> batch augmentation -> loader, in one call.

The trainer, the benchmarks and the experiments all build it here, so they feed the
model exactly the batches a training run would.
"""
from __future__ import annotations

import torch

from ..config import Recipe
from ..data.cache import ImageCache
from ..data.loader import TrainLoader
from ..data.samplers import build_sampler
from ..data.transforms import BatchAugment
from .distributed import ONE_PROCESS, DistEnv


def build_train_loader(recipe: Recipe, cache: ImageCache, device: torch.device | str = "cpu",
                       env: DistEnv = ONE_PROCESS, seed: int | None = None) -> TrainLoader:
    """``cache``'s images in the recipe's batches (``data.sampler``, ``data.batch_size``, ``data.num_instances``),
    augmented by the recipe's ``augment`` section on ``device``; this process's share of each global batch.

    ``seed`` (default ``train.seed``) seeds the sampler; the augmentation draws from ``seed + 1``.
    """
    d = recipe.data
    seed = recipe.train.seed if seed is None else seed
    sampler = build_sampler(d.sampler, cache.pids(), cache.camids(), d.batch_size, d.num_instances, seed=seed)
    return TrainLoader(cache, sampler, BatchAugment(recipe.augment, seed=seed + 1), device, env.rank,
                       env.world_size, d.cache_on_device)
