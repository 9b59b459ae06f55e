"""P identities x K images batch sampling (the BoT / torchreid RandomIdentitySampler)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


class RandomIdentityBatchSampler:
    """Batches of ``num_identities`` (P) identities x ``num_instances`` (K) images.

    Each epoch, every identity's images are shuffled and cut into groups of K
    (an identity with fewer than K images is sampled with replacement up to K;
    a last incomplete group is dropped).  Batches take one group from each of P
    identities drawn at random among those with groups left, until fewer than P
    remain — the epoch definition of the BoT reference and torchreid.
    Deterministic for ``(seed, epoch)``; call :meth:`set_epoch` each epoch.

    With ``camids`` and ``camera_diverse=True``, each identity's images are
    ordered round-robin over its cameras before being cut into groups, so the
    K images of a group come from as many cameras as the identity has
    (camera-aware mining needs cross-camera positives in the batch).
    """

    def __init__(self, pids: Sequence[int], num_identities: int, num_instances: int, seed: int = 0,
                 camids: Sequence[int] | None = None, camera_diverse: bool = False):
        if num_identities < 1 or num_instances < 1:
            raise ValueError(f"P and K must be positive, got P={num_identities}, K={num_instances}")
        self.pids = np.asarray(pids)
        self.p, self.k = int(num_identities), int(num_instances)
        self.seed, self.epoch = seed, 0
        self._length: tuple[int, int] | None = None      # (epoch, batches), computed once
        self.index = {pid: np.flatnonzero(self.pids == pid) for pid in np.unique(self.pids)}
        if camera_diverse and camids is None:
            raise ValueError("camera_diverse sampling needs the camera ids")
        self.camids = np.asarray(camids) if camera_diverse else None
        if len(self.index) < self.p:
            raise ValueError(f"only {len(self.index)} identities, fewer than P={self.p} per batch")

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
        rng = np.random.default_rng([self.seed, self.epoch])
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
        if self._length is None or self._length[0] != self.epoch:
            self._length = (self.epoch, sum(1 for _ in self))
        return self._length[1]


def _round_robin_by_camera(idxs: np.ndarray, camids: np.ndarray) -> np.ndarray:
    """Reorder (already shuffled) indices so consecutive ones cycle through the cameras."""
    per_camera = [list(idxs[camids[idxs] == c]) for c in np.unique(camids[idxs])]
    out = []
    while any(per_camera):
        for queue in per_camera:
            if queue:
                out.append(queue.pop(0))
    return np.asarray(out, dtype=idxs.dtype)
