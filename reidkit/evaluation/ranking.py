"""Exact per-query ranking statistics without sorting the whole gallery.

For a query, only gallery items closer than its farthest true match can change
its AP, CMC or mINP.  So for each block of queries we

1. list the gallery items of the query's identity (from a pid index, not a
   ``num_query x num_gallery`` comparison), split into *positives* (other
   camera) and *junk* (same camera, removed by the Market-1501 protocol);
2. keep the negatives whose distance is at most the farthest positive's
   (one threshold pass over the block);
3. count, for every positive, the candidates that come before it in
   ``(distance, gallery index)`` order, which gives its 1-based rank among the
   valid gallery items.

When a block's model is poor (early training, random weights) most of the
gallery is a candidate; such blocks are instead sorted row by row with numpy's
SIMD sort and each positive's distance is located in its sorted row.

Ties in distance are ordered by gallery index (a stable sort), so results are
deterministic.  With no ties this equals torchreid's / fast-reid's protocol.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .checks import check_finite


class IdentityLookup:
    """Gallery items grouped by identity, for quick same-identity look-ups."""

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray):
        self.g_pids = g_pids
        self.g_camids = g_camids
        self.order = np.argsort(g_pids, kind="stable")
        self.sorted_pids = g_pids[self.order]

    def same_identity(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(rows, cols)``: for each query row, the gallery items of its identity."""
        lo = np.searchsorted(self.sorted_pids, q_pids, side="left")
        hi = np.searchsorted(self.sorted_pids, q_pids, side="right")
        counts = hi - lo
        rows = np.repeat(np.arange(len(q_pids)), counts)
        starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        cols = self.order[starts + np.arange(rows.shape[0])]
        return rows, cols


@dataclass
class BlockStats:
    """Per-query results for one block: ``num_pos == 0`` marks an invalid query."""

    num_pos: np.ndarray      # positives (same id, other camera) per query
    first_rank: np.ndarray   # 1-based rank of the first positive (0 if invalid)
    last_rank: np.ndarray    # 1-based rank of the last positive (0 if invalid)
    ap: np.ndarray           # non-interpolated average precision (0 if invalid)


DENSE_FRACTION = 0.02  # above this fraction of candidates, sort the block instead


def rank_block(dist: torch.Tensor, q_pids: np.ndarray, q_camids: np.ndarray,
               index: IdentityLookup, method: str = "auto") -> BlockStats:
    """Ranking statistics of the queries whose distance rows are ``dist``.

    ``method``: ``"candidates"``, ``"sort"`` or ``"auto"`` (chosen per block by
    the candidate count); all three give identical results.
    """
    check_finite(dist, "distmat")
    nq = dist.shape[0]
    dist_np = dist.numpy()
    rows, cols = index.same_identity(q_pids)
    is_pos = index.g_camids[cols] != q_camids[rows]
    pos = _SortedItems(rows[is_pos], cols[is_pos], dist_np, nq)
    valid = pos.count > 0
    threshold = np.full(nq, -np.inf, dtype=dist_np.dtype)
    threshold[valid] = pos.d[pos.start[1:][valid] - 1]       # farthest positive per query
    candidates = dist <= torch.from_numpy(threshold).unsqueeze(1)

    k = np.arange(len(pos.rows)) - pos.start[pos.rows]         # 0-based index among positives
    if method == "sort" or (method == "auto"
                            and int(torch.count_nonzero(candidates)) > DENSE_FRACTION * dist.numel()):
        junk = _SortedItems(rows[~is_pos], cols[~is_pos], dist_np, nq)
        before = _items_before_by_sort(dist_np, pos)
        before -= _count_before(junk, pos.rows, pos.d, pos.cols)
        rank = before + 1
    elif method in ("auto", "candidates"):
        cand = torch.nonzero(candidates).numpy()
        negative = index.g_pids[cand[:, 1]] != q_pids[cand[:, 0]]
        neg_rows, neg_cols = cand[negative, 0], cand[negative, 1]
        before = _count_before(pos, neg_rows, dist_np[neg_rows, neg_cols], neg_cols)
        # A negative with ``b`` positives before it precedes positive k iff b <= k.
        slot = pos.start[neg_rows] + neg_rows + before         # row r owns count[r] + 1 slots
        per_slot = np.bincount(slot, minlength=pos.start[-1] + nq)
        cum = np.cumsum(per_slot)
        first_slot = pos.start[pos.rows] + pos.rows
        neg_before = cum[first_slot + k] - cum[first_slot] + per_slot[first_slot]
        rank = k + 1 + neg_before
    else:
        raise ValueError(f"method must be 'auto', 'candidates' or 'sort', got {method!r}")

    ap = np.zeros(nq, dtype=np.float64)
    ap[valid] = np.bincount(pos.rows, weights=(k + 1) / rank, minlength=nq)[valid] / pos.count[valid]
    first_rank = np.zeros(nq, dtype=np.int64)
    last_rank = np.zeros(nq, dtype=np.int64)
    first_rank[pos.rows[k == 0]] = rank[k == 0]
    last = k == pos.count[pos.rows] - 1
    last_rank[pos.rows[last]] = rank[last]
    return BlockStats(num_pos=pos.count, first_rank=first_rank, last_rank=last_rank, ap=ap)


class _SortedItems:
    """Gallery items of some queries, sorted by (row, distance, gallery index).

    Row r owns the slice ``start[r]:start[r + 1]``.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, dist: np.ndarray, nq: int):
        d = dist[rows, cols]
        order = np.lexsort((cols, d, rows))
        self.rows, self.cols, self.d = rows[order], cols[order], d[order]
        self.count = np.bincount(self.rows, minlength=nq)
        self.start = np.concatenate(([0], np.cumsum(self.count)))


def _count_before(ref: _SortedItems, rows: np.ndarray, d: np.ndarray,
                  cols: np.ndarray) -> np.ndarray:
    """For each item ``(row, d, col)``, how many of ``ref``'s items of its row come first.

    An item comes first if its distance is smaller, or equal with a smaller
    gallery index.
    """
    if ref.d.dtype == np.float32 and d.dtype == np.float32:
        return _count_before_float32(ref, rows, d, cols)
    return _count_before_search(ref, rows, d, cols)


def _row_keys(rows: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Exact int64 keys ordered like ``(row, d)`` for float32 ``d``."""
    bits = (d + np.float32(0.0)).view(np.int32)           # -0.0 -> +0.0
    ordered = np.where(bits >= 0, bits, bits ^ np.int32(0x7FFFFFFF)).astype(np.int64)
    return (rows.astype(np.int64) << 32) + (ordered + (1 << 31))


def _count_before_float32(ref: _SortedItems, rows, d, cols) -> np.ndarray:
    ref_keys = _row_keys(ref.rows, ref.d)
    keys = _row_keys(rows, d)
    left = np.searchsorted(ref_keys, keys, side="left")
    right = np.searchsorted(ref_keys, keys, side="right")
    for i in np.flatnonzero(right > left):                  # exact distance ties: rare
        left[i] += int(np.count_nonzero(ref.cols[left[i]:right[i]] < cols[i]))
    return left - ref.start[rows]


def _count_before_search(ref: _SortedItems, rows, d, cols) -> np.ndarray:
    """Vectorised binary search inside each row's segment; exact for any dtype."""
    lo = ref.start[rows].copy()
    hi = ref.start[rows + 1].copy()
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        mid_c = np.minimum(mid, max(len(ref.d) - 1, 0))
        rd, rc = ref.d[mid_c], ref.cols[mid_c]
        first = (rd < d) | ((rd == d) & (rc < cols))
        lo = np.where(active & first, mid + 1, lo)
        hi = np.where(active & ~first, mid, hi)
    return lo - ref.start[rows]


def _items_before_by_sort(dist: np.ndarray, pos: _SortedItems) -> np.ndarray:
    """For each positive, how many gallery items (of any kind) come before it."""
    sorted_rows = np.sort(dist, axis=1)
    width = dist.shape[1]
    lo = np.zeros(len(pos.rows), dtype=np.int64)
    hi = np.full(len(pos.rows), width, dtype=np.int64)
    while True:                                             # first index with value >= d
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        smaller = sorted_rows[pos.rows, np.minimum(mid, width - 1)] < pos.d
        lo = np.where(active & smaller, mid + 1, lo)
        hi = np.where(active & ~smaller, mid, hi)
    end = np.minimum(lo + 1, width - 1)
    tied = (lo + 1 < width) & (sorted_rows[pos.rows, end] == pos.d)
    for i in np.flatnonzero(tied):                          # equal distances: by gallery index
        same = np.flatnonzero(dist[pos.rows[i]] == pos.d[i])
        lo[i] += int(np.count_nonzero(same < pos.cols[i]))
    return lo


def rank_block_sorted(dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor,
                      g_pids: torch.Tensor, g_camids: torch.Tensor) -> BlockStats:
    """The statistics of :func:`rank_block` by sorting each row, on ``dist``'s device (a GPU).

    All ids are tensors on ``dist``'s device.  A stable sort orders equal distances by
    gallery index, as :func:`rank_block` does, so the two give the same numbers.
    """
    check_finite(dist, "distmat")
    order = torch.sort(dist, dim=1, stable=True).indices
    same = g_pids[order] == q_pids.unsqueeze(1)
    junk = same & (g_camids[order] == q_camids.unsqueeze(1))
    positive = same & ~junk
    del same, order
    rank = torch.cumsum(~junk, dim=1, dtype=torch.int32)               # 1-based rank among valid items
    k = torch.cumsum(positive, dim=1, dtype=torch.int32)                # 1-based index among positives
    num_pos = k[:, -1].long()
    rows, cols = torch.nonzero(positive, as_tuple=True)
    r, kk = rank[rows, cols].double(), k[rows, cols].double()
    nq = dist.shape[0]
    ap = torch.zeros(nq, dtype=torch.float64, device=dist.device).index_add_(0, rows, kk / r)
    ap = torch.where(num_pos > 0, ap / num_pos.clamp(min=1), torch.zeros_like(ap))
    first_rank = torch.zeros(nq, dtype=torch.int64, device=dist.device)
    last_rank = torch.zeros(nq, dtype=torch.int64, device=dist.device)
    first_rank.scatter_reduce_(0, rows, r.long(), reduce="amin", include_self=False)
    last_rank.scatter_reduce_(0, rows, r.long(), reduce="amax", include_self=False)
    return BlockStats(num_pos=num_pos.cpu().numpy(), first_rank=first_rank.cpu().numpy(),
                      last_rank=last_rank.cpu().numpy(), ap=ap.cpu().numpy())
