"""The training input pipeline a recipe describes: sampler -> batch augmentation -> loader, in one call.

The trainer, the benchmarks and the experiments all build it here, so they feed the
model exactly the batches a training run would.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..config import Recipe
from ..data.cache import ImageCache
from ..data.loader import TrainLoader
from ..data.samplers import BatchSampler, RepeatedBatchSampler, SubsetBatchSampler, TooFewClasses, build_sampler
from ..data.transforms import BatchAugment
from .distributed import ONE_PROCESS, DistEnv

log = logging.getLogger("reidkit")


def build_train_loader(recipe: Recipe, cache: ImageCache, device: torch.device | str = "cpu",
                       env: DistEnv = ONE_PROCESS, seed: int | None = None) -> TrainLoader:
    """``cache``'s images in the recipe's batches (``data.sampler``, ``data.batch_size``, ``data.num_instances``),
    augmented by the recipe's ``augment`` section on ``device``; this process's share of each global batch.

    ``seed`` (default ``train.seed``) seeds the sampler; the augmentation draws from ``seed + 1``.
    """
    d = recipe.data
    seed = recipe.train.seed if seed is None else seed
    if d.labels == "known":                     # hidden: the method's pseudo-labels are checked when they come
        check_positive_pairs(recipe, cache.pids())
    sampler = build_sampler(d.sampler, cache.pids(), cache.camids(), d.batch_size, d.num_instances, seed=seed)
    return TrainLoader(cache, epoch_of(recipe, sampler, len(cache)), BatchAugment(recipe.augment, seed=seed + 1),
                       device, env.rank, env.world_size, d.cache_on_device)


def epoch_of(recipe: Recipe, sampler: BatchSampler, images: int) -> BatchSampler:
    """``sampler`` drawing the epoch ``train.iterations`` asks for: one pass of it (``pass``), ``images`` /
    batch size batches (``images``: the images the epoch trains on), or that many batches; passes repeat as
    needed."""
    n = recipe.train.iterations
    if n == "pass":
        return sampler
    return RepeatedBatchSampler(sampler, max(1, images // sampler.batch_size) if n == "images" else int(n))


def check_positive_pairs(recipe: Recipe, pids: np.ndarray) -> None:
    """A triplet loss needs identities with two or more training images (the positives): none is an error, too few
    to fill a batch's P identities a warning."""
    if recipe.loss.triplet_weight <= 0 or len(pids) == 0:
        return
    _, counts = np.unique(pids, return_counts=True)
    paired = int((counts >= 2).sum())
    if paired == 0:
        raise ValueError(f"loss.triplet_weight={recipe.loss.triplet_weight}, but none of the {len(counts)} training "
                         "identities has two images: the triplet loss would have no positive pair. Set "
                         "loss.triplet_weight=0 (and data.sampler=random), or train on data with repeated identities")
    if paired < recipe.data.num_identities:
        log.warning("WARNING: only %d of %d training identities have two or more images, fewer than the %d a batch "
                    "draws (data.batch_size / data.num_instances): batches repeat them, and the triplet loss sees "
                    "few positives", paired, len(counts), recipe.data.num_identities)


def relabelled_sampler(recipe: Recipe, pids: np.ndarray, camids: np.ndarray, seed: int | None = None) -> BatchSampler:
    """The recipe's sampler over new training labels (a method's pseudo-labels; -1: the image is left out)."""
    d = recipe.data
    kept = np.flatnonzero(np.asarray(pids) >= 0)
    if len(kept) < d.batch_size:
        raise ValueError(f"the new training labels keep {len(kept)} images, fewer than one batch of {d.batch_size} "
                         "(data.batch_size): the clustering found (almost) nothing; see its eps / min_samples")
    check_positive_pairs(recipe, np.asarray(pids)[kept])
    labels = np.asarray(pids)[kept]
    try:
        sampler = build_sampler(d.sampler, labels, np.asarray(camids)[kept], d.batch_size, d.num_instances,
                                seed=recipe.train.seed if seed is None else seed)
    except TooFewClasses as e:
        what = "cluster-camera pairs" if d.sampler.startswith("identity_camera") else "clusters"
        raise ValueError(f"the new training labels hold {e.found} {what}, fewer than the {e.needed} a batch draws "
                         "(data.batch_size / data.num_instances): the clustering merged (almost) everything or "
                         "left it out; see its eps / min_samples, or lower data.batch_size") from None
    if len(sampler) == 0:
        raise ValueError(f"the new training labels give no batch of {d.num_identities} identities x "
                         f"{d.num_instances} images: {len(np.unique(labels))} clusters")
    return epoch_of(recipe, SubsetBatchSampler(sampler, kept), len(kept))
