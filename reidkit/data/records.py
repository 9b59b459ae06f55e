"""Dataset records: one image with its identity and camera, grouped into splits."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetLayoutError(ValueError):
    """A dataset folder is missing, laid out wrongly, or holds misnamed files."""


@dataclass(frozen=True)
class ImageRecord:
    """One image: its path, identity (``pid``) and camera (``camid``, 0-based)."""

    path: str
    pid: int
    camid: int


def relabel(records: list[ImageRecord]) -> list[ImageRecord]:
    """Map identities to 0..N-1 in sorted order of the original ids (for the classifier)."""
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [ImageRecord(r.path, mapping[r.pid], r.camid) for r in records]


@dataclass
class ReIDDataset:
    """Train (relabelled 0..N-1), query and gallery records of one dataset."""

    name: str
    root: str
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    notes: list[str] = field(default_factory=list)
    identities: bool = True        # False: the training pids are placeholders (unlabelled crops)

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    def split(self, name: str) -> list[ImageRecord]:
        if name not in ("train", "query", "gallery"):
            raise ValueError(f"split must be 'train', 'query' or 'gallery', got {name!r}")
        return getattr(self, name)

    def summary(self) -> str:
        """A table of identities, images and cameras per split (as torchreid prints)."""
        lines = [f"=> {self.name} ({self.root})",
                 "  ----------------------------------------",
                 "  subset   | # ids | # images | # cameras",
                 "  ----------------------------------------"]
        for split in ("train", "query", "gallery"):
            recs = self.split(split)
            lines.append(f"  {split:8s} | {len({r.pid for r in recs}):5d} | {len(recs):8d} | "
                         f"{len({r.camid for r in recs}):9d}")
        lines.append("  ----------------------------------------")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def require_dir(path: Path, what: str, expected: str) -> Path:
    """Return ``path`` if it is a folder, else raise naming it and the expected layout."""
    if not path.is_dir():
        raise DatasetLayoutError(f"{what}: folder not found: {path}\nexpected layout:\n{expected}")
    return path


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named in ``inputs``: files as given, folders searched recursively (sorted).

    Raises ``FileNotFoundError`` naming an input that does not exist or a
    folder without images.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise FileNotFoundError(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            found += images
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return found


def hide_training_labels(dataset: ReIDDataset) -> tuple[ReIDDataset, np.ndarray | None]:
    """``dataset`` with every training image its own identity (0..N-1) until a method labels them, and the true
    identities, kept apart (for a method's diagnostics only; None when the dataset has none); query and gallery
    keep their labels."""
    truth = np.array([r.pid for r in dataset.train], dtype=np.int64) if dataset.identities else None
    train = [ImageRecord(r.path, i, r.camid) for i, r in enumerate(dataset.train)]
    note = (f"training identities hidden (data.labels=hidden): {len(train)} images, each its own instance until "
            "the method labels them")
    return dataclasses.replace(dataset, train=train, notes=[*dataset.notes, note]), truth
