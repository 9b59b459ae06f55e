"""A validation split held out of the training identities, so that model selection never reads the test set.

Whole identities leave the training set (and the classifier); each keeps, per camera, its first image (by
path) as a query and the rest as gallery, the Market-1501 way.  Only identities seen by at least two
cameras are held out, so every validation query has a match.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .records import ImageRecord, relabel


@dataclass
class ValidationSplit:
    train: list[ImageRecord]          # the remaining training images, identities relabelled 0..N-1
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    identities: list[int]             # the held-out identities (their labels in the original train split)


def hold_out_identities(train: list[ImageRecord], count: int | float, seed: int = 0) -> ValidationSplit:
    """Hold out ``count`` identities (an int, or a fraction of the multi-camera ones), chosen with ``seed``."""
    cameras: dict[int, set[int]] = {}
    for r in train:
        cameras.setdefault(r.pid, set()).add(r.camid)
    eligible = sorted(pid for pid, cams in cameras.items() if len(cams) >= 2)
    n = int(round(count * len(eligible))) if isinstance(count, float) else int(count)
    if not 1 <= n < len(cameras) or n > len(eligible):
        raise ValueError(f"data.val_identities={count}: {n} identities cannot be held out of {len(cameras)} "
                         f"({len(eligible)} seen by two or more cameras); keep at least one for training")
    held = sorted(np.random.default_rng(seed).choice(eligible, n, replace=False).tolist())
    held_set = set(held)
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    seen: set[tuple[int, int]] = set()
    for r in sorted((r for r in train if r.pid in held_set), key=lambda r: (r.pid, r.camid, r.path)):
        (gallery if (r.pid, r.camid) in seen else query).append(r)
        seen.add((r.pid, r.camid))
    return ValidationSplit(relabel([r for r in train if r.pid not in held_set]), query, gallery, held)
