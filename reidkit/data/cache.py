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
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..files import TEMPORARY_SUFFIX, OutputError, exclusive_lock, remove_orphan_temporaries, write_text_atomic
from ..logs import bar_disabled
from .images import BadImageError, describe_bad_images, load_rgb
from .records import ImageRecord

log = logging.getLogger(__name__)


#: how long a run waits for another one that is building the same cache file
CACHE_WAIT_S = 3600.0


def read_cache_manifest(path: Path) -> dict | None:
    """A cache manifest (``FILE.json``), or None when there is none or it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "sources_sha256" in data else None


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
        if mmap_path is None:
            array: np.ndarray | np.memmap = np.empty(shape, dtype=np.uint8)
            bad = self._decode_all(records, array, workers, progress, desc)
        else:
            with exclusive_lock(mmap_path, f"the image cache {mmap_path}", wait_s=CACHE_WAIT_S):
                array, bad = self._open_or_build(records, Path(mmap_path), shape, workers, progress, desc)
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

    def _open_or_build(self, records, mmap_path: Path, shape: tuple[int, ...], workers, progress,
                       desc) -> tuple[np.memmap, list[tuple[str, str]]]:
        """The memory-mapped array: reused when its manifest matches, else decoded into a temporary file that
        replaces the cache once complete (a run still reading the old one keeps its bytes)."""
        manifest_path = mmap_path.with_name(mmap_path.name + ".json")
        manifest = {"size": list(self.size), "sources_sha256": fingerprint_sources(records), "complete": True}
        previous = read_cache_manifest(manifest_path)
        if mmap_path.is_dir():
            raise OutputError(f"data.cache_file {mmap_path} is a folder: give a file name for the image cache")
        if mmap_path.exists() and previous is None:
            raise OutputError(f"data.cache_file {mmap_path} exists and is not a reidkit image cache (no readable "
                              f"{manifest_path.name} beside it): reidkit does not overwrite it; choose a new path")
        if (previous == manifest and mmap_path.is_file()
                and mmap_path.stat().st_size == int(np.prod(shape))):
            return np.memmap(mmap_path, dtype=np.uint8, mode="r+", shape=shape), []
        if previous is not None:
            log.info("rebuilding %s: the images, their size or their files changed since it was written "
                     "(or its last build did not finish)", mmap_path)
        remove_orphan_temporaries(mmap_path.parent, [mmap_path.name])
        # the manifest first, marked incomplete: the file is reidkit's from here on, and not reused until complete
        write_text_atomic(manifest_path, json.dumps({**manifest, "complete": False}))
        fd, tmp = tempfile.mkstemp(dir=mmap_path.parent, prefix=mmap_path.name, suffix=TEMPORARY_SUFFIX)
        os.close(fd)
        try:
            array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
            bad = self._decode_all(records, array, workers, progress, desc)
            array.flush()
            os.replace(tmp, mmap_path)
        except OSError as e:
            raise OutputError(f"could not write the image cache {mmap_path}: {e.strerror or e}") from e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        if not bad:
            write_text_atomic(manifest_path, json.dumps(manifest))      # the completion marker, last
        return array, bad

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
    emptied = {split: cache.skipped for split, cache in caches.items() if len(cache) == 0 and cache.skipped}
    if emptied:
        raise ValueError(f"data.skip_bad_images left no image in the {', '.join(emptied)} split: every one of its "
                         f"images is bad, so nothing can be trained or evaluated\n"
                         f"{describe_bad_images(emptied, limit=10)}")
    return caches
