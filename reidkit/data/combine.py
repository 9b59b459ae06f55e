"""The dataset a recipe names: one, or several trained on together (torchreid's ``sources``, fast-reid's
``DATASETS.NAMES``), and the extra test sets of a cross-dataset evaluation (``eval.datasets``)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .datasets import build_dataset
from .records import ImageRecord, ReIDDataset


def combine_datasets(datasets: Sequence[ReIDDataset]) -> ReIDDataset:
    """One training set from several: identities of each dataset kept apart (the second's follow the first's,
    and so on), cameras offset the same way so that no two datasets share a camera id.  Query and gallery
    are the first dataset's (evaluate the others with ``eval.datasets``)."""
    if len(datasets) == 1:
        return datasets[0]
    train: list[ImageRecord] = []
    pid_offset = cam_offset = 0
    notes = []
    for ds in datasets:
        cams = {r.camid for r in (*ds.train, *ds.query, *ds.gallery)}
        shifted = [ImageRecord(r.path, r.pid + pid_offset, r.camid + cam_offset) for r in ds.train]
        notes.append(f"{ds.name}: identities {pid_offset}-{pid_offset + ds.num_train_pids - 1}, cameras "
                     f"{cam_offset}-{cam_offset + max(cams)} ({len(ds.train)} training images)")
        train += shifted
        pid_offset += ds.num_train_pids
        cam_offset += max(cams) + 1
    first = datasets[0]
    notes.append(f"query / gallery: {first.name}'s")
    return ReIDDataset("+".join(ds.name for ds in datasets), ", ".join(ds.root for ds in datasets), train,
                       list(first.query), list(first.gallery), [*notes, *(n for ds in datasets for n in ds.notes)])


def dataset_specs(dataset: str | list[str], root: str | list[str],
                  options: dict[str, Any] | list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, root, options)`` of each dataset ``data.dataset`` / ``data.root`` / ``data.options`` name."""
    names = [dataset] if isinstance(dataset, str) else list(dataset)
    roots = [root] if isinstance(root, str) else list(root)
    if len(roots) != len(names):
        raise ValueError(f"data.dataset names {len(names)} dataset(s) ({', '.join(names)}) but data.root gives "
                         f"{len(roots)} folder(s): give one root per dataset, in the same order")
    if isinstance(options, dict):
        if options and len(names) > 1:
            raise ValueError("data.options with several datasets: give a list, one mapping per dataset "
                             "(e.g. [{}, {num_cameras: 3}])")
        per = [options] * len(names)
    else:
        per = list(options)
        if len(per) != len(names):
            raise ValueError(f"data.options gives {len(per)} mapping(s) for {len(names)} dataset(s)")
    return list(zip(names, roots, per))


def build_recipe_dataset(data) -> ReIDDataset:
    """The dataset (or the combination) of a recipe's ``data`` section."""
    return combine_datasets([build_dataset(n, r, **o) for n, r, o in dataset_specs(data.dataset, data.root,
                                                                                     data.options)])


__all__ = ["build_recipe_dataset", "combine_datasets", "dataset_specs"]
