"""Load test of ``reidkit serve`` on localhost: N concurrent clients, a fixed number of requests each and a time
limit, latency percentiles and requests/s; stops by itself.

    python -m bench.bench_serve [--images 100000 --clients 8 --requests 50 --seconds 60 --index hnsw flat]

The gallery: ``--images`` unit vectors of 512 dimensions (the OSNet x0.25 embedding's size), clustered like
identities, with Market-1501-style names (camera, frame) over a few real crops, so that serving images and the
camera / time filters work; its model is the real MSMT17 OSNet x0.25 (``../shared/data/weights``, imported once
into runs/), which embeds each uploaded crop.  The service runs in its own process (uvicorn, one worker), as
``reidkit serve`` does.  Requests: a search from a random gallery item (k 20), the same with a camera filter, and a
search by an uploaded CUHK03 crop (embedding included).  Goals (issue 38, this 2-core machine): p50 < 50 ms by item,
< 150 ms by upload, no errors with 8 clients.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = ROOT / "runs" / "osnet_x0_25_msmt17.pth"


def model_weights() -> Path:
    if not WEIGHTS.is_file():
        onnx = SHARED / "weights" / "osnet_x0_25_msmt17.onnx"
        subprocess.run([sys.executable, "-m", "reidkit", "import-onnx", str(onnx), "--arch", "osnet_x0_25",
                        "--out", str(WEIGHTS)], check=True)
    return WEIGHTS


def build_gallery(folder: Path, n: int, kind: str, crops: list[Path]) -> Path:
    from reidkit.deploy import GalleryIndex
    from reidkit.files import file_sha256
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(1, n // 10), 512)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, 512)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    for crop in crops:                                   # the few real files every name points at
        (images / crop.name).write_bytes(crop.read_bytes())
    paths = []
    for i in range(n):
        camera, frame = 1 + i % 6, i // 6
        name = f"{i % 1500:04d}_c{camera}s1_{frame:06d}_00.jpg"
        link = images / name
        if i < 200:                                       # the first crops exist on disk (served as images)
            link.write_bytes(crops[i % len(crops)].read_bytes())
        paths.append(str(link))
    weights = model_weights()
    meta = {"arch": "osnet_x0_25", "weights": str(weights), "weights_sha256": file_sha256(weights),
            "image_size": [256, 128], "model_options": {}}
    out = folder / f"gallery_{kind}.npz"
    GalleryIndex(x, paths, index=kind, meta=meta).save(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(gallery: Path, port: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "reidkit", "serve", str(gallery), "--port", str(port),
                             "--metadata", "market1501"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    import httpx
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read().decode()[-2000:] if proc.stdout else "the server exited")
    proc.kill()
    raise RuntimeError("the server did not answer within 300 s")


def load(port: int, kind: str, n: int, clients: int, requests: int, seconds: float, upload: bytes) -> dict:
    import httpx
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.time() + seconds
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for _ in range(requests):
                if time.time() > stop:
                    return
                t0 = time.perf_counter()
                try:
                    if kind == "upload":
                        r = http.post("/api/search?k=20", files={"image": ("q.jpg", upload, "image/jpeg")})
                    else:
                        camera = "&camera=3" if kind == "item+camera" else ""
                        r = http.get(f"/api/items/{rng.randrange(n)}/similar?k=20{camera}")
                    ok = r.status_code == 200
                except httpx.HTTPError as e:
                    ok, r = False, e
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt) if ok else errors.append(str(r)[:200])
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(1000 * x for x in latencies)
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))] if ms else float("nan")  # noqa: E731
    return {"requests": len(ms), "errors": len(errors), "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(pick(0.99), 1), "requests_per_s": round(len(ms) / wall, 1),
            "first_error": errors[0] if errors else None}


def build_store(folder: Path, n: int, crops: list[Path]) -> Path:
    """The gallery of :func:`build_gallery` as a gallery store (rows committed in batches, snapshot written)."""
    from reidkit.deploy.live import LiveGallery
    from reidkit.deploy.store import GalleryStore
    from reidkit.files import file_sha256
    npz = build_gallery(folder, n, "flat", crops)
    from reidkit.deploy import GalleryIndex
    index = GalleryIndex.load(npz)
    weights = model_weights()
    meta = {"arch": "osnet_x0_25", "weights": str(weights), "weights_sha256": file_sha256(weights),
            "image_size": [256, 128], "model_options": {}}
    store = GalleryStore.create(folder / "gallery.db", metric="cosine", index="hnsw", dim=512, meta=meta)
    x = index.features
    for s in range(0, n, 20_000):
        store.add(x[s:s + 20_000], index.paths[s:s + 20_000])
    LiveGallery.open(store, snapshot=False).save_snapshot()
    store.close()
    return store.path


def noise_crop(seed: int) -> bytes:
    """A distinct 128 x 64 PNG (distinct bytes: a new item each)."""
    import io

    from PIL import Image
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (128, 64, 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def mixed_load(n: int, clients: int, adders: int, seconds: float, workers: int, extract_images: int,
               crops: list[Path]) -> dict:
    """``clients`` searching by item while ``adders`` add crops through the API and an ``extract --add-to`` runs,
    against ``serve --workers``; then the store must hold exactly every acknowledged item."""
    import httpx

    from reidkit.deploy.store import GalleryStore
    with tempfile.TemporaryDirectory(prefix="reidkit_bench_mixed_") as tmp:
        folder = Path(tmp)
        store = build_store(folder, n, crops)
        initial = set(GalleryStore(store).ids().tolist())
        port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-m", "reidkit", "serve", str(store), "--port", str(port),
                                 "--workers", str(workers), "--metadata", "market1501"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        extra = folder / "extract"
        extra.mkdir()
        for i in range(extract_images):
            (extra / f"9{i:03d}_c7s1_{i:06d}_00.png").write_bytes(noise_crop(10_000 + i))
        stop = time.time() + seconds
        lock = threading.Lock()
        search_ms: list[float] = []
        add_ms: list[float] = []
        visible_ms: list[float] = []
        acknowledged: set[int] = set()
        errors: list[str] = []

        def searcher(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                while time.time() < stop:
                    t0 = time.perf_counter()
                    r = http.get(f"/api/items/{rng.randrange(1, n + 1)}/similar?k=20")
                    with lock:
                        (search_ms.append(1000 * (time.perf_counter() - t0)) if r.status_code == 200
                         else errors.append(f"search {r.status_code} {r.text[:100]}"))

        def adder(seed: int) -> None:
            i = 0
            while time.time() < stop:
                data = noise_crop(seed * 100_000 + i)
                i += 1
                t0 = time.perf_counter()
                r = httpx.post(f"http://127.0.0.1:{port}/api/items", files={"images": ("c.png", data, "image/png")},
                               data={"camera": "8"}, timeout=60)
                if r.status_code != 200:
                    with lock:
                        errors.append(f"add {r.status_code} {r.text[:100]}")
                    continue
                item = r.json()["ids"][0]
                done = time.perf_counter()
                while httpx.get(f"http://127.0.0.1:{port}/api/items/{item}", timeout=60).status_code != 200:
                    if time.perf_counter() - done > 5:
                        break
                with lock:
                    add_ms.append(1000 * (done - t0))
                    visible_ms.append(1000 * (time.perf_counter() - done))
                    acknowledged.add(item)
        threads = [threading.Thread(target=searcher, args=(i,)) for i in range(clients)]
        threads += [threading.Thread(target=adder, args=(i + 1,)) for i in range(adders)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        extract = subprocess.run([sys.executable, "-m", "reidkit", "extract", str(extra), "--add-to", str(store),
                                  "--no-progress", "--device", "cpu"], env=env, capture_output=True, text=True)
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        proc.terminate()
        proc.wait(timeout=60)
        final = GalleryStore(store)
        held = set(final.ids().tolist())
        extracted = {str(p.resolve()) for p in extra.iterdir()}
        extract_held = final.known_paths(sorted(extracted))
        expected = initial | acknowledged
        exact = expected <= held and extract_held == extracted and len(held) == len(expected) + len(extracted)
        pick = lambda xs, q: round(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None  # noqa: E731
        return {"images": n, "workers": workers, "search_clients": clients, "adders": adders,
                "seconds": round(wall, 1), "searches": len(search_ms), "search_p50_ms": pick(search_ms, 0.5),
                "search_p99_ms": pick(search_ms, 0.99), "adds_acknowledged": len(acknowledged),
                "add_p50_ms": pick(add_ms, 0.5), "visible_in_any_worker_max_ms": pick(visible_ms, 1.0),
                "extract_rc": extract.returncode, "extract_images": len(extract_held), "errors": len(errors),
                "first_error": errors[0] if errors else None,
                "store_holds_exactly_every_acknowledged_item": exact}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="per client and kind of request")
    p.add_argument("--seconds", type=float, default=60, help="each kind of request stops after this")
    p.add_argument("--index", nargs="+", default=["hnsw", "flat"])
    p.add_argument("--threads", type=int, default=2, help="the server's threads")
    p.add_argument("--mixed", action="store_true", help="instead: searches, API adds and an extract --add-to at "
                   "once against serve --workers on a gallery store (issue 49 C)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--adders", type=int, default=2)
    p.add_argument("--extract-images", type=int, default=40)
    args = p.parse_args()
    crops = sorted((SHARED / "cuhk03" / "labeled" / "val").glob("*.jpg"))[:20]
    if not crops:
        raise SystemExit(f"no CUHK03 crops under {SHARED} (the real data beside the checkout)")
    if args.mixed:
        print(json.dumps(mixed_load(args.images, args.clients, args.adders, args.seconds, args.workers,
                                    args.extract_images, crops), indent=1))
        return
    upload = crops[0].read_bytes()
    rows = []
    with tempfile.TemporaryDirectory(prefix="reidkit_bench_serve_") as tmp:
        for kind in args.index:
            t0 = time.perf_counter()
            gallery = build_gallery(Path(tmp), args.images, kind, crops)
            built = time.perf_counter() - t0
            port = free_port()
            proc = serve(gallery, port, args.threads)
            try:
                for request in ("item", "item+camera", "upload"):
                    stats = load(port, request, args.images, args.clients, args.requests, args.seconds, upload)
                    rows.append({"index": kind, "request": request, "build_s": round(built, 1), **stats})
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(f"\n{args.images:,} images x 512, {args.clients} clients, up to {args.requests} requests each per kind, "
          f"server {args.threads} threads")
    print("| index | request | p50 ms | p99 ms | requests/s | requests | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['index']} | {r['request']} | {r['p50_ms']} | {r['p99_ms']} | {r['requests_per_s']} | "
              f"{r['requests']} | {r['errors']} |")


if __name__ == "__main__":
    main()
