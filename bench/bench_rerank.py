"""k-reciprocal re-ranking at Market-1501 size: reidkit vs torchreid, time and memory.

    python -m bench.bench_rerank

Each implementation runs in its own process on the same features (so peak RSS
is its own); the extra memory is the peak minus the RSS just before the call.
Prints time and memory ratios and the largest difference in final distances.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench.measure import run_child

CHILD = "bench.rerank_child"


def extra(row: dict) -> float:
    """Memory the re-ranking added above what the process held before it (GiB)."""
    return row["peak_rss_gib"] - row["rss_before_gib"]


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    rows = {impl: run_child(CHILD, impl, "market", str(tmp / f"{impl}.npy"))
            for impl in ("torchreid", "reidkit", "reidkit_features")}
    ref = np.load(tmp / "torchreid.npy")
    base = rows["torchreid"]
    print(f"{'impl':18s} {'time s':>8s} {'extra GiB':>10s} {'peak GiB':>9s} {'mAP':>9s} "
          f"{'R1':>7s} {'max|d - torchreid|':>19s}")
    for impl, r in rows.items():
        diff = np.abs(np.load(tmp / f"{impl}.npy") - ref).max()
        extra = r["peak_rss_gib"] - r["rss_before_gib"]
        print(f"{impl:18s} {r['seconds']:8.2f} {extra:10.2f} {r['peak_rss_gib']:9.2f} "
              f"{100 * r['mAP']:9.4f} {100 * r['rank1']:7.3f} {diff:19.2e}")
    for impl in ("reidkit", "reidkit_features"):
        r = rows[impl]
        print(f"{impl}: {base['seconds'] / r['seconds']:.1f}x faster than torchreid, "
              f"extra memory {extra(r) / extra(base):.2f}x"
              f" of torchreid's, peak {r['peak_rss_gib'] / base['peak_rss_gib']:.2f}x, "
              f"|dmAP| {abs(r['mAP'] - base['mAP']):.1e}")


if __name__ == "__main__":
    main()
