"""Checkpoints that hold only tensors and plain Python values, on no device.

``torch.load(path, weights_only=True)`` reads them, so loading never runs
code.  Every tensor is saved on the CPU, so a checkpoint written on a GPU (or by
a data-parallel run) loads on a CPU and the reverse.  Writes go to a temporary
file in the same folder, then ``os.replace``: a crash mid-write never leaves a
truncated checkpoint behind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..files import write_atomic


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with this model or recipe."""


class NonFiniteWeightsError(FloatingPointError):
    """Model weights or buffers hold NaN or infinity; such a checkpoint is never written."""


def non_finite_tensors(state_dict: dict) -> list[str]:
    """The names of the floating-point tensors of ``state_dict`` that hold NaN or infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def describe_tensors(names: list[str], limit: int = 4) -> str:
    return f"{len(names)} tensor(s): {', '.join(names[:limit])}{' ...' if len(names) > limit else ''}"


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor inside (dicts, lists, tuples) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` (tensors moved to the CPU) atomically to ``path``.

    Raises :class:`NonFiniteWeightsError` (and writes nothing) when ``state["state_dict"]`` holds a
    NaN or infinite value: a checkpoint that poisons whatever loads it is never written.
    """
    bad = non_finite_tensors(state.get("state_dict", {}))
    if bad:
        raise NonFiniteWeightsError(f"not writing {path}: the model's {describe_tensors(bad)} hold NaN or "
                                    "infinite values")
    cpu_state = to_cpu(state)
    return write_atomic(path, lambda tmp: torch.save(cpu_state, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (``weights_only``); a bare state_dict is accepted too."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(state).__name__}")
    return state if "state_dict" in state else {"state_dict": state}


def load_model_weights(model: nn.Module, state: dict, source: str, ignore_classifier: bool = False) -> None:
    """Load ``state['state_dict']`` into ``model``, naming mismatched keys and shapes."""
    weights = dict(state["state_dict"])
    if weights and all(k.startswith("module.") for k in weights):      # saved from a DDP wrapper by other code
        weights = {k[len("module."):]: v for k, v in weights.items()}
    own = model.state_dict()
    if ignore_classifier:
        weights = {k: v for k, v in weights.items() if not k.startswith("head.classifier")}
    shape_errors = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in weights.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in weights and not (ignore_classifier and k.startswith("head.classifier"))]
    unexpected = [k for k in weights if k not in own]
    if shape_errors or missing or unexpected:
        parts = []
        if shape_errors:
            parts.append("shape mismatch: " + "; ".join(shape_errors[:5]))
        if missing:
            parts.append(f"missing keys: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError(f"{source} does not fit this model: " + " | ".join(parts))
    model.load_state_dict(weights, strict=not ignore_classifier)


def model_from_checkpoint(model_name: str, weights: str | Path, **model_options) -> nn.Module:
    """Build ``model_name`` sized by the checkpoint's classifier, load the weights, eval mode."""
    from ..models import build_model
    state = load_checkpoint(weights)
    sd = state["state_dict"]
    classifier = sd.get("head.classifier.weight", sd.get("classifier.weight"))
    if classifier is None:
        raise CheckpointError(f"{weights}: no classifier weight; is it a reidkit {model_name} checkpoint?")
    model = build_model(model_name, int(classifier.shape[0]), pretrained=None, **model_options)
    load_model_weights(model, state, str(weights))
    return model.eval()
