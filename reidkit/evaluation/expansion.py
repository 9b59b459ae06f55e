"""Query expansion and database-side augmentation on L2-normalised embeddings.

* alpha-QE (Radenović, Tolias and Chum, "Fine-tuning CNN image retrieval with no human annotation",
  TPAMI 2019): a query becomes the normalised sum of itself and its ``k`` nearest gallery embeddings,
  each weighted by its cosine similarity to the query raised to ``alpha``.
* DBA (Arandjelović and Zisserman 2012; Gordo et al. 2017): every gallery embedding becomes the
  same weighted sum over its own ``k`` nearest gallery neighbours (itself included) before the queries
  are ranked.

Both run block by block, so the gallery x gallery similarity never exists whole.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK = 1024


def expand_with_neighbours(rows: torch.Tensor, neighbours: torch.Tensor, alpha: float,
                           include_self: bool) -> torch.Tensor:
    """``rows`` (``N x D``, normalised) replaced by the normalised sum of their ``neighbours`` (``N x k x D``,
    normalised), each weighted by its cosine similarity to the row raised to ``alpha`` (plus the row itself
    unless the neighbours include it)."""
    weights = (neighbours * rows.unsqueeze(1)).sum(-1).clamp(min=0) ** alpha
    mixed = (weights.unsqueeze(-1) * neighbours).sum(1)
    return F.normalize(mixed if include_self else rows + mixed, dim=1)


def _expanded(rows: torch.Tensor, gallery: torch.Tensor, k: int, alpha: float, include_self: bool) -> torch.Tensor:
    """``rows`` (normalised) expanded over their ``k`` most similar gallery rows, a block at a time."""
    out = torch.empty_like(rows)
    for start in range(0, rows.shape[0], BLOCK):
        block = rows[start:start + BLOCK]
        idx = (block @ gallery.T).topk(min(k, gallery.shape[0]), dim=1).indices
        out[start:start + BLOCK] = expand_with_neighbours(block, gallery[idx], alpha, include_self)
    return out


def database_augment(gf: torch.Tensor, k: int, alpha: float = 3.0) -> torch.Tensor:
    """DBA: each gallery embedding averaged with its ``k`` nearest gallery neighbours (itself among them)."""
    if k <= 1:
        return gf
    g = F.normalize(gf.float(), dim=1)
    return _expanded(g, g, k, alpha, include_self=True)


def query_expand(qf: torch.Tensor, gf: torch.Tensor, k: int, alpha: float = 3.0) -> torch.Tensor:
    """alpha-QE: each query plus its ``k`` nearest gallery embeddings, weighted by similarity^alpha."""
    if k <= 0:
        return qf
    return _expanded(F.normalize(qf.float(), dim=1), F.normalize(gf.float(), dim=1), k, alpha, include_self=False)
