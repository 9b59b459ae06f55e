"""Pseudo-labels by clustering: k-reciprocal Jaccard distances -> DBSCAN, and what the clusters look like.

The unsupervised methods (SpCL, Ge et al. NeurIPS 2020; Cluster Contrast, Dai et al. 2021; camera-aware
proxies, Wang et al. AAAI 2021) label the training images every epoch by clustering their current embeddings:
the Jaccard distance of k-reciprocal neighbourhoods (:func:`reidkit.evaluation.rerank.jaccard_graph`, sparse,
so 100,000 images fit in memory), then scikit-learn's DBSCAN on those precomputed distances.  Images DBSCAN
leaves unclustered are outliers: left out (label -1) or kept as clusters of their own.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .rerank import camera_aware_jaccard_graph, jaccard_graph


@dataclass
class PseudoLabels:
    """The clustering of one epoch: ``labels[i]`` is image i's cluster (0..clusters-1), -1 for an outlier left
    out; ``seconds`` it took (distances, clustering)."""

    labels: np.ndarray
    clusters: int
    outliers: int
    seconds: dict[str, float] = field(default_factory=dict)


def distance_graph(features: torch.Tensor, max_distance: float, k1: int = 30, k2: int = 6,
                   weights: str = "cluster_contrast",
                   camera_neighbours: tuple[np.ndarray, int, int, int, int] | None = None) -> sp.csr_matrix:
    """The sparse Jaccard graph :func:`cluster_features` clusters (pairs within ``max_distance``, the diagonal
    stored), from ``features`` L2-normalised here; the arguments as there."""
    if weights not in ("cluster_contrast", "reranking"):
        raise ValueError(f"weights must be cluster_contrast or reranking, got {weights!r}")
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"clustering needs at least 2 images, got {n}")
    feats = torch.nn.functional.normalize(features.float(), dim=1)
    if camera_neighbours is not None:
        camids, k1_intra, k1_inter, k2_intra, k2_inter = camera_neighbours
        return camera_aware_jaccard_graph(feats, camids, k1_intra, k1_inter, k2_intra, k2_inter,
                                          max_distance=max_distance)
    return jaccard_graph(feats, min(k1, n - 1), min(k2, n), max_distance=max_distance,
                         normalised=weights == "reranking")


def cluster_features(features: torch.Tensor, eps: float = 0.6, min_samples: int = 4, k1: int = 30, k2: int = 6,
                     outliers: str = "drop", weights: str = "cluster_contrast",
                     camera_neighbours: tuple[np.ndarray, int, int, int, int] | None = None,
                     graph: sp.csr_matrix | None = None) -> PseudoLabels:
    """DBSCAN (``eps``, ``min_samples``) on the k-reciprocal Jaccard distances of ``features`` (L2-normalised
    here, the Euclidean metric, as Cluster Contrast clusters).

    ``outliers``: ``drop`` labels them -1; ``instances`` makes each its own cluster (numbered after the real
    ones).  ``weights``: ``cluster_contrast`` computes the distance as Cluster Contrast's code does,
    ``reranking`` as Zhong et al.'s re-ranking (reidkit's ``eval.rerank``).  ``camera_neighbours``
    ``(camids, k1_intra, k1_inter, k2_intra, k2_inter)``: the camera-aware Jaccard distance instead
    (:func:`reidkit.evaluation.rerank.camera_aware_jaccard_graph`; ``k1``, ``k2`` and ``weights`` unused).
    ``graph``: :func:`distance_graph`'s, computed already (with a radius of at least ``eps``).
    """
    if outliers not in ("drop", "instances"):
        raise ValueError(f"outliers must be drop or instances, got {outliers!r}")
    t0 = time.perf_counter()
    if graph is None:
        graph = distance_graph(features, eps, k1, k2, weights, camera_neighbours)
    t1 = time.perf_counter()
    labels = dbscan_precomputed(graph, eps, min_samples)
    t2 = time.perf_counter()
    clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0
    outlier_count = int((labels < 0).sum())
    if outliers == "instances" and outlier_count:
        labels = labels.copy()
        labels[labels < 0] = np.arange(clusters, clusters + outlier_count)
    return PseudoLabels(labels.astype(np.int64), clusters, outlier_count,
                        {"distances": t1 - t0, "dbscan": t2 - t1})


def dbscan_precomputed(graph: sp.csr_matrix, eps: float, min_samples: int) -> np.ndarray:
    """scikit-learn's DBSCAN on a sparse precomputed distance graph (pairs not stored are farther than
    ``eps``; the diagonal stored); labels -1 for noise."""
    if graph.shape[0] != graph.shape[1]:
        raise ValueError(f"a distance graph must be square, got {graph.shape}")
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)


def cluster_statistics(labels: np.ndarray, camids: np.ndarray, truth: np.ndarray | None = None) -> dict[str, float]:
    """What a clustering looks like: clusters, outliers (share of images), the largest cluster, the share of
    clusters holding one camera only, and against ``truth`` (hidden identity labels; recorded, never used)
    purity (the share of clustered images whose cluster's majority identity is theirs), NMI and ARI of the
    clustered images."""
    labels, camids = np.asarray(labels), np.asarray(camids)
    kept = labels >= 0
    ids, sizes = np.unique(labels[kept], return_counts=True)
    stats: dict[str, float] = {"clusters": float(len(ids)), "outliers": float(1 - kept.mean()) if len(labels) else 0.0,
                               "largest": float(sizes.max()) if len(sizes) else 0.0,
                               "mean_size": float(sizes.mean()) if len(sizes) else 0.0}
    if len(ids):
        pairs = np.unique(np.stack([labels[kept], camids[kept]]), axis=1)
        cameras_per_cluster = np.bincount(np.searchsorted(ids, pairs[0]), minlength=len(ids))
        multi = sizes > 1
        stats["single_camera"] = float((cameras_per_cluster[multi] == 1).mean()) if multi.any() else 0.0
    if truth is not None and kept.any():
        t = np.asarray(truth)[kept]
        k = labels[kept]
        _, t_codes = np.unique(t, return_inverse=True)
        _, k_codes = np.unique(k, return_inverse=True)
        table = sp.coo_matrix((np.ones(len(k)), (k_codes, t_codes))).tocsr()
        stats["purity"] = float(table.max(axis=1).sum() / len(k))
        stats["nmi"] = float(normalized_mutual_info_score(t, k))
        stats["ari"] = float(adjusted_rand_score(t, k))
    return stats


def size_histogram(labels: np.ndarray, edges: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> dict[str, int]:
    """Clusters by size: ``{"1": n, "2-3": n, "4-7": n, ..., "64+": n}`` (outliers left out)."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, int)
    sizes = sizes[sizes > 0]
    out = {}
    for lo, hi in zip(edges, (*edges[1:], None)):
        name = f"{lo}+" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}")
        out[name] = int(((sizes >= lo) & ((sizes < hi) if hi is not None else True)).sum())
    return out
