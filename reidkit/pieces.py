"""Training pieces: what a method adds to the training loop beyond the objective.

The training loop is method-neutral::

    batch -> forward -> objective + every piece's extra_loss -> backward -> optimiser steps -> log

A method that needs more than the identity / triplet objective (a loss term with
its own parameters or optimiser, a frozen teacher, state that restarts every
epoch, statistics worth plotting) is a :class:`TrainingPiece` beside its method's
module, registered with :func:`register_piece` together with its typed recipe
section.  Its builder reads that section (``ctx.config``) and returns the piece, or
None when the recipe leaves the method off.  The loop, the checkpoints and the plots
only ever see the protocol below, so adding a method is one module (docs/ARCHITECTURE.md,
"Adding a method"; tests/test_extension_contract.py does it from outside the package).

Conventions the loop keeps for every piece named ``name``:

* checkpoints hold ``state_dict()`` under ``pieces[name]``;
* ``epoch_diagnostics()`` go to the history as ``name/key`` (one value per epoch), to
  TensorBoard as ``epoch/name/key``, and to a panel of ``curves.png`` titled by
  ``panel()``; with ``trace = True`` the per-iteration ``diagnostics()`` go to
  ``history["trace/name"]`` (``{"step": [...], key: [...]}``) and the panel plots those.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel

from .config import Recipe
from .data.cache import ImageCache
from .engine.distributed import DistEnv
from .evaluation import RankResult
from .losses.objective import ReIDObjective
from .sections import PIECES, load_methods

Section = TypeVar("Section")


def branch_outputs(output) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A model's training output ``(logits, features)`` as one list of each: a multi-branch model gives lists
    (one entry per branch), a single-branch one tensors."""
    logits, features = output
    return (list(logits) if isinstance(logits, (list, tuple)) else [logits],
            list(features) if isinstance(features, (list, tuple)) else [features])


@dataclass
class StepOutputs:
    """What a piece sees of one training step.

    ``inputs``, ``logits`` and ``local_features`` are this process's share of the batch;
    ``features``, ``pids`` and ``camids`` cover the whole (global) batch: under data
    parallelism the features were gathered from every process with their gradients, so a
    loss over them trains exactly as it would in one process.  ``gather`` collects any
    other per-image tensor of this process's share into the global batch's order.
    """

    inputs: torch.Tensor
    logits: list[torch.Tensor]
    local_features: list[torch.Tensor]
    features: list[torch.Tensor]
    pids: torch.Tensor
    camids: torch.Tensor
    step: int
    epoch: int
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda x: x


class TrainingPiece:
    """The protocol (every hook is optional; the defaults do nothing)."""

    name: str = "piece"
    trace: bool = False            # record diagnostics() every iteration, not only the epoch means

    def parameter_groups(self) -> list[dict]:
        """Parameter groups for the main optimiser (``{"params": [...], "weight_decay": 0, ...}``)."""
        return []

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The piece's own optimisers: zeroed and stepped (through the gradient scaler) with the main one."""
        return []

    def to(self, device: torch.device) -> TrainingPiece:
        return self

    def models(self) -> list[nn.Module]:
        """Networks this piece trains beside the recipe's model (deep mutual learning's peers): every piece's
        model hooks (``setup``, ``on_epoch_start``, ``before_evaluation``) receive them after the recipe's."""
        return []

    def setup(self, models: Sequence[nn.Module]) -> None:
        """Once, after every piece is built and before anything trains or resumes (check the models now,
        not at epoch 1)."""

    #: whether :meth:`relabel` gives labels (a recipe that hides its training labels needs such a piece)
    relabels: bool = False

    def relabel(self, models: Sequence[nn.Module], epoch: int) -> np.ndarray | None:
        """Before epoch ``epoch`` (before the models' train modes are set): new identity labels of the training
        images, one per image in the training split's order (-1: left out of this epoch's batches), or None to
        keep the current ones.  The recipe's sampler then draws its batches from them; one piece at most
        relabels."""
        return None

    def on_epoch_start(self, models: Sequence[nn.Module], epoch: int) -> None:
        """Before the epoch's first batch; the models are in train mode, and the pieces before this one (in
        registration order) have set their modes."""

    def on_step_start(self, step: int, epoch: int) -> None:
        """Before each step's forward pass (``step``: iterations done so far)."""

    def extra_loss(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        """Weighted loss terms by name, added to the objective's."""
        return {}

    def after_backward(self) -> None:
        """Gradients are final (unscaled under fp16) and no optimiser has stepped yet."""

    def diagnostics(self) -> dict[str, float]:
        """Scalars of the last step (logged every ``train.log_every`` steps; every step with ``trace``)."""
        return {}

    def before_evaluation(self, models: Sequence[nn.Module], epoch: int) -> None:
        """Before the models are evaluated after ``epoch`` (0-based) and ``best.pth`` may be saved."""

    def after_evaluation(self, epoch: int, test: RankResult, validation: RankResult | None) -> None:
        """After the evaluation of ``epoch``: the test set's result and, with a validation split, its own."""

    def epoch_diagnostics(self, step_means: dict[str, float]) -> dict[str, float]:
        """Scalars recorded once per epoch; ``step_means`` are the epoch's means of :meth:`diagnostics`."""
        return step_means

    def panel(self) -> dict[str, Any]:
        """How ``curves.png`` draws this piece: ``title``, ``ylabel``, ``ylim``; ``keys`` (default: all) the
        diagnostics drawn; ``right`` lists keys drawn on a second axis labelled ``right_label``."""
        return {"title": self.name.replace("_", " ")}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    #: older checkpoints kept some pieces' state at the top level: ``{old key: key in state_dict()}``
    legacy_keys: dict[str, str] = {}

    def write_outputs(self, out_dir: Path) -> list[Path]:
        """Files written once training ends (by the main process); returns their paths."""
        return []


@dataclass
class PieceContext(Generic[Section]):
    """What a piece builder may use: the recipe, its own section (``config``), the model, the data's size, the
    objective, the decoded training images and where training runs."""

    recipe: Recipe
    config: Section               # the piece's recipe section (None for a piece registered without one)
    model: nn.Module
    num_classes: int
    feature_dim: int
    device: torch.device
    objective: ReIDObjective | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    load_model: Callable[..., nn.Module] | None = None     # (arch, checkpoint, **options) -> eval model
    train_images: ImageCache | None = None                 # the decoded training split (this process's)
    env: DistEnv = field(default_factory=DistEnv.current)
    # data.labels=hidden: the training images' true identities, for diagnostics only (never training or selection)
    hidden_labels: np.ndarray | None = None


PieceBuilder = Callable[[PieceContext[Any]], TrainingPiece | None]


def register_piece(name: str, config: type[BaseModel] | None = None,
                   order: int = 100) -> Callable[[PieceBuilder], PieceBuilder]:
    """Register a builder ``(PieceContext) -> TrainingPiece | None`` under ``name``.

    With ``config`` (a pydantic model), the recipe gains a top-level section ``name`` of that type, which the
    builder reads as ``ctx.config``.  ``name`` is also the piece's history prefix and checkpoint key; a
    piece's loss terms should carry it too.  ``order`` places the piece among the others (lower first, then
    by name): the pieces that set the models' train modes (fixbase 10, BatchNorm 20) come before the rest.
    """
    return PIECES.register(name, config, order)


def piece_names() -> list[str]:
    load_methods()
    return PIECES.ordered()


def build_pieces(ctx: PieceContext[Any]) -> list[TrainingPiece]:
    """Every registered piece the recipe switches on, in order, on ``ctx.device``."""
    pieces = []
    for name in piece_names():
        section = ctx.recipe.section(name) if name in PIECES.configs else None
        piece = PIECES[name](dataclasses.replace(ctx, config=section))
        if piece is not None:
            piece.name = name
            pieces.append(piece.to(ctx.device))
    return pieces
