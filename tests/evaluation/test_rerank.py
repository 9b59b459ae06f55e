import numpy as np
import pytest

from reference import literal_rerank
from reidkit.evaluation import compute_distance, evaluate_features, evaluate_rank
from reidkit.evaluation.rerank import re_ranking, re_ranking_features


def clustered(rng, n, dim=16, ids=15):
    centers = rng.standard_normal((ids, dim))
    pids = rng.integers(0, ids, n)
    return (centers[pids] + 0.8 * rng.standard_normal((n, dim))).astype(np.float32), pids


@pytest.mark.parametrize("seed, metric, k1, k2, lam", [
    (0, "euclidean", 20, 6, 0.3), (1, "cosine", 20, 6, 0.3), (2, "euclidean", 7, 3, 0.5),
    (3, "cosine", 5, 1, 0.1), (4, "euclidean", 11, 4, 0.0),
])
def test_sparse_equals_dense_literal(seed, metric, k1, k2, lam):
    rng = np.random.default_rng(seed)
    qf, _ = clustered(rng, int(rng.integers(40, 90)))
    gf, _ = clustered(rng, int(rng.integers(150, 260)))
    qg, qq, gg = (compute_distance(a, b, metric).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    ref = literal_rerank(qg, qq, gg, k1, k2, lam)
    np.testing.assert_allclose(re_ranking(qg, qq, gg, k1, k2, lam), ref, atol=1e-5)
    np.testing.assert_allclose(re_ranking_features(qf, gf, k1, k2, lam, metric=metric, chunk_size=17),
                               ref, atol=1e-5)


def test_rerank_changes_the_ranking_and_evaluate_features_streams_it():
    rng = np.random.default_rng(5)
    qf, qp = clustered(rng, 60)
    gf, gp = clustered(rng, 200)
    qc, gc = np.zeros(60, int), np.ones(200, int)
    final = re_ranking_features(qf, gf)
    assert not np.allclose(final, compute_distance(qf, gf).numpy())
    direct = evaluate_rank(final, qp, gp, qc, gc)
    streamed = evaluate_features(qf, gf, qp, gp, qc, gc, rerank=True, query_chunk=13)
    assert streamed.mAP == pytest.approx(direct.mAP, abs=1e-9)
    np.testing.assert_allclose(streamed.cmc, direct.cmc)


def test_rerank_rejects_bad_shapes_and_parameters():
    qg = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="q_q_dist must have shape"):
        re_ranking(qg, np.ones((3, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="g_g_dist contains"):
        re_ranking(qg, np.ones((2, 2)), np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(qg, np.ones((2, 2)), np.ones((3, 3)), lambda_value=2)
