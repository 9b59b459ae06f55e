"""Input pipeline: images/s delivered to the training loop, reidkit vs torchreid 0.2.5.

    python -m bench.bench_data [--height 256 --width 128]

One epoch of CUHK03-labeled train with the BoT augmentation (flip, pad/crop or
torchreid's random translation, random erasing), P=16 x K=4, no model.  The
first (cold) epoch includes all decoding (reidkit decodes each image once into
its cache); the second (warm) epoch shows the steady state.  torchreid uses its
ImageDataManager with 2 workers, as it would train here.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import peers
from bench.measure import set_threads
from reidkit.data import build_dataset
from reidkit.data.cache import ImageCache
from reidkit.engine.pipeline import build_train_loader
from reidkit.recipe_files import load_recipe

CUHK03 = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cuhk03" / "labeled")


def epoch_rate(loader, key=None) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += (batch[key] if key else batch.images).shape[0]
    return n, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    set_threads(2)
    size = (args.height, args.width)
    rows = []

    t0 = time.perf_counter()
    ds = build_dataset("cuhk03_labeled", CUHK03)
    cache = ImageCache(ds.train, size, workers=4, progress=False)
    decode_s = time.perf_counter() - t0
    recipe = load_recipe(None, ["data.batch_size=64", "data.num_instances=4"])   # BoT: P=16 x K=4, its augmentation
    loader = build_train_loader(recipe, cache)
    n, s = epoch_rate(loader)
    rows.append(("reidkit", "cold (decode + epoch)", n, decode_s + s))
    loader.set_epoch(1)
    n, s = epoch_rate(loader)
    rows.append(("reidkit", "warm", n, s))

    t0 = time.perf_counter()
    dm = peers.torchreid_cuhk03_datamanager(CUHK03, args.height, args.width, 64, 4, 2,
                                            ["random_flip", "random_crop", "random_erase"])
    setup_s = time.perf_counter() - t0
    n, s = epoch_rate(dm.train_loader, "img")
    rows.append(("torchreid", "cold (setup + epoch)", n, setup_s + s))
    n, s = epoch_rate(dm.train_loader, "img")
    rows.append(("torchreid", "warm", n, s))

    print(f"\nCUHK03-labeled train, {args.height}x{args.width}, BoT augmentation, P=16 K=4")
    print(f"{'pipeline':10s} {'epoch':22s} {'images':>7s} {'seconds':>8s} {'img/s':>8s}")
    rate = {}
    for name, epoch, n, s in rows:
        rate[(name, epoch.split()[0])] = n / s
        print(f"{name:10s} {epoch:22s} {n:7d} {s:8.1f} {n / s:8.0f}")
    for phase in ("cold", "warm"):
        print(f"{phase}: reidkit / torchreid = {rate[('reidkit', phase)] / rate[('torchreid', phase)]:.1f}x")


if __name__ == "__main__":
    main()
