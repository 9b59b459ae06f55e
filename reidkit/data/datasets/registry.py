"""Dataset registry: recipe names -> loader functions ``(root, **options) -> ReIDDataset``."""
from __future__ import annotations

import inspect
from collections.abc import Callable

from ...names import Registry, check_keywords
from ..records import ReIDDataset

DatasetFactory = Callable[..., ReIDDataset]
_DATASETS: Registry[DatasetFactory] = Registry("dataset", "reidkit datasets")


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator: the loader ``(root, **options) -> ReIDDataset`` is the dataset ``name``."""
    return _DATASETS.register(name)


def dataset_names() -> list[str]:
    return _DATASETS.names()


def describe_datasets() -> list[tuple[str, str]]:
    """``(name, the first line of its loader's docstring)`` for every registered dataset."""
    return _DATASETS.describe()


def loader_takes(name: str, option: str) -> bool:
    """Whether the loader of dataset ``name`` has the keyword ``option`` (e.g. ``generate``)."""
    return name in _DATASETS and option in inspect.signature(_DATASETS[name]).parameters


def check_dataset(name: str, options: dict | None = None, where: str = "data.options") -> None:
    """Raise ``ValueError`` now if ``name`` is not registered or its loader takes not ``options`` (the recipe key
    ``where`` holds them)."""
    loader = _DATASETS[name]
    check_keywords(loader, options or {}, f"dataset {name!r} ({where})", "root")


def build_dataset(name: str, root: str, **options) -> ReIDDataset:
    """Load the dataset registered as ``name`` from ``root``."""
    check_dataset(name, options)
    return _DATASETS[name](root, **options)
