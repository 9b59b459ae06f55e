"""Model registry: a recipe name -> constructor ``(num_classes, **kwargs) -> nn.Module``."""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..names import check_keywords, describe, look_up

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is registered twice ({_MODELS[name].__module__} and "
                             f"{fn.__module__})")
        _MODELS[name] = fn
        return fn
    return add


def model_names() -> list[str]:
    return sorted(_MODELS)


def describe_models() -> list[tuple[str, str]]:
    """``(name, the first line of its builder's docstring)`` for every registered model."""
    return describe(_MODELS)


def check_model(name: str, **kwargs) -> None:
    """Raise ``ValueError`` now (before data is decoded) if ``name`` is not registered or takes not ``kwargs``."""
    check_keywords(look_up(_MODELS, name, "model", "reidkit models"), kwargs, f"model {name!r}", "num_classes")


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier."""
    check_model(name, **kwargs)
    return _MODELS[name](num_classes=num_classes, **kwargs)
