"""Learning-rate schedules stepped once per epoch: linear warmup, then multi-step, cosine or plateau.

Warmup (BoT): ``factor = warmup_factor * (1 - a) + a`` with ``a = t / warmup_epochs``, where ``t`` is the
schedule's epoch count: with ``step_at: epoch_end`` (the default, torchreid's) the 0-based epoch itself, so the first
epoch trains at ``warmup_factor * lr``; with ``step_at: epoch_start`` (BoT's code, whose scheduler steps as each
epoch starts) the 0-based epoch + 1, so 1-based epoch ``e`` trains at ``factor(e)``: full lr at epoch
``warmup_epochs`` and the drops at the milestones themselves (40 and 70 in BoT).
"""
from __future__ import annotations

import bisect
import math

import torch

from ..config import ScheduleConfig


class WarmupScheduler:
    """Sets every group's lr to ``base_lr * factor(epoch)``; ``plateau`` also watches a metric."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_epochs: int):
        self.optimizer, self.cfg, self.total = optimizer, cfg, total_epochs
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.plateau_scale, self.best, self.bad_epochs = 1.0, -math.inf, 0
        self.epoch = 0

    def factor(self, epoch: int) -> float:
        c = self.cfg
        if epoch < c.warmup_epochs:
            a = epoch / c.warmup_epochs
            return c.warmup_factor * (1 - a) + a
        if c.kind == "multistep":
            return c.gamma ** bisect.bisect_right(sorted(c.milestones), epoch)
        if c.kind == "cosine":
            span = max(1, self.total - c.warmup_epochs)
            progress = min(1.0, (epoch - c.warmup_epochs) / span)
            return 0.5 * (1 + math.cos(math.pi * progress))
        return self.plateau_scale

    def set_epoch(self, epoch: int) -> None:
        """Set the learning rates for ``epoch`` (0-based)."""
        self.epoch = epoch
        t = epoch + 1 if self.cfg.step_at == "epoch_start" else epoch
        f = self.factor(t)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = max(base * f, self.cfg.min_lr) if t >= self.cfg.warmup_epochs else base * f

    def observe(self, metric: float) -> None:
        """For ``plateau``: after ``patience`` evaluations without improvement, multiply by gamma."""
        if self.cfg.kind != "plateau" or self.epoch < self.cfg.warmup_epochs:
            return
        if metric > self.best:
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.cfg.patience:
                self.plateau_scale *= self.cfg.gamma
                self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best": float(self.best),
                "bad_epochs": self.bad_epochs, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale, self.best = float(state["plateau_scale"]), float(state["best"])
        self.bad_epochs, self.epoch = int(state["bad_epochs"]), int(state["epoch"])
