import numpy as np
import pytest
import torch

from reference import literal_evaluate
from reidkit.evaluation import compute_distance, evaluate_features, evaluate_rank
from reidkit.evaluation.metrics import combine_blocks
from reidkit.evaluation.ranking import IdentityLookup, rank_block, rank_block_sorted


def test_hand_computed_single_query():
    # gallery order by distance: g0 (id 1, cam 1 -> positive), g1 (id 2), g2 (id 1 cam 0 -> junk,
    # removed), g3 (id 3), g4 (id 1, cam 2 -> positive)
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    r = evaluate_rank(dist, [1], [1, 2, 1, 3, 1], [0], [1, 0, 0, 0, 2], max_rank=4)
    # valid list: pos, neg, neg, pos -> precision at hits 1/1 and 2/4
    assert r.mAP == pytest.approx((1.0 + 0.5) / 2)
    np.testing.assert_allclose(r.cmc, [1, 1, 1, 1])
    assert r.mINP == pytest.approx(2 / 4)
    assert r.num_valid_queries == 1


def test_same_camera_match_is_removed_not_counted():
    dist = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    # the closest item is the same identity in the same camera: junk
    r = evaluate_rank(dist, [7], [7, 8, 7], [2], [2, 1, 1], max_rank=2)
    assert r.rank(1) == 0.0 and r.rank(2) == 1.0
    assert r.mAP == pytest.approx(0.5)


def test_invalid_queries_are_skipped_and_counted():
    dist = np.array([[0.1, 0.2], [0.3, 0.1]], dtype=np.float32)
    r = evaluate_rank(dist, [1, 5], [1, 2], [0, 0], [1, 1], max_rank=2)
    assert r.num_valid_queries == 1 and r.num_invalid_queries == 1
    assert r.mAP == 1.0


def test_no_valid_query_is_a_clear_error():
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate_rank(np.ones((1, 2), np.float32), [1], [1, 2], [0], [0, 0])


def test_ties_are_ordered_by_gallery_index():
    dist = np.zeros((1, 3), dtype=np.float32)
    r = evaluate_rank(dist, [1], [2, 1, 1], [0], [1, 1, 1], max_rank=3)
    # order g0 (neg), g1 (pos), g2 (pos): AP = (1/2 + 2/3) / 2
    assert r.mAP == pytest.approx((0.5 + 2 / 3) / 2)
    assert r.mINP == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("method", ["auto", "candidates", "sort", "device_sort"])
def test_equals_literal_protocol_on_random_problems(seed, method):
    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(1, 40)), int(rng.integers(5, 200))
    qp, gp = rng.integers(1, 10, nq), rng.integers(0, 12, ng)     # 0 = distractor ids
    qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    if seed % 3 == 0:
        dist = rng.integers(0, 5, (nq, ng)).astype(np.float32)   # many ties
    else:
        dist = rng.random((nq, ng)).astype([np.float32, np.float64][seed % 2])
    ref = literal_evaluate(dist, qp, gp, qc, gc, 20)
    if ref is None:
        pytest.skip("random problem without a valid query")
    if method == "device_sort":              # the GPU's ranking (a stable sort per row), run on the CPU here
        ids = [torch.from_numpy(a) for a in (qp, qc, gp, gc)]
        block = rank_block_sorted(torch.from_numpy(dist), *ids)
    else:
        block = rank_block(torch.from_numpy(dist), qp, qc, IdentityLookup(gp, gc), method=method)
    r = combine_blocks([block], min(20, ng))
    assert r.mAP == pytest.approx(ref[0], abs=1e-12)
    np.testing.assert_allclose(r.cmc, ref[1], atol=1e-12)
    assert r.mINP == pytest.approx(ref[2], abs=1e-12)
    assert r.num_valid_queries == ref[3]
    np.testing.assert_allclose(r.all_AP, ref[4], atol=1e-12)


def test_chunked_evaluation_equals_one_block():
    rng = np.random.default_rng(3)
    qf, gf = rng.standard_normal((70, 8)), rng.standard_normal((150, 8))
    qp, gp = rng.integers(0, 10, 70), rng.integers(0, 10, 150)
    qc, gc = rng.integers(0, 4, 70), rng.integers(0, 4, 150)
    for metric in ("euclidean", "cosine"):
        full = evaluate_rank(compute_distance(qf, gf, metric), qp, gp, qc, gc, query_chunk=1000)
        small = evaluate_rank(compute_distance(qf, gf, metric), qp, gp, qc, gc, query_chunk=7)
        streamed = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, query_chunk=9)
        ref = literal_evaluate(compute_distance(qf, gf, metric).numpy(), qp, gp, qc, gc, 50)
        for r in (full, small, streamed):
            assert r.mAP == pytest.approx(ref[0], abs=1e-12)
            np.testing.assert_allclose(r.cmc, ref[1])


def test_compute_distance_matches_definitions():
    rng = np.random.default_rng(0)
    qf, gf = rng.standard_normal((5, 4)), rng.standard_normal((6, 4))
    d = compute_distance(qf, gf, "euclidean", chunk_size=2).numpy()
    np.testing.assert_allclose(d, ((qf[:, None] - gf[None]) ** 2).sum(-1), rtol=1e-10)
    c = compute_distance(qf, gf, "cosine").numpy()
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    np.testing.assert_allclose(c, 1 - qn @ gn.T, rtol=1e-10)


def test_max_rank_is_cut_to_gallery_size():
    with pytest.warns(UserWarning, match="max_rank cut to 3"):
        r = evaluate_rank(np.arange(3, dtype=np.float32)[None], [1], [1, 2, 3], [0], [1, 1, 1])
    assert len(r.cmc) == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(q_pids=[1, 2]), "q_pids has 2 entries"),
    (dict(g_camids=[0]), "g_camids has 1 entries"),
    (dict(distmat=np.array([[np.nan, 1.0, 2.0]])), "distmat contains 1 NaN/inf"),
    (dict(distmat=np.array([[np.inf, 1.0, 2.0]])), "distmat contains"),
    (dict(distmat=np.zeros((0, 3))), "distmat is empty"),
    (dict(q_pids=[1.5]), "q_pids must hold integer ids"),
    (dict(g_pids=["a", "b", "c"]), "g_pids must hold integer ids"),
])
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(distmat=np.array([[0.1, 0.2, 0.3]]), q_pids=[1], g_pids=[1, 2, 1],
                q_camids=[0], g_camids=[1, 1, 1])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_rank(**args)


def test_bad_features_name_the_argument():
    with pytest.raises(ValueError, match="gf contains"):
        evaluate_features(np.ones((2, 3)), np.array([[np.nan, 0, 0]]), [1, 2], [1], [0, 0], [1])
    with pytest.raises(ValueError, match="qf has dimension 3 but gf has 4"):
        compute_distance(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="metric must be"):
        compute_distance(np.ones((2, 3)), np.ones((2, 3)), metric="manhattan")
