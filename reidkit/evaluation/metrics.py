"""mAP / CMC / mINP under the Market-1501 protocol.

For each query, gallery items with the same identity *and* the same camera are
removed; a query with no remaining true match is skipped and counted.  CMC and
average precision follow torchreid's ``evaluate_rank`` (non-interpolated AP);
mINP follows Ye et al. (2021) as fast-reid computes it.  Ties in distance are
ordered by gallery index.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..names import counted
from .checks import ArrayLike, as_feature_pair, as_float_matrix, as_id_vector, check_metric
from .distance import iter_distance_blocks
from .ranking import BlockStats, IdentityLookup, rank_block, rank_block_sorted
from .verification import Verification

DEFAULT_QUERY_CHUNK = 512
DEVICE_QUERY_CHUNK = 256          # on a GPU: a block's sort indices and masks stay a few hundred MB at MSMT17 size


@dataclass
class RankResult:
    """Retrieval metrics of one evaluation (fractions in [0, 1])."""

    mAP: float
    cmc: np.ndarray
    mINP: float
    num_valid_queries: int
    num_invalid_queries: int
    all_AP: np.ndarray = field(repr=False)
    all_INP: np.ndarray = field(repr=False)
    valid_queries: np.ndarray = field(repr=False)
    verification: Verification | None = None      # TAR at FAR over the pairs (``eval.verification``)

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based)."""
        return float(self.cmc[k - 1])

    def as_dict(self, ranks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
        """Plain dict of the headline numbers, in percent."""
        out = {"mAP": 100 * self.mAP, "mINP": 100 * self.mINP}
        for k in ranks:
            if k <= len(self.cmc):
                out[f"rank{k}"] = 100 * self.rank(k)
        if self.verification is not None:
            out.update(self.verification.as_dict())
        return out

    def summary(self) -> str:
        """A short table like torchreid prints."""
        lines = [f"mAP: {100 * self.mAP:.2f}%  mINP: {100 * self.mINP:.2f}%"]
        for k in (1, 5, 10, 20):
            if k <= len(self.cmc):
                lines.append(f"Rank-{k:<3d}: {100 * self.rank(k):.2f}%")
        if self.num_invalid_queries:
            lines.append(f"({counted(self.num_invalid_queries, 'query', 'queries')} without a valid match skipped)")
        if self.verification is not None:
            lines.append(self.verification.summary())
        return "\n".join(lines)


def _cut_max_rank(max_rank: int, num_gallery: int) -> int:
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    if num_gallery < max_rank:
        warnings.warn(f"gallery has only {num_gallery} items: max_rank cut to {num_gallery}", stacklevel=3)
        return num_gallery
    return max_rank


def combine_blocks(blocks: list[BlockStats], max_rank: int) -> RankResult:
    """Average the per-query statistics of all blocks into a :class:`RankResult`."""
    num_pos = np.concatenate([b.num_pos for b in blocks])
    first = np.concatenate([b.first_rank for b in blocks])
    last = np.concatenate([b.last_rank for b in blocks])
    ap = np.concatenate([b.ap for b in blocks])
    valid = num_pos > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError(
            "no query has a valid match in the gallery (same identity, different camera): "
            "check q_pids/g_pids and q_camids/g_camids"
        )
    inp = np.zeros_like(ap)
    inp[valid] = num_pos[valid] / last[valid]
    ranks = np.arange(1, max_rank + 1)
    cmc = (first[valid][:, None] <= ranks[None, :]).sum(axis=0) / n_valid
    return RankResult(
        mAP=float(ap[valid].mean()), cmc=cmc.astype(np.float64), mINP=float(inp[valid].mean()),
        num_valid_queries=n_valid, num_invalid_queries=int((~valid).sum()),
        all_AP=ap[valid], all_INP=inp[valid], valid_queries=valid,
    )


def evaluate_rank(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                  q_camids: ArrayLike, g_camids: ArrayLike, max_rank: int = 50,
                  query_chunk: int | None = None) -> RankResult:
    """mAP, CMC and mINP from a ``num_query x num_gallery`` distance matrix.

    Smaller distance = more similar.  ``max_rank`` is cut to the gallery size.
    Raises ValueError on mismatched lengths, NaN/inf, empty inputs, non-integer
    ids, or when no query has a valid match.  A matrix on a GPU is ranked there.
    """
    device = distmat.device if torch.is_tensor(distmat) else torch.device("cpu")
    dist = as_float_matrix(distmat, "distmat", check=False, device=device)  # checked per block
    nq, ng = dist.shape
    chunk = query_chunk or (DEFAULT_QUERY_CHUNK if device.type == "cpu" else DEVICE_QUERY_CHUNK)
    blocks = ((s, dist[s:s + chunk]) for s in range(0, nq, chunk))
    return _evaluate_blocks(blocks, nq, ng, q_pids, g_pids, q_camids, g_camids, max_rank,
                            sort_on=device if device.type != "cpu" else None)


def evaluate_features(qf: ArrayLike, gf: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                      q_camids: ArrayLike, g_camids: ArrayLike, metric: str = "euclidean",
                      max_rank: int = 50, rerank: bool = False,
                      query_chunk: int | None = None, device: torch.device | str | None = None,
                      **rerank_kwargs) -> RankResult:
    """Same numbers as ``evaluate_rank(compute_distance(qf, gf, metric), ...)``.

    The distances are produced and consumed one block of queries at a time, so
    the full query x gallery matrix never exists (MSMT17 fits in a few GB).
    With ``rerank=True`` the blocks come from k-reciprocal re-ranking
    (``re_ranking_features``; ``k1``, ``k2``, ``lambda_value`` pass through).
    ``device``: where distances and ranking run (default: where ``qf`` is; a GPU
    sorts each block there, the CPU ranks with the exact candidate search).
    """
    check_metric(metric)
    device = torch.device(device) if device is not None else (qf.device if torch.is_tensor(qf) else torch.device("cpu"))
    q, g = as_feature_pair(qf, gf, device)
    chunk = query_chunk or (DEFAULT_QUERY_CHUNK if device.type == "cpu" else DEVICE_QUERY_CHUNK)
    if rerank:
        from .rerank import iter_rerank_blocks
        source = iter_rerank_blocks(q, g, metric=metric, chunk_size=chunk, **rerank_kwargs)
    else:
        source = iter_distance_blocks(q, g, metric, chunk)
    return _evaluate_blocks(source, q.shape[0], g.shape[0], q_pids, g_pids, q_camids, g_camids, max_rank,
                            sort_on=device if device.type != "cpu" else None)


def _evaluate_blocks(source: Iterable[tuple[int, torch.Tensor]], nq: int, ng: int, q_pids: ArrayLike,
                     g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike,
                     max_rank: int, sort_on: torch.device | None = None) -> RankResult:
    """Check the ids, then rank every ``(start, distance block)`` of ``source`` (a lazy iterator).

    ``sort_on``: rank by sorting each block on this device (:func:`rank_block_sorted`) instead of the
    CPU's candidate search; the numbers are the same.
    """
    qp = as_id_vector(q_pids, "q_pids", nq)
    gp = as_id_vector(g_pids, "g_pids", ng)
    qc = as_id_vector(q_camids, "q_camids", nq)
    gc = as_id_vector(g_camids, "g_camids", ng)
    max_rank = _cut_max_rank(max_rank, ng)
    blocks = []
    tied_rows = 0
    with torch.no_grad():
        if sort_on is not None:
            qp_t, qc_t, gp_t, gc_t = (torch.from_numpy(a).to(sort_on) for a in (qp, qc, gp, gc))
        else:
            index = IdentityLookup(gp, gc)
        for s, dist in source:
            e = s + dist.shape[0]
            tied_rows += _all_tied_rows(dist)
            if sort_on is not None:
                blocks.append(rank_block_sorted(dist.to(sort_on), qp_t[s:e], qc_t[s:e], gp_t, gc_t))
            else:
                blocks.append(rank_block(dist.cpu(), qp[s:e], qc[s:e], index))
    result = combine_blocks(blocks, max_rank)
    if ng > 1 and tied_rows > nq // 2:
        warnings.warn(f"{tied_rows} of {nq} queries have every gallery image at the same distance: the embeddings "
                      f"collapsed to one point (a diverged or untrained model?). Ties are ranked by gallery order, so "
                      f"mAP {100 * result.mAP:.2f}% measures that order, not the model", CollapsedEmbeddingsWarning,
                      stacklevel=3)
    return result


class CollapsedEmbeddingsWarning(UserWarning):
    """Most queries rank every gallery image at one distance: the figures measure gallery order only."""


def _all_tied_rows(dist: torch.Tensor) -> int:
    """How many rows of a distance block hold a single value (every gallery image tied)."""
    if dist.shape[1] < 2:
        return 0
    spread = dist.amax(1) - dist.amin(1)
    scale = dist.abs().amax(1).clamp(min=1.0)
    return int((spread <= 1e-6 * scale).sum())
