"""Ensembles by feature concatenation (the OSNet paper's appendix; Zhou et al. 2021, TPAMI).

Each member's query and gallery embeddings are L2-normalised and concatenated (scaled by
``1/sqrt(M)`` so the result is a unit vector): every member weighs the same whatever its
dimension or scale, and the ensemble's cosine similarity is the mean of the members'.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def concatenate_members(features: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(query, gallery), ...]`` of M models (rows in the same image order) -> the ensemble's
    ``(query, gallery)`` embeddings."""
    if not features:
        raise ValueError("an ensemble needs at least one model's features")
    rows = {(len(q), len(g)) for q, g in features}
    if len(rows) > 1:
        raise ValueError(f"the models embedded different numbers of images: {sorted(rows)}")
    scale = 1 / math.sqrt(len(features))
    query = torch.cat([F.normalize(q.float(), dim=1) for q, _ in features], dim=1) * scale
    gallery = torch.cat([F.normalize(g.float(), dim=1) for _, g in features], dim=1) * scale
    return query, gallery
