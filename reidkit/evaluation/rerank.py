"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) without dense N x N arrays.

Same final distances as the widely used dense implementation (torchreid
``utils/rerank.py``), computed from

* the top-(k1+1) neighbour list of every one of the N = query + gallery items,
* the sparse k-reciprocal encoding V (and its query expansion), built with
  sparse set algebra instead of per-item Python loops,
* the query x gallery block of the normalised original distance, produced a
  block of queries at a time.

Notation of the dense reference: ``A`` is the full N x N input distance
(``[[q_q, q_g], [q_g^T, g_g]]``), ``D2 = A**2`` in float32 and the original
distance is ``O[i, j] = D2[j, i] / max_a D2[a, i]`` (column maxima, transposed).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .checks import ArrayLike, as_feature_pair, as_float_matrix, check_metric
from .distance import distance_block, prepare_features
from .neighbours import APPROXIMATE_FROM, approximate_neighbours, exact_neighbours

ROW_CHUNK = 512
PAIR_CHUNK = 1 << 18
DENSE_BLOCK = 1 << 23       # rows x items of a Jaccard block summed densely (64 MB of float64)


class _MatrixSource:
    """``A`` given as its three blocks (the dense API)."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray):
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_query, self.num = q_g.shape[0], q_g.shape[0] + q_g.shape[1]

    def columns(self, s: int, e: int, out: np.ndarray) -> np.ndarray:
        """``A[:, s:e].T`` written into ``out[:e - s]`` (an ``(>= e - s, N)`` float32 buffer)."""
        nq = self.num_query
        out = out[:e - s]
        t_out = torch.from_numpy(out)
        q_q, q_g, g_g = (torch.from_numpy(m) for m in (self.q_q, self.q_g, self.g_g))
        qs, qe = min(s, nq), min(e, nq)
        if qe > qs:                                     # columns of query items
            t_out[:qe - qs, :nq].copy_(q_q[:, qs:qe].t())
            t_out[:qe - qs, nq:].copy_(q_g[qs:qe])
        gs, ge = max(s, nq) - nq, e - nq
        if ge > gs:                                     # columns of gallery items
            t_out[qe - qs:, :nq].copy_(q_g[:, gs:ge].t())   # torch's blocked transpose copy
            t_out[qe - qs:, nq:].copy_(g_g[:, gs:ge].t())
        return out

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """``A[j, i]`` for index arrays ``i``, ``j``."""
        nq = self.num_query
        out = np.empty(len(i), dtype=np.float32)
        iq, jq = i < nq, j < nq
        m = iq & jq
        out[m] = self.q_q[j[m], i[m]]
        m = ~iq & jq
        out[m] = self.q_g[j[m], i[m] - nq]
        m = iq & ~jq
        out[m] = self.q_g[i[m], j[m] - nq]
        m = ~iq & ~jq
        out[m] = self.g_g[j[m] - nq, i[m] - nq]
        return out

    def query_gallery(self, s: int, e: int) -> np.ndarray:
        """``A[nq:, s:e].T``: distances of queries ``s:e`` to the gallery."""
        return np.asarray(self.q_g[s:e], dtype=np.float32)

    def nearest(self, s: int, e: int, k: int, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` (values, indices) of the squared rows ``s:e`` of ``A`` and the rows' maxima."""
        return _nearest_in_columns(self.columns(s, e, buffer), k)


class _FeatureSource:
    """``A`` computed on demand from features (symmetric up to rounding), on the features' device."""

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, metric: str):
        feats = prepare_features(torch.cat([qf, gf]).to(torch.float32), metric)
        self.feats, self.metric = feats, metric
        self.sq = (feats * feats).sum(dim=1)
        self.num_query, self.num = qf.shape[0], feats.shape[0]

    def block(self, s: int, e: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """``A[:, s:e].T`` (= ``A[s:e]``), into ``out`` when given."""
        feats = self.feats
        if self.metric == "cosine":
            block = torch.mm(feats[s:e], feats.t(), out=out)
            return block.neg_().add_(1.0)
        return torch.addmm(self.sq[s:e, None] + self.sq[None, :], feats[s:e], feats.t(),
                           beta=1.0, alpha=-2.0, out=out)

    def columns(self, s: int, e: int, out: np.ndarray) -> np.ndarray:
        self.block(s, e, torch.from_numpy(out[:e - s]))
        return out[:e - s]

    def nearest(self, s: int, e: int, k: int, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.feats.device.type == "cpu":
            return _nearest_in_columns(self.columns(s, e, buffer), k)
        d2 = self.block(s, e).square_()            # on the GPU: only the top-k lists come back
        vals, idx = torch.topk(d2, k, dim=1, largest=False, sorted=True)
        return vals.cpu().numpy(), idx.cpu().numpy(), d2.max(dim=1).values.cpu().numpy()

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        out = np.empty(len(i), dtype=np.float32)
        dev = self.feats.device
        for s in range(0, len(i), PAIR_CHUNK):
            a = torch.from_numpy(i[s:s + PAIR_CHUNK]).to(dev)
            b = torch.from_numpy(j[s:s + PAIR_CHUNK]).to(dev)
            dot = (self.feats[a] * self.feats[b]).sum(dim=1)
            if self.metric == "cosine":
                value = 1.0 - dot
            else:
                value = self.sq[a] + self.sq[b] - 2.0 * dot
            out[s:s + PAIR_CHUNK] = value.cpu().numpy()
        return out

    def query_gallery(self, s: int, e: int) -> np.ndarray:
        nq = self.num_query
        return distance_block(self.feats[s:e], self.feats[nq:], self.metric, self.sq[nq:]).cpu().numpy()


def _nearest_in_columns(d2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Square the distance rows in place; their top-``k`` (values, indices) and maxima."""
    np.square(d2, out=d2)
    vals, idx = torch.topk(torch.from_numpy(d2), k, dim=1, largest=False, sorted=True)
    return vals.numpy(), idx.numpy(), d2.max(axis=1)


def _neighbours(source, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbour lists (ascending original distance) and column maxima of D2."""
    n = source.num
    k = min(k, n)
    nbrs = np.empty((n, k), dtype=np.int64)
    colmax = np.empty(n, dtype=np.float32)
    on_gpu = getattr(getattr(source, "feats", None), "device", torch.device("cpu")).type != "cpu"
    buffer = None if on_gpu else np.empty((min(ROW_CHUNK, n), n), dtype=np.float32)   # reused: no page faults
    with torch.no_grad():
        for s in range(0, n, ROW_CHUNK):
            e = min(s + ROW_CHUNK, n)
            vals, idx, colmax[s:e] = source.nearest(s, e, k, buffer)
            order = np.lexsort((idx, vals), axis=1)          # equal distances: by index
            nbrs[s:e] = np.take_along_axis(idx, order, axis=1)
    return nbrs, colmax


def _membership(nbrs: np.ndarray, width: int, n: int) -> sp.csr_matrix:
    """Boolean CSR matrix with row i marking its first ``width`` neighbours."""
    cols = nbrs[:, :width]
    rows = np.repeat(np.arange(n), cols.shape[1])
    return sp.csr_matrix((np.ones(rows.shape[0], dtype=np.int32), (rows, cols.ravel())), shape=(n, n))


def _reciprocal(nbrs: np.ndarray, width: int, n: int) -> sp.csr_matrix:
    """R(i, k): j in i's top-``width`` and i in j's top-``width``."""
    forward = _membership(nbrs, width, n)
    return forward.multiply(forward.T).tocsr().astype(np.int32)


def _encoding(source, nbrs: np.ndarray, colmax: np.ndarray, k1: int, k2: int,
              normalised: bool = True, searched: int | None = None) -> sp.csr_matrix:
    """The k-reciprocal feature V (after query expansion when ``k2 > 1``); its weights are ``exp(-A**2 / max)``
    of the input distance ``A`` squared and divided by its column maximum (Zhong et al.'s code, whose ``A`` is
    the squared Euclidean distance from features), or ``exp(-A)`` with ``normalised=False``: from features and
    the Euclidean metric ``A`` is the squared distance, as Cluster Contrast's ``compute_jaccard_distance``
    weighs its neighbours (a softmax of minus the squared distance).

    ``searched``: how many neighbours (self included) each list holds before the k-reciprocal sets are read:
    Zhong et al.'s code ranks every item (k1 + 1 read), Cluster Contrast's faiss search returns k1 columns, so its
    k-reciprocal set holds at most k1 items, self included (``searched=k1``)."""
    n = source.num
    width = k1 + 1 if searched is None else min(k1 + 1, searched)
    r_full = _reciprocal(nbrs, width, n)
    r_half = _reciprocal(nbrs, min(int(np.around(k1 / 2.0)) + 1, width), n)
    # For each candidate c in R(i, k1): |R(c, k1/2) & R(i, k1)| > 2/3 |R(c, k1/2)|
    overlap = (r_full @ r_half.T).multiply(r_full).tocsr()
    half_size = np.asarray(r_half.sum(axis=1)).ravel()
    ov = overlap.tocoo()
    keep = ov.data > (2.0 / 3.0) * half_size[ov.col]
    chosen = sp.csr_matrix((np.ones(keep.sum(), dtype=np.int32), (ov.row[keep], ov.col[keep])),
                           shape=(n, n))
    v = _weighted(source, (r_full + chosen @ r_half).tocsr(), colmax, normalised)
    expansion = k2 if searched is None else min(k2, searched)
    return _expanded(v, nbrs[:, :expansion]) if k2 != 1 else v


def _weighted(source, members: sp.csr_matrix, colmax: np.ndarray | None, normalised: bool) -> sp.csr_matrix:
    """Row i of the encoding: a softmax of minus the distances from i to the items ``members`` marks in row i
    (normalised: squared and divided by the column maximum ``colmax``)."""
    n = source.num
    members = members.tocsr()
    members.sort_indices()
    rows = np.repeat(np.arange(n), np.diff(members.indptr))
    cols = members.indices.astype(np.int64)
    original = source.pairs(rows, cols).astype(np.float32)
    if normalised:
        assert colmax is not None
        original = np.square(original) / colmax[rows]
    weight = np.exp(-original.astype(np.float64))
    weight /= np.bincount(rows, weights=weight, minlength=n)[rows]
    return sp.csr_matrix((weight, cols, members.indptr), shape=(n, n))


def _expanded(v: sp.csr_matrix, neighbours: np.ndarray | list[np.ndarray]) -> sp.csr_matrix:
    """Local query expansion: row i becomes the mean of the rows of its ``neighbours[i]`` (a 2-D array, or one
    index array per row)."""
    n = v.shape[0]
    if isinstance(neighbours, np.ndarray):                  # k each: no per-row arrays
        sizes = np.full(n, neighbours.shape[1], dtype=np.float64)
        qe_cols = neighbours.ravel()
    else:
        sizes = np.array([len(x) for x in neighbours], dtype=np.float64)
        qe_cols = np.concatenate(neighbours).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    qe_rows = np.repeat(np.arange(n), sizes.astype(np.int64))
    mean = sp.csr_matrix((1.0 / sizes[qe_rows], (qe_rows, qe_cols)), shape=(n, n))
    out = (mean @ v).tocsr()
    out.sort_indices()
    return out


def _camera_neighbours(source, cameras: torch.Tensor, k_intra: int,
                       k_inter: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each item's ``k_intra`` nearest items seen by its own camera (itself first) and ``k_inter`` nearest seen by
    the other cameras, ascending (ties by index); fewer where the cameras hold fewer items.  One distance block
    per chunk of rows serves both."""
    n = source.num
    intra: list[np.ndarray] = []
    inter: list[np.ndarray] = []
    with torch.no_grad():
        for s in range(0, n, ROW_CHUNK):
            e = min(s + ROW_CHUNK, n)
            d = source.block(s, e)
            d[torch.arange(e - s), torch.arange(s, e)] = -1.0               # itself nearest (rounding)
            same = cameras[s:e, None] == cameras[None, :]
            for lists, k, hidden in ((intra, k_intra, ~same), (inter, k_inter, same)):
                top = torch.topk(d.masked_fill(hidden, float("inf")), min(k, n), dim=1, largest=False, sorted=True)
                vals, idx = top.values.cpu().numpy(), top.indices.cpu().numpy()
                order = np.lexsort((idx, vals), axis=1)
                idx, vals = np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)
                lists += [row[np.isfinite(v)] for row, v in zip(idx, vals)]
    return intra, inter


def _reciprocal_lists(lists: list[np.ndarray], width: int, n: int) -> sp.csr_matrix:
    """R(i): j among the first ``width`` of i's list and i among the first ``width`` of j's."""
    cols = [x[:width] for x in lists]
    rows = np.repeat(np.arange(n), [len(c) for c in cols])
    forward = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, np.concatenate(cols))), shape=(n, n))
    return forward.multiply(forward.T).tocsr().astype(np.int32)


def _pair_minima(v_query: sp.csr_matrix, v_gallery_csc: sp.csc_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, column, min(Vq[row, k], Vg[column, k]))`` for every k where both are non-zero: summed over k per
    (row, column) they give ``m``."""
    q = v_query.tocoo()
    counts = np.diff(v_gallery_csc.indptr)[q.col]
    total = int(counts.sum())
    qi = np.repeat(q.row.astype(np.int64), counts)
    qa = np.repeat(q.data, counts)
    starts = np.repeat(v_gallery_csc.indptr[q.col] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    flat = starts + np.arange(total)
    return qi, v_gallery_csc.indices[flat].astype(np.int64), np.minimum(qa, v_gallery_csc.data[flat])


def _jaccard_block(v_query: sp.csr_matrix, v_gallery_csc: sp.csc_matrix) -> np.ndarray:
    """``1 - m / (2 - m)`` with ``m[i, j] = sum_k min(Vq[i, k], Vg[j, k])``."""
    nrows, ng = v_query.shape[0], v_gallery_csc.shape[0]
    qi, gj, mins = _pair_minima(v_query, v_gallery_csc)
    m = np.bincount(qi * ng + gj, weights=mins, minlength=nrows * ng).reshape(nrows, ng)
    return 1.0 - m / (2.0 - m)


def _jaccard_sparse(v_rows: sp.csr_matrix, v_csc: sp.csc_matrix, first_row: int,
                    max_distance: float) -> sp.coo_matrix:
    """The Jaccard distances ``1 - m / (2 - m)`` of ``v_rows`` (rows ``first_row...``) to every item that are at
    most ``max_distance``, as a sparse block (pairs sharing no k-reciprocal neighbour are at distance 1)."""
    nrows, n = v_rows.shape[0], v_csc.shape[0]
    qi, gj, mins = _pair_minima(v_rows, v_csc)
    if nrows * n <= DENSE_BLOCK:             # m[i, j] = sum_k min(V_ik, V_jk): a dense block sums fastest
        dense = np.bincount(qi * n + gj, weights=mins, minlength=nrows * n)
        where = np.flatnonzero(dense)
        m_row, m_col, m_data = where // n, where % n, dense[where]
    else:                                    # a sparse one keeps 100,000 columns affordable
        m = sp.coo_matrix((mins, (qi, gj)), shape=(nrows, n)).tocsr().tocoo()       # duplicates summed
        m_row, m_col, m_data = m.row, m.col, m.data
    distance = 1.0 - m_data / (2.0 - m_data)
    keep = distance <= max_distance
    rows, cols = m_row[keep] + first_row, m_col[keep]
    # every item at distance 0 from itself, stored explicitly (a sparse graph's missing entries are "far")
    distance = np.maximum(distance[keep], 0.0)
    distance[rows == cols] = 0.0
    return sp.coo_matrix((distance.astype(np.float32), (rows, cols)), shape=(n, n))


def jaccard_graph(features: torch.Tensor, k1: int = 30, k2: int = 6, max_distance: float = 1.0,
                  metric: str = "euclidean", normalised: bool = True,
                  chunk_size: int = ROW_CHUNK, approximate: bool | None = None) -> sp.csr_matrix:
    """The k-reciprocal Jaccard distances among ``features`` (query = gallery = every item; re-ranking's
    ``lambda = 0``) that are at most ``max_distance``, as a sparse N x N matrix with the diagonal stored.

    Memory is O(N * k) for the neighbour lists and the encoding plus the pairs kept, never N x N: 100,000
    items fit in a few GB.  ``normalised=False`` computes it as Cluster Contrast's ``compute_jaccard_distance``
    does: the encoding weighed by the squared distance itself (not divided by its column maximum), and the
    k-reciprocal sets read from neighbour lists of k1 items, self included (its faiss search returns k1
    columns); on L2-normalised features with the Euclidean metric the distances then equal that code's (the
    tests hold a literal transcription of it).  The neighbour search runs on the features' device; with
    ``approximate`` (default: from :data:`APPROXIMATE_FROM` items on, Cluster Contrast's weighting only) it is
    faiss's HNSW search (:func:`approximate_neighbours`).
    """
    check_metric(metric)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be at least 1, got k1={k1}, k2={k2}")
    feats = as_float_matrix(features, "features") if not isinstance(features, torch.Tensor) else features.float()
    with torch.no_grad():
        source = _FeatureSource(feats[:0], feats, metric)
        if approximate is None:
            approximate = not normalised and metric == "euclidean" and len(feats) >= APPROXIMATE_FROM
        if approximate:
            if normalised or metric != "euclidean":
                raise ValueError("the approximate neighbour search serves Cluster Contrast's weighting "
                                 "(normalised=False, the Euclidean metric) only")
            nbrs, colmax = approximate_neighbours(feats, max(k1 + 1, k2)), np.zeros(0, np.float32)
        elif not normalised and metric == "euclidean" and feats.device.type == "cpu":
            nbrs, colmax = exact_neighbours(feats, max(k1 + 1, k2)), np.zeros(0, np.float32)   # no maxima needed
        else:
            nbrs, colmax = _neighbours(source, max(k1 + 1, k2))
        v = _encoding(source, nbrs, colmax, k1, k2, normalised, searched=None if normalised else k1)
    return _graph_from_encoding(v, max_distance, chunk_size)


def _graph_from_encoding(v: sp.csr_matrix, max_distance: float, chunk_size: int) -> sp.csr_matrix:
    """The Jaccard distances of the encoding's rows that are at most ``max_distance``, as a sparse N x N matrix."""
    n = v.shape[0]
    v_csc = v.tocsc()
    blocks = [_jaccard_sparse(v[s:min(s + chunk_size, n)], v_csc, s, max_distance) for s in range(0, n, chunk_size)]
    if not blocks:
        return sp.csr_matrix((n, n), dtype=np.float32)
    rows = np.concatenate([b.row for b in blocks])
    cols = np.concatenate([b.col for b in blocks])
    data = np.concatenate([b.data for b in blocks])
    return sp.csr_matrix((data, (rows, cols)), shape=(n, n))


def camera_aware_jaccard_graph(features: torch.Tensor, cameras: ArrayLike, k1_intra: int = 5, k1_inter: int = 20,
                               k2_intra: int = 2, k2_inter: int = 4, max_distance: float = 1.0,
                               chunk_size: int = ROW_CHUNK) -> sp.csr_matrix:
    """The camera-aware Jaccard distance (CA-Jaccard, Chen et al., CVPR 2024) among L2-normalised ``features``,
    as :func:`jaccard_graph` returns it (pairs within ``max_distance``, the diagonal stored).

    An item's neighbourhood is the union of its k-reciprocal neighbours on the ranking of its own camera's items
    (``k1_intra``) and on the ranking of the other cameras' items (``k1_inter``), so that cross-camera neighbours
    count however far the camera gap pushes them down the whole ranking; it is weighed by a softmax of minus the
    squared Euclidean distance (Cluster Contrast's weighting) and expanded over the ``k2_intra`` nearest items of
    its own camera and the ``k2_inter`` nearest of the others (the authors' local query expansion).  The authors'
    code also uses 3 and 3 for the expansion in its first epoch; reidkit keeps one setting.
    """
    for name, value in (("k1_intra", k1_intra), ("k1_inter", k1_inter), ("k2_intra", k2_intra),
                        ("k2_inter", k2_inter)):
        if value < 0:
            raise ValueError(f"{name} must be at least 0, got {value}")
    feats = features.float() if isinstance(features, torch.Tensor) else as_float_matrix(features, "features")
    feats = torch.nn.functional.normalize(feats, dim=1)
    n = feats.shape[0]
    cams = torch.as_tensor(np.asarray(cameras), dtype=torch.long).reshape(-1).to(feats.device)
    if len(cams) != n:
        raise ValueError(f"{n} features but {len(cams)} camera ids")
    source = _FeatureSource(feats[:0], feats, "euclidean")
    intra, inter = _camera_neighbours(source, cams, max(k1_intra + 1, k2_intra), max(k1_inter + 1, k2_inter))
    members = _reciprocal_lists(intra, k1_intra + 1, n) + _reciprocal_lists(inter, k1_inter + 1, n)
    v = _weighted(source, members, None, normalised=False)
    if k2_intra + k2_inter > 1:
        v = _expanded(v, [np.concatenate([a[:k2_intra], b[:k2_inter]]) for a, b in zip(intra, inter)])
    return _graph_from_encoding(v, max_distance, chunk_size)


def _rerank_blocks(source, k1: int, k2: int, lambda_value: float,
                   chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be at least 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    nq = source.num_query
    nbrs, colmax = _neighbours(source, max(k1 + 1, k2))
    v = _encoding(source, nbrs, colmax, k1, k2)
    v_gallery = v[nq:].tocsc()
    for s in range(0, nq, chunk_size):
        e = min(s + chunk_size, nq)
        jaccard = _jaccard_block(v[s:e], v_gallery)
        original = np.square(source.query_gallery(s, e), dtype=np.float32) / colmax[s:e, None]
        final = jaccard * (1.0 - lambda_value) + original * lambda_value
        yield s, torch.from_numpy(final.astype(np.float32))


def iter_rerank_blocks(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean",
                       k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                       chunk_size: int = ROW_CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, block)`` of re-ranked query x gallery distances from features."""
    check_metric(metric)
    with torch.no_grad():
        yield from _rerank_blocks(_FeatureSource(qf, gf, metric), k1, k2, lambda_value, chunk_size)


def re_ranking_features(qf: ArrayLike, gf: ArrayLike, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, metric: str = "euclidean",
                        chunk_size: int = ROW_CHUNK, device: torch.device | str = "cpu") -> np.ndarray:
    """Re-ranked distances from features, equal to ``re_ranking`` on ``compute_distance`` output.

    Never builds an N x N array: memory is the query x gallery output plus
    O(N * k) for the neighbour lists and the sparse encoding.  On a GPU
    (``device``) the distances and neighbour lists are computed there; the
    sparse encoding stays on the CPU.
    """
    q, g = as_feature_pair(qf, gf, device)
    out = np.empty((q.shape[0], g.shape[0]), dtype=np.float32)
    for s, block in iter_rerank_blocks(q, g, metric, k1, k2, lambda_value, chunk_size):
        out[s:s + block.shape[0]] = block.numpy()
    return out


def re_ranking(q_g_dist: ArrayLike, q_q_dist: ArrayLike, g_g_dist: ArrayLike, k1: int = 20,
               k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking from distance matrices (torchreid's API and results).

    Returns the ``num_query x num_gallery`` re-ranked distance (float32).
    """
    q_g = as_float_matrix(q_g_dist, "q_g_dist").numpy()
    q_q = as_float_matrix(q_q_dist, "q_q_dist").numpy()
    g_g = as_float_matrix(g_g_dist, "g_g_dist").numpy()
    nq, ng = q_g.shape
    if q_q.shape != (nq, nq):
        raise ValueError(f"q_q_dist must have shape {(nq, nq)}, got {q_q.shape}")
    if g_g.shape != (ng, ng):
        raise ValueError(f"g_g_dist must have shape {(ng, ng)}, got {g_g.shape}")
    source = _MatrixSource(q_g.astype(np.float32, copy=False), q_q.astype(np.float32, copy=False),
                           g_g.astype(np.float32, copy=False))
    out = np.empty((nq, ng), dtype=np.float32)
    for s, block in _rerank_blocks(source, k1, k2, lambda_value, ROW_CHUNK):
        out[s:s + block.shape[0]] = block.numpy()
    return out
