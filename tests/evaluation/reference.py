"""Slow, literal transcriptions of the protocol, used only to check the fast code."""
from __future__ import annotations

import numpy as np


def literal_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Market-1501 protocol, one query at a time, full stable sort (ties by index)."""
    distmat = np.asarray(distmat)
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(num_q):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        matches = (g_pids[order][keep] == q_pids[i]).astype(np.int64)
        if not matches.any():
            continue
        cmc = matches.cumsum()
        last = np.where(matches == 1)[0].max()
        all_inp.append(cmc[last] / (last + 1.0))
        cmc_bin = (cmc >= 1).astype(np.float64)
        cmc_bin = np.concatenate([cmc_bin, np.ones(max(0, max_rank - len(cmc_bin)))])
        all_cmc.append(cmc_bin[:max_rank])  # a valid query has matched by its list's end
        precision = np.array([c / (r + 1.0) for r, c in enumerate(cmc)]) * matches
        all_ap.append(precision.sum() / matches.sum())
    if not all_ap:
        return None
    cmc = np.asarray(all_cmc).sum(0) / len(all_cmc)
    return float(np.mean(all_ap)), cmc, float(np.mean(all_inp)), len(all_ap), np.asarray(all_ap)


def literal_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """k-reciprocal re-ranking (Zhong et al. 2017), item by item on dense arrays."""
    nq = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    d2 = (full ** 2).astype(np.float32)
    original = (d2 / d2.max(axis=0)).T                      # row i: column i, scaled
    n = original.shape[0]
    rank = np.argsort(original, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = rank[i, :k + 1]
        return [j for j in forward if i in rank[j, :k + 1]]

    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, half)
            if len(set(rc) & set(r)) > 2.0 / 3.0 * len(rc):
                expanded |= set(rc)
        idx = np.array(sorted(expanded))
        w = np.exp(-original[i, idx].astype(np.float64))
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((nq, n))
    for i in range(nq):
        m = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1 - m / (2 - m)
    final = jaccard * (1 - lambda_value) + original[:nq] * lambda_value
    return final[:, nq:]
