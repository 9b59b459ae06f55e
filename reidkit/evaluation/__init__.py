"""Exact evaluation: distances, mAP / CMC / mINP, CUHK03 single-shot, re-ranking."""
from .distance import compute_distance
from .metrics import RankResult, evaluate_features, evaluate_rank
from .rerank import re_ranking, re_ranking_features
from .single_shot import evaluate_single_shot

__all__ = [
    "compute_distance", "evaluate_rank", "evaluate_features", "evaluate_single_shot",
    "re_ranking", "re_ranking_features", "RankResult",
]
