"""One re-ranking (or streamed evaluation) run in a fresh process; prints a JSON line.

    python -m bench.rerank_child IMPL SIZE OUT.npy
IMPL: torchreid | reidkit | reidkit_features | eval_features | eval_features_rerank
SIZE: market | msmt17
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from bench import peers
from bench.market_like import market_like
from bench.measure import peak_rss_gib, rss_gib, set_threads
from reidkit.evaluation import compute_distance, evaluate_features, evaluate_rank, re_ranking, re_ranking_features

SIZES = {"market": dict(), "msmt17": dict(num_query=11659, num_gallery=82161, num_ids=3060,
                                         num_cams=15)}


def main() -> None:
    impl, size, out = sys.argv[1], sys.argv[2], sys.argv[3]
    set_threads(2)
    qf, gf, qp, gp, qc, gc = market_like(**SIZES[size])
    if impl in ("torchreid", "reidkit", "fastreid"):
        mats = [compute_distance(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    before = rss_gib()
    t0 = time.perf_counter()
    result = {}
    if impl == "torchreid":
        final = peers.torchreid_rerank()(*mats, k1=20, k2=6, lambda_value=0.3)
    elif impl == "reidkit":
        final = re_ranking(*mats, k1=20, k2=6, lambda_value=0.3)
    elif impl == "reidkit_features":
        final = re_ranking_features(qf, gf, k1=20, k2=6, lambda_value=0.3)
    elif impl.startswith("eval_features"):
        r = evaluate_features(qf, gf, qp, gp, qc, gc, rerank=impl.endswith("rerank"))
        final = None
        result = dict(mAP=r.mAP, rank1=r.rank(1))
    else:
        raise SystemExit(f"unknown impl {impl}")
    seconds = time.perf_counter() - t0
    if final is not None:
        r = evaluate_rank(final, qp, gp, qc, gc)
        result = dict(mAP=r.mAP, rank1=r.rank(1))
        if out != "-":
            np.save(out, np.asarray(final, dtype=np.float32))
    print(json.dumps(dict(impl=impl, size=size, seconds=seconds, rss_before_gib=before,
                          peak_rss_gib=peak_rss_gib(), **result)))


if __name__ == "__main__":
    main()
