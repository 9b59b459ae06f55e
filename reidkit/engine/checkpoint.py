"""Checkpoints that hold only tensors and plain Python values, on no device.

``torch.load(path, weights_only=True)`` reads them, so loading never runs
code.  Every tensor is saved on the CPU, so a checkpoint written on a GPU (or by
a data-parallel run) loads on a CPU and the reverse.  Writes go to a temporary
file in the same folder, then ``os.replace``: a crash mid-write never leaves a
truncated checkpoint behind.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..files import write_atomic

log = logging.getLogger("reidkit")


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


@dataclass(frozen=True)
class EmbeddingSpec:
    """What embedding with a checkpoint needs: the architecture and its options, the input size and the
    normalisation it was trained with.  ``options`` hold the shaping options that differ from the defaults
    (``ModelConfig.options()``)."""

    arch: str
    options: dict[str, Any]
    image_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def as_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "options": _plain(self.options), "image_size": list(self.image_size),
                "mean": list(self.mean), "std": list(self.std)}


#: options that choose an output of the same weights (not a property of the weights): a caller may differ
OUTPUT_CHOICES = ("test_feature",)


def _plain(value: Any) -> Any:
    """Tuples as lists (as a checkpoint's JSON-like recipe holds them), for comparisons and storage."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def embedding_spec(state: dict) -> EmbeddingSpec | None:
    """The checkpoint's :class:`EmbeddingSpec`: stored under ``embedding`` (reidkit >= 0.2), derived from the
    recipe of older training checkpoints, None for a bare state_dict or an imported model."""
    if isinstance(state.get("embedding"), dict):
        e = state["embedding"]
        return EmbeddingSpec(str(e["arch"]), dict(e.get("options", {})), _size(e["image_size"]),
                             _channels(e.get("mean", IMAGENET_MEAN)), _channels(e.get("std", IMAGENET_STD)))
    recipe = state.get("recipe")
    if isinstance(recipe, dict) and isinstance(recipe.get("model"), dict) and isinstance(recipe.get("data"), dict):
        from ..config import ModelConfig
        model = ModelConfig.model_validate(recipe["model"])
        augment = recipe.get("augment", {}) or {}
        return EmbeddingSpec(model.name, model.options(), _size((recipe["data"]["height"], recipe["data"]["width"])),
                             _channels(augment.get("mean", IMAGENET_MEAN)), _channels(augment.get("std", IMAGENET_STD)))
    return None


def _size(value) -> tuple[int, int]:
    return int(value[0]), int(value[1])


def _channels(value) -> tuple[float, float, float]:
    return float(value[0]), float(value[1]), float(value[2])


def check_against_spec(spec: EmbeddingSpec | None, source: str, arch: str | None = None,
                       options: dict[str, Any] | None = None, image_size: tuple[int, int] | None = None) -> None:
    """Raise :class:`CheckpointError` when an explicit ``arch``, option or ``image_size`` contradicts what the
    checkpoint ``source`` was trained with (a model embedded at the wrong size or with another head gives
    features unrelated to the right ones, silently)."""
    if spec is None:
        return
    from ..config import ModelConfig
    defaults = {k: f.default for k, f in ModelConfig.model_fields.items()}
    wrong = []
    if arch is not None and arch != spec.arch:
        wrong.append(f"architecture {arch} (trained: {spec.arch})")
    for key, value in (options or {}).items():
        trained = spec.options.get(key, defaults.get(key))
        if key not in OUTPUT_CHOICES and _plain(value) != _plain(trained):
            wrong.append(f"{key}={value} (trained: {trained})")
    if image_size is not None and tuple(image_size) != tuple(spec.image_size):
        wrong.append(f"input {image_size[0]}x{image_size[1]} (trained: {spec.image_size[0]}x{spec.image_size[1]})")
    if wrong:
        raise CheckpointError(f"{source} was trained as {spec.arch} at {spec.image_size[0]}x{spec.image_size[1]}"
                              f"{' with ' + str(spec.options) if spec.options else ''}; the request contradicts it: "
                              f"{'; '.join(wrong)}. Leave these out to use the checkpoint's own")


def load_embedding_model(weights: str | Path, model_name: str | None = None, state: dict | None = None,
                         **model_options) -> tuple[nn.Module, EmbeddingSpec | None]:
    """The model of checkpoint ``weights`` (eval mode) and its :class:`EmbeddingSpec`.

    A self-describing checkpoint (any reidkit training checkpoint) needs no ``model_name``; an explicit one, or
    an option, that contradicts it is a :class:`CheckpointError`.  A bare state_dict needs ``model_name``.
    """
    from ..models import build_model
    state = load_checkpoint(weights) if state is None else state       # (``state``: read already by the caller)
    spec = embedding_spec(state)
    check_against_spec(spec, str(weights), model_name, model_options)
    if spec is not None:
        model_name, model_options = spec.arch, {**spec.options, **model_options}
    if model_name is None:
        raise CheckpointError(f"{weights} does not say which model it holds (a bare state_dict): name it, e.g. "
                              "--arch osnet_x0_25 or --recipe")
    sd = state["state_dict"]
    classifier = sd.get("head.classifier.weight", sd.get("classifier.weight"))
    if classifier is None:
        raise CheckpointError(f"{weights}: no classifier weight; is it a reidkit {model_name} checkpoint?")
    model = build_model(model_name, int(classifier.shape[0]), pretrained=None, **model_options)
    load_model_weights(model, state, str(weights))
    return model.eval(), spec


def model_from_checkpoint(model_name: str | None, weights: str | Path, **model_options) -> nn.Module:
    """The model of checkpoint ``weights`` in eval mode (see :func:`load_embedding_model`)."""
    return load_embedding_model(weights, model_name, **model_options)[0]


def load_trained_model(recipe, weights: str | Path) -> nn.Module:
    """A model of the recipe's architecture with the weights of a reidkit checkpoint; a checkpoint trained with
    another architecture, head or input size than the recipe's is an error naming both."""
    return load_recipe_model(recipe, weights)[0]


def load_recipe_model(recipe, weights: str | Path) -> tuple[nn.Module, EmbeddingSpec]:
    """:func:`load_trained_model` and the embedding spec: the checkpoint's, or the recipe's for weights that do
    not describe themselves (a bare state_dict, an imported model)."""
    size = (recipe.data.height, recipe.data.width)
    state = load_checkpoint(weights)
    model, spec = load_embedding_model(weights, recipe.model.name, state, **recipe.model.options())
    check_against_spec(spec, str(weights), image_size=size)
    if spec is None:
        warn_other_size(state, weights, size)
    return model, spec or EmbeddingSpec(recipe.model.name, recipe.model.options(), size)


def warn_other_size(state: dict, weights: str | Path, size: tuple[int, int]) -> None:
    """Warn when an imported model (``reidkit import-onnx`` records the input size of its ONNX file as
    ``trained_image_size`` in checkpoint ``state``) is used at another input size: its figures then drop (the
    MSMT17 OSNet x0.25 on CUHK03: 31.26 mAP at 256x128, 10.11 at 128x64)."""
    trained = state.get("trained_image_size")
    if isinstance(trained, (list, tuple)) and len(trained) == 2 and tuple(int(v) for v in trained) != tuple(size):
        log.warning("WARNING: %s was trained at %dx%d and is used here at %dx%d (data.height x data.width): expect "
                    "lower accuracy; data.height=%d data.width=%d uses its own size (images are resized to it)",
                    weights, trained[0], trained[1], size[0], size[1], trained[0], trained[1])
