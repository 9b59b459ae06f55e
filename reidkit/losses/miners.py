"""Miners: choose, for every anchor, the positive and negative its triplet uses."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..sections import register_miner


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``x`` (clamped before the sqrt for stable gradients)."""
    sq = (x * x).sum(dim=1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * x @ x.t()
    return d2.clamp(min=1e-12).sqrt()


@dataclass
class Triplets:
    """Indices of the selected positive and negative for every anchor.

    A miner may also ask the loss to shift the selected distances
    (``positive_offset`` is added to d(a, p), ``negative_offset`` to d(a, n)).
    """

    positive: torch.Tensor
    negative: torch.Tensor
    positive_offset: torch.Tensor | None = None
    negative_offset: torch.Tensor | None = None


class BatchHardMiner:
    """Batch-hard mining (Hermans et al. 2017): the farthest positive and the closest negative.

    Selection uses detached distances; the loss recomputes the selected ones
    with gradients.  Each anchor needs at least one other image of its identity
    and one of another identity (P x K batches with K >= 2 guarantee it).
    """

    recording = True        # whether a call keeps the statistics a miner may record (see :meth:`unrecorded`)

    @contextmanager
    def unrecorded(self) -> Iterator[None]:
        """Calls inside keep no statistics, so that a miner's diagnostics describe the recipe's model alone
        (deep mutual learning's other peers mine with the same miner, on the same schedule)."""
        self.recording = False
        try:
            yield
        finally:
            self.recording = True

    @staticmethod
    def masks(dist: torch.Tensor, pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positive_mask, negative_mask)`` of a batch, checking every anchor has both."""
        same = pids.unsqueeze(0) == pids.unsqueeze(1)
        eye = torch.eye(len(pids), dtype=torch.bool, device=dist.device)
        pos_mask, neg_mask = same & ~eye, ~same
        # checked on the CPU; on a GPU the check would stall every step (the samplers guarantee it there)
        if dist.device.type == "cpu" and (not bool(pos_mask.any(1).all()) or not bool(neg_mask.any(1).all())):
            raise ValueError("batch-hard mining needs, for every anchor, another image of its "
                             "identity and an image of another identity (use a P x K sampler, K >= 2)")
        return pos_mask, neg_mask

    def __call__(self, dist: torch.Tensor, pids: torch.Tensor, camids: torch.Tensor | None = None) -> Triplets:
        d = dist.detach()
        pos_mask, neg_mask = self.masks(d, pids)
        positive = d.masked_fill(~pos_mask, float("-inf")).argmax(dim=1)
        negative = d.masked_fill(~neg_mask, float("inf")).argmin(dim=1)
        return Triplets(positive, negative)


@register_miner("batch_hard")
def _batch_hard(config: None) -> BatchHardMiner:
    """Batch-hard mining (Hermans et al. 2017): the farthest positive and the closest negative."""
    return BatchHardMiner()
