"""bench/bench_pseudo_labels.py's reference (Cluster Contrast's dense Jaccard, written again) is the quantity reidkit
computes sparsely: the benchmark compares like with like."""
from __future__ import annotations

import numpy as np
import torch

from bench.bench_pseudo_labels import reference_jaccard, synthetic
from reidkit.evaluation.clustering import cluster_features
from reidkit.evaluation.rerank import jaccard_graph


def test_the_benchmark_reference_equals_the_sparse_graph_and_gives_the_same_clusters():
    x = synthetic(240, dim=32, identities=20, seed=3)
    reference = reference_jaccard(x, k1=12, k2=4)
    graph = jaccard_graph(torch.from_numpy(x), 12, 4, max_distance=1.0, normalised=False)
    dense = np.ones_like(reference)
    c = graph.tocoo()
    dense[c.row, c.col] = c.data
    np.testing.assert_allclose(dense, reference, atol=1e-5)
    from sklearn.cluster import DBSCAN
    theirs = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(reference)
    ours = cluster_features(torch.from_numpy(x), eps=0.6, k1=12, k2=4).labels
    assert len({(a, b) for a, b in zip(theirs, ours)}) == len(set(theirs)) == len(set(ours))
