"""Dataset registry: recipe names -> loader functions ``(root, **options) -> ReIDDataset``."""
from __future__ import annotations

from typing import Callable

from ..records import ReIDDataset

DatasetFactory = Callable[..., ReIDDataset]
_DATASETS: dict[str, DatasetFactory] = {}


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    def add(factory: DatasetFactory) -> DatasetFactory:
        _DATASETS[name] = factory
        return factory
    return add


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def build_dataset(name: str, root: str, **options) -> ReIDDataset:
    """Load the dataset registered as ``name`` from ``root``."""
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered: {', '.join(dataset_names())}")
    return _DATASETS[name](root, **options)
