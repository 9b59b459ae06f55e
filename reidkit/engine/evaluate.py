"""Evaluate a model on the query and gallery of a dataset."""
from __future__ import annotations

import torch.nn as nn

from ..config import EvalConfig
from ..data.cache import ImageCache
from ..evaluation import RankResult, evaluate_features
from .features import extract_features


def evaluate_model(model: nn.Module, query: ImageCache, gallery: ImageCache, cfg: EvalConfig,
                   batch_size: int = 128, amp: bool = False, return_features: bool = False,
                   channels_last: bool = False):
    """Extract query/gallery embeddings and compute mAP / CMC / mINP (optionally re-ranked)."""
    qf = extract_features(model, query, batch_size, cfg.flip, amp, channels_last)
    gf = extract_features(model, gallery, batch_size, cfg.flip, amp, channels_last)
    result: RankResult = evaluate_features(qf, gf, query.pids(), gallery.pids(), query.camids(),
                                           gallery.camids(), metric=cfg.metric,
                                           max_rank=min(cfg.max_rank, len(gallery)), rerank=cfg.rerank)
    return (result, qf, gf) if return_features else result
