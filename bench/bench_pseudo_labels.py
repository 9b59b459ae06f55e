"""Pseudo-labelling (unsupervised adaptation, issue 36): reidkit's sparse Jaccard + DBSCAN against the way the
reference implementation computes it, on the same features.

    python -m bench.bench_pseudo_labels [--features F.npy] [--large 100000 1000000] [--threads 2]

The reference way is Cluster Contrast's ``compute_jaccard_distance`` (Dai et al. 2021; the same in SpCL): a dense
N x N distance matrix, a dense N x N k-reciprocal encoding built row by row in Python, a dense N x N Jaccard
matrix, then DBSCAN on it.  It is written here after that code, in its own words (numpy, float32 as the original
keeps its matrices), and timed on the same features; reidkit's ``cluster_features`` (sparse encoding, sparse
graph within eps, ``weights=cluster_contrast``) must give the same clusters.

Features: ``--features`` (an ``N x D`` .npy: e.g. the CUHK03-labeled train set embedded by the imported MSMT17 OSNet
x0.25, which ``--cuhk03`` computes and caches under runs/), or synthetic clustered features of the same size.
``--large N [N ...]`` also clusters ``N x 512`` synthetic features with reidkit alone, each in a child process whose
peak memory is read back (the dense reference would need ``3 N^2`` floats: for 100,000 images, 120 GB), and, on
the features of the main comparison, the exact neighbour search against the approximate one that sizes from
500,000 on use (faiss HNSW): the agreement of their clusters (ARI).
Goals (issue 50): 100,000 x 512 < 60 s and 4 GB, 1,000,000 < 15 min and 16 GB on this 2-core CPU; the approximate
path's clusters the exact path's (ARI >= 0.99) on CUHK03.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from bench.measure import set_threads
from reidkit.evaluation.clustering import cluster_features


def reference_jaccard(x: np.ndarray, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Dense N x N Jaccard distances the way Cluster Contrast's ``compute_jaccard_distance`` computes them (its
    faiss search returns k1 neighbours, self included: the rank lists hold k1 columns)."""
    n = len(x)
    x = x.astype(np.float32)
    dist = np.maximum(2 - 2 * x @ x.T, 0).astype(np.float32)          # squared distance of unit vectors
    rank = np.argsort(dist, axis=1)[:, :k1].astype(np.int32)
    half = int(np.around(k1 / 2))

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, :k + 1]
        return forward[np.where(rank[forward, :k + 1] == i)[0]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = r
        for c in r:
            cand = reciprocal(c, half)
            if len(np.intersect1d(cand, r)) > 2 / 3 * len(cand):
                expansion = np.append(expansion, cand)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        v[i, expansion] = w / w.sum()
    del dist
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)]).astype(np.float32)
    return dense_jaccard(v)


def reference_camera_jaccard(x: np.ndarray, cams: np.ndarray, k1_intra: int = 5, k1_inter: int = 20,
                             k2_intra: int = 2, k2_inter: int = 4) -> np.ndarray:
    """Dense N x N camera-aware Jaccard distances the way the CA-Jaccard authors' ``compute_jaccard_distance``
    computes them (ckrnns and clqe on): rankings with the other (intra) or the same (inter) camera pushed back by
    a constant, k-reciprocal sets on each, their union weighed by softmax(-d), the camera-aware expansion."""
    n = len(x)
    x = x.astype(np.float32)
    dist = np.maximum(2 - 2 * x @ x.T, 0).astype(np.float32)
    same = cams[:, None] == cams[None, :]
    intra = np.argsort(dist + 999.0 * ~same, axis=1).astype(np.int32)
    inter = np.argsort(dist + 999.0 * same, axis=1).astype(np.int32)

    def reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
        forward = rank[i, :k + 1]
        return forward[np.where(rank[forward, :k + 1] == i)[0]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        members = np.union1d(reciprocal(intra, i, k1_intra), reciprocal(inter, i, k1_inter))
        w = np.exp(-dist[i, members])
        v[i, members] = w / w.sum()
    del dist
    v = np.stack([v[np.append(intra[i, :k2_intra], inter[i, :k2_inter])].mean(0) for i in range(n)])
    return dense_jaccard(v.astype(np.float32))


def dense_jaccard(v: np.ndarray) -> np.ndarray:
    """``1 - m / (2 - m)``, ``m[i, j] = sum_k min(v[i, k], v[j, k])``, row by row over an inverted index (both
    reference codes' loop)."""
    n = len(v)
    inverted = [np.where(v[:, i] != 0)[0] for i in range(n)]
    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        m = np.zeros(n, dtype=np.float32)
        nonzero = np.where(v[i] != 0)[0]
        for j in nonzero:
            m[inverted[j]] += np.minimum(v[i, j], v[inverted[j], j])
        jaccard[i] = np.maximum(1 - m / (2 - m), 0)
    return jaccard


def synthetic(n: int, dim: int = 512, identities: int | None = None, seed: int = 0) -> np.ndarray:
    """Clustered features: ``identities`` directions, each image one of them plus noise, L2-normalised."""
    g = torch.Generator().manual_seed(seed)
    identities = identities or max(2, n // 10)
    centres = torch.nn.functional.normalize(torch.randn(identities, dim, generator=g), dim=1)
    x = centres[torch.randint(0, identities, (n,), generator=g)] + 0.035 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1).numpy()


def cuhk03_features(cache: Path) -> np.ndarray:
    """CUHK03-labeled train embedded by the imported MSMT17 OSNet x0.25 (flip-averaged), cached in ``cache``."""
    if cache.is_file():
        return np.load(cache)
    from reidkit.data import build_dataset
    from reidkit.data.cache import ImageCache
    from reidkit.engine.checkpoint import load_checkpoint, load_model_weights
    from reidkit.engine.features import extract_features
    from reidkit.models import build_model
    weights = Path("runs/osnet_x0_25_msmt17.pth")
    if not weights.is_file():
        raise SystemExit(f"{weights} not found: reidkit import-onnx ../shared/data/weights/osnet_x0_25_msmt17.onnx "
                         f"--arch osnet_x0_25 --out {weights}")
    model = build_model("osnet_x0_25", 1, pretrained="none")
    load_model_weights(model, load_checkpoint(weights), str(weights))
    train = build_dataset("cuhk03_labeled", "../shared/data/cuhk03/labeled").train
    images = ImageCache(train, (256, 128))
    x = extract_features(model.eval(), images, 128, flip=True).numpy()
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x


def cameras_and_identities() -> tuple[np.ndarray, np.ndarray]:
    """The CUHK03-labeled training crops' camera ids and (for information only) identities, in the order of
    ``--cuhk03``'s features."""
    from reidkit.data import build_dataset
    train = build_dataset("cuhk03_labeled", "../shared/data/cuhk03/labeled").train
    return np.array([r.camid for r in train]), np.array([r.pid for r in train])


def camera_table(x: np.ndarray, variants: tuple[str, ...], eps_values: tuple[float, ...],
                 truth: bool = True) -> None:
    """Clusters of the CUHK03 features for each of ``variants``: ``plain`` (the features as they are, Jaccard),
    ``centred`` (each camera's mean removed: ``cluster_memory.camera_centred``), ``camera_jaccard`` (CA-Jaccard
    with the authors' k1 5 / 20, k2 2 / 4: ``cluster_memory.distance``).  Count, outliers, single-camera share
    and seconds are label-free; with ``truth``, purity and ARI against the identities, for information."""
    from reidkit.evaluation.clustering import cluster_statistics
    from reidkit.methods.cluster_memory import camera_centred
    cams, pids = cameras_and_identities()
    features = torch.from_numpy(x).float()
    head = "| features | eps | clusters | outliers | single-camera | seconds |" + (" purity | ARI |" if truth else "")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for name in variants:
        f = camera_centred(features, cams) if name == "centred" else features
        aware = (cams, 5, 20, 2, 4) if name == "camera_jaccard" else None
        for eps in eps_values:
            t0 = time.perf_counter()
            found = cluster_features(f, eps, camera_neighbours=aware)
            seconds = time.perf_counter() - t0
            s = cluster_statistics(found.labels, cams, pids if truth else None)
            row = (f"| {name} | {eps} | {int(s['clusters'])} | {s['outliers']:.3f} | {s['single_camera']:.2f} | "
                   f"{seconds:.1f} |")
            print(row + (f" {s['purity']:.3f} | {s['ari']:.3f} |" if truth else ""))


def large_child(n: int) -> None:
    """(In a child process.)  Cluster ``n x 512`` synthetic features with reidkit; print time and peak memory."""
    x = torch.from_numpy(synthetic(n))
    t0 = time.perf_counter()
    found = cluster_features(x, eps=0.6)
    print(json.dumps({"n": n, "seconds": time.perf_counter() - t0, "clusters": found.clusters,
                      "distances": found.seconds["distances"], "dbscan": found.seconds["dbscan"],
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def approximate_agreement(x: np.ndarray, eps: float) -> tuple[float, float, float]:
    """The clusters of the exact and the approximate (HNSW) neighbour search on ``x``: (ARI, seconds exact,
    seconds approximate)."""
    from reidkit.evaluation.clustering import dbscan_precomputed
    from reidkit.evaluation.rerank import jaccard_graph
    f = torch.from_numpy(x)
    t0 = time.perf_counter()
    exact = dbscan_precomputed(jaccard_graph(f, 30, 6, eps, normalised=False, approximate=False), eps, 4)
    t1 = time.perf_counter()
    approx = dbscan_precomputed(jaccard_graph(f, 30, 6, eps, normalised=False, approximate=True), eps, 4)
    return float(adjusted_rand_score(exact, approx)), t1 - t0, time.perf_counter() - t1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--features", type=Path, help="an N x D .npy of features (default: --cuhk03 or synthetic)")
    p.add_argument("--cuhk03", action="store_true", help="the real CUHK03-labeled train features (cached in runs/)")
    p.add_argument("--camera-centring", action="store_true",
                   help="with --cuhk03: the clusters with and without each camera's mean removed, then stop")
    p.add_argument("--camera-jaccard", action="store_true",
                   help="with --cuhk03: the clusters on the Jaccard and the camera-aware Jaccard distance over a "
                        "range of eps, label-free columns only (choosing eps without labels), then stop")
    p.add_argument("--distance", choices=("jaccard", "camera_jaccard"), default="jaccard",
                   help="the distance compared (camera_jaccard: the authors' defaults k1 5 / 20, k2 2 / 4)")
    p.add_argument("--n", type=int, default=7239, help="synthetic features: how many (default: CUHK03's train)")
    p.add_argument("--eps", type=float, default=0.6)
    p.add_argument("--large", type=int, nargs="*", default=[],
                   help="also cluster this many 512-d features (each size in a child process), reidkit only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child-large", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    set_threads(args.threads)
    if args.child_large:
        large_child(args.child_large)
        return
    if args.features:
        x, what = np.load(args.features), str(args.features)
    elif args.cuhk03:
        x, what = cuhk03_features(Path("runs/bench_pseudo_labels/cuhk03_train_osnet_msmt17.npy")), \
            "CUHK03-labeled train, MSMT17 OSNet x0.25 (flip-averaged)"
    else:
        x, what = synthetic(args.n), f"synthetic {args.n} x 512"
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if args.camera_centring:
        camera_table(x, ("plain", "centred"), (0.4, 0.5, 0.55, 0.6))
        return
    if args.camera_jaccard:
        camera_table(x, ("plain", "camera_jaccard"), (0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7), truth=False)
        return
    cams = (cameras_and_identities()[0] if args.cuhk03 else np.random.default_rng(0).integers(0, 6, len(x))) \
        if args.distance == "camera_jaccard" else None
    setting = "k1 30, k2 6" if cams is None else "camera-aware: k1 5 / 20, k2 2 / 4"
    print(f"features: {what}, {x.shape[0]} x {x.shape[1]}; eps {args.eps}, min_samples 4, {setting}; "
          f"{args.threads} threads")
    t0 = time.perf_counter()
    ours = cluster_features(torch.from_numpy(x), eps=args.eps,
                            camera_neighbours=None if cams is None else (cams, 5, 20, 2, 4))
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    jaccard = reference_jaccard(x) if cams is None else reference_camera_jaccard(x, cams)
    t_dist = time.perf_counter() - t0
    theirs = DBSCAN(eps=args.eps, min_samples=4, metric="precomputed").fit_predict(jaccard)
    t_ref = time.perf_counter() - t0
    same = adjusted_rand_score(theirs, ours.labels)
    dense_gb = 3 * x.shape[0] ** 2 * 4 / 1e9
    print(f"{'':28s} {'seconds':>8s} {'clusters':>9s} {'outliers':>9s}")
    print(f"{'reidkit (sparse)':28s} {t_ours:8.2f} {ours.clusters:9d} {ours.outliers:9d}   "
          f"(distances {ours.seconds['distances']:.2f} s, DBSCAN {ours.seconds['dbscan']:.2f} s)")
    print(f"{'reference way (dense)':28s} {t_ref:8.2f} {len(set(theirs) - {-1}):9d} {int((theirs < 0).sum()):9d}   "
          f"(distances {t_dist:.2f} s; its N x N matrices ~{dense_gb:.2f} GB)")
    print(f"speed: reidkit / reference = {t_ref / t_ours:.1f}x; the same clusters: ARI {same:.6f}")
    if args.large and cams is None:
        ari, t_exact, t_approx = approximate_agreement(x, args.eps)
        print(f"approximate neighbours (faiss HNSW, used from 500,000 crops) on these features: ARI {ari:.4f} "
              f"against the exact search's clusters ({t_exact:.1f} s exact, {t_approx:.1f} s approximate)")
    for n in args.large:
        out = subprocess.run([sys.executable, "-m", "bench.bench_pseudo_labels", "--child-large", str(n),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"large: {r['n']} x 512 synthetic, reidkit: {r['seconds']:.1f} s (distances {r['distances']:.1f} s, "
              f"DBSCAN {r['dbscan']:.1f} s), {r['clusters']} clusters, peak memory {r['peak_rss_gb']:.2f} GB (the "
              f"process, torch included); the dense reference would hold ~{3 * r['n'] ** 2 * 4 / 1e9:.0f} GB")


if __name__ == "__main__":
    main()
