"""Model registry: a recipe name -> constructor ``(num_classes, **kwargs) -> nn.Module``."""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from pydantic import BaseModel

from ..names import Registry, check_keywords

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "reidkit models")


def register_model(name: str, options: type[BaseModel] | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: the builder ``(num_classes, pretrained=..., **options) -> nn.Module`` is the model ``name``.

    ``options``: a pydantic model of the options only this family takes (its fields are keywords of the builder,
    with the same defaults); the recipe's ``model`` section then accepts and checks them for this model."""
    return _MODELS.register(name, options)


def model_options(name: str) -> type[BaseModel] | None:
    """The family options model ``name`` registered (None when it has none); a ``ValueError`` for an unknown
    name, with suggestions."""
    _MODELS[name]
    return _MODELS.configs.get(name)


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
