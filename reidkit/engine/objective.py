"""The training objective every recipe has: identity loss + triplet loss, weighted by the recipe.

Everything a method adds beyond these two (center loss, adaptive L2, distillation, ...)
is a training piece (:mod:`reidkit.pieces`) beside its method's module.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn as nn

from ..config import LossConfig
from ..losses import BatchHardMiner, CameraAwareBatchHardMiner, CrossEntropyLabelSmooth, TripletLoss
from ..numerics import full_precision


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


def build_miner(cfg: LossConfig) -> BatchHardMiner:
    """The recipe's ``loss.miner``: batch-hard, or camera-aware with ``loss.camera_bias``."""
    if cfg.miner == "camera_aware":
        b = cfg.camera_bias
        return CameraAwareBatchHardMiner(b.k, b.m, b.schedule, b.early_epochs, b.time_unit, b.bias_in_loss)
    return BatchHardMiner()


class ReIDObjective(nn.Module):
    """``ce_weight * label-smoothed CE + triplet_weight * triplet``; a zero weight switches a term off."""

    def __init__(self, cfg: LossConfig, miner: BatchHardMiner | None = None):
        super().__init__()
        self.cfg = cfg
        self.miner = miner if miner is not None else build_miner(cfg)
        self.id_loss = CrossEntropyLabelSmooth(cfg.label_smoothing)
        self.triplet = TripletLoss(cfg.triplet_margin, self.miner) if cfg.triplet_weight > 0 else None

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], features: torch.Tensor | Sequence[torch.Tensor],
                pids: torch.Tensor, camids: torch.Tensor, logit_pids: torch.Tensor | None = None,
                id_scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Weighted terms by name; their sum is the loss to minimise.

        A multi-branch model gives one ``logits`` and one ``features`` per branch
        (lists); each term is then summed over the branches, every branch
        weighted 1 (Ni et al. 2020).  Under data parallelism ``features``,
        ``pids`` and ``camids`` cover the global batch while ``logits`` are this
        process's share, labelled ``logit_pids`` and weighted ``id_scale`` (its
        share of the batch times the number of processes).
        """
        if isinstance(logits, torch.Tensor):
            logits, features = [logits], [cast(torch.Tensor, features)]
        if len(logits) != len(features):
            raise ValueError(f"{len(logits)} logits but {len(features)} feature tensors from the model")
        logit_pids = pids if logit_pids is None else logit_pids
        terms = {"id": self.cfg.ce_weight * id_scale * sum(self.id_loss(full_precision(x), logit_pids) for x in logits)}
        if self.triplet is not None:
            terms["triplet"] = self.cfg.triplet_weight * sum(self.triplet(full_precision(f), pids, camids)
                                                             for f in features)
        return terms
