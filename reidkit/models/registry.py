"""Model registry: a recipe name -> constructor ``(num_classes, **kwargs) -> nn.Module``."""
from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = fn
        return fn
    return add


def model_names() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(model_names())}")
    builder = _MODELS[name]
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            takes = ", ".join(k for k in params if k != "num_classes")
            raise ValueError(f"model {name!r} does not take {', '.join(unknown)} (it takes: {takes})")
    return builder(num_classes=num_classes, **kwargs)
