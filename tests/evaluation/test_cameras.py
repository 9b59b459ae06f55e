import numpy as np

from reference import literal_evaluate
from reidkit.evaluation.cameras import camera_pair_map


def test_each_cell_is_the_protocol_on_that_camera_pair():
    rng = np.random.default_rng(0)
    q_pids, q_cams = rng.integers(1, 6, 30), rng.integers(0, 3, 30)
    g_pids, g_cams = rng.integers(0, 6, 90), rng.integers(0, 3, 90)
    dist = rng.random((30, 90)).astype(np.float32)
    cameras, table = camera_pair_map(dist, q_pids, g_pids, q_cams, g_cams)
    assert cameras == [0, 1, 2] and np.isnan(np.diag(table)).all()
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            rows, cols = np.flatnonzero(q_cams == i), np.flatnonzero(g_cams == j)
            ref = literal_evaluate(dist[np.ix_(rows, cols)], q_pids[rows], g_pids[cols], q_cams[rows], g_cams[cols], 1)
            assert (np.isnan(table[i, j]) if ref is None else abs(table[i, j] - ref[0]) < 1e-6)
