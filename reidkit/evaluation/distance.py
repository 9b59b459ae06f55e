"""Distances between query and gallery embeddings.

``euclidean`` is the *squared* Euclidean distance, as torchreid's
``compute_distance_matrix`` returns it; ``cosine`` is ``1 - cos``.  Both are
computed block by block so that the working memory beyond the output is bounded
by ``chunk_size`` rows.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .checks import ArrayLike, as_feature_pair, check_metric

DEFAULT_CHUNK = 1024


def prepare_features(features: torch.Tensor, metric: str) -> torch.Tensor:
    """Return the features in the form the metric's block computation expects."""
    if metric == "cosine":
        return F.normalize(features, p=2, dim=1)
    return features


def distance_block(q: torch.Tensor, g: torch.Tensor, metric: str,
                   g_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Distances of a block of prepared query rows to prepared gallery rows.

    ``g_sq`` is the squared norms of ``g``; pass it when calling repeatedly with
    the same gallery to avoid recomputing it.
    """
    if metric == "cosine":
        return 1.0 - q @ g.t()
    if g_sq is None:
        g_sq = (g * g).sum(dim=1)
    q_sq = (q * q).sum(dim=1, keepdim=True)
    return torch.addmm(q_sq + g_sq.unsqueeze(0), q, g.t(), beta=1.0, alpha=-2.0)


def iter_distance_blocks(qf: torch.Tensor, gf: torch.Tensor, metric: str,
                         chunk_size: int = DEFAULT_CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, block)`` with the distances of query rows ``start:start+len(block)``."""
    q = prepare_features(qf, metric)
    g = prepare_features(gf, metric)
    g_sq = (g * g).sum(dim=1) if metric == "euclidean" else None
    for start in range(0, q.shape[0], chunk_size):
        yield start, distance_block(q[start:start + chunk_size], g, metric, g_sq)


def compute_distance(qf: ArrayLike, gf: ArrayLike, metric: str = "euclidean",
                     chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Full query x gallery distance matrix, computed in row blocks.

    Args:
        qf: query features, shape ``(num_query, dim)``.
        gf: gallery features, shape ``(num_gallery, dim)``.
        metric: ``"euclidean"`` (squared) or ``"cosine"`` (``1 - cos``).
        chunk_size: query rows per block.
    """
    check_metric(metric)
    q, g = as_feature_pair(qf, gf)
    out = torch.empty(q.shape[0], g.shape[0], dtype=q.dtype)
    with torch.no_grad():
        for start, block in iter_distance_blocks(q, g, metric, chunk_size):
            out[start:start + block.shape[0]] = block
    return out
