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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from ..files import write_text_atomic
from ..logs import bar_disabled
from .images import BadImageError, load_rgb
from .records import ImageRecord

log = logging.getLogger(__name__)


def fingerprint_sources(records: Sequence[ImageRecord]) -> str:
    """A hash of every image's path, size and modification time: it changes when a file is edited,
    replaced, added or removed (a stat per file; no image is read)."""
    h = hashlib.sha256()
    for r in records:
        try:
            st = os.stat(r.path)
            h.update(f"{r.path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{r.path}\tmissing\n".encode())
    return h.hexdigest()


class ImageCache:
    """Resized uint8 images (``N x 3 x H x W``) of ``records``, decoded once.

    Args:
        records: images to hold, in order.
        size: ``(height, width)`` to resize to.
        mmap_path: if given, the array lives in this file (for data that does
            not fit in RAM); it is reused when its manifest (``FILE.json``:
            the image size and every source file's path, size and modification
            time, written last as the completion marker) matches, and rebuilt otherwise.
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
            manifest = json.dumps({"size": self.size, "sources_sha256": fingerprint_sources(records),
                                   "complete": True})
            reuse = (mmap_path.is_file() and mmap_path.stat().st_size == int(np.prod(shape))
                     and manifest_path.is_file() and manifest_path.read_text() == manifest)
            if not reuse:
                if manifest_path.exists():
                    log.info("rebuilding %s: the images, their size or their files changed since it was written "
                             "(or its last build did not finish)", mmap_path)
                manifest_path.unlink(missing_ok=True)     # written again only once every image is in place
            array: np.ndarray | np.memmap = np.memmap(mmap_path, dtype=np.uint8, mode="r+" if reuse else "w+",
                                                      shape=shape)
        else:
            array = np.empty(shape, dtype=np.uint8)
        bad = [] if reuse else self._decode_all(records, array, workers, progress, desc)
        if mmap_path is not None and not reuse and not bad:
            cast(np.memmap, array).flush()
            write_text_atomic(manifest_path, manifest)   # the completion marker, last
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
            results: Iterable = pool.map(decode, range(len(records)))
            results = tqdm(results, total=len(records), desc=desc, unit="img", leave=False,
                           disable=bar_disabled(progress))
            return [r for r in results if r is not None]

    def __len__(self) -> int:
        return len(self.records)

    def pids(self) -> np.ndarray:
        return np.array([r.pid for r in self.records], dtype=np.int64)

    def camids(self) -> np.ndarray:
        return np.array([r.camid for r in self.records], dtype=np.int64)


def decode_each(jobs: dict[str, Callable[[], ImageCache]]) -> dict[str, ImageCache]:
    """Run every split's decoding (``{"train": make_cache, ...}``) even after one finds bad files, then raise
    one :class:`BadImageError` listing the bad files of all splits, grouped by split and folder."""
    caches, bad = {}, {}
    for split, make in jobs.items():
        try:
            caches[split] = make()
        except BadImageError as e:
            bad[split] = e.bad
    if bad:
        raise BadImageError([b for found in bad.values() for b in found], splits=bad)
    return caches
