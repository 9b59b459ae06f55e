"""MSMT17 (Wei et al. 2018): list-file layout, V1 and V2 folder names.

    ROOT/[MSMT17_V1|MSMT17_V2/]list_{train,val,query,gallery}.txt
    ROOT/[...]/{train,test}/ (V1) or {mask_train_v2,mask_test_v2}/ (V2)

Each list line is ``relative/path.jpg PID``; the camera is the third
underscore-separated field of the file name (``0168_018_14_...jpg`` -> 14).
Train uses list_train + list_val, as torchreid does.
"""
from __future__ import annotations

from pathlib import Path

from ..records import DatasetLayoutError, ImageRecord, ReIDDataset, relabel, require_dir
from .registry import register_dataset

VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
LAYOUT = ("  ROOT/list_train.txt list_val.txt list_query.txt list_gallery.txt\n"
          "  ROOT/train/ and ROOT/test/ (V1) or ROOT/mask_train_v2/ and mask_test_v2/ (V2)")


def parse_msmt17_name(name: str) -> int:
    """0-based camera of an MSMT17 file name."""
    parts = Path(name).name.split("_")
    if len(parts) < 4 or not parts[2].isdigit():
        raise DatasetLayoutError(f"file name {name!r} does not match MSMT17's "
                                 "PID_INDEX_CAM_DAYTIME_... pattern")
    cam = int(parts[2])
    if not 1 <= cam <= 15:
        raise DatasetLayoutError(f"file name {name!r}: camera {cam} outside 1..15")
    return cam - 1


def _read_list(list_file: Path, image_dir: Path) -> list[ImageRecord]:
    records = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetLayoutError(f"{list_file}:{number}: expected 'path PID', got {line!r}")
        records.append(ImageRecord(str(image_dir / fields[0]), int(fields[1]),
                                   parse_msmt17_name(fields[0])))
    return records


@register_dataset("msmt17")
def msmt17(root: str) -> ReIDDataset:
    """MSMT17: 1,041 train ids, 15 cameras."""
    root_path = require_dir(Path(root).expanduser(), "msmt17", LAYOUT)
    for base in (root_path, *(root_path / v for v in VERSIONS)):
        for train_dir, test_dir in VERSIONS.values():
            if (base / "list_train.txt").is_file() and (base / train_dir).is_dir():
                train = _read_list(base / "list_train.txt", base / train_dir)
                if (base / "list_val.txt").is_file():
                    train += _read_list(base / "list_val.txt", base / train_dir)
                query = _read_list(base / "list_query.txt", base / test_dir)
                gallery = _read_list(base / "list_gallery.txt", base / test_dir)
                return ReIDDataset("msmt17", str(base), relabel(train), query, gallery)
    raise DatasetLayoutError(f"msmt17: no list_train.txt with its image folder under {root_path}"
                             f"\nexpected layout:\n{LAYOUT}")
