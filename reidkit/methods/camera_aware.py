"""Camera-label based batch-hard mining as a method (C. Jeong 2017; docs/CAMERA_MINING.md): ``loss.miner:
camera_aware`` selects the miner of :mod:`reidkit.losses.camera_aware` with the options of the recipe section
``camera_aware``, and a piece of the same name tells it where training is and records what it picked."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import Strict
from ..losses.camera_aware import CameraAwareBatchHardMiner
from ..pieces import PieceContext, TrainingPiece, register_piece
from ..sections import register_miner


class CameraAwareConfig(Strict):
    """The recipe section ``camera_aware``: the bias ``k * std(D) / (1 + m t)`` and its schedule."""

    k: float = Field(5.0, ge=0)
    m: float = Field(0.1, ge=0)
    schedule: Literal["decay", "constant", "early", "off"] = "decay"
    early_epochs: int = Field(10, ge=0)
    time_unit: Literal["iteration", "epoch"] = "iteration"
    bias_in_loss: bool = False


@register_miner("camera_aware", config=CameraAwareConfig)
def _camera_aware_miner(cfg: CameraAwareConfig) -> CameraAwareBatchHardMiner:
    """Batch-hard mining with a decaying camera bias (Jeong 2017)."""
    return CameraAwareBatchHardMiner(cfg.k, cfg.m, cfg.schedule, cfg.early_epochs, cfg.time_unit, cfg.bias_in_loss)


class CameraAwarePiece(TrainingPiece):
    """Tells the miner where training is before each step and records what it picked, every iteration
    (the fractions of cross-camera positives and same-camera negatives, and the biases)."""

    trace = True

    def __init__(self, miner: CameraAwareBatchHardMiner):
        self.miner = miner

    def on_step_start(self, step: int, epoch: int) -> None:
        self.miner.set_time(step, epoch)

    def diagnostics(self) -> dict[str, float]:
        return self.miner.take_stats()

    def panel(self) -> dict:
        return {"title": "camera-aware mining", "ylabel": "fraction of anchors", "ylim": [0, 1.02],
                "right": ["bias_positive", "bias_negative"], "right_label": "bias added to distances"}


@register_piece("camera_aware")
def _camera_aware(ctx: PieceContext[None]) -> CameraAwarePiece | None:
    """Camera-aware mining's schedule and diagnostics; on with ``loss.miner=camera_aware``."""
    miner = ctx.objective.miner if ctx.objective is not None else None
    return CameraAwarePiece(miner) if isinstance(miner, CameraAwareBatchHardMiner) else None
