import numpy as np
import pytest

from reidkit.evaluation import evaluate_rank
from reidkit.evaluation.single_shot import evaluate_single_shot


def test_one_image_per_identity_equals_multi_shot():
    rng = np.random.default_rng(0)
    dist = rng.random((30, 12)).astype(np.float32)
    qp, gp = rng.integers(0, 12, 30), np.arange(12)
    qc, gc = np.zeros(30, int), np.ones(12, int)
    multi = evaluate_rank(dist, qp, gp, qc, gc, max_rank=12)
    single = evaluate_single_shot(dist, qp, gp, qc, gc, max_rank=12, num_repeats=3)
    np.testing.assert_allclose(single.cmc, multi.cmc)
    assert single.mAP == multi.mAP


def test_hand_computed_draw_probabilities():
    # ranked: pos (id 1), neg (id 2), pos (id 1). A draw keeps the first pos with p=1/2
    # (rank 1) or the second (rank 2, behind the single negative).
    dist = np.array([[0.1, 0.2, 0.3]], np.float32)
    r = evaluate_single_shot(dist, [1], [1, 2, 1], [0], [1, 1, 1], max_rank=2, num_repeats=4000)
    assert r.rank(1) == pytest.approx(0.5, abs=0.03)
    assert r.rank(2) == 1.0


def test_seeded_and_reproducible():
    rng = np.random.default_rng(1)
    dist = rng.random((40, 80)).astype(np.float32)
    qp, gp = rng.integers(0, 10, 40), rng.integers(0, 10, 80)
    qc, gc = np.zeros(40, int), np.ones(80, int)
    a = evaluate_single_shot(dist, qp, gp, qc, gc, seed=3)
    b = evaluate_single_shot(dist, qp, gp, qc, gc, seed=3)
    c = evaluate_single_shot(dist, qp, gp, qc, gc, seed=4)
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert not np.array_equal(a.cmc, c.cmc)
