"""The training objective: ID loss + triplet loss + center loss (+ distillation), weighted by the recipe."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..config import LossConfig
from ..losses import (CameraAwareBatchHardMiner, CenterLoss, CrossEntropyLabelSmooth, FeatureDistillationLoss,
                      TripletLoss, unweight_center_gradients)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


class BoTObjective(nn.Module):
    """Weighted sum of the BoT losses; a zero weight switches a term off."""

    def __init__(self, cfg: LossConfig, num_classes: int, feature_dim: int, miner=None):
        super().__init__()
        self.cfg = cfg
        if miner is None and cfg.miner == "camera_aware":
            b = cfg.camera_bias
            miner = CameraAwareBatchHardMiner(b.k, b.m, b.schedule, b.early_epochs, b.time_unit, b.bias_in_loss)
        self.miner = miner
        self.id_loss = CrossEntropyLabelSmooth(cfg.label_smoothing)
        self.triplet = TripletLoss(cfg.triplet_margin, miner) if cfg.triplet_weight > 0 else None
        self.center = CenterLoss(num_classes, feature_dim) if cfg.center_weight > 0 else None
        self.distill = FeatureDistillationLoss() if cfg.distill.teacher else None
        self._mining: dict[str, float] = {}

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], features: torch.Tensor | Sequence[torch.Tensor],
                pids: torch.Tensor, camids: torch.Tensor,
                teacher_features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Weighted terms by name; their sum is the loss to minimise.

        A multi-branch model gives one ``logits`` and one ``features`` per branch
        (lists); each term is then summed over the branches, every branch
        weighted 1 (Ni et al. 2020).  ``teacher_features``: the frozen teacher's
        embeddings of the same batch, for the distillation term.
        """
        if isinstance(logits, torch.Tensor):
            logits, features = [logits], [features]
        if len(logits) != len(features):
            raise ValueError(f"{len(logits)} logits but {len(features)} feature tensors from the model")
        if self.center is not None and len(features) > 1:
            raise ValueError("center loss needs one embedding; set loss.center_weight=0 for multi-branch models")
        terms = {"id": self.cfg.ce_weight * sum(self.id_loss(x.float(), pids) for x in logits)}
        if self.triplet is not None:
            per_branch, stats = [], []
            for f in features:
                per_branch.append(self.triplet(f.float(), pids, camids))
                if getattr(self.miner, "stats", None) is not None:
                    stats.append(vars(self.miner.stats))
            terms["triplet"] = self.cfg.triplet_weight * sum(per_branch)
            self._mining = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]} if stats else {}
        if self.center is not None:
            terms["center"] = self.cfg.center_weight * self.center(features[0].float(), pids)
        if self.distill is not None:
            if teacher_features is None or len(features) > 1:
                raise ValueError("distillation needs the teacher's features and a single-branch student")
            terms["distill"] = self.cfg.distill.weight * self.distill(features[0], teacher_features)
        return terms

    def set_time(self, iteration: int, epoch: int) -> None:
        """Forward the training time to a miner that uses it."""
        if hasattr(self.miner, "set_time"):
            self.miner.set_time(iteration, epoch)

    def diagnostics(self) -> dict[str, float]:
        """The miner's statistics of the last batch, averaged over the branches (empty for plain batch-hard)."""
        return dict(self._mining)

    def before_center_step(self) -> None:
        if self.center is not None:
            unweight_center_gradients(self.center, self.cfg.center_weight)


def check_finite(terms: dict[str, torch.Tensor], where: str) -> None:
    values = {k: float(v.detach()) for k, v in terms.items()}
    if not all(torch.isfinite(torch.tensor(list(values.values())))):
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise NonFiniteLossError(f"non-finite loss at {where}: {shown}. Lower the learning rate, "
                                 "check the data, or resume from the last checkpoint.")
