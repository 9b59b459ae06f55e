"""Batch samplers: plain shuffled batches, P identities x K images (optionally spread over cameras), P
(identity, camera) groups x K images, and the unsupervised methods' samplers that draw every class once per
pass (Cluster Contrast's cross-camera groups, the camera-aware proxies' class-uniform groups).

Every sampler yields *global* batches (lists of dataset indices), deterministic for
``(seed, epoch)``; call :meth:`set_epoch` each epoch.  Under data parallelism every
process iterates the same global sequence and keeps its own share of each batch
(:func:`shard_bounds`), so all processes run the same number of iterations, never
wait on one another at an epoch's end, and together see exactly the batches one
process would.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np


class BatchSampler(Protocol):
    """What the training loader needs of a sampler."""

    batch_size: int
    group_size: int          # a batch is cut between processes only at multiples of this
    pass_index: int          # which pass of the epoch (repeated passes: RepeatedBatchSampler)

    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[list[int]]: ...
    def __len__(self) -> int: ...


class TooFewClasses(ValueError):
    """A P x K sampler given fewer classes (identities, clusters, pairs) than the P a batch draws."""

    def __init__(self, found: int, needed: int):
        super().__init__(f"only {found} identities, fewer than P={needed} per batch")
        self.found, self.needed = found, needed


class RandomBatchSampler:
    """Every image once per epoch in shuffled order, ``batch_size`` at a time; the last partial batch is
    dropped (torchreid's ``RandomSampler`` with ``drop_last=True``)."""

    group_size = 1

    def __init__(self, num_images: int, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_images < batch_size:
            raise ValueError(f"only {num_images} training images, fewer than one batch of {batch_size}")
        self.num_images, self.batch_size = int(num_images), int(batch_size)
        self.seed, self.epoch, self.pass_index = seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng(pass_seed(self.seed, self.epoch, self.pass_index)).permutation(self.num_images)
        for s in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[s:s + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.num_images // self.batch_size


class RandomIdentityBatchSampler:
    """Batches of ``num_identities`` (P) identities x ``num_instances`` (K) images.

    Each epoch, every identity's images are shuffled and cut into groups of K
    (an identity with fewer than K images is sampled with replacement up to K;
    a last incomplete group is dropped).  Batches take one group from each of P
    identities drawn at random among those with groups left, until fewer than P
    remain — the epoch definition of the BoT reference and torchreid.  A batch
    lists its P groups one after the other.

    With ``camids`` and ``camera_diverse=True``, each identity's images are
    ordered round-robin over its cameras before being cut into groups, so the
    K images of a group come from as many cameras as the identity has
    (camera-aware mining needs cross-camera positives in the batch).
    """

    def __init__(self, pids: Sequence[int] | np.ndarray, num_identities: int, num_instances: int, seed: int = 0,
                 camids: Sequence[int] | np.ndarray | None = None, camera_diverse: bool = False):
        if num_identities < 1 or num_instances < 1:
            raise ValueError(f"P and K must be positive, got P={num_identities}, K={num_instances}")
        self.pids = np.asarray(pids)
        self.p, self.k = int(num_identities), int(num_instances)
        self.batch_size, self.group_size = self.p * self.k, self.k
        self.seed, self.epoch, self.pass_index = seed, 0, 0
        self._length: tuple[int, int, int] | None = None      # (epoch, pass, batches), computed once
        self.index = {pid: np.flatnonzero(self.pids == pid) for pid in np.unique(self.pids)}
        if camera_diverse and camids is None:
            raise ValueError("camera_diverse sampling needs the camera ids")
        self.camids = np.asarray(camids) if camera_diverse else None
        if len(self.index) < self.p:
            raise TooFewClasses(len(self.index), self.p)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self, rng: np.random.Generator) -> dict[int, list[np.ndarray]]:
        groups = {}
        for pid, idxs in self.index.items():
            if len(idxs) < self.k:
                idxs = rng.choice(idxs, size=self.k, replace=True)
            else:
                idxs = rng.permutation(idxs)
            if self.camids is not None:
                idxs = _round_robin_by_camera(idxs, self.camids)
            n = len(idxs) // self.k
            groups[pid] = [idxs[i * self.k:(i + 1) * self.k] for i in range(n)]
        return groups

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(pass_seed(self.seed, self.epoch, self.pass_index))
        groups = self._groups(rng)
        available = sorted(groups)
        while len(available) >= self.p:
            chosen = rng.choice(len(available), self.p, replace=False)
            batch = []
            for c in chosen:
                batch.extend(groups[available[c]].pop(0).tolist())
            available = [pid for pid in available if groups[pid]]
            yield batch

    def __len__(self) -> int:
        """Batches per epoch (exact: the current epoch's sampling is simulated once)."""
        if self._length is None or self._length[:2] != (self.epoch, self.pass_index):
            self._length = (self.epoch, self.pass_index, sum(1 for _ in self))
        return self._length[2]


class OncePerClassBatchSampler:
    """Every class once per pass, in random order, as a group of K images; the groups one after the other, cut
    into batches of ``batch_size`` (the last partial batch dropped, as a loader with ``drop_last``).

    ``rule``:

    * ``cross_camera`` — Cluster Contrast's ``RandomMultipleGallerySampler``: an anchor drawn from the class, then
      K - 1 of the class's images seen by *other* cameras than the anchor's (without replacement when there are
      at least K of them, else with: the authors' test), or, when the class has one camera, K - 1 of its other
      images (the same rule).  A class of one image gives it K times (the authors' code gives it once, which
      shifts every later batch off its groups; reidkit keeps batches whole).
    * ``uniform`` — the camera-aware proxies' ``ClassUniformlySampler``: K images of the class without
      replacement, or, when it has fewer, drawn from its images repeated K times (the authors' rule).
    """

    def __init__(self, pids: Sequence[int] | np.ndarray, camids: Sequence[int] | np.ndarray, batch_size: int,
                 num_instances: int, seed: int = 0, rule: str = "cross_camera"):
        if rule not in ("cross_camera", "uniform"):
            raise ValueError(f"rule must be cross_camera or uniform, got {rule!r}")
        if num_instances < 1 or batch_size % num_instances:
            raise ValueError(f"batch size {batch_size} is not a multiple of K={num_instances}")
        self.pids, self.camids = np.asarray(pids), np.asarray(camids)
        if self.pids.shape != self.camids.shape:
            raise ValueError(f"{len(self.pids)} labels but {len(self.camids)} camera ids")
        self.k, self.rule, self.batch_size, self.group_size = int(num_instances), rule, int(batch_size), \
            int(num_instances)
        self.seed, self.epoch, self.pass_index = seed, 0, 0
        labels, first = np.unique(self.pids, return_index=True)
        self.classes = labels[np.argsort(first, kind="stable")]     # by first appearance, as the authors' dicts
        self.index = [np.flatnonzero(self.pids == c) for c in self.classes]
        if len(self.classes) < batch_size // self.k:
            raise TooFewClasses(len(self.classes), batch_size // self.k)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _group(self, idxs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = self.k
        if self.rule == "uniform":
            pool = idxs if len(idxs) >= k else np.tile(idxs, k)
            return rng.permutation(pool)[:k]
        anchor = idxs[rng.integers(len(idxs))]
        others = idxs[self.camids[idxs] != self.camids[anchor]]
        if not len(others):
            others = idxs[idxs != anchor]
        if not len(others):
            return np.full(k, anchor)
        return np.concatenate([[anchor], rng.choice(others, size=k - 1, replace=len(others) < k)])

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(pass_seed(self.seed, self.epoch, self.pass_index))
        stream = np.concatenate([self._group(self.index[c], rng) for c in rng.permutation(len(self.classes))])
        for s in range(0, len(self) * self.batch_size, self.batch_size):
            yield stream[s:s + self.batch_size].tolist()

    def __len__(self) -> int:
        return len(self.classes) * self.k // self.batch_size


class RepeatedBatchSampler:
    """``iterations`` batches of another sampler per epoch, its passes run one after the other (each pass drawn
    anew): an epoch of a fixed number of iterations, however many images the epoch's labels keep (Cluster
    Contrast's ``--iters``; its loader restarts the sampler when a pass runs out)."""

    def __init__(self, sampler: BatchSampler, iterations: int):
        if iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations}")
        if len(sampler) == 0:
            raise ValueError("the sampler gives no batch to repeat")
        self.sampler, self.iterations = sampler, int(iterations)
        self.batch_size, self.group_size = sampler.batch_size, sampler.group_size
        self.pass_index = 0                              # an epoch of it is one pass (its own passes inside)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        given, pass_index = 0, 0
        while given < self.iterations:
            self.sampler.pass_index = pass_index
            for batch in self.sampler:
                yield batch
                given += 1
                if given == self.iterations:
                    break
            pass_index += 1
        self.sampler.pass_index = 0

    def __len__(self) -> int:
        return self.iterations


def pass_seed(seed: int, epoch: int, pass_index: int) -> list[int]:
    """The random stream of one pass of a sampler: ``[seed, epoch]`` for an epoch's first pass (the stream every
    sampler drew before repeated passes existed), ``[seed, epoch, pass]`` for the later ones."""
    return [seed, epoch] if pass_index == 0 else [seed, epoch, pass_index]


class SubsetBatchSampler:
    """Another sampler's batches over some of the images (``indices``, e.g. those a clustering kept), given as
    indices of the whole training set."""

    def __init__(self, sampler: BatchSampler, indices: Sequence[int] | np.ndarray):
        self.sampler, self.indices = sampler, np.asarray(indices, dtype=np.int64)
        self.batch_size, self.group_size = sampler.batch_size, sampler.group_size

    @property
    def pass_index(self) -> int:
        return self.sampler.pass_index

    @pass_index.setter
    def pass_index(self, value: int) -> None:
        self.sampler.pass_index = value

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            yield self.indices[batch].tolist()

    def __len__(self) -> int:
        return len(self.sampler)


def build_sampler(name: str, pids: Sequence[int] | np.ndarray, camids: Sequence[int] | np.ndarray, batch_size: int,
                  num_instances: int, seed: int = 0) -> BatchSampler:
    """The sampler a recipe names (``data.sampler``) over the training images' identities and cameras."""
    if name == "random":
        return RandomBatchSampler(len(pids), batch_size, seed)
    if name in ("identity", "camera_diverse"):
        if batch_size % num_instances:
            raise ValueError(f"batch size {batch_size} is not a multiple of K={num_instances}")
        return RandomIdentityBatchSampler(pids, batch_size // num_instances, num_instances, seed, camids,
                                          camera_diverse=name == "camera_diverse")
    if name == "identity_camera":
        if batch_size % num_instances:
            raise ValueError(f"batch size {batch_size} is not a multiple of K={num_instances}")
        return RandomIdentityBatchSampler(identity_camera_groups(pids, camids), batch_size // num_instances,
                                          num_instances, seed)
    if name == "cross_camera":
        return OncePerClassBatchSampler(pids, camids, batch_size, num_instances, seed, "cross_camera")
    if name == "identity_camera_uniform":
        return OncePerClassBatchSampler(identity_camera_groups(pids, camids), camids, batch_size, num_instances, seed,
                                        "uniform")
    raise ValueError(f"unknown sampler {name!r}; known: random, identity, camera_diverse, identity_camera, "
                     "cross_camera, identity_camera_uniform")


def identity_camera_groups(pids: Sequence[int] | np.ndarray, camids: Sequence[int] | np.ndarray) -> np.ndarray:
    """One label per (identity, camera) pair with images, 0..pairs-1 in order of (identity, camera): the classes
    of the ``identity_camera`` sampler (with pseudo-labels, the camera-aware proxies: Wang et al., AAAI 2021,
    whose code draws K images of each proxy, ``ClassUniformlySampler`` over the proxy label)."""
    pids, camids = np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64)
    if pids.shape != camids.shape:
        raise ValueError(f"{len(pids)} identity labels but {len(camids)} camera ids")
    pairs = np.stack([pids, camids], axis=1)
    return np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)


def shard_bounds(batch_size: int, group_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, end)`` of process ``rank``'s share of a global batch.

    The batch is cut only between groups (an identity's K images stay on one
    process); the first ``groups % world_size`` processes take one group more.
    """
    groups = batch_size // group_size
    if groups < world_size:
        unit = "identities" if group_size > 1 else "images"
        raise ValueError(f"a batch of {groups} {unit} cannot be shared by {world_size} processes: raise "
                         f"data.batch_size to at least {world_size * group_size}")
    base, extra = divmod(groups, world_size)
    start = rank * base + min(rank, extra)
    return start * group_size, (start + base + (rank < extra)) * group_size


def _round_robin_by_camera(idxs: np.ndarray, camids: np.ndarray) -> np.ndarray:
    """Reorder (already shuffled) indices so consecutive ones cycle through the cameras."""
    per_camera = [list(idxs[camids[idxs] == c]) for c in np.unique(camids[idxs])]
    out = []
    while any(per_camera):
        for queue in per_camera:
            if queue:
                out.append(queue.pop(0))
    return np.asarray(out, dtype=idxs.dtype)
