"""Triplet loss with a pluggable miner (Hermans et al., "In Defense of the Triplet Loss", 2017)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .miners import BatchHardMiner, Triplets, pairwise_euclidean


class TripletLoss(nn.Module):
    """``mean(max(0, d(a, p) - d(a, n) + margin))``, or soft margin ``mean(log(1 + exp(d_ap - d_an)))``.

    Distances are Euclidean on the (un-normalised) embeddings, as in the BoT.
    ``margin=None`` selects the soft margin.
    """

    def __init__(self, margin: float | None = 0.3, miner=None):
        super().__init__()
        self.margin = margin
        self.miner = miner if miner is not None else BatchHardMiner()
        self.last_triplets: Triplets | None = None

    def forward(self, features: torch.Tensor, pids: torch.Tensor,
                camids: torch.Tensor | None = None) -> torch.Tensor:
        dist = pairwise_euclidean(features)
        triplets = self.miner(dist, pids, camids)
        self.last_triplets = triplets
        rows = torch.arange(len(pids), device=dist.device)
        d_ap, d_an = dist[rows, triplets.positive], dist[rows, triplets.negative]
        if triplets.positive_offset is not None:
            d_ap = d_ap + triplets.positive_offset
        if triplets.negative_offset is not None:
            d_an = d_an + triplets.negative_offset
        if self.margin is None:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()
