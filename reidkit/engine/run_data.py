"""The images a training run reads: the recipe's dataset with its training identities hidden or a validation split
held out, and every split decoded once, before epoch 1, so that bad files anywhere are named together."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from ..config import Recipe
from ..data.cache import ImageCache, decode_each
from ..data.combine import build_recipe_dataset
from ..data.records import ReIDDataset, hide_training_labels
from ..data.validation import ValidationSplit, hold_out_identities
from .distributed import DistEnv
from .evaluate import test_cache_jobs


def prepare_dataset(recipe: Recipe) -> tuple[ReIDDataset, np.ndarray | None, ValidationSplit | None]:
    """The recipe's dataset, the true training identities when ``data.labels=hidden`` (they leave the dataset here,
    never read by training or selection; kept for the pieces' diagnostics), and the validation split."""
    d = recipe.data
    dataset = build_recipe_dataset(d)
    hidden: np.ndarray | None = None
    if d.labels == "hidden":
        dataset, hidden = hide_training_labels(dataset)
    elif not dataset.identities:
        raise ValueError(f"{dataset.name} has no identity labels: set data.labels=hidden and an unsupervised "
                         "method (docs/UNSUPERVISED.md)")
    validation = None
    if d.val_identities is not None:
        validation = hold_out_identities(dataset.train, d.val_identities, recipe.train.seed)
        dataset = dataclasses.replace(dataset, train=validation.train)
    return dataset, hidden, validation


def validation_dataset(dataset: ReIDDataset, validation: ValidationSplit) -> ReIDDataset:
    """The held-out identities as a query / gallery dataset."""
    return ReIDDataset(f"{dataset.name} validation", dataset.root, [], validation.query, validation.gallery)


@dataclasses.dataclass
class RunImages:
    """The decoded splits: train (whole in every process), test and validation (this process's share)."""

    train: ImageCache
    test: tuple[ImageCache, ImageCache] | None
    validation: tuple[ImageCache, ImageCache] | None


def decode_run_images(recipe: Recipe, dataset: ReIDDataset, validation: ValidationSplit | None, env: DistEnv,
                      progress: bool) -> RunImages:
    """Every split a run reads, decoded at once (a dataset without query / gallery has no test images)."""
    d = recipe.data
    workers = d.decode_workers or max(1, (os.cpu_count() or 1) // env.local_world_size)
    has_test = bool(dataset.query) and bool(dataset.gallery)
    caches = decode_each({"train": lambda: ImageCache(dataset.train, (d.height, d.width), mmap_path=d.cache_file,
                                                      skip_bad_images=d.skip_bad_images, workers=workers,
                                                      progress=progress and env.is_main, desc="train")}
                         | (test_cache_jobs(recipe, dataset, progress, env) if has_test else {})
                         | ({f"val {k}": v for k, v in test_cache_jobs(recipe, validation_dataset(dataset, validation),
                                                                       progress, env).items()}
                            if validation is not None else {}))
    return RunImages(caches["train"], (caches["query"], caches["gallery"]) if has_test else None,
                     (caches["val query"], caches["val gallery"]) if validation is not None else None)
