"""Evaluate a model on the query and gallery of a dataset, alone or across data-parallel processes."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from ..config import EvalConfig, Recipe
from ..data import build_dataset
from ..data.cache import ImageCache, decode_each
from ..data.samplers import shard_bounds
from ..evaluation import RankResult, compute_distance, evaluate_features, evaluate_single_shot
from ..evaluation.expansion import database_augment, query_expand
from .distributed import ONE_PROCESS, DistEnv, broadcast_object, gather_rows
from .features import extract_features


def test_cache_jobs(recipe: Recipe, dataset, progress: bool = True,
                    env: DistEnv = ONE_PROCESS) -> dict[str, Callable[[], ImageCache]]:
    """``{"query": ..., "gallery": ...}``: what decodes each split (this process's share of it), for
    :func:`~reidkit.data.cache.decode_each`."""
    d = recipe.data
    def job(records: list, split: str) -> Callable[[], ImageCache]:
        return lambda: ImageCache(_share(records, env), (d.height, d.width), skip_bad_images=d.skip_bad_images,
                                  workers=d.decode_workers, progress=progress and env.is_main, desc=split)
    return {"query": job(dataset.query, "query"), "gallery": job(dataset.gallery, "gallery")}


def build_test_caches(recipe: Recipe, dataset, progress: bool = True,
                      env: DistEnv = ONE_PROCESS) -> tuple[ImageCache, ImageCache]:
    """The decoded query and gallery images (with several processes, this process's share of each); the bad
    files of both are listed in one error."""
    caches = decode_each(test_cache_jobs(recipe, dataset, progress, env))
    return caches["query"], caches["gallery"]


def _share(records: list, env: DistEnv) -> list:
    if not env.enabled:
        return records
    start, end = shard_bounds(len(records), 1, env.rank, env.world_size)
    return records[start:end]


def _counts(n: int, env: DistEnv) -> tuple[int, ...]:
    return tuple(b - a for a, b in (shard_bounds(n, 1, r, env.world_size) for r in range(env.world_size)))


def evaluate_model(model: nn.Module, query: ImageCache, gallery: ImageCache, cfg: EvalConfig,
                   batch_size: int = 128, amp: str | bool = "off", return_features: bool = False,
                   channels_last: bool = False, device: torch.device | str | None = None,
                   env: DistEnv = ONE_PROCESS, dataset=None, progress: bool = False):
    """Extract query/gallery embeddings and compute mAP / CMC / mINP (optionally re-ranked).

    Distances and ranking run where the features are (on a GPU when the model is on one).
    With several processes (``env``), each extracts its share (``query`` and ``gallery``
    from :func:`build_test_caches`), the features are gathered, the first process ranks
    them (``dataset`` gives every image's identity and camera) and every process
    receives the result.
    """
    show = progress and env.is_main
    qf = extract_features(model, query, batch_size, cfg.flip, amp, channels_last, device, show, "query features")
    gf = extract_features(model, gallery, batch_size, cfg.flip, amp, channels_last, device, show, "gallery features")
    if env.enabled:
        if dataset is None:
            raise ValueError("evaluating across processes needs the dataset's identities and cameras")
        qf = gather_rows(qf, _counts(len(dataset.query), env))
        gf = gather_rows(gf, _counts(len(dataset.gallery), env))
        q_pids, g_pids = np.array([r.pid for r in dataset.query]), np.array([r.pid for r in dataset.gallery])
        q_cams, g_cams = np.array([r.camid for r in dataset.query]), np.array([r.camid for r in dataset.gallery])
    else:
        q_pids, g_pids, q_cams, g_cams = query.pids(), gallery.pids(), query.camids(), gallery.camids()
    if cfg.database_augmentation > 1:                 # on the gathered features: the same on every process
        gf = database_augment(gf, cfg.database_augmentation, cfg.expansion_alpha)
    if cfg.query_expansion > 0:
        qf = query_expand(qf, gf, cfg.query_expansion, cfg.expansion_alpha)
    result = rank_features(qf, gf, q_pids, g_pids, q_cams, g_cams, cfg) if env.is_main else None
    result = broadcast_object(result)
    return (result, qf, gf) if return_features else result


def rank_features(qf: torch.Tensor, gf: torch.Tensor, q_pids, g_pids, q_cams, g_cams, cfg: EvalConfig) -> RankResult:
    """mAP / CMC of query and gallery embeddings under the recipe's protocol (``eval.protocol``: the Market-1501
    rule, optionally re-ranked, or CUHK03's single-shot CMC), its metric and max rank: every row of one evaluation
    (each model, an ensemble) goes through here, so they share one protocol."""
    if cfg.protocol == "single_shot" and cfg.rerank:
        raise ValueError("eval.protocol=single_shot ranks plain distances: set eval.rerank=false")
    # plain distances, for the single-shot protocol and for verification (a deployment thresholds them)
    plain = compute_distance(qf, gf, cfg.metric).cpu() if cfg.protocol == "single_shot" or cfg.verification else None
    if cfg.protocol == "single_shot":
        result = evaluate_single_shot(plain, q_pids, g_pids, q_cams, g_cams,
                                      max_rank=min(cfg.max_rank, gf.shape[0]), num_repeats=cfg.single_shot_trials)
    else:
        result = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=cfg.metric,
                                   max_rank=min(cfg.max_rank, gf.shape[0]), rerank=cfg.rerank)
    if cfg.verification:
        from ..evaluation.verification import evaluate_verification
        result.verification = evaluate_verification(plain, q_pids, g_pids, q_cams, g_cams)
    return result


def load_other_datasets(recipe: Recipe) -> list:
    """The datasets of the recipe's ``eval.datasets`` (their layout checked now: before training, not after)."""
    return [build_dataset(spec.dataset, spec.root, **spec.options) for spec in recipe.eval.datasets]


def evaluate_other_datasets(model: nn.Module, recipe: Recipe, device: torch.device | str | None = None,
                            env: DistEnv = ONE_PROCESS, progress: bool = False,
                            datasets: list | None = None) -> dict[str, RankResult]:
    """The cross-dataset protocol: ``model`` on each of the recipe's ``eval.datasets`` (query / gallery, at the
    recipe's input size and with its evaluation settings), keyed by dataset name (and root, if a name repeats);
    ``datasets``: those of :func:`load_other_datasets`, when already loaded."""
    names = [spec.dataset for spec in recipe.eval.datasets]
    results: dict[str, RankResult] = {}
    loaded = datasets if datasets is not None else load_other_datasets(recipe)
    for spec, dataset in zip(recipe.eval.datasets, loaded, strict=True):
        query, gallery = build_test_caches(recipe, dataset, progress, env)
        label = spec.dataset if names.count(spec.dataset) == 1 else f"{spec.dataset} ({spec.root})"
        results[label] = evaluate_model(model, query, gallery, recipe.eval, recipe.data.test_batch_size,
                                        recipe.train.amp, channels_last=recipe.train.channels_last, device=device,
                                        env=env, dataset=dataset, progress=progress)
    return results
