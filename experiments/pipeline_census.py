"""Every image of reidkit's and of torchreid's training epochs, identified and measured.

    python -m experiments.pipeline_census [--recipe amsgrad --seed 0 --epochs 1 --check-cache]

For a recipe without cropping (``amsgrad``: torchreid's default softmax recipe; flip and
random erasing only), each augmented image of an epoch of reidkit's ``TrainLoader`` and of
torchreid 0.2.5's ``ImageDataManager`` (as ``bench/bench_osnet_cuhk03.py`` builds both) is
matched to its decoded source image: the pixels not erased must equal the normalised source
or its mirror image.  Per side it prints how many images the epoch held (and how many
distinct), the share identified and correctly labelled, the share flipped, the share erased,
the erased rectangle's area, height and width, and the batches' per-channel mean and standard
deviation.  ``--check-cache`` first compares reidkit's decoded 256x128 train, query and gallery
images, every one, with torchreid's ``read_image`` + ``Resize`` of the same file.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from bench.bench_osnet_cuhk03 import RECIPES
from bench.bench_train import CUHK03
from bench.peers import torchreid_cuhk03_datamanager, torchreid_sampler, torchreid_transforms
from reidkit.data import build_dataset
from reidkit.data.cache import ImageCache
from reidkit.data.transforms import erasing_value, normalize
from reidkit.engine.pipeline import build_train_loader
from reidkit.engine.trainer import seed_everything
from reidkit.recipe_files import load_recipe


def check_cache(dataset, size: tuple[int, int]) -> None:
    """reidkit's decoded images against torchreid's per-image decoding, every image of every split."""
    resize = T.Resize(size)
    for split in ("train", "query", "gallery"):
        records = getattr(dataset, split)
        cache = ImageCache(records, size, progress=False)
        differ = largest = 0
        for i, record in enumerate(records):
            theirs = np.asarray(resize(Image.open(record.path).convert("RGB")), dtype=np.int16).transpose(2, 0, 1)
            gap = int(np.abs(cache.images[i].numpy().astype(np.int16) - theirs).max())
            differ, largest = differ + (gap > 0), max(largest, gap)
        print(f"cache {split}: {len(records)} images, {differ} differ from torchreid's, largest difference {largest}")


class Census:
    """Running counts over one side's augmented images."""

    def __init__(self, cache: ImageCache, fill: torch.Tensor):
        self.cache, self.fill = cache, fill
        self.pids = cache.pids()
        self.seen: set[int] = set()
        self.images = self.identified = self.labelled = self.flipped = 0
        self.boxes: list[tuple[int, int, int]] = []      # height, width, erased pixels
        self.channel_sum = torch.zeros(3, dtype=torch.float64)
        self.channel_sq = torch.zeros(3, dtype=torch.float64)
        self.batches = 0

    def add(self, images: torch.Tensor, indices: Iterable[int], pids: torch.Tensor) -> None:
        indices = list(indices)
        self.labelled += int((pids.numpy() == self.pids[indices]).sum())
        self.channel_sum += images.double().mean((0, 2, 3))
        self.channel_sq += images.double().pow(2).mean((0, 2, 3))
        self.batches += 1
        for image, index in zip(images, indices):
            self.images += 1
            self.seen.add(index)
            source = normalize(self.cache.images[index:index + 1])[0]
            erased = (image == self.fill).all(0)
            kept = ~erased
            as_is = float((image - source).abs()[:, kept].max())
            mirrored = float((image - source.flip(-1)).abs()[:, kept].max())
            self.identified += min(as_is, mirrored) < 1e-4
            self.flipped += mirrored < as_is
            if erased.any():
                ys, xs = torch.nonzero(erased, as_tuple=True)
                self.boxes.append((int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1, int(erased.sum())))

    def report(self, name: str, size: tuple[int, int]) -> None:
        boxes = np.array(self.boxes, dtype=np.float64).reshape(-1, 3)
        area = boxes[:, 0] * boxes[:, 1] / (size[0] * size[1])
        mean = self.channel_sum / self.batches
        sd = (self.channel_sq / self.batches - mean ** 2).sqrt()
        n = self.images
        rectangles = np.mean(boxes[:, 2] == boxes[:, 0] * boxes[:, 1])
        print(f"{name}: {n} images ({len(self.seen)} distinct), identified {self.identified / n:.4f}, "
              f"labels right {self.labelled / n:.4f}, flipped {self.flipped / n:.4f}, "
              f"erased {len(boxes) / n:.4f} (rectangles {rectangles:.3f}; area {area.mean():.4f} +- {area.std():.4f}, "
              f"height {boxes[:, 0].mean():.1f}, width {boxes[:, 1].mean():.1f}); "
              f"channel mean {np.round(mean.numpy(), 4)}, sd {np.round(sd.numpy(), 4)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="amsgrad")
    parser.add_argument("--data", default=CUHK03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="torchreid's loader workers")
    parser.add_argument("--check-cache", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(RECIPES[args.recipe], [f"data.root={args.data}", f"train.seed={args.seed}",
                                                "data.val_identities=null"])     # as torchreid: every identity
    d, a = recipe.data, recipe.augment
    if (a.crop == "enlarge" or a.padding > 0) and a.crop_prob > 0:
        parser.error(f"recipe {args.recipe!r} crops its images (augment.crop={a.crop}, crop_prob={a.crop_prob}): "
                     "a cropped image cannot be matched to its source; use --recipe amsgrad")
    size = (d.height, d.width)
    dataset = build_dataset(d.dataset, args.data)
    if args.check_cache:
        check_cache(dataset, size)
    cache = ImageCache(dataset.train, size, progress=False)
    fill = torch.as_tensor(erasing_value(a), dtype=torch.get_default_dtype()).reshape(-1, 1, 1).expand(3, 1, 1)

    ours, loader = Census(cache, fill), build_train_loader(recipe, cache)
    finish = loader._finish
    batch_indices: list[list[int]] = []

    def finish_and_note(images, indices, share):
        batch_indices.append(list(indices))
        return finish(images, indices, share)
    loader._finish = finish_and_note             # type: ignore[method-assign]
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            ours.add(batch.images, batch_indices[-1], batch.pids)
    ours.report("reidkit", size)

    seed_everything(args.seed)
    manager = torchreid_cuhk03_datamanager(args.data, d.height, d.width, d.batch_size, d.num_instances, args.workers,
                                           torchreid_transforms(recipe), torchreid_sampler(recipe))
    where = {record.path: i for i, record in enumerate(cache.records)}
    theirs = Census(cache, fill)
    for _ in range(args.epochs):
        for data in manager.train_loader:
            theirs.add(data["img"], (where[p] for p in data["impath"]), data["pid"])
    theirs.report("torchreid", size)


if __name__ == "__main__":
    main()
