"""A grid of sample crops: one row per identity, its images across cameras."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..data.records import ImageRecord
from ..files import save_image_atomic


def sample_grid(records: Sequence[ImageRecord], out: str | Path, rows: int = 6, cols: int = 8,
                size: tuple[int, int] = (128, 64)) -> Path:
    """Save a ``rows x cols`` grid; each row shows one identity in as many cameras as possible."""
    by_id: dict[int, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_id[r.pid].append(r)
    h, w = size
    grid = Image.new("RGB", (cols * (w + 2), rows * (h + 2)), "white")
    for row, pid in enumerate(sorted(by_id)[:rows]):
        items = sorted(by_id[pid], key=lambda r: (r.camid, r.path))
        seen, ordered = set(), []
        for r in items:                       # one per camera first, then the rest
            if r.camid not in seen:
                ordered.append(r)
                seen.add(r.camid)
        ordered += [r for r in items if r not in ordered]
        for col, r in enumerate(ordered[:cols]):
            img = Image.open(r.path).convert("RGB").resize((w, h))
            grid.paste(img, (col * (w + 2), row * (h + 2)))
    out = Path(out)
    save_image_atomic(out, grid)
    return out
