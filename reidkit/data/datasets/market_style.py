"""Datasets in the Market-1501 folder layout: Market-1501, DukeMTMC-reID, CUHK03-NP.

Layout (in ``root`` or one of the dataset's usual sub-folders)::

    bounding_box_train/  query/  bounding_box_test/

File names start with ``PID_cCAM`` (``0002_c1s1_000451_03.jpg``,
``0001_c7_f0106449.jpg``, ``0001_c1_1.png``).  Identity -1 marks junk images
(dropped); identity 0 marks distractors (kept in the gallery as negatives).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..records import DatasetLayoutError, ImageRecord, ReIDDataset, list_images, relabel, require_dir
from .registry import register_dataset

NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
LAYOUT = "  ROOT/bounding_box_train/*.jpg\n  ROOT/query/*.jpg\n  ROOT/bounding_box_test/*.jpg"


def parse_market_name(name: str, num_cameras: int | None = None) -> tuple[int, int]:
    """``(pid, camid)`` of a Market-style file name; camid is 0-based."""
    match = NAME_PATTERN.match(name)
    if match is None:
        raise DatasetLayoutError(f"file name {name!r} does not match the pattern PID_cCAM... "
                                 "(e.g. 0002_c1s1_000451_03.jpg)")
    pid, cam = int(match.group(1)), int(match.group(2))
    if cam < 1 or (num_cameras is not None and cam > num_cameras):
        raise DatasetLayoutError(f"file name {name!r}: camera {cam} outside 1..{num_cameras}")
    if pid < -1:
        raise DatasetLayoutError(f"file name {name!r}: identity {pid} is negative (only -1 = junk)")
    return pid, cam - 1


def find_root(root: str | Path, subfolders: tuple[str, ...], what: str) -> Path:
    """The folder holding ``bounding_box_train`` etc.: ``root`` or one of its known sub-folders."""
    root = Path(root).expanduser()
    require_dir(root, what, LAYOUT)
    for candidate in (root, *(root / s for s in subfolders)):
        if (candidate / SPLIT_FOLDERS["train"]).is_dir():
            return candidate
    raise DatasetLayoutError(f"{what}: no {SPLIT_FOLDERS['train']}/ in {root}"
                             f"{' or its sub-folders ' + ', '.join(subfolders) if subfolders else ''}"
                             f"\nexpected layout:\n{LAYOUT}")


def load_market_style(root: str | Path, name: str, num_cameras: int | None,
                      subfolders: tuple[str, ...] = ()) -> ReIDDataset:
    """Read a Market-layout dataset; junk (-1) dropped, distractors (0) only in the gallery."""
    base = find_root(root, subfolders, name)
    splits: dict[str, list[ImageRecord]] = {}
    dropped = 0
    for split, folder in SPLIT_FOLDERS.items():
        records = []
        for path in list_images(require_dir(base / folder, name, LAYOUT)):
            pid, camid = parse_market_name(path.name, num_cameras)
            if pid == -1 or (pid == 0 and split != "gallery"):
                dropped += 1
                continue
            records.append(ImageRecord(str(path), pid, camid))
        if not records:
            raise DatasetLayoutError(f"{name}: no images in {base / folder}\nexpected layout:\n{LAYOUT}")
        splits[split] = records
    notes = [f"{dropped} junk/distractor images dropped from train/query"] if dropped else []
    return ReIDDataset(name, str(base), relabel(splits["train"]), splits["query"],
                       splits["gallery"], notes)


@register_dataset("market1501")
def market1501(root: str) -> ReIDDataset:
    """Market-1501 (Zheng et al. 2015): 751 train ids, 6 cameras."""
    return load_market_style(root, "market1501", 6, ("Market-1501-v15.09.15", "market1501"))


@register_dataset("dukemtmcreid")
def dukemtmcreid(root: str) -> ReIDDataset:
    """DukeMTMC-reID (Zheng et al. 2017): 702 train ids, 8 cameras."""
    return load_market_style(root, "dukemtmcreid", 8, ("DukeMTMC-reID", "dukemtmc-reid"))


@register_dataset("cuhk03_np")
def cuhk03_np(root: str, boxes: str = "labeled") -> ReIDDataset:
    """CUHK03-NP (Zhong et al. 2017 new protocol), ``boxes`` = ``labeled`` or ``detected``."""
    if boxes not in ("labeled", "detected"):
        raise ValueError(f"cuhk03_np boxes must be 'labeled' or 'detected', got {boxes!r}")
    return load_market_style(root, "cuhk03_np", 2, (boxes, f"cuhk03-np/{boxes}"))
