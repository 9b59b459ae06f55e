"""Dataset registry: recipe names -> loader functions ``(root, **options) -> ReIDDataset``."""
from __future__ import annotations

import inspect
from typing import Callable

from ...suggest import did_you_mean
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
    return [(n, (inspect.getdoc(_DATASETS[n]) or "").splitlines()[0] if inspect.getdoc(_DATASETS[n]) else "")
            for n in dataset_names()]


def loader_takes(name: str, option: str) -> bool:
    """Whether the loader of dataset ``name`` has the keyword ``option`` (e.g. ``generate``)."""
    return name in _DATASETS and option in inspect.signature(_DATASETS[name]).parameters


def check_dataset(name: str, **options) -> None:
    """Raise ``ValueError`` now if ``name`` is not registered or its loader takes not ``options``."""
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}{did_you_mean(name, dataset_names())}; registered: "
                         f"{', '.join(dataset_names())} (`reidkit datasets` lists them)")
    params = inspect.signature(_DATASETS[name]).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in options if k not in params or k == "root"]
        if unknown:
            takes = ", ".join(k for k in params if k != "root") or "no options"
            raise ValueError(f"dataset {name!r} does not take data.options {', '.join(unknown)} (it takes: {takes})")


def build_dataset(name: str, root: str, **options) -> ReIDDataset:
    """Load the dataset registered as ``name`` from ``root``."""
    check_dataset(name, **options)
    return _DATASETS[name](root, **options)
