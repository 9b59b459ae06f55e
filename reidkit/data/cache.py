"""Decode every image once, keep resized uint8 tensors in RAM or a memory-mapped file.

On two CPU cores JPEG decoding dominates the input pipeline; after the first
pass each epoch only indexes this array.  All images are decoded up front
(in threads: PIL releases the GIL), so a bad file is reported before training
starts, never in the middle of an epoch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from .images import BadImageError, load_rgb
from .records import ImageRecord

log = logging.getLogger(__name__)


class ImageCache:
    """Resized uint8 images (``N x 3 x H x W``) of ``records``, decoded once.

    Args:
        records: images to hold, in order.
        size: ``(height, width)`` to resize to.
        mmap_path: if given, the array lives in this file (for data that does
            not fit in RAM); it is reused when its manifest (``FILE.json``:
            the image paths and size) matches, and rebuilt otherwise.
        skip_bad_images: drop undecodable images (counted in the log) instead
            of raising :class:`BadImageError` listing them.
        workers: decoding threads (None: one per core).
    """

    def __init__(self, records: Sequence[ImageRecord], size: tuple[int, int],
                 mmap_path: str | Path | None = None, skip_bad_images: bool = False,
                 workers: int | None = None, progress: bool = True, desc: str = "decoding"):
        self.size = (int(size[0]), int(size[1]))
        shape = (len(records), 3, *self.size)
        reuse = False
        if mmap_path is not None:
            mmap_path = Path(mmap_path)
            manifest_path = mmap_path.with_name(mmap_path.name + ".json")
            manifest = json.dumps({"size": self.size, "paths_sha256": hashlib.sha256(
                "\n".join(r.path for r in records).encode()).hexdigest()})
            reuse = (mmap_path.is_file() and mmap_path.stat().st_size == int(np.prod(shape))
                     and manifest_path.is_file() and manifest_path.read_text() == manifest)
            array = np.memmap(mmap_path, dtype=np.uint8, mode="r+" if reuse else "w+", shape=shape)
        else:
            array = np.empty(shape, dtype=np.uint8)
        bad = [] if reuse else self._decode_all(records, array, workers, progress, desc)
        if mmap_path is not None and not reuse and not bad:
            array.flush()
            manifest_path.write_text(manifest)
        if bad and not skip_bad_images:
            raise BadImageError(bad)
        keep = np.ones(len(records), dtype=bool)
        bad_paths = {p for p, _ in bad}
        if bad_paths:
            keep = np.array([r.path not in bad_paths for r in records])
            log.warning("skipped %d undecodable image(s): %s", len(bad),
                        ", ".join(p for p, _ in bad[:5]))
            array = array[keep]
        self.records = [r for r, k in zip(records, keep) if k]
        self.skipped = bad
        self.images = torch.from_numpy(np.ascontiguousarray(array) if mmap_path is None or bad else array)

    def _decode_all(self, records, array, workers, progress, desc) -> list[tuple[str, str]]:
        def decode(i: int):
            try:
                array[i] = np.asarray(load_rgb(records[i].path, self.size)).transpose(2, 0, 1)
            except BadImageError as e:
                return e.bad[0]
            return None

        with ThreadPoolExecutor(workers or min(32, os.cpu_count() or 1)) as pool:
            results = pool.map(decode, range(len(records)))
            if progress:
                results = tqdm(results, total=len(records), desc=desc, unit="img", leave=False)
            return [r for r in results if r is not None]

    def __len__(self) -> int:
        return len(self.records)

    def pids(self) -> np.ndarray:
        return np.array([r.pid for r in self.records], dtype=np.int64)

    def camids(self) -> np.ndarray:
        return np.array([r.camid for r in self.records], dtype=np.int64)
