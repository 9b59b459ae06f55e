"""Progressive Transfer Learning's BConv-Cells (Yu et al.; :mod:`reidkit.models.ptl`) carry a latent state from
batch to batch: as a method, their piece restarts it at every epoch's start, for every model trained."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from ..models.ptl import BConvCell, reset_cell_states
from ..pieces import PieceContext, TrainingPiece, register_piece


class PTLCellsPiece(TrainingPiece):
    """The BConv-Cells' states restart at every epoch's start.

    Under data parallelism each process carries the states of its own share of the
    batches (the cells' recurrence runs along a process's batch sequence).
    """

    def on_epoch_start(self, models: Sequence[nn.Module], epoch: int) -> None:
        for model in models:
            reset_cell_states(model)


@register_piece("ptl_cells")
def _ptl_cells(ctx: PieceContext[None]) -> PTLCellsPiece | None:
    """On when the recipe's model has BConv-Cells (the ``*_ptl`` models)."""
    return PTLCellsPiece() if any(isinstance(m, BConvCell) for m in ctx.model.modules()) else None
