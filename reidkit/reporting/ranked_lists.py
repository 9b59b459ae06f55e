"""Ranked-list pictures: a query and its top-k gallery matches, green = right, red = wrong."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..data.records import ImageRecord


def ranked_lists_image(query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], distmat: np.ndarray,
                       query_indices: Sequence[int], out: str | Path, top_k: int = 10,
                       size: tuple[int, int] = (128, 64), border: int = 4) -> Path:
    """One row per query: the query (grey border), then its top-k valid matches.

    Gallery images of the query's identity seen by the same camera are skipped,
    as the evaluation protocol removes them.
    """
    h, w = size
    cell_w, gap = w + 2 * border, 12
    rows = []
    for qi in query_indices:
        q = query[qi]
        order = np.argsort(distmat[qi], kind="stable")
        keep = [g for g in order if not (gallery[g].pid == q.pid and gallery[g].camid == q.camid)][:top_k]
        row = Image.new("RGB", (cell_w * (top_k + 1) + gap, h + 2 * border), "white")
        row.paste(_framed(q.path, (h, w), border, (128, 128, 128)), (0, 0))
        for rank, g in enumerate(keep):
            colour = (20, 170, 40) if gallery[g].pid == q.pid else (220, 30, 30)
            row.paste(_framed(gallery[g].path, (h, w), border, colour), (cell_w * (rank + 1) + gap, 0))
        rows.append(row)
    header = 18
    canvas = Image.new("RGB", (rows[0].width, header + sum(r.height + 4 for r in rows)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), "query", fill="black")
    draw.text((cell_w + gap + 2, 2), f"top-{top_k} (green = same identity, red = different)", fill="black")
    y = header
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height + 4
    out = Path(out)
    canvas.save(out)
    return out


def _framed(path: str, size: tuple[int, int], border: int, colour) -> Image.Image:
    img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    return ImageOps.expand(img, border=border, fill=colour)
