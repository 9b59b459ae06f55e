"""Model registry: a recipe name -> constructor ``(num_classes, **kwargs) -> nn.Module``.

Besides single names, a *family* answers every name ``PREFIX/ARCHITECTURE`` (``timm/resnet50``): its builder
receives ``architecture=ARCHITECTURE`` and checks it itself."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch.nn as nn
from pydantic import BaseModel

from ..names import Registry, check_keywords

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "reidkit models")
_FAMILIES: dict[str, tuple[Callable[..., nn.Module], type[BaseModel] | None]] = {}


def register_model(name: str, options: type[BaseModel] | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: the builder ``(num_classes, pretrained=..., **options) -> nn.Module`` is the model ``name``.

    ``options``: a pydantic model of the options only this family takes (its fields are keywords of the builder,
    with the same defaults); the recipe's ``model`` section then accepts and checks them for this model."""
    return _MODELS.register(name, options)


def register_model_family(prefix: str, options: type[BaseModel] | None = None
                          ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: the builder ``(num_classes, architecture=..., pretrained=..., **options)`` answers every model
    name ``prefix/ARCHITECTURE``."""
    if not prefix.isidentifier():
        raise ValueError(f"model family prefix {prefix!r} must be an identifier")

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _FAMILIES[prefix] = (builder, options)
        return builder
    return add


def _resolve(name: str) -> tuple[Callable[..., nn.Module], type[BaseModel] | None]:
    """The builder of ``name`` (a family's, with its architecture bound) and its options model."""
    if "/" in name:
        prefix, architecture = name.split("/", 1)
        if prefix not in _FAMILIES or not architecture:
            raise ValueError(f"unknown model {name!r}: PREFIX/ARCHITECTURE names a model of a family, and the "
                             f"families are {', '.join(f'{p}/...' for p in sorted(_FAMILIES)) or 'none'}")
        builder, options = _FAMILIES[prefix]
        return functools.partial(builder, architecture=architecture), options
    return _MODELS[name], _MODELS.configs.get(name)


def model_options(name: str) -> type[BaseModel] | None:
    """The family options model ``name`` registered (None when it has none); a ``ValueError`` for an unknown
    name, with suggestions."""
    return _resolve(name)[1]


def model_names() -> list[str]:
    return _MODELS.names()


def describe_models() -> list[tuple[str, str]]:
    """``(name, the first line of its builder's docstring)`` for every registered model and family."""
    families = [(f"{prefix}/<architecture>", (builder.__doc__ or "").strip().splitlines()[0])
                for prefix, (builder, _) in sorted(_FAMILIES.items())]
    return _MODELS.describe() + families


def check_model(name: str, **kwargs) -> None:
    """Raise ``ValueError`` now (before data is decoded) if ``name`` is not registered or takes not ``kwargs``."""
    check_keywords(_resolve(name)[0], kwargs, f"model {name!r}", "num_classes")


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier."""
    check_model(name, **kwargs)
    return _resolve(name)[0](num_classes=num_classes, **kwargs)
