"""Guards of a training run: weights that stay finite, training that does not silently diverge, a checkpoint
whose optimiser fits the recipe's."""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, NonFiniteWeightsError, describe_tensors, non_finite_tensors

log = logging.getLogger("reidkit")

#: an epoch whose mean loss exceeds this multiple of the first epoch's, or weights above this size, are
#: reported loudly: training is diverging even while every value is still finite
EXPLODING_LOSS_FACTOR = 100.0
EXPLODING_WEIGHT = 1e6
#: a mean loss above this is diverging whatever the first epoch's was (cross-entropy over 100,000 identities: 11.5)
EXPLODING_LOSS = 1e4


def flatten_tensors(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor inside nested dicts / lists, by a dotted name (``peers.0.conv1.weight``)."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {prefix: value} if isinstance(value, torch.Tensor) else {}
    out: dict[str, Any] = {}
    for key, inner in items:
        out |= flatten_tensors(inner, f"{prefix}.{key}" if prefix else str(key))
    return out


class DivergenceGuard:
    """Checks the model after every epoch and remembers the newest checkpoint written, to point at it."""

    def __init__(self) -> None:
        self.last_checkpoint: tuple[Path, int] | None = None     # the newest last.pth, and its epoch
        self.first_loss: float | None = None

    def saved(self, path: str | Path, epoch: int) -> None:
        self.last_checkpoint = (Path(path), epoch)

    def last_finite(self) -> str:
        """Where to resume from, for an error message."""
        if self.last_checkpoint is None:
            return "No checkpoint of this run was written yet."
        path, epoch = self.last_checkpoint
        return f"The last finite checkpoint is {path} (epoch {epoch}): --resume from it with a lower learning rate."

    def interrupted(self, epoch: int, iteration: int, total: int) -> str:
        """What an interruption at ``iteration`` of 0-based ``epoch`` left, and how to go on."""
        if self.last_checkpoint is None:
            left = "no epoch had finished, so nothing was saved; train again to start over"
        else:
            path, saved = self.last_checkpoint
            left = (f"{path} holds the end of epoch {saved} (intact); continue with --resume {path} "
                    f"(epoch {saved + 1} starts again)")
        return f"interrupted at epoch {epoch + 1}, iteration {iteration} of {total}, after the step finished: {left}"

    def check_epoch(self, model: nn.Module, epoch: int, step: int, means: dict[str, float],
                    pieces: dict[str, Any] | None = None) -> None:
        """Raise :class:`NonFiniteWeightsError` (before anything is saved) when a parameter or buffer of the model,
        or a tensor of a training piece's state (``{piece name: state_dict}``: mutual-learning peers, centres),
        holds NaN or infinity; warn loudly when the loss or the weights explode while still finite."""
        where = f"epoch {epoch + 1} (iteration {step}, lr {means['lr']:.2e})"
        bad = non_finite_tensors(model.state_dict())
        for name, state in (pieces or {}).items():
            bad += [f"{name}:{key}" for key in non_finite_tensors(flatten_tensors(state))]
        if bad:
            raise NonFiniteWeightsError(
                f"after {where} the model's {describe_tensors(bad)} hold NaN or infinite values although every "
                f"loss was finite (BatchNorm statistics of exploding activations); nothing was saved. "
                f"{self.last_finite()}")
        total = means.get("total")
        if total is None:
            return
        if self.first_loss is None:
            self.first_loss = total
        with torch.no_grad():                         # one read of the device, not one per tensor
            largest = float(torch.stack([p.detach().abs().max().float() for p in model.parameters()]).max())
        if total > EXPLODING_LOSS_FACTOR * max(self.first_loss, 1e-3) or total > EXPLODING_LOSS \
                or largest > EXPLODING_WEIGHT:
            log.warning("WARNING: training is diverging at %s: mean loss %.3g (first epoch %.3g), largest weight "
                        "%.3g. Lower the learning rate. %s", where, total, self.first_loss, largest,
                        self.last_finite())


def check_optimizer_fits(state: dict, optimizer: torch.optim.Optimizer, name: str, path: str | Path) -> None:
    """Refuse a checkpoint whose optimiser differs from ``optimizer`` (the recipe's ``name``): its state would not
    fit, and an SGD step on Adam's state fails on a missing 'momentum' only later, mid-step."""
    saved = state.get("optimizer_name") or state.get("recipe", {}).get("optim", {}).get("name")
    groups, own = state["optimizer"].get("param_groups", []), optimizer.state_dict()["param_groups"]
    if (saved is not None and saved != name) or (groups and set(groups[0]) != set(own[0])) or len(groups) != len(own):
        raise CheckpointError(
            f"{path} was trained with the optimiser {saved or 'of another recipe'} ({len(groups)} parameter "
            f"group(s)); this recipe uses {name} ({len(own)} group(s)). Resume with the recipe it was trained with "
            f"(optim.name={saved}), or start a new run from its weights with model.pretrained={path}")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a Ctrl-C, after the step in progress; the message says what was saved and how to go on."""


class StopRequests:
    """While active (a ``with`` block in the main thread), the first Ctrl-C (SIGINT) only sets :attr:`requested`,
    so that the loop can finish its step and stop cleanly; a second one interrupts at once."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.requested = enabled, False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this step (press it again to stop at once)")

    def __enter__(self) -> StopRequests:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
