"""What a training run's checkpoints hold, and resuming from one.

``best.pth`` holds :func:`weights_state` (the weights and what embedding with them needs); ``last.pth`` holds
:func:`training_state`, that plus everything a resume needs (optimiser, schedule, random states, pieces,
gradient scaler), which :func:`restore_training_state` reads back.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import __version__
from ..config import Recipe, move_renamed_keys
from ..pieces import TrainingPiece
from ..recipe_files import recipe_to_dict
from .checkpoint import CheckpointError, EmbeddingSpec, load_checkpoint, load_model_weights
from .guards import check_optimizer_fits
from .schedulers import WarmupScheduler

log = logging.getLogger("reidkit")


def embedding_spec_of(recipe: Recipe) -> EmbeddingSpec:
    """What embedding with a run's checkpoints needs (extract, search, export and ``FeatureExtractor`` read it)."""
    return EmbeddingSpec(recipe.model.name, recipe.model.options(), (recipe.data.height, recipe.data.width),
                         recipe.augment.mean, recipe.augment.std)


@dataclass
class RunPosition:
    """Where a run stands: epochs done, optimiser steps done, the best selection mAP so far."""

    epoch: int = 0
    step: int = 0
    best_map: float = -1.0


@dataclass
class TrainingParts:
    """What a training checkpoint saves and a resume restores, by reference (the trainer builds it once)."""

    recipe: Recipe
    model: nn.Module
    num_classes: int
    optimizer: torch.optim.Optimizer
    scheduler: WarmupScheduler
    pieces: list[TrainingPiece]
    augment_generator: torch.Generator
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    world_size: int = 1


def weights_state(parts: TrainingParts, at: RunPosition, history: dict) -> dict[str, Any]:
    """``best.pth``: the weights, what embedding with them needs, and where the run stood."""
    return {"state_dict": parts.model.state_dict(), "embedding": embedding_spec_of(parts.recipe).as_dict(),
            "epoch": at.epoch, "best_mAP": float(at.best_map), "step": at.step,
            "num_classes": parts.num_classes, "recipe": recipe_to_dict(parts.recipe),
            "reidkit_version": __version__, "history": history}


def training_state(parts: TrainingParts, at: RunPosition, history: dict) -> dict[str, Any]:
    """``last.pth``: :func:`weights_state` and everything a resume needs."""
    state = weights_state(parts, at, history) | {
        "optimizer": parts.optimizer.state_dict(), "optimizer_name": parts.recipe.optim.name,
        "scheduler": parts.scheduler.state_dict(), "world_size": parts.world_size,
        "rng": {"torch": torch.get_rng_state(), "augment": parts.augment_generator.get_state()},
        "pieces": {p.name: p.state_dict() for p in parts.pieces},
    }
    if parts.device.type == "cuda":
        state["rng"]["cuda"] = torch.cuda.get_rng_state(parts.device)
    if parts.scaler is not None:
        state["scaler"] = parts.scaler.state_dict()
    return state


#: recipe keys (or sections, ending in ".") whose change would make a resumed run another model, or the same
#: model on other inputs: its earlier epochs would not be this run's
RESUME_FIXED = ("data.dataset", "data.height", "data.width", "data.val_identities", "augment.mean", "augment.std",
                "model.", "mutual.peers")
#: keys that may differ on resume without a word (where the weights come from is moot once the run resumes)
RESUME_IGNORED = ("model.pretrained", "mutual.pretrained", "train.output_dir")


def _dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= _dotted(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: tree}


def recipe_changes(saved: dict, now: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, this value)}`` for every leaf of two recipes that differs."""
    a, b = _dotted(saved), _dotted(now)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and not k.startswith(RESUME_IGNORED)}


def check_resume(parts: TrainingParts, path: str | Path) -> tuple[dict, dict[str, tuple[Any, Any]]]:
    """The training checkpoint ``path`` and how this recipe differs from the one it was trained with; a
    :class:`CheckpointError` when a change would make the run another model or other inputs
    (:data:`RESUME_FIXED`), or when ``train.epochs`` leaves nothing to train."""
    state = load_checkpoint(path)
    if "optimizer" not in state:
        raise CheckpointError(f"{path} holds weights only; --resume needs a training checkpoint (last.pth)")
    if state.get("num_classes") != parts.num_classes:
        raise CheckpointError(f"{path} was trained with {state.get('num_classes')} identities, "
                              f"this dataset has {parts.num_classes}")
    pieces = _piece_states(parts.pieces, state)
    with_state = {p.name for p in parts.pieces if p.state_dict()}
    saved_pieces = {k for k, v in pieces.items() if v}
    if with_state != saved_pieces:
        raise CheckpointError(f"{path} was trained with the pieces {sorted(saved_pieces) or 'none'}; this recipe uses "
                              f"{sorted(with_state) or 'none'} (the recipe's method sections switch them on)")
    check_optimizer_fits(state, parts.optimizer, parts.recipe.optim.name, path)
    epoch, epochs = int(state.get("epoch", 0)), parts.recipe.train.epochs
    if epoch >= epochs:
        raise CheckpointError(f"{path} is at epoch {epoch} and this recipe's train.epochs={epochs}: nothing is left to "
                              f"train. Raise train.epochs (e.g. train.epochs={epoch + 10}) to continue the run")
    saved = state.get("recipe")
    if isinstance(saved, dict):
        move_renamed_keys(saved)                   # a checkpoint of an older reidkit: its keys where they are now
    changes = recipe_changes(saved, recipe_to_dict(parts.recipe)) if isinstance(saved, dict) else {}
    fixed = {k: v for k, v in changes.items() if k.startswith(RESUME_FIXED)}
    if fixed:
        said = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in fixed.items())
        raise CheckpointError(f"{path} was trained with another model or other inputs than this recipe's ({said}); "
                              f"its epochs would not be this run's. Resume with the recipe it was trained with, or "
                              f"start a new run from its weights (model.pretrained={path}, a new train.output_dir)")
    return state, changes


def restore_training_state(parts: TrainingParts, path: str | Path,
                           state: dict | None = None) -> tuple[RunPosition, dict]:
    """Load the training checkpoint ``path`` (read already: ``state``) into ``parts`` (weights, optimiser,
    pieces, schedule, gradient scaler, random states); returns where the run stood and its history.  A checkpoint
    that does not fit (weights only, other identities, other pieces, another optimiser) is a
    :class:`CheckpointError` naming why."""
    state = check_resume(parts, path)[0] if state is None else state
    pieces = _piece_states(parts.pieces, state)
    saved = {k for k, v in pieces.items() if v}
    load_model_weights(parts.model, state, str(path))
    try:
        parts.optimizer.load_state_dict(state["optimizer"])
        for p in parts.pieces:
            if p.name in saved:
                p.load_state_dict(pieces[p.name])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its optimiser state does not fit this recipe's optimiser "
                              f"({parts.recipe.optim.name}): {e}") from None
    parts.scheduler.load_state_dict(state["scheduler"])
    if parts.scaler is not None and "scaler" in state:
        parts.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    parts.augment_generator.set_state(state["rng"]["augment"])
    if parts.device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], parts.device)
    return RunPosition(int(state["epoch"]), int(state["step"]), float(state["best_mAP"])), state["history"]


def _piece_states(pieces: list[TrainingPiece], state: dict) -> dict[str, dict]:
    """``state["pieces"]``, or for older checkpoints the pieces' top-level keys (``legacy_keys``)."""
    if "pieces" in state:
        return state["pieces"]
    found = {}
    for p in pieces:
        old = {new: state[key] for key, new in p.legacy_keys.items() if key in state}
        if old:
            found[p.name] = old
    return found
