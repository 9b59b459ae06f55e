"""Model registry: a recipe name -> constructor ``(num_classes, **kwargs) -> nn.Module``."""
from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from ..suggest import did_you_mean

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is registered twice ({_MODELS[name].__module__} and {fn.__module__})")
        _MODELS[name] = fn
        return fn
    return add


def model_names() -> list[str]:
    return sorted(_MODELS)


def describe_models() -> list[tuple[str, str]]:
    """``(name, the first line of its builder's docstring)`` for every registered model."""
    return [(n, (inspect.getdoc(_MODELS[n]) or "").splitlines()[0] if inspect.getdoc(_MODELS[n]) else "")
            for n in model_names()]


def check_model(name: str, **kwargs) -> None:
    """Raise ``ValueError`` now (before data is decoded) if ``name`` is not registered or takes not ``kwargs``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, model_names())}; registered: "
                         f"{', '.join(model_names())} (`reidkit models` lists them)")
    params = inspect.signature(_MODELS[name]).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            takes = ", ".join(k for k in params if k != "num_classes")
            raise ValueError(f"model {name!r} does not take {', '.join(unknown)} (it takes: {takes})")


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier."""
    check_model(name, **kwargs)
    return _MODELS[name](num_classes=num_classes, **kwargs)
