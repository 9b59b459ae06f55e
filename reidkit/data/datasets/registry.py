"""Dataset registry: recipe names -> loader functions ``(root, **options) -> ReIDDataset``."""
from __future__ import annotations

import inspect
from collections.abc import Callable

from ...names import check_keywords, describe, look_up
from ..records import ReIDDataset

DatasetFactory = Callable[..., ReIDDataset]
_DATASETS: dict[str, DatasetFactory] = {}


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    def add(factory: DatasetFactory) -> DatasetFactory:
        if name in _DATASETS:
            raise ValueError(f"dataset name {name!r} is registered twice ({_DATASETS[name].__module__} and "
                             f"{factory.__module__})")
        _DATASETS[name] = factory
        return factory
    return add


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def describe_datasets() -> list[tuple[str, str]]:
    """``(name, the first line of its loader's docstring)`` for every registered dataset."""
    return describe(_DATASETS)


def loader_takes(name: str, option: str) -> bool:
    """Whether the loader of dataset ``name`` has the keyword ``option`` (e.g. ``generate``)."""
    return name in _DATASETS and option in inspect.signature(_DATASETS[name]).parameters


def check_dataset(name: str, options: dict | None = None, where: str = "data.options") -> None:
    """Raise ``ValueError`` now if ``name`` is not registered or its loader takes not ``options`` (the recipe key
    ``where`` holds them)."""
    loader = look_up(_DATASETS, name, "dataset", "reidkit datasets")
    check_keywords(loader, options or {}, f"dataset {name!r} ({where})", "root")


def build_dataset(name: str, root: str, **options) -> ReIDDataset:
    """Load the dataset registered as ``name`` from ``root``."""
    check_dataset(name, options)
    return _DATASETS[name](root, **options)
