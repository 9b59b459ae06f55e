"""Pseudo-labels by clustering: the sparse Jaccard graph against a dense reference written after Cluster Contrast's
``compute_jaccard_distance``, DBSCAN on separated blobs, and the statistics by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidkit.evaluation import rerank
from reidkit.evaluation.clustering import cluster_features, cluster_statistics, size_histogram
from reidkit.evaluation.rerank import jaccard_graph


def dense_jaccard_reference(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Cluster Contrast's ``compute_jaccard_distance`` (clustercontrast/utils/faiss_rerank.py) transcribed line by
    line on the CPU: its faiss search (``index.search(features, k1)``) returns k1 columns, self first, which an
    exact sort stands in for; everything after it as the authors wrote it, float64 instead of float32."""
    n = len(x)
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2 * x @ x.T
    initial_rank = np.argsort(d, axis=1, kind="stable")[:, :k1]            # the search: k1 columns

    def k_reciprocal_neigh(initial_rank: np.ndarray, i: int, k1: int) -> np.ndarray:
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        return forward_k_neigh_index[fi]

    nn_k1 = [k_reciprocal_neigh(initial_rank, i, k1) for i in range(n)]
    nn_k1_half = [k_reciprocal_neigh(initial_rank, i, int(np.around(k1 / 2))) for i in range(n)]
    v = np.zeros((n, n))
    for i in range(n):
        k_reciprocal_index = nn_k1[i]
        k_reciprocal_expansion_index = k_reciprocal_index
        for candidate in k_reciprocal_index:
            candidate_k_reciprocal_index = nn_k1_half[candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > \
                    2 / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        dist = 2 - 2 * x[i] @ x[k_reciprocal_expansion_index].T                # L2-normalised features
        w = np.exp(-dist - (-dist).max())
        v[i, k_reciprocal_expansion_index] = w / w.sum()                     # F.softmax(-dist)
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe
    temp_min = np.minimum(v[:, None, :], v[None, :, :]).sum(-1)
    jaccard_dist = 1 - temp_min / (2 - temp_min)
    jaccard_dist[jaccard_dist < 0] = 0.0
    return jaccard_dist


def test_the_k_reciprocal_set_holds_k1_items_as_cluster_contrast_searches():
    """Four crops at the corners of a tight square and one farther off: with k1 = 4 the k-reciprocal set of a
    corner is the four corners (k1 items, self included: the search returns k1 columns), not five."""
    x = F.normalize(torch.tensor([[1.0, 0.00, 0.00], [1.0, 0.01, 0.00], [1.0, 0.00, 0.01], [1.0, 0.01, 0.01],
                                  [1.0, 0.05, 0.05]]), dim=1)
    ref = dense_jaccard_reference(x.double().numpy(), 4, 1)
    assert ref[0, 4] == pytest.approx(1.0)                    # nothing shared with the far crop
    graph = jaccard_graph(x, 4, 1, max_distance=1.0, normalised=False).toarray()
    assert graph[0, 4] == 0.0 and graph[0, 1] > 0           # not stored: farther than any shared neighbour
    # Zhong et al.'s ranking (every item ranked, k1 + 1 read) lets the far crop in
    assert jaccard_graph(x, 4, 1, max_distance=1.0, normalised=True).toarray()[0, 4] > 0


def blobs(num: int = 8, per: int = 10, dim: int = 24, spread: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num, dim, generator=g), dim=1) * 4
    x = torch.cat([c + spread * torch.randn(per, dim, generator=g) for c in centres])
    return x, np.repeat(np.arange(num), per)


@pytest.mark.parametrize("k1,k2", [(20, 6), (8, 1), (5, 3)])
@pytest.mark.parametrize("block", ["dense", "sparse"])
def test_the_sparse_graph_equals_the_dense_cluster_contrast_jaccard(k1, k2, block, monkeypatch):
    """Both ways of summing a block (dense below DENSE_BLOCK, sparse above: 100,000 images) give the reference."""
    if block == "sparse":
        monkeypatch.setattr(rerank, "DENSE_BLOCK", 0)
    x, _ = blobs(6, 15, 16, spread=0.6, seed=k1)
    x = F.normalize(x, dim=1)
    reference = dense_jaccard_reference(x.double().numpy(), k1, k2)
    graph = jaccard_graph(x, k1, k2, max_distance=1.0, normalised=False)
    dense = np.ones_like(reference)
    c = graph.tocoo()
    dense[c.row, c.col] = c.data
    np.testing.assert_allclose(dense, reference, atol=2e-6)
    # a radius keeps exactly the pairs within it, the diagonal stored at 0
    near = jaccard_graph(x, k1, k2, max_distance=0.5, normalised=False)
    stored = near.tocoo()
    assert (reference[stored.row, stored.col] <= 0.5 + 1e-6).all() and (near.diagonal() == 0).all()
    assert int((reference <= 0.5 - 1e-6).sum()) <= near.nnz <= int((reference <= 0.5 + 1e-6).sum())


def test_separated_blobs_cluster_exactly_and_outliers_follow_the_recipe():
    x, truth = blobs(8, 10)
    far = torch.full((1, x.shape[1]), 40.0)                       # one image like no other
    # k1 = a blob's size: a blob's k-reciprocal set is the blob, and nobody's holds the lone image (k2=1:
    # query expansion would lend it its neighbours' neighbourhoods)
    found = cluster_features(torch.cat([x, far]), eps=0.6, min_samples=4, k1=10, k2=1)
    assert (found.clusters, found.outliers) == (8, 1) and found.labels[-1] == -1
    labels = found.labels[:-1]
    # the same partition as the truth: every blob one cluster, every cluster one blob
    assert len({(a, b) for a, b in zip(labels, truth)}) == 8 == len(set(labels))
    kept = cluster_features(torch.cat([x, far]), eps=0.6, min_samples=4, k1=10, k2=1, outliers="instances")
    assert kept.labels[-1] == 8 and kept.outliers == 1 and np.array_equal(kept.labels[:-1], labels)
    with_expansion = cluster_features(x, eps=0.6, min_samples=4, k1=8, k2=3)      # the blobs alone, QE on
    assert len({(a, b) for a, b in zip(with_expansion.labels, truth)}) == 8 == with_expansion.clusters
    with pytest.raises(ValueError, match="outliers must be"):
        cluster_features(x, outliers="keep")


def test_statistics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1])
    camids = np.array([0, 1, 0, 1, 1, 0, 0, 0, 0, 1])
    truth = np.array([5, 5, 7, 6, 6, 8, 8, 9, 9, 5])
    s = cluster_statistics(labels, camids, truth)
    assert (s["clusters"], s["largest"], s["mean_size"]) == (3, 4, 3) and s["outliers"] == pytest.approx(0.1)
    assert s["single_camera"] == pytest.approx(2 / 3)            # clusters 1 and 2 hold one camera each
    assert s["purity"] == pytest.approx((2 + 2 + 2) / 9)           # majorities: 5 of {5,5,7}, 6, 8 (or 9)
    # ARI by hand: pair counts within cells 4, within clusters 10, within identities 4, of 36 pairs:
    # (4 - 10 * 4 / 36) / ((10 + 4) / 2 - 10 * 4 / 36)
    assert s["ari"] == pytest.approx((4 - 40 / 36) / (7 - 40 / 36)) and 0 < s["nmi"] < 1
    assert cluster_statistics(labels, camids, np.arange(10) * 0 + labels + 1)["purity"] == 1.0
    assert size_histogram(labels) == {"1": 0, "2-3": 2, "4-7": 1, "8-15": 0, "16-31": 0, "32-63": 0, "64+": 0}


def test_camera_centring_removes_what_one_camera_adds_to_every_crop():
    """Two identities seen by two cameras whose crops each carry a strong camera offset: clustered as they are, the
    crops group by camera; with each camera's mean removed (cluster_memory.camera_centred), by identity."""
    import torch

    from reidkit.methods.cluster_memory import camera_centred
    rng = np.random.default_rng(0)
    identity = rng.standard_normal((2, 16)) * 0.6
    camera = rng.standard_normal((2, 16)) * 3.0
    pids = np.repeat([0, 1, 0, 1], 6)
    cams = np.repeat([0, 0, 1, 1], 6)
    x = identity[pids] + camera[cams] + 0.05 * rng.standard_normal((24, 16))
    features = torch.from_numpy(x).float()
    plain = cluster_features(features, eps=0.5, min_samples=3, k1=8, k2=3).labels
    centred = cluster_features(camera_centred(features, cams), eps=0.5, min_samples=3, k1=8, k2=3).labels
    assert len(set(plain[cams == 0]) & set(plain[cams == 1])) == 0          # as they are: no cluster spans cameras
    assert all(len(set(centred[pids == p])) == 1 for p in (0, 1)) and centred[0] != centred[6]   # by identity
    centred_means = [camera_centred(features, cams)[torch.from_numpy(cams == c)].mean(0) for c in (0, 1)]
    assert all(torch.allclose(m, torch.zeros(16), atol=1e-6) for m in centred_means)


def dense_camera_jaccard_reference(x: np.ndarray, cams: np.ndarray, k1_intra: int, k1_inter: int, k2_intra: int,
                                   k2_inter: int) -> np.ndarray:
    """CA-Jaccard as its paper describes it, densely and one item at a time: each item ranks its own camera's
    items (itself first) and the other cameras' items apart; its set is the union of its k-reciprocal neighbours
    on the two rankings (first k+1 of each), weighed by softmax(-squared distance); the expansion averages the
    rows of its k2_intra own-camera and k2_inter other-camera nearest; 1 - m / (2 - m)."""
    n = len(x)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, -1.0)

    def ranking(i: int, own: bool) -> list[int]:
        others = [j for j in range(n) if (cams[j] == cams[i]) == own and (own or j != i)]
        return sorted(others, key=lambda j: (d[i, j], j))

    intra, inter = [ranking(i, True) for i in range(n)], [ranking(i, False) for i in range(n)]

    def reciprocal(lists: list[list[int]], i: int, k: int) -> set[int]:
        return {j for j in lists[i][:k + 1] if i in lists[j][:k + 1]}

    np.fill_diagonal(d, 0.0)
    v = np.zeros((n, n))
    for i in range(n):
        members = sorted(reciprocal(intra, i, k1_intra) | reciprocal(inter, i, k1_inter))
        w = np.exp(-d[i, members])
        v[i, members] = w / w.sum()
    v = np.stack([v[intra[i][:k2_intra] + inter[i][:k2_inter]].mean(0) for i in range(n)])
    m = np.minimum(v[:, None, :], v[None, :, :]).sum(-1)
    return np.maximum(1 - m / (2 - m), 0.0)


@pytest.mark.parametrize("k", [(5, 20, 2, 4), (3, 6, 1, 1), (0, 8, 1, 3)])
def test_the_camera_aware_graph_equals_a_dense_reference(k):
    x, _ = blobs(6, 12, 16, spread=0.6, seed=sum(k))
    x = F.normalize(x, dim=1)
    cams = np.random.default_rng(sum(k)).integers(0, 3, len(x))
    reference = dense_camera_jaccard_reference(x.double().numpy(), cams, *k)
    graph = rerank.camera_aware_jaccard_graph(x, cams, *k, max_distance=1.0)
    dense = np.ones_like(reference)
    c = graph.tocoo()
    dense[c.row, c.col] = c.data
    np.testing.assert_allclose(dense, reference, atol=2e-6)
    assert (graph.diagonal() == 0).all()
    with pytest.raises(ValueError, match="72 features but 71 camera ids"):
        rerank.camera_aware_jaccard_graph(x, cams[:-1])


def test_camera_aware_neighbours_join_what_a_camera_gap_splits():
    """Ten people, each seen by two cameras; each camera adds its own component to every crop, so every
    cross-camera pair is farther apart than any two people within a camera.  On the whole ranking an image's
    neighbours are its own camera's (other people) and the clusters hold one camera each; on each camera's
    ranking apart, the same person's crops from the other camera are reciprocal neighbours, and every cluster
    is one person seen by both cameras."""
    g = torch.Generator().manual_seed(0)
    people = F.normalize(torch.randn(10, 32, generator=g), dim=1)
    cams = np.tile(np.repeat([0, 1], 4), 10)
    truth = np.repeat(np.arange(10), 8)
    camera_part = 1.5 * torch.eye(2)[cams]                          # a distance of 4.5 between the cameras
    x = torch.cat([people[truth] + 0.05 * torch.randn(80, 32, generator=g), camera_part], dim=1)
    plain = cluster_features(x, eps=0.6, min_samples=4, k1=7, k2=1)
    one_camera = [len(set(cams[plain.labels == c])) == 1 for c in range(plain.clusters)]
    assert plain.clusters and all(one_camera)
    aware = cluster_features(x, eps=0.6, min_samples=4, camera_neighbours=(cams, 3, 3, 1, 1))
    assert aware.clusters == 10 and aware.outliers == 0
    for c in range(10):
        members = aware.labels == c
        assert len(set(truth[members])) == 1 and set(cams[members]) == {0, 1}


def test_the_approximate_neighbour_search_gives_the_exact_clusters():
    """faiss's HNSW search (what clustering 500,000 crops or more uses) against the exact search: the same
    clusters (ARI >= 0.99) on identity-structured features with noise enough to interleave neighbourhoods."""
    from sklearn.metrics import adjusted_rand_score

    from reidkit.evaluation.clustering import dbscan_precomputed
    from reidkit.evaluation.neighbours import approximate_neighbours
    x, _ = blobs(60, 12, 64, spread=0.7, seed=5)
    x = F.normalize(x, dim=1)
    exact = dbscan_precomputed(jaccard_graph(x, 20, 6, 0.6, normalised=False, approximate=False), 0.6, 4)
    approx = dbscan_precomputed(jaccard_graph(x, 20, 6, 0.6, normalised=False, approximate=True), 0.6, 4)
    assert len(set(exact)) > 10 and adjusted_rand_score(exact, approx) >= 0.99
    nbrs = approximate_neighbours(x, 21)
    assert (nbrs[:, 0] == np.arange(len(x))).all()                     # itself first
    with pytest.raises(ValueError, match="approximate neighbour search serves"):
        jaccard_graph(x, 20, 6, 0.6, normalised=True, approximate=True)


def test_the_approximate_search_is_the_same_every_time():
    """Data-parallel processes cluster the same features apart: their neighbour lists must agree."""
    from reidkit.evaluation.neighbours import approximate_neighbours
    x, _ = blobs(40, 10, 32, spread=0.7, seed=2)
    assert np.array_equal(approximate_neighbours(x, 15), approximate_neighbours(x, 15))
