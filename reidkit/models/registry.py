"""Model registry: a recipe name -> constructor ``(num_classes, **kwargs) -> nn.Module``."""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..names import Registry, check_keywords

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "reidkit models")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: the builder ``(num_classes, pretrained=..., **options) -> nn.Module`` is the model ``name``."""
    return _MODELS.register(name)


def model_names() -> list[str]:
    return _MODELS.names()


def describe_models() -> list[tuple[str, str]]:
    """``(name, the first line of its builder's docstring)`` for every registered model."""
    return _MODELS.describe()


def check_model(name: str, **kwargs) -> None:
    """Raise ``ValueError`` now (before data is decoded) if ``name`` is not registered or takes not ``kwargs``."""
    check_keywords(_MODELS[name], kwargs, f"model {name!r}", "num_classes")


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier."""
    check_model(name, **kwargs)
    return _MODELS[name](num_classes=num_classes, **kwargs)
