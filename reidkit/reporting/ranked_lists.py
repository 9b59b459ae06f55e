"""Ranked-list pictures: a query and its top-k gallery matches, green = right, red = wrong.

Each match is framed white, then in its colour, then black, so the colour stays visible on crops of
any background (the synthetic set has green ones); under it, its rank and distance.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..data.records import ImageRecord
from ..files import save_image_atomic

QUERY, RIGHT, WRONG = (128, 128, 128), (20, 170, 40), (220, 30, 30)


def ranked_lists_image(query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], distmat: np.ndarray,
                       query_indices: Sequence[int], out: str | Path, top_k: int = 10,
                       size: tuple[int, int] = (128, 64), border: int = 4) -> Path:
    """One row per query: the query (grey border), then its top-k valid matches.

    Gallery images of the query's identity seen by the same camera are skipped,
    as the evaluation protocol removes them.
    """
    rows = []
    for qi in query_indices:
        q = query[qi]
        order = np.argsort(distmat[qi], kind="stable")
        keep = [g for g in order if not (gallery[g].pid == q.pid and gallery[g].camid == q.camid)][:top_k]
        rows.append((q.path, [(gallery[g].path, RIGHT if gallery[g].pid == q.pid else WRONG,
                               f"#{rank} d={distmat[qi, g]:.3f}") for rank, g in enumerate(keep, 1)]))
    return ranked_rows_image(rows, out, f"top-{top_k} (green = same identity, red = different)", size, border)


def ranked_rows_image(rows: Sequence[tuple[str, Sequence[tuple]]], out: str | Path,
                      caption: str, size: tuple[int, int] = (128, 64), border: int = 4) -> Path:
    """One row per ``(query_path, [(match_path, border_colour[, label]), ...])``: the query framed grey, then its
    matches, each with its label (e.g. rank and distance) underneath."""
    h, w = size
    frame = border + 2                                   # white ring + colour + black outline
    cell_w, gap, label_h = w + 2 * frame, 12, 12
    top_k = max(len(matches) for _, matches in rows)
    pictures = []
    for query_path, matches in rows:
        row = Image.new("RGB", (cell_w * (top_k + 1) + gap, h + 2 * frame + label_h), "white")
        row.paste(_framed(query_path, (h, w), border, QUERY), (0, 0))
        draw = ImageDraw.Draw(row)
        for rank, (path, colour, *label) in enumerate(matches):
            x = cell_w * (rank + 1) + gap
            row.paste(_framed(path, (h, w), border, colour), (x, 0))
            if label:
                draw.text((x + 1, h + 2 * frame), str(label[0]), fill="black")
        pictures.append(row)
    header = 18
    canvas = Image.new("RGB", (pictures[0].width, header + sum(r.height + 4 for r in pictures)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), "query", fill="black")
    draw.text((cell_w + gap + 2, 2), caption, fill="black")
    y = header
    for row in pictures:
        canvas.paste(row, (0, y))
        y += row.height + 4
    return save_image_atomic(out, canvas)


def _framed(path: str, size: tuple[int, int], border: int, colour) -> Image.Image:
    img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    img = ImageOps.expand(img, border=1, fill="white")
    img = ImageOps.expand(img, border=border, fill=colour)
    return ImageOps.expand(img, border=1, fill="black")
