"""Nearest-neighbour lists for clustering, by faiss: its exact search, and its HNSW graph for the sizes where the
exact search's N^2 cost cannot be paid (:func:`reidkit.evaluation.rerank.jaccard_graph` chooses)."""
from __future__ import annotations

import faiss
import numpy as np
import torch

#: from this many items on, :func:`jaccard_graph` finds neighbours with faiss's HNSW graph (approximate) instead
#: of the exact search, whose cost grows with the square of the items
APPROXIMATE_FROM = 500_000


def approximate_neighbours(features: torch.Tensor, k: int, ef_search: int = 128, links: int = 32) -> np.ndarray:
    """Each item's ``k`` nearest items (itself first; squared Euclidean distance, ascending, ties by index) found
    by faiss's HNSW graph (``IndexHNSWFlat``, ``links`` per node, ``ef_search`` candidates per search): cost about
    O(N log N d) instead of the exact search's O(N^2 d).  On CUHK03's features 99.97% of the 30 nearest are the
    exact ones (tests/evaluation/test_clustering.py measures the clusters' agreement).  The graph is built by one
    thread, so that it is the same in every run and every process of a data-parallel run (which cluster the same
    features apart and must agree); the search uses them all."""
    import faiss  # imported here: only large clusterings need it
    x = np.ascontiguousarray(features.detach().float().cpu().numpy())
    n, d = x.shape
    k = min(k, n)
    index = faiss.IndexHNSWFlat(d, links)
    index.hnsw.efConstruction = 80
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)                       # a parallel build inserts in a varying order
    try:
        index.add(x)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = max(ef_search, k)
    dist, idx = index.search(x, k)
    missing = idx < 0
    if missing.any():
        idx[missing], dist[missing] = np.nonzero(missing)[0], np.inf
    order = np.lexsort((idx, dist), axis=1)
    return np.take_along_axis(idx, order, axis=1).astype(np.int64)


def exact_neighbours(features: torch.Tensor, k: int) -> np.ndarray:
    """Each item's ``k`` nearest items by squared Euclidean distance (itself first, ascending, ties by index), by
    faiss's exact search (``IndexFlatL2``: BLAS distances and a heap per row, about twice the speed of a full
    distance block and a top-k on a CPU)."""
    x = np.ascontiguousarray(features.detach().float().cpu().numpy())
    k = min(k, len(x))
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    dist, idx = index.search(x, k)
    order = np.lexsort((idx, dist), axis=1)
    return np.take_along_axis(idx, order, axis=1).astype(np.int64)
