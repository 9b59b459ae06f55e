"""Your own data: a folder layout or CSV files.

Folder layout (identity and camera are folder names, any strings)::

    ROOT/{train,query,gallery}/IDENTITY/CAMERA/*.jpg

CSV layout: ``ROOT/{train,query,gallery}.csv`` with the header
``path,identity,camera`` (paths relative to ROOT).  Identities and cameras may
be strings; they are mapped to integers consistently across query and gallery.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..records import DatasetLayoutError, ImageRecord, ReIDDataset, list_images, relabel, require_dir
from .registry import register_dataset

LAYOUT = ("  ROOT/{train,query,gallery}/IDENTITY/CAMERA/*.jpg\n"
          "  or ROOT/{train,query,gallery}.csv with header path,identity,camera")
SPLITS = ("train", "query", "gallery")


def _rows_from_folders(root: Path, split: str) -> list[tuple[str, str, str]]:
    rows = []
    for identity in sorted(p for p in require_dir(root / split, "custom", LAYOUT).iterdir() if p.is_dir()):
        for camera in sorted(p for p in identity.iterdir() if p.is_dir()):
            rows += [(str(f), identity.name, camera.name) for f in list_images(camera)]
    return rows


def _rows_from_csv(root: Path, split: str) -> list[tuple[str, str, str]]:
    path = root / f"{split}.csv"
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")                  # a byte-order mark (Excel's "CSV UTF-8") is dropped
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DatasetLayoutError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {e.reason}); save the CSV as "
                                 "UTF-8") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "identity", "camera"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetLayoutError(f"{path}: missing column(s) {sorted(missing)}; "
                                     "expected header path,identity,camera")
        rows = []
        for number, row in enumerate(reader, 2):
            if None in row or any(row[k] is None or not row[k].strip() for k in ("path", "identity", "camera")):
                raise DatasetLayoutError(f"{path}:{number}: malformed row {_raw(row, reader.fieldnames)}: expected "
                                         f"3 non-empty fields path,identity,camera")
            image = root / row["path"]
            if not image.is_file():
                raise DatasetLayoutError(f"{path}:{number}: image not found: {image}")
            rows.append((str(image), row["identity"], row["camera"]))
    return rows


def _raw(row: dict, fields) -> str:
    values = [row.get(k) for k in fields or []] + list(row.get(None) or [])
    return repr(",".join("" if v is None else str(v) for v in values))


@register_dataset("custom")
def custom(root: str) -> ReIDDataset:
    """A dataset from ``ROOT/{split}/IDENTITY/CAMERA/`` folders or ``ROOT/{split}.csv``."""
    base = require_dir(Path(root).expanduser(), "custom", LAYOUT)
    use_csv = all((base / f"{s}.csv").is_file() for s in SPLITS)
    rows = {s: (_rows_from_csv if use_csv else _rows_from_folders)(base, s) for s in SPLITS}
    for split, r in rows.items():
        if not r:
            raise DatasetLayoutError(f"custom: no images for split {split!r} in {base}\nexpected:\n{LAYOUT}")
    ids = {v: i for i, v in enumerate(sorted({r[1] for s in SPLITS for r in rows[s]}))}
    cams = {v: i for i, v in enumerate(sorted({r[2] for s in SPLITS for r in rows[s]}))}
    records = {s: [ImageRecord(p, ids[i], cams[c]) for p, i, c in rows[s]] for s in SPLITS}
    return ReIDDataset("custom", str(base), relabel(records["train"]), records["query"],
                       records["gallery"], [f"read from {'CSV files' if use_csv else 'folders'}"])
