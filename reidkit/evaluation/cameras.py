"""mAP for each (query camera, gallery camera) pair: the view that camera-aware methods are about."""
from __future__ import annotations

import warnings

import numpy as np

from .metrics import evaluate_rank


def camera_pair_map(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                    g_camids: np.ndarray) -> tuple[list[int], np.ndarray]:
    """``(cameras, table)``: ``table[i, j]`` is the mAP (fraction) of the queries seen by camera ``cameras[i]``
    against the gallery images of camera ``cameras[j]`` alone, under the usual protocol; NaN where no query
    of camera ``i`` has a match in camera ``j`` (always on the diagonal: same-camera matches are junk)."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    cameras = sorted(set(q_camids.tolist()) | set(g_camids.tolist()))
    table = np.full((len(cameras), len(cameras)), np.nan)
    for i, qc in enumerate(cameras):
        rows = np.flatnonzero(q_camids == qc)
        for j, gc in enumerate(cameras):
            cols = np.flatnonzero(g_camids == gc)
            if qc == gc or len(rows) == 0 or len(cols) == 0:
                continue
            valid = np.isin(q_pids[rows], g_pids[cols])
            if not valid.any():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")               # small galleries cut max_rank
                result = evaluate_rank(distmat[np.ix_(rows, cols)], q_pids[rows], g_pids[cols], q_camids[rows],
                                       g_camids[cols], max_rank=1)
            table[i, j] = result.mAP
    return cameras, table
