"""k-means for the inverted lists of an ``ivf`` gallery index, in torch (faiss's own runs its bundled OpenBLAS,
with generic kernels on CPUs newer than it knows: 10x slower than torch's on this project's CPU)."""
from __future__ import annotations

import numpy as np
import torch


def kmeans(x: np.ndarray, k: int, iterations: int = 20, seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """``k`` centres of the rows of ``x`` (Lloyd's k-means from ``k`` seeded rows; an emptied cluster restarts
    at the point farthest from its centre), float32 ``k x dim``."""
    data = torch.from_numpy(x)
    generator = torch.Generator().manual_seed(seed)
    centres = data[torch.randperm(len(data), generator=generator)[:k]].clone()
    for _ in range(iterations):
        sums, counts = torch.zeros_like(centres), torch.zeros(k)
        farthest, far_distance = 0, -1.0
        for s in range(0, len(data), chunk):
            part = data[s:s + chunk]
            distance = (part * part).sum(1, keepdim=True) - 2 * part @ centres.T + (centres * centres).sum(1)
            nearest, assign = distance.min(1)
            sums.index_add_(0, assign, part)
            counts += torch.bincount(assign, minlength=k).float()
            top = int(nearest.argmax())
            if float(nearest[top]) > far_distance:
                farthest, far_distance = s + top, float(nearest[top])
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            centres[empty] = data[farthest]
    return centres.numpy()
