"""Dataset registry: recipe names -> loader functions ``(root, **options) -> ReIDDataset``."""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

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


#: the folder where relative dataset roots are looked for when the working directory has none (fast-reid's
#: FASTREID_DATASETS); default ``./data``
DATA_ENV = "REIDKIT_DATA"


def data_folder() -> Path:
    """Where datasets live: ``$REIDKIT_DATA``, else ``./data``."""
    return Path(os.environ.get(DATA_ENV) or "data").expanduser()


def resolve_data_root(root: str) -> str:
    """``root`` as given when it is absolute or exists from the working directory, else under :func:`data_folder`
    when it exists there (``data.root: cuhk03/labeled`` with ``REIDKIT_DATA=/datasets``), else as given."""
    path = Path(root).expanduser()
    if path.is_absolute() or path.exists():
        return str(path)
    candidate = data_folder() / path
    return str(candidate) if candidate.exists() else root


def build_dataset(name: str, root: str, **options) -> ReIDDataset:
    """Load the dataset registered as ``name`` from ``root`` (a relative root also under ``$REIDKIT_DATA``)."""
    check_dataset(name, options)
    resolved = resolve_data_root(root)
    try:
        return _DATASETS[name](resolved, **options)
    except (ValueError, FileNotFoundError) as e:
        if Path(resolved).exists() or Path(root).is_absolute():
            raise
        raise type(e)(f"{e}\n(a relative data.root is looked for in the working directory {Path.cwd()}, then under "
                      f"${DATA_ENV}={data_folder().resolve()}; set {DATA_ENV} to where your datasets live)") from None
