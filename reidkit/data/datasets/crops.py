"""Unlabelled crops: what a deployment has (person crops and the camera of each, no identities), for unsupervised
adaptation (``data.labels: hidden``; docs/UNSUPERVISED.md).

Where each crop's camera comes from (``data.options: {camera: ...}``):

* ``folders`` (the default): ``ROOT/CAMERA/**/*.jpg``, the first sub-folder's name; crops directly in ROOT have
  the camera ``unknown``;
* ``pattern``: a regular expression with a group named ``camera`` searched in each file name (e.g.
  ``_c(?P<camera>\\d+)`` for Market-1501's names); a name it does not match has the camera ``unknown``;
* ``csv``: ``ROOT/crops.csv`` with the header ``path,camera`` (paths relative to ROOT; an empty camera is
  ``unknown``);
* ``unknown``: one camera for all.

Every crop is its own identity (there are none to read) and there is no query / gallery: a run trains and records
its clustering diagnostics, and ``best.pth`` is its last epoch.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ..records import IMAGE_SUFFIXES, DatasetLayoutError, ImageRecord, ReIDDataset, list_images, require_dir
from .registry import register_dataset

LAYOUT = ("  ROOT/CAMERA/**/*.jpg (camera: folders), any layout with camera: pattern or unknown,\n"
          "  or ROOT/crops.csv with header path,camera (camera: csv)")
UNKNOWN = "unknown"


def _images_below(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its sub-folders, sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _from_folders(base: Path) -> list[tuple[str, str]]:
    rows = [(str(p), UNKNOWN) for p in list_images(base)]
    for camera in sorted(p for p in base.iterdir() if p.is_dir()):
        rows += [(str(p), camera.name) for p in _images_below(camera)]
    return rows


def _from_pattern(base: Path, pattern: str) -> list[tuple[str, str]]:
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise DatasetLayoutError(f"crops: camera pattern {pattern!r} is not a regular expression: {e}") from None
    if "camera" not in regex.groupindex:
        raise DatasetLayoutError(f"crops: camera pattern {pattern!r} needs a group named camera, e.g. "
                                 r"'_c(?P<camera>\d+)'")
    rows = []
    for p in _images_below(base):
        found = regex.search(p.name)
        rows.append((str(p), found.group("camera") if found else UNKNOWN))
    return rows


def _from_csv(base: Path) -> list[tuple[str, str]]:
    path = base / "crops.csv"
    if not path.is_file():
        raise DatasetLayoutError(f"crops: {path} not found (camera: csv)\nexpected:\n{LAYOUT}")
    text = path.read_bytes().decode("utf-8-sig", errors="strict")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if "path" not in (reader.fieldnames or []):
        raise DatasetLayoutError(f"{path}: missing column 'path'; expected header path,camera")
    rows = []
    for number, row in enumerate(reader, 2):
        if not (row.get("path") or "").strip():
            raise DatasetLayoutError(f"{path}:{number}: empty path")
        image = base / row["path"]
        if not image.is_file():
            raise DatasetLayoutError(f"{path}:{number}: image not found: {image}")
        rows.append((str(image), (row.get("camera") or "").strip() or UNKNOWN))
    return rows


@register_dataset("crops")
def crops(root: str, camera: str = "folders", pattern: str | None = None) -> ReIDDataset:
    """Unlabelled crops and their cameras (sub-folders, a file-name pattern, a CSV column, or unknown)."""
    base = require_dir(Path(root).expanduser(), "crops", LAYOUT)
    if camera == "pattern" and not pattern:
        raise DatasetLayoutError("crops: camera: pattern needs data.options.pattern (a regular expression with a "
                                 r"group named camera, e.g. '_c(?P<camera>\d+)')")
    readers = {"folders": lambda: _from_folders(base), "pattern": lambda: _from_pattern(base, pattern or ""),
               "csv": lambda: _from_csv(base),
               "unknown": lambda: [(str(p), UNKNOWN) for p in _images_below(base)]}
    if camera not in readers:
        raise DatasetLayoutError(f"crops: camera must be one of {', '.join(readers)}, got {camera!r}")
    rows = readers[camera]()
    if not rows:
        raise DatasetLayoutError(f"crops: no images under {base}\nexpected:\n{LAYOUT}")
    cams = {c: i for i, c in enumerate(sorted({c for _, c in rows}))}
    train = [ImageRecord(p, i, cams[c]) for i, (p, c) in enumerate(rows)]
    unknown = sum(c == UNKNOWN for _, c in rows)
    notes = [f"unlabelled crops, cameras from {camera}: {len(cams)} camera(s)"
             + (f"; {unknown} crop(s) of unknown camera" if unknown else "")]
    return ReIDDataset("crops", str(base), train, [], [], notes, identities=False)
