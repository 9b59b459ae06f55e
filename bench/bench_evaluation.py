"""evaluate_rank at Market-1501 size: reidkit vs fast-reid's Cython vs torchreid.

    python -m bench.bench_evaluation [--repeats 5] [--torchreid-python]

Same distance matrix for everyone (float32, 3,368 x 15,913, 751 ids +
distractors, 6 cameras), 2 threads, medians; prints times and ratios and checks
that mAP / CMC agree within 1e-5.  torchreid 0.2.5 from PyPI has no Cython
evaluator, so its Python fallback (about a minute) runs only with the flag.
"""
from __future__ import annotations

import argparse

import numpy as np

from bench import peers
from bench.market_like import market_like
from bench.measure import median_time, set_threads
from reidkit.evaluation import compute_distance, evaluate_rank


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torchreid-python", action="store_true")
    args = parser.parse_args()
    set_threads(2)
    qf, gf, qp, gp, qc, gc = market_like()
    dist = compute_distance(qf, gf).numpy()
    print(f"distmat {dist.shape}, {len(np.unique(gp))} gallery ids, 6 cameras")

    t_ours, ours = median_time(lambda: evaluate_rank(dist, qp, gp, qc, gc, 50), args.repeats)
    print(f"reidkit evaluate_rank      {t_ours:7.3f} s   mAP {ours.mAP:.6f}  R1 {ours.rank(1):.6f}"
          f"  mINP {ours.mINP:.6f}")

    fr = peers.fastreid_rank()
    t_fr, (fr_cmc, fr_ap, fr_inp) = median_time(
        lambda: fr(dist, qp, gp, qc, gc, 50, False), args.repeats)
    print(f"fast-reid 1.4.0 (Cython)   {t_fr:7.3f} s   mAP {np.mean(fr_ap):.6f}  "
          f"R1 {fr_cmc[0]:.6f}  mINP {np.mean(fr_inp):.6f}")
    print(f"  speed-up vs fast-reid: {t_fr / t_ours:.2f}x   "
          f"|dmAP| {abs(np.mean(fr_ap) - ours.mAP):.2e}  max|dCMC| {np.abs(fr_cmc - ours.cmc).max():.2e}"
          f"  |dmINP| {abs(np.mean(fr_inp) - ours.mINP):.2e}")

    if args.torchreid_python:
        tr, cython = peers.torchreid_rank()
        t_tr, (tr_cmc, tr_map) = median_time(
            lambda: tr(dist, qp, gp, qc, gc, 50, use_cython=True), 1)
        kind = "Cython" if cython else "Python fallback"
        print(f"torchreid 0.2.5 ({kind}) {t_tr:7.3f} s   mAP {tr_map:.6f}  R1 {tr_cmc[0]:.6f}")
        print(f"  speed-up vs torchreid: {t_tr / t_ours:.2f}x   |dmAP| {abs(tr_map - ours.mAP):.2e}"
              f"  max|dCMC| {np.abs(tr_cmc - ours.cmc).max():.2e}")


if __name__ == "__main__":
    main()
