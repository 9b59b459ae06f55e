"""Gallery search at scale: ``GalleryIndex`` on a synthetic 1M x 512 gallery of clustered identities.

    python -m bench.bench_gallery_search [--size 1000000 --dim 512 --threads 2 --kinds flat ivf hnsw ivfpq]

The gallery imitates real ReID embeddings: identities (10 images each on average, Poisson) around 1,000
appearance clusters, with a shared mean direction and a decaying spectrum, tuned so that the statistics
match the real MSMT17 OSNet x0.25 on CUHK03-labeled val (cosine of same-identity pairs 0.73, of others
0.46; 90% of the variance in ~75 of 512 dimensions; ``--calibration`` prints both).  Queries are new
images of gallery identities.

For each index: build time (learning + adding), its size (what ``save`` writes for the faiss index),
single-query latency p50 / p99 (one ``search`` call per query, as a service answers them), batched latency
(100 queries per call) and recall@10 against exact search, over a sweep of the search-time setting
(``nprobe`` for ivf / ivfpq, ``ef_search`` for hnsw).  The peers have no gallery index: torchreid and
fast-reid rank with a full query x gallery distance matrix in torch, timed here as ``torch exact`` (the
ratio column is its p50 over the row's).

Goals (issue 19, this 2-core machine): p50 single-query latency < 5 ms at recall@10 >= 0.95; a 1M x 512
index under 1 GB with PQ at recall@10 >= 0.9.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from reidkit.deploy import GalleryIndex

#: variance shares of a unit embedding: the shared mean, the appearance cluster, the identity, the image
SHARES = {"mean": 0.47, "cluster": 0.16, "identity": 0.10, "image": 0.27}


class ClusteredIdentities:
    """Embeddings of identities around appearance clusters (see the module docstring), L2-normalised."""

    def __init__(self, dim: int, identities: int, clusters: int = 1000, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        shape = (1 + np.arange(dim) / 36.0) ** -1.5                 # decaying spectrum, as real features have
        self.shape = (shape / np.sqrt((shape ** 2).sum())).astype(np.float32)
        self.rotation = np.linalg.qr(self.rng.standard_normal((dim, dim)))[0].astype(np.float32)
        self.dim = dim
        self.mean = self._draw(1, SHARES["mean"])[0]
        cluster_centres = self._draw(clusters, SHARES["cluster"])
        self.identities = self._draw(identities, SHARES["identity"]) + \
            cluster_centres[self.rng.integers(0, clusters, identities)]

    def _draw(self, n: int, share: float) -> np.ndarray:
        return (self.rng.standard_normal((n, self.dim), dtype=np.float32) * self.shape * float(np.sqrt(share))) \
            @ self.rotation

    def images(self, pids: np.ndarray) -> np.ndarray:
        x = self.mean + self.identities[pids] + self._draw(len(pids), SHARES["image"])
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_gallery(size: int, dim: int, queries: int, seed: int = 0):
    model = ClusteredIdentities(dim, max(1, size // 10), seed=seed)
    counts = model.rng.poisson(9, len(model.identities)) + 1
    counts = (counts * size / counts.sum()).astype(int)
    counts[0] += size - counts.sum()
    pids = np.repeat(np.arange(len(counts)), counts)
    gallery = np.concatenate([model.images(pids[s:s + 100_000]) for s in range(0, size, 100_000)])
    query_pids = model.rng.integers(0, len(counts), queries)
    return gallery, pids, model.images(query_pids), query_pids


def describe(features: np.ndarray, pids: np.ndarray, label: str, sample: int = 3000) -> None:
    idx = np.random.default_rng(1).choice(len(features), min(sample, len(features)), replace=False)
    f, p = features[idx], pids[idx]
    s = f @ f.T
    same = (p[:, None] == p[None]) & ~np.eye(len(p), dtype=bool)
    ev = np.linalg.eigvalsh(np.cov(f.T))[::-1]
    share = np.cumsum(ev) / ev.sum()
    others = ~same & ~np.eye(len(p), dtype=bool)
    print(f"{label}: same-identity cos {s[same].mean():.3f}, others {s[others].mean():.3f}, "
          f"90% of variance in {(share < 0.9).sum() + 1} dims, 50% in {(share < 0.5).sum() + 1}")


def real_features() -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of CUHK03-labeled val by the real MSMT17 OSNet x0.25 (ONNX, as shipped) and their identities."""
    from pathlib import Path

    from reidkit.data import build_dataset
    from reidkit.deploy import FeatureExtractor
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    dataset = build_dataset("cuhk03_labeled", str(shared / "cuhk03" / "labeled"))
    records = dataset.query + dataset.gallery
    features = FeatureExtractor(weights=shared / "weights" / "osnet_x0_25_msmt17.onnx")([r.path for r in records])
    features = torch.nn.functional.normalize(features, dim=1).numpy()
    return features, np.array([r.pid for r in records])


def latencies(search, queries: np.ndarray, batch: int) -> tuple[float, float]:
    """p50 and p99 milliseconds of ``search(queries, 10)`` calls of ``batch`` queries each."""
    times = []
    for s in range(0, len(queries), batch):
        t0 = time.perf_counter()
        search(queries[s:s + batch], 10)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.percentile(times, 50)), 1e3 * float(np.percentile(times, 99))


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, exact)]))


#: the search-time settings swept for each index kind (each row one setting of the built index)
SWEEPS: dict[str, list[dict[str, int]]] = {
    "flat": [{}],
    "ivf": [{"nprobe": n} for n in (8, 16, 32, 64, 128)],
    "hnsw": [{"ef_search": e} for e in (16, 32, 64, 128, 256)],
    "ivfpq": [{"nprobe": n, "refine": 4} for n in (16, 32, 64, 128)] + [{"nprobe": 128, "refine": 16}],
    "hnswpq": [{"ef_search": e, "refine": r} for e, r in ((128, 4), (256, 4), (256, 16), (256, 32), (512, 32))],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000,
                        help="queries for recall and batched latency (calls of 100)")
    parser.add_argument("--single", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw", "ivfpq", "hnswpq"], choices=list(SWEEPS))
    parser.add_argument("--calibration", action="store_true",
                        help="also print the real OSNet x0.25 CUHK03 statistics the generator imitates")
    args = parser.parse_args()
    import faiss
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    gallery, pids, queries, _ = make_gallery(args.size, args.dim, args.queries)
    paths = [f"gallery/{i:07d}.jpg" for i in range(args.size)]
    print(f"{args.size:,} x {args.dim} gallery, {args.queries} queries: generated in "
          f"{time.perf_counter() - t0:.0f} s ({args.threads} threads, faiss {faiss.__version__})", flush=True)
    describe(gallery, pids, "synthetic gallery")
    if args.calibration:
        describe(*real_features(), "OSNet x0.25 (MSMT17) on CUHK03-labeled val")

    g = torch.from_numpy(gallery)                 # the peers' way: the full distance row, then top-k

    def torch_exact(q: np.ndarray, k: int = 10):
        return torch.topk(torch.from_numpy(q) @ g.T, k, dim=1)
    t_p50, t_p99 = latencies(torch_exact, queries[:args.single], 1)
    exact = np.concatenate([torch_exact(queries[s:s + 100]).indices.numpy() for s in range(0, len(queries), 100)])
    print(f"{'torch exact (peers)':46s} build {'-':>6s}  size {gallery.nbytes / 2**30:5.2f} GiB  "
          f"single p50 {t_p50:7.2f} ms p99 {t_p99:7.2f}  recall@10 1.000", flush=True)
    for kind in args.kinds:
        t0 = time.perf_counter()
        index = GalleryIndex(gallery, paths, index=kind)
        index.search(queries[:1])
        build = time.perf_counter() - t0
        size = index.memory_bytes() / 2**30
        for settings in SWEEPS[kind]:
            for name, value in settings.items():
                setattr(index, name, value)
            single_p50, single_p99 = latencies(index.search, queries[:args.single], 1)
            batch_p50, batch_p99 = latencies(index.search, queries, 100)
            r = recall(index.search(queries, 10)[1], exact)
            label = " ".join([str(index.description), *(f"{k}={v}" for k, v in settings.items())])
            print(f"{label:46s} build {build:6.0f} s  size {size:5.2f} GiB  single p50 {single_p50:7.2f} ms "
                  f"p99 {single_p99:7.2f}  batch-100 p50 {batch_p50:7.1f} ms p99 {batch_p99:7.1f}  recall@10 {r:.3f}  "
                  f"{t_p50 / single_p50:6.1f}x torch", flush=True)
        del index


if __name__ == "__main__":
    main()
