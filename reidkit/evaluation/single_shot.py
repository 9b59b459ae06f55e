"""CUHK03 classic single-gallery-shot evaluation (Li et al. 2014, as torchreid runs it).

For every query the valid gallery (Market rule: same identity and same camera
removed) is ranked; then, ``num_repeats`` times, one random image of every
gallery identity is kept and the CMC of that single-shot list is taken.  The
CMC is averaged over repeats and queries.  AP and mINP are the multi-shot ones
(as torchreid's ``eval_cuhk03``).  Unlike torchreid, the draws come from a
seeded generator, so the numbers are reproducible.
"""
from __future__ import annotations

import numpy as np

from .checks import ArrayLike, as_float_matrix, as_id_vector
from .metrics import RankResult, evaluate_rank


def evaluate_single_shot(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                         q_camids: ArrayLike, g_camids: ArrayLike, max_rank: int = 50,
                         num_repeats: int = 10, seed: int = 0) -> RankResult:
    """CUHK03 single-shot CMC (averaged over ``num_repeats`` seeded draws) with multi-shot mAP."""
    if num_repeats < 1:
        raise ValueError(f"num_repeats must be at least 1, got {num_repeats}")
    multi = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    dist = as_float_matrix(distmat, "distmat", check=False).numpy()
    nq, ng = dist.shape
    qp = as_id_vector(q_pids, "q_pids", nq)
    gp = as_id_vector(g_pids, "g_pids", ng)
    qc = as_id_vector(q_camids, "q_camids", nq)
    gc = as_id_vector(g_camids, "g_camids", ng)
    max_rank = len(multi.cmc)
    ranks = np.arange(1, max_rank + 1)
    rng = np.random.default_rng(seed)
    all_cmc = []
    for i in np.flatnonzero(multi.valid_queries):
        keep = np.flatnonzero(~((gp == qp[i]) & (gc == qc[i])))
        order = keep[np.argsort(dist[i, keep], kind="stable")]
        pids = gp[order]
        # group ranked positions by identity: members[offset[g]:offset[g] + count[g]]
        group_order = np.argsort(pids, kind="stable")
        uniq, first, count = np.unique(pids[group_order], return_index=True, return_counts=True)
        choice = first[None, :] + (rng.random((num_repeats, len(uniq))) * count).astype(np.int64)
        chosen_pos = group_order[choice]                       # rank position of each pick
        own = int(np.searchsorted(uniq, qp[i]))
        rank = 1 + (chosen_pos < chosen_pos[:, own:own + 1]).sum(axis=1)
        all_cmc.append((rank[:, None] <= ranks[None, :]).mean(axis=0))
    cmc = np.mean(all_cmc, axis=0)
    return RankResult(
        mAP=multi.mAP, cmc=cmc, mINP=multi.mINP, num_valid_queries=multi.num_valid_queries,
        num_invalid_queries=multi.num_invalid_queries, all_AP=multi.all_AP,
        all_INP=multi.all_INP, valid_queries=multi.valid_queries,
    )
