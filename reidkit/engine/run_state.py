"""What a training run's checkpoints hold, and resuming from one.

``best.pth`` holds :func:`weights_state` (the weights and what embedding with them needs); ``last.pth`` holds
:func:`training_state`, that plus everything a resume needs (optimiser, schedule, random states, pieces,
gradient scaler), which :func:`restore_training_state` reads back.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..config import Recipe
from ..recipe_files import recipe_to_dict
from .checkpoint import CheckpointError, EmbeddingSpec, load_checkpoint, load_model_weights
from .guards import check_optimizer_fits

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger("reidkit")


def embedding_spec_of(recipe: Recipe) -> EmbeddingSpec:
    """What embedding with a run's checkpoints needs (extract, search, export and ``FeatureExtractor`` read it)."""
    return EmbeddingSpec(recipe.model.name, recipe.model.options(), (recipe.data.height, recipe.data.width),
                         recipe.augment.mean, recipe.augment.std)


def weights_state(trainer: Trainer, epoch: int) -> dict[str, Any]:
    """``best.pth``: the weights, what embedding with them needs, and where the run stood."""
    return {"state_dict": trainer.model.state_dict(), "embedding": embedding_spec_of(trainer.recipe).as_dict(),
            "epoch": epoch, "best_mAP": float(trainer.best_map), "step": trainer.step,
            "num_classes": trainer.num_classes, "recipe": recipe_to_dict(trainer.recipe),
            "reidkit_version": __version__, "history": trainer.history}


def training_state(trainer: Trainer, epoch: int) -> dict[str, Any]:
    """``last.pth``: :func:`weights_state` and everything a resume needs."""
    state = weights_state(trainer, epoch) | {
        "optimizer": trainer.optimizer.state_dict(), "optimizer_name": trainer.recipe.optim.name,
        "scheduler": trainer.scheduler.state_dict(), "world_size": trainer.env.world_size,
        "rng": {"torch": torch.get_rng_state(), "augment": trainer.augment.gen.get_state()},
        "pieces": {p.name: p.state_dict() for p in trainer.pieces},
    }
    if trainer.device.type == "cuda":
        state["rng"]["cuda"] = torch.cuda.get_rng_state(trainer.device)
    if trainer.scaler is not None:
        state["scaler"] = trainer.scaler.state_dict()
    return state


#: recipe keys (or sections, ending in ".") whose change would make a resumed run another model, or the same
#: model on other inputs: its earlier epochs would not be this run's
RESUME_FIXED = ("data.dataset", "data.height", "data.width", "data.val_identities", "augment.mean", "augment.std",
                "model.", "loss.mutual.peers")
#: keys that may differ on resume without a word (where the weights come from is moot once the run resumes)
RESUME_IGNORED = ("model.pretrained", "loss.mutual.pretrained", "train.output_dir")


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


def check_resume(trainer: Trainer, path: str | Path) -> tuple[dict, dict[str, tuple[Any, Any]]]:
    """The training checkpoint ``path`` and how this recipe differs from the one it was trained with; a
    :class:`CheckpointError` when a change would make the run another model or other inputs
    (:data:`RESUME_FIXED`), or when ``train.epochs`` leaves nothing to train."""
    state = load_checkpoint(path)
    if "optimizer" not in state:
        raise CheckpointError(f"{path} holds weights only; --resume needs a training checkpoint (last.pth)")
    if state.get("num_classes") != trainer.num_classes:
        raise CheckpointError(f"{path} was trained with {state.get('num_classes')} identities, "
                              f"this dataset has {trainer.num_classes}")
    pieces = _piece_states(trainer, state)
    with_state = {p.name for p in trainer.pieces if p.state_dict()}
    saved_pieces = {k for k, v in pieces.items() if v}
    if with_state != saved_pieces:
        raise CheckpointError(f"{path} was trained with the pieces {sorted(saved_pieces) or 'none'}; this recipe uses "
                              f"{sorted(with_state) or 'none'} (see loss.* in the recipe)")
    check_optimizer_fits(state, trainer.optimizer, trainer.recipe.optim.name, path)
    epoch, epochs = int(state.get("epoch", 0)), trainer.recipe.train.epochs
    if epoch >= epochs:
        raise CheckpointError(f"{path} is at epoch {epoch} and this recipe's train.epochs={epochs}: nothing is left to "
                              f"train. Raise train.epochs (e.g. train.epochs={epoch + 10}) to continue the run")
    saved = state.get("recipe")
    changes = recipe_changes(saved, recipe_to_dict(trainer.recipe)) if isinstance(saved, dict) else {}
    fixed = {k: v for k, v in changes.items() if k.startswith(RESUME_FIXED)}
    if fixed:
        said = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in fixed.items())
        raise CheckpointError(f"{path} was trained with another model or other inputs than this recipe's ({said}); "
                              f"its epochs would not be this run's. Resume with the recipe it was trained with, or "
                              f"start a new run from its weights (model.pretrained={path}, a new train.output_dir)")
    return state, changes


def restore_training_state(trainer: Trainer, path: str | Path, state: dict | None = None) -> None:
    """Put ``trainer`` where the training checkpoint ``path`` (read already: ``state``) left its run; a checkpoint
    that does not fit (weights only, other identities, other pieces, another optimiser) is a
    :class:`CheckpointError` naming why."""
    state = check_resume(trainer, path)[0] if state is None else state
    pieces = _piece_states(trainer, state)
    saved = {k for k, v in pieces.items() if v}
    load_model_weights(trainer.model, state, str(path))
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
        for p in trainer.pieces:
            if p.name in saved:
                p.load_state_dict(pieces[p.name])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its optimiser state does not fit this recipe's optimiser "
                              f"({trainer.recipe.optim.name}): {e}") from None
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and "scaler" in state:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.start_epoch, trainer.best_map, trainer.step = (int(state["epoch"]), float(state["best_mAP"]),
                                                           int(state["step"]))
    trainer.guard.saved(path, trainer.start_epoch)
    trainer.history = state["history"]
    torch.set_rng_state(state["rng"]["torch"])
    trainer.augment.gen.set_state(state["rng"]["augment"])
    if trainer.device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], trainer.device)
    if trainer.is_main:
        log.info("resumed from %s at epoch %d (saved by %d process(es))", path, trainer.start_epoch,
                 int(state.get("world_size", 1)))


def _piece_states(trainer: Trainer, state: dict) -> dict[str, dict]:
    """``state["pieces"]``, or for older checkpoints the pieces' top-level keys (``legacy_keys``)."""
    if "pieces" in state:
        return state["pieces"]
    found = {}
    for p in trainer.pieces:
        old = {new: state[key] for key, new in p.legacy_keys.items() if key in state}
        if old:
            found[p.name] = old
    return found
