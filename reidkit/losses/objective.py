"""The training objective every recipe has: identity loss + triplet loss, weighted by the recipe.

Everything a method adds beyond these two (center loss, adaptive L2, distillation, ...)
is a training piece (:mod:`reidkit.pieces`) in its method's module (:mod:`reidkit.methods`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn as nn

from ..config import LossConfig, Recipe
from ..numerics import full_precision
from ..sections import MINERS, load_methods
from .cross_entropy import CrossEntropyLabelSmooth
from .margin import MarginIdentityLoss
from .miners import BatchHardMiner
from .triplet import TripletLoss


def build_miner(recipe: Recipe) -> BatchHardMiner:
    """The recipe's ``loss.miner``, built from its recipe section when it owns one."""
    load_methods()
    name = recipe.loss.miner
    return MINERS[name](recipe.section(name) if name in MINERS.configs else None)


class ReIDObjective(nn.Module):
    """``ce_weight * label-smoothed CE + triplet_weight * triplet``; a zero weight switches a term off.  The CE
    is on the classifier's logits (``id_loss: softmax``) or on its cosines with a margin (cosface, arcface,
    circle: :mod:`reidkit.losses.margin`)."""

    def __init__(self, cfg: LossConfig, miner: BatchHardMiner | None = None):
        super().__init__()
        if miner is None and cfg.miner != "batch_hard":
            raise ValueError(f"loss.miner={cfg.miner}: pass its miner (build_miner(recipe)) to the objective")
        self.cfg = cfg
        self.miner: BatchHardMiner = miner if miner is not None else BatchHardMiner()
        self.id_loss: nn.Module = (CrossEntropyLabelSmooth(cfg.label_smoothing) if cfg.id_loss == "softmax" else
                                   MarginIdentityLoss(cfg.id_loss, cfg.id_loss_scale, cfg.id_loss_margin,
                                                      cfg.label_smoothing))
        self.triplet = TripletLoss(cfg.triplet_margin, self.miner) if cfg.triplet_weight > 0 else None

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], features: torch.Tensor | Sequence[torch.Tensor],
                pids: torch.Tensor, camids: torch.Tensor, logit_pids: torch.Tensor | None = None,
                id_scale: float = 1.0, branch_weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
        """Weighted terms by name; their sum is the loss to minimise.

        A multi-branch model gives one ``logits`` and one ``features`` per branch
        (lists); each term is then summed over the branches, every branch
        weighted 1 (Ni et al. 2020) unless the model gives ``branch_weights``
        (TransReID's JPM: 1/2 global, 1/(2K) each local).  Under data parallelism ``features``,
        ``pids`` and ``camids`` cover the global batch while ``logits`` are this
        process's share, labelled ``logit_pids`` and weighted ``id_scale`` (its
        share of the batch times the number of processes).
        """
        if isinstance(logits, torch.Tensor):
            logits, features = [logits], [cast(torch.Tensor, features)]
        if len(logits) != len(features):
            raise ValueError(f"{len(logits)} logits but {len(features)} feature tensors from the model")
        logit_pids = pids if logit_pids is None else logit_pids
        weights = [1.0] * len(logits) if branch_weights is None else list(branch_weights)
        if len(weights) != len(logits):
            raise ValueError(f"{len(weights)} branch weights for {len(logits)} branches")
        terms = {}
        if self.cfg.ce_weight > 0:
            terms["id"] = self.cfg.ce_weight * id_scale * sum(w * self.id_loss(full_precision(x), logit_pids)
                                                              for w, x in zip(weights, logits))
        if self.triplet is not None:
            terms["triplet"] = self.cfg.triplet_weight * sum(w * self.triplet(full_precision(f), pids, camids)
                                                             for w, f in zip(weights, features))
        return terms
