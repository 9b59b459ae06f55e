"""CUHK03-labeled (reidkit's real-data benchmark) and CUHK01.

**CUHK03-labeled benchmark** (the copy in ``shared/data/cuhk03/labeled``)::

    ROOT/train/PPPP_II.jpg   743 identities
    ROOT/val/PPPP_II.jpg     100 identities

``II`` 00-04 are one camera view (camera 0), 05-09 the other (camera 1).
Protocol: train on ``train/``; evaluate on ``val/`` with query = the first
image (lowest ``II``) of each identity in each camera view and gallery = all
other val images, scored with the Market rule (same identity and same camera
removed), so every query is matched against the other view.

**CUHK01** (Li et al. 2012): ``ROOT/campus/PPPPIII.png``, images 001-002 camera
A, 003-004 camera B.  ``cuhk01`` is torchreid's protocol: 10 random orders of the
971 identities, each giving 485 training identities (``num_pids // 2``) and 486 test
identities whose camera-A images are the queries and camera-B images the gallery
(split ``2k``), and the same reversed (split ``2k + 1``): 20 splits, ``split_id``
0-19.  torchreid shuffles with numpy's global generator, unseeded; here the orders
come from ``numpy.random.RandomState(seed)``, so ``(seed, split_id)`` names a split
(the same as torchreid's ``splits.json`` written after ``np.random.seed(seed)``).
``cuhk01_single_shot`` is reidkit's earlier variant: one seeded 485/486 split, query
= one random image per test identity and camera, gallery = the rest; its figures
are comparable only with each other (docs/DATA.md).
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np

from ..records import DatasetLayoutError, ImageRecord, ReIDDataset, list_images, relabel, require_dir
from .registry import register_dataset

CUHK03_PATTERN = re.compile(r"^(\d{4})_(\d{2})\.(jpg|png)$", re.IGNORECASE)
CUHK03_LAYOUT = "  ROOT/train/PPPP_II.jpg\n  ROOT/val/PPPP_II.jpg   (II 00-04 camera 0, 05-09 camera 1)"


def parse_cuhk03_name(name: str) -> tuple[int, int]:
    """``(pid, camid)`` of a ``PPPP_II.jpg`` name."""
    match = CUHK03_PATTERN.match(name)
    if match is None:
        raise DatasetLayoutError(f"file name {name!r} does not match PPPP_II.jpg (e.g. 0003_07.jpg)")
    index = int(match.group(2))
    if index > 9:
        raise DatasetLayoutError(f"file name {name!r}: image index {index} outside 00..09")
    return int(match.group(1)), 0 if index < 5 else 1


def _read_cuhk03_folder(folder: Path) -> list[tuple[ImageRecord, int]]:
    out = []
    for path in list_images(require_dir(folder, "cuhk03_labeled", CUHK03_LAYOUT)):
        pid, camid = parse_cuhk03_name(path.name)
        out.append((ImageRecord(str(path), pid, camid), int(path.stem.split("_")[1])))
    if not out:
        raise DatasetLayoutError(f"cuhk03_labeled: no images in {folder}\nexpected layout:\n{CUHK03_LAYOUT}")
    return out


@register_dataset("cuhk03_labeled")
def cuhk03_labeled(root: str) -> ReIDDataset:
    """CUHK03 labeled boxes, train -> val protocol (reidkit's real-data benchmark)."""
    base = Path(root).expanduser()
    if not (base / "train").is_dir() and (base / "labeled" / "train").is_dir():
        base = base / "labeled"
    train = [r for r, _ in _read_cuhk03_folder(base / "train")]
    val = sorted(_read_cuhk03_folder(base / "val"), key=lambda x: (x[0].pid, x[0].camid, x[1]))
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    seen: set = set()
    for record, _ in val:
        key = (record.pid, record.camid)
        (gallery if key in seen else query).append(record)
        seen.add(key)
    return ReIDDataset("cuhk03_labeled", str(base), relabel(train), query, gallery,
                       ["query = first image of each val identity per camera view"])


CUHK01_LAYOUT = "  ROOT/campus/PPPPIII.png (III 001-002 camera A, 003-004 camera B)"


def _read_cuhk01(root: str) -> tuple[Path, list[ImageRecord]]:
    """Every CUHK01 image in name order: identity PPPP (as in the file name), camera view 0 (A) or 1 (B)."""
    base = Path(root).expanduser()
    folder = base / "campus" if (base / "campus").is_dir() else base
    records = []
    for path in sorted(list_images(require_dir(folder, "cuhk01", CUHK01_LAYOUT)), key=lambda p: p.name):
        if not re.match(r"^\d{7}$", path.stem):
            raise DatasetLayoutError(f"file name {path.name!r} does not match PPPPIII.png\n{CUHK01_LAYOUT}")
        records.append(ImageRecord(str(path), int(path.stem[:4]), (int(path.stem[4:]) - 1) // 2))
    if not records:
        raise DatasetLayoutError(f"cuhk01: no images in {folder}\nexpected layout:\n{CUHK01_LAYOUT}")
    return folder, records


@register_dataset("cuhk01")
def cuhk01(root: str, split_id: int = 0, seed: int = 0) -> ReIDDataset:
    """CUHK01 under torchreid's protocol: split ``split_id`` (0-19) of the 20 that ``seed`` draws."""
    if not 0 <= split_id < 20:
        raise DatasetLayoutError(f"cuhk01: split_id {split_id} outside 0..19 (10 random orders, each both ways)")
    folder, records = _read_cuhk01(root)
    pids = sorted({r.pid for r in records})
    rng = np.random.RandomState(seed)
    for _ in range(split_id // 2 + 1):                   # the orders of splits 0-1, 2-3, ... up to this one's
        order = np.arange(len(pids))
        rng.shuffle(order)
    train_ids = {pids[i] for i in order[:len(pids) // 2]}
    test = [r for r in records if r.pid not in train_ids]
    view_a, view_b = [r for r in test if r.camid == 0], [r for r in test if r.camid == 1]
    query, gallery = (view_a, view_b) if split_id % 2 == 0 else (view_b, view_a)
    return ReIDDataset("cuhk01", str(folder), relabel([r for r in records if r.pid in train_ids]), query, gallery,
                       [f"torchreid's protocol: split {split_id} of seed {seed} ({len(train_ids)} train identities; "
                        f"query camera {'A' if split_id % 2 == 0 else 'B'}, gallery the other)"])


@register_dataset("cuhk01_single_shot")
def cuhk01_single_shot(root: str, seed: int = 0, num_train_ids: int = 485) -> ReIDDataset:
    """CUHK01 with a seeded random identity split; query = one random image per test identity and camera."""
    folder, records = _read_cuhk01(root)
    pids = sorted({r.pid for r in records})
    random.Random(seed).shuffle(pids)
    train_ids = set(pids[:num_train_ids])
    rng = random.Random(seed + 1)
    train = [r for r in records if r.pid in train_ids]
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    groups: dict[tuple[int, int], list[ImageRecord]] = {}
    for r in records:
        if r.pid not in train_ids:
            groups.setdefault((r.pid, r.camid), []).append(r)
    for key in sorted(groups):
        chosen = rng.randrange(len(groups[key]))
        for i, r in enumerate(groups[key]):
            (query if i == chosen else gallery).append(r)
    return ReIDDataset("cuhk01_single_shot", str(folder), relabel(train), query, gallery,
                       [f"random identity split, seed {seed}; one query per identity and camera"])
