"""Adds and searches against gallery size: the gallery file (.npz, rewritten whole on every add, as `reidkit serve`
did before the store) against the gallery store (SQLite rows + the live faiss index), in one process, embedding
excluded (issue 49 B).

    python -m bench.bench_gallery_store [--sizes 10000 100000 1000000 --index flat --adds 20 --searches 50]

For each size: a gallery of unit vectors (512-d, clustered like identities) built both ways; then ``--adds``
single-item adds, each timed from the call to the moment the item is searchable (file: ``GalleryIndex.add`` +
``save``; store: ``GalleryStore.add`` (one transaction) + ``LiveGallery.refresh``), and ``--searches`` single-query
searches of k 20, the two galleries' searches interleaved (file: ``GalleryIndex.search``; store:
``LiveGallery.search``, which first asks the store for rows and deletions committed since).  Adds of
precomputed features in batches of 1,000 give the sustained rate.  Prints one JSON line per size and a Markdown
table with the ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def unit_vectors(n: int, seed: int, dim: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 10), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 2)


def measure(n: int, kind: str, adds: int, searches: int, file_adds: int, folder: Path) -> dict:
    from reidkit.deploy import GalleryIndex
    from reidkit.deploy.live import LiveGallery
    from reidkit.deploy.store import GalleryStore
    meta = {"arch": "osnet_x0_25", "weights_sha256": "0" * 64}
    x = unit_vectors(n, 0)
    fresh = unit_vectors(max(adds, file_adds) + 1000, 1)
    queries = unit_vectors(searches, 2)
    paths = [f"/crops/{i:07d}_c{1 + i % 6}s1_{i // 6:06d}_00.jpg" for i in range(n)]
    row: dict = {"images": n, "index": kind}

    # the gallery file, as the service kept it: the whole index written again on every add
    t0 = time.perf_counter()
    index = GalleryIndex(x, paths, index=kind, meta=meta)
    npz = folder / f"g{n}.npz"
    index.save(npz)
    row["file_build_s"] = round(time.perf_counter() - t0, 1)
    times = []
    for i in range(file_adds):
        t0 = time.perf_counter()
        index.add(fresh[i:i + 1], [f"/added/{i}.png"])
        index.save(npz)
        times.append(time.perf_counter() - t0)
    row["file_add_ms"] = median_ms(times)
    row["file_bytes"] = npz.stat().st_size
    npz.unlink()

    # the store: rows committed, the live index appended
    t0 = time.perf_counter()
    store = GalleryStore.create(folder / f"g{n}.db", metric="cosine", index=kind, dim=x.shape[1], meta=meta)
    for s in range(0, n, 20_000):
        store.add(x[s:s + 20_000], paths[s:s + 20_000])
    live = LiveGallery.open(store, snapshot=False)
    live.index._ensure_built()
    row["store_build_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    live.save_snapshot()
    row["snapshot_write_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    reopened = LiveGallery.open(GalleryStore(store.path))
    reopened.search(queries[:1], 20)
    row["store_open_s"] = round(time.perf_counter() - t0, 1)
    del reopened
    times = []
    for i in range(adds):
        t0 = time.perf_counter()
        store.add(fresh[i:i + 1], [f"/added/{i}.png"])
        live.refresh()
        times.append(time.perf_counter() - t0)
    row["store_add_ms"] = median_ms(times)
    row["store_add_p99_ms"] = round(1000 * sorted(times)[int(0.99 * (len(times) - 1))], 2)
    t0 = time.perf_counter()
    batch = fresh[adds:adds + 1000]
    store.add(batch, [f"/batch/{i}.png" for i in range(len(batch))])
    live.refresh()
    row["store_features_per_s"] = round(len(batch) / (time.perf_counter() - t0))
    extra = fresh[file_adds:adds + len(batch)]           # the file index to the store's size (not saved)
    index.add(extra, [f"/same/{i}.png" for i in range(len(extra))])
    assert len(index) == live.ids.size
    file_times, store_times = [], []
    for q in queries:                            # interleaved: both see the same machine state
        t0 = time.perf_counter()
        index.search(q[None], 20)
        file_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        live.search(q[None], 20)
        store_times.append(time.perf_counter() - t0)
    row["file_search_ms"], row["store_search_ms"] = median_ms(file_times), median_ms(store_times)
    del index
    row["store_bytes"] = store.path.stat().st_size + sum(
        p.stat().st_size for p in store.path.parent.glob(store.path.name + "-*"))
    store.close()
    for p in folder.glob(f"g{n}.db*"):
        p.unlink()
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--index", default="flat")
    p.add_argument("--adds", type=int, default=20, help="single-item adds to the store per size")
    p.add_argument("--file-adds", type=int, default=5, help="single-item adds to the file per size (each rewrites it)")
    p.add_argument("--searches", type=int, default=50)
    p.add_argument("--folder", default=None, help="where the galleries are written (default a temporary folder)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="reidkit_bench_store_", dir=args.folder) as tmp:
        for n in args.sizes:
            rows.append(measure(n, args.index, args.adds, args.searches, args.file_adds, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.index} index, 512-d, one process; add = until searchable, embedding excluded; search k 20")
    print("| images | add: file (.npz) ms | add: store ms (p99) | file / store | features/s into the store | "
          "search: file ms | search: store ms | store / file | store open from snapshot s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']:,} | {r['file_add_ms']} | {r['store_add_ms']} ({r['store_add_p99_ms']}) | "
              f"{r['file_add_ms'] / r['store_add_ms']:.0f}x | {r['store_features_per_s']:,} | {r['file_search_ms']} | "
              f"{r['store_search_ms']} | {r['store_search_ms'] / r['file_search_ms']:.2f} | {r['store_open_s']} |")


if __name__ == "__main__":
    main()
