"""Loaders that feed the training loop and feature extraction from an :class:`ImageCache`.

The decoded uint8 images are indexed, moved and augmented as whole batches on the
training device.  On a GPU the train images live in GPU memory when they fit
(``data.cache_on_device``); otherwise a background thread gathers each batch into
pinned host memory and the copy to the GPU overlaps the previous step.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .cache import ImageCache
from .samplers import BatchSampler, shard_bounds
from .transforms import BatchAugment, normalize

log = logging.getLogger(__name__)

#: ``auto`` puts the train images on the GPU when they take at most this share of its free memory
DEVICE_CACHE_SHARE = 0.25


@dataclass
class Batch:
    """This process's images and labels; with several processes, also the whole batch's labels."""

    images: torch.Tensor   # float, normalised, B x 3 x H x W
    pids: torch.Tensor     # int64
    camids: torch.Tensor   # int64
    global_pids: torch.Tensor | None = None      # every process's pids, in rank order (None: = pids)
    global_camids: torch.Tensor | None = None


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a copy to a GPU goes through pinned memory without blocking the host."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def fits_on_device(num_bytes: int, device: torch.device, share: float = DEVICE_CACHE_SHARE) -> bool:
    """Whether ``num_bytes`` take at most ``share`` of ``device``'s free memory (always False on a CPU)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return num_bytes <= share * free


class TrainLoader:
    """This process's share of every global batch of ``sampler``, on ``device``, augmented as a whole.

    Args:
        cache: the decoded train images.
        sampler: yields global batches of indices (the same on every process).
        augment: the batch augmentation; its random draws cover the global batch so that
            ``world_size`` processes augment exactly as one would.
        device: where batches are delivered.
        rank, world_size: this process among the data-parallel ones (see :func:`shard_bounds`).
        cache_on_device: keep the uint8 images on ``device`` (True), never (False) or when they fit (auto).
    """

    def __init__(self, cache: ImageCache, sampler: BatchSampler, augment: BatchAugment,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 cache_on_device: bool | Literal["auto"] = "auto"):
        self.cache, self.sampler, self.augment = cache, sampler, augment
        self.device = torch.device(device)
        self.start, self.end = shard_bounds(sampler.batch_size, sampler.group_size, rank, world_size)
        self.size = tuple(cache.images.shape[-2:])
        self.images = cache.images
        self.pids = torch.from_numpy(cache.pids())
        self.camids = torch.from_numpy(cache.camids())
        if self.device.type != "cpu":
            nbytes = self.images.numel() * self.images.element_size()
            if cache_on_device is True or (cache_on_device == "auto" and fits_on_device(nbytes, self.device)):
                self.images = self.images.to(self.device)
                log.info("train images on %s (%.2f GB)", self.device, nbytes / 1e9)
            else:
                log.info("train images stream from pinned host memory (%.2f GB)", nbytes / 1e9)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def relabel(self, pids: np.ndarray, sampler: BatchSampler) -> None:
        """New identity labels of the training images (-1: none) and the sampler that draws batches from them
        (the same batch size and grouping: each process's share stays where it was)."""
        if len(pids) != len(self.pids):
            raise ValueError(f"{len(pids)} labels for {len(self.pids)} training images")
        if (sampler.batch_size, sampler.group_size) != (self.sampler.batch_size, self.sampler.group_size):
            raise ValueError("a relabelled sampler must draw batches of the same size and grouping")
        self.pids = torch.as_tensor(np.asarray(pids, dtype=np.int64))
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def _finish(self, images: torch.Tensor, indices: list[int], share: torch.Tensor) -> Batch:
        draws = self.augment.draw(len(indices), (self.size[0], self.size[1])).rows(self.start, self.end)
        whole = torch.as_tensor(indices)
        labels = to_device(torch.stack([self.pids[whole], self.camids[whole]]), self.device)
        a, b = self.start, self.end
        return Batch(self.augment.apply(images, draws), labels[0, a:b], labels[1, a:b], labels[0], labels[1])

    def __iter__(self) -> Iterator[Batch]:
        if self.device.type == "cpu" or self.images.device.type != "cpu":      # images already where they train
            for indices in self.sampler:
                share = torch.as_tensor(indices[self.start:self.end])
                yield self._finish(self.images[to_device(share, self.images.device)], indices, share)
        else:
            yield from self._streamed()

    def _streamed(self) -> Iterator[Batch]:
        """Host cache -> pinned buffers (a producer thread) -> non-blocking copies to the GPU.

        Three buffers and a queue of one: the producer fills buffer ``i + 2`` while batch ``i`` trains,
        and may refill batch ``i``'s buffer only after the consumer has recorded that batch's copy.
        """
        shape = (self.end - self.start, *self.images.shape[1:])
        buffers = [torch.empty(shape, dtype=self.images.dtype).pin_memory() for _ in range(3)]
        copied: list[torch.cuda.Event | None] = [None] * 3
        ready: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def produce() -> None:
            try:
                for i, indices in enumerate(self.sampler):
                    k = i % 3
                    event = copied[k]
                    if event is not None:
                        event.synchronize()
                    share = torch.as_tensor(indices[self.start:self.end])
                    torch.index_select(self.images, 0, share, out=buffers[k])
                    while not stop.is_set():
                        try:
                            ready.put((k, indices, share), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ready.put(None)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                ready.put(e)

        thread = threading.Thread(target=produce, name="reidkit-batches", daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                k, indices, share = item
                images = buffers[k].to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                copied[k] = event
                yield self._finish(images, indices, share)
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.1)


def iter_test_batches(cache: ImageCache, batch_size: int = 128, mean=None, std=None,
                      device: torch.device | str = "cpu", limit: int | None = None,
                      start: int = 0) -> Iterator[torch.Tensor]:
    """Normalised images in dataset order from row ``start`` (up to row ``limit`` when given), ``batch_size`` at a
    time, on ``device``."""
    kwargs = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    device = torch.device(device)
    end = len(cache) if limit is None else min(limit, len(cache))
    for s in range(start, end, batch_size):
        yield normalize(to_device(cache.images[s:min(s + batch_size, end)], device), **kwargs)
