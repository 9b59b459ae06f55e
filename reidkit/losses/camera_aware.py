"""Camera-label based batch-hard mining (C. Jeong, "Deep Person Re-Identification with Camera-Label Based
Batch Hard Mining", 2017; docs/CAMERA_MINING.md).

Early in training the embedding cannot tell which pairs are hard, but camera
labels can: a positive seen by a *different* camera is probably harder (other
angle, light, background) and a negative seen by the *same* camera is probably
harder (similar conditions).  Before the batch-hard max/min, the distances are
biased:

* positives: same-camera positive distances are lowered by ``bias_p`` (the
  seed's example: 3 - 2 = 1), so a different-camera positive wins the max;
* negatives: different-camera negative distances are *raised* by ``bias_n``,
  so a same-camera negative wins the min.  The seed's slide says "increase the
  distance between the images of same camera" (2 + 2 = 4), which, applied to
  same-camera negatives before a min, would steer selection *away* from them
  and contradict its own rationale; reidkit follows the rationale.

``bias = k * std(D) / (1 + m * t)``, where ``D`` is the positive-masked
(resp. negative-masked) distance matrix and the standard deviation runs over
the entries inside the mask only (the positive pairs, resp. the negative
pairs) rather than over the zero-filled matrix; ``t`` is the iteration or the
epoch.  Schedules: ``decay`` (the seed), ``constant``, ``early`` (constant for
the first ``early_epochs`` epochs, then off), ``off``.  The bias only steers
which pair is selected; the loss uses the true distances of the selected pairs.
With ``bias_in_loss=True`` the biased distances also enter the loss (the
selected same-camera positives count as closer, different-camera negatives as
farther), which changes the gradient's margin, not only the selection.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import torch

from .miners import BatchHardMiner, Triplets

SCHEDULES = ("decay", "constant", "early", "off")


@dataclass
class CameraMiningStats:
    """What the last call selected: fractions in [0, 1] and the bias values."""

    cross_camera_positives: float
    same_camera_negatives: float
    bias_positive: float
    bias_negative: float


class CameraAwareBatchHardMiner(BatchHardMiner):
    """Batch-hard mining with a decaying camera bias (k=5, m=0.1: the seed's best)."""

    def __init__(self, k: float = 5.0, m: float = 0.1, schedule: str = "decay", early_epochs: int = 10,
                 time_unit: str = "iteration", bias_in_loss: bool = False):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if time_unit not in ("iteration", "epoch"):
            raise ValueError(f"time_unit must be 'iteration' or 'epoch', got {time_unit!r}")
        self.k, self.m, self.schedule = k, m, schedule
        self.early_epochs, self.time_unit, self.bias_in_loss = early_epochs, time_unit, bias_in_loss
        self.iteration, self.epoch = 0, 0
        self.stats: CameraMiningStats | None = None
        self.unread: deque[CameraMiningStats] = deque(maxlen=64)   # every call's stats since take_stats()

    def set_time(self, iteration: int, epoch: int) -> None:
        """Tell the miner where training is (the trainer calls this every iteration)."""
        self.iteration, self.epoch = iteration, epoch

    def scale(self) -> float:
        """The factor multiplying ``std(D)``: ``k / (1 + m t)`` for ``decay``."""
        if self.schedule == "off" or (self.schedule == "early" and self.epoch >= self.early_epochs):
            return 0.0
        if self.schedule in ("constant", "early"):
            return self.k
        t = self.iteration if self.time_unit == "iteration" else self.epoch
        return self.k / (1.0 + self.m * t)

    def __call__(self, dist: torch.Tensor, pids: torch.Tensor, camids: torch.Tensor | None = None) -> Triplets:
        if camids is None:
            raise ValueError("camera-aware mining needs the camera label of every image in the batch")
        d = dist.detach()
        pos_mask, neg_mask = self.masks(d, pids)
        same_cam = camids.unsqueeze(0) == camids.unsqueeze(1)
        s = self.scale()
        bias_p = s * float(d[pos_mask].std()) if s and pos_mask.sum() > 1 else 0.0
        bias_n = s * float(d[neg_mask].std()) if s and neg_mask.sum() > 1 else 0.0
        pos_offset = torch.where(same_cam, -bias_p, 0.0)       # favour different-camera positives
        neg_offset = torch.where(same_cam, 0.0, bias_n)        # favour same-camera negatives
        positive = (d + pos_offset).masked_fill(~pos_mask, float("-inf")).argmax(dim=1)
        negative = (d + neg_offset).masked_fill(~neg_mask, float("inf")).argmin(dim=1)
        rows = torch.arange(len(pids), device=d.device)
        if self.recording:
            self.stats = CameraMiningStats(
                cross_camera_positives=float((~same_cam[rows, positive]).float().mean()),
                same_camera_negatives=float(same_cam[rows, negative].float().mean()),
                bias_positive=bias_p, bias_negative=bias_n)
            self.unread.append(self.stats)
        if self.bias_in_loss:
            return Triplets(positive, negative, pos_offset[rows, positive], neg_offset[rows, negative])
        return Triplets(positive, negative)

    def take_stats(self) -> dict[str, float]:
        """The mean of the statistics of every call since the last ``take_stats`` (a multi-branch model's
        branches each call the miner once a step), then forgets them."""
        if not self.unread:
            return {}
        calls = [asdict(s) for s in self.unread]
        self.unread.clear()
        return {k: sum(c[k] for c in calls) / len(calls) for k in calls[0]}
