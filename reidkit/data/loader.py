"""Loaders that feed the training loop and feature extraction from an :class:`ImageCache`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .cache import ImageCache
from .samplers import RandomIdentityBatchSampler
from .transforms import BatchAugment, normalize


@dataclass
class Batch:
    images: torch.Tensor   # float, normalised, B x 3 x H x W
    pids: torch.Tensor     # int64
    camids: torch.Tensor   # int64


class TrainLoader:
    """P x K batches from the cache, augmented as whole batches."""

    def __init__(self, cache: ImageCache, sampler: RandomIdentityBatchSampler, augment: BatchAugment):
        self.cache, self.sampler, self.augment = cache, sampler, augment
        self.pids = torch.from_numpy(cache.pids())
        self.camids = torch.from_numpy(cache.camids())

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        for indices in self.sampler:
            idx = torch.as_tensor(indices)
            yield Batch(self.augment(self.cache.images[idx]), self.pids[idx], self.camids[idx])


def iter_test_batches(cache: ImageCache, batch_size: int = 128, mean=None, std=None) -> Iterator[torch.Tensor]:
    """Normalised images in dataset order, ``batch_size`` at a time."""
    kwargs = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    for s in range(0, len(cache), batch_size):
        yield normalize(cache.images[s:s + batch_size], **kwargs)
