"""The search side of a gallery: a faiss index of a store's rows, kept in step with every writer.

    live = LiveGallery.open("gallery.db")              # from the snapshot, plus the rows committed since
    live.refresh()                                     # rows other writers committed, deletions they made
    hits = live.search(features, k=10, cameras=["3"], start=t0, end=t1)   # [(item id, distance), ...]

A :class:`LiveGallery` maps the index's positions to the store's item ids (which only grow, so positions are in id
order and an id's position is a binary search).  :meth:`LiveGallery.refresh` reads the rows with ids above the
last one it has and the deletions after the last one it applied, and is called before every search (two indexed
reads when nothing changed) and by the service's background thread: a row any process commits is searchable at
the next search of every process, and a deleted item is left out of the next one.  Deleted items stay in the
faiss index, masked out of every search by the same selector the camera filter uses, until :meth:`compact`
rebuilds the index without them.  :meth:`save_snapshot` writes the built index beside the store
(``gallery.db.index``) so a restart reads it instead of building again; rows committed after it are added on
opening, and rows deleted since are masked.

A gallery file (.npz) is served through the same class without a store (:meth:`from_index`): read-only.
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import exclusive_lock, write_atomic
from .gallery import GalleryIndex, _import_faiss
from .metadata import Metadata
from .records import Rows, StoreError
from .store import GalleryStore

SNAPSHOT_SUFFIX = ".index"
#: rows read from the store per step while building (bounds the memory a build takes besides the index)
CHUNK = 50_000


class _Column:
    """A numpy array that grows by doubling: appending ``n`` values costs ``n``, not the column's length."""

    def __init__(self, dtype, fill) -> None:
        self._data = np.full(1024, fill, dtype=dtype)
        self._fill, self.size = fill, 0

    def extend(self, values) -> None:
        values = np.asarray(values, dtype=self._data.dtype)
        need = self.size + len(values)
        if need > len(self._data):
            grown = np.full(max(need, 2 * len(self._data)), self._fill, dtype=self._data.dtype)
            grown[:self.size] = self._data[:self.size]
            self._data = grown
        self._data[self.size:need] = values
        self.size = need

    @property
    def values(self) -> np.ndarray:
        return self._data[:self.size]


class LiveGallery:
    """A store's rows in a :class:`GalleryIndex`, with each row's id, path, camera, time and track; thread-safe
    (one lock around the index: a search and an append never run at once, an embedding never holds it)."""

    def __init__(self, index: GalleryIndex, store: GalleryStore | None = None,
                 fallback: Callable[[Sequence[str]], Metadata] | None = None):
        self.index, self.store, self.fallback = index, store, fallback
        self.lock = threading.RLock()
        self.ids = _Column(np.int64, -1)
        self.alive = _Column(bool, False)
        self.times = _Column(np.float64, math.nan)
        self.camera_codes = _Column(np.int32, 0)
        self.camera_names: list[str] = [""]            # code 0: unknown
        self._code_of: dict[str, int] = {"": 0}
        self.paths: list[str] = []
        self.tracks: list[str] = []
        self.dead = 0
        self.last_id = 0
        self._seen_id = -1                               # the store's item watermark at the last full refresh
        self.last_seq = store.last_deletion() if store is not None else 0
        self._snapshot_at = (0, time.monotonic())        # (index size, when) of the last snapshot

    # ---- opening --------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, store: GalleryStore | str | Path, fallback: Callable[[Sequence[str]], Metadata] | None = None,
             snapshot: bool = True) -> LiveGallery:
        """The search side of ``store``: its snapshot (when one matches) plus the rows committed since, or every
        row embedded into a new index."""
        if not isinstance(store, GalleryStore):
            store = GalleryStore(store)
        index = _snapshot(store) if snapshot else None
        if index is not None:
            faiss_index, ids, header = index
            live = cls(GalleryIndex.from_faiss(faiss_index, [], header), store, fallback)
            live._adopt_snapshot(ids)
            live._snapshot_at = (live.ids.size, time.monotonic())
        else:
            live = cls(_empty_index(store), store, fallback)
        live.refresh()
        return live

    @classmethod
    def from_index(cls, index: GalleryIndex, fallback: Callable[[Sequence[str]], Metadata] | None = None,
                   cameras: Sequence[str] | None = None, times: Sequence[float] | None = None) -> LiveGallery:
        """A read-only gallery over a loaded gallery file (ids 0..N-1, the file's order; ``cameras`` / ``times``:
        each image's, else from ``fallback``)."""
        live = cls(index, None, fallback)
        n = len(index)
        rows = Rows(np.arange(n, dtype=np.int64), np.zeros((n, 0), np.float32), list(index.paths),
                    list(cameras) if cameras is not None else [""] * n,
                    np.asarray(times, dtype=np.float64) if times is not None else np.full(n, math.nan), [""] * n)
        live._append_metadata(rows)
        return live

    def _adopt_snapshot(self, ids: np.ndarray) -> None:
        """Metadata for the snapshot's positions (read from the store; an id the store no longer holds is dead)."""
        assert self.store is not None
        con = self.store._con()
        known: dict[int, tuple] = {}
        top = int(ids[-1]) if len(ids) else 0
        for row in con.execute("SELECT id, path, camera, time, track FROM items WHERE id <= ?", (top,)):
            known[int(row[0])] = row
        paths, cameras, times, tracks, alive = [], [], [], [], []
        for i in ids.tolist():
            row = known.get(i)
            alive.append(row is not None)
            paths.append(row[1] if row else "")
            cameras.append((row[2] or "") if row else "")
            times.append(math.nan if row is None or row[3] is None else row[3])
            tracks.append((row[4] or "") if row else "")
        self.index.paths = list(paths)
        self._append_metadata(Rows(ids, np.zeros((len(ids), 0), np.float32), paths, cameras,
                                   np.asarray(times, dtype=np.float64), tracks), alive=np.asarray(alive, bool))
        self.last_id = top

    # ---- keeping in step ------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Take in the rows and deletions committed since the last call (by any process); how many rows came."""
        if self.store is None:
            return 0
        items, deletions = self.store.watermarks()
        if items <= self._seen_id and deletions <= self.last_seq:     # one read when nothing changed
            return 0
        added = 0
        with self.lock:
            self._seen_id = items
            while True:
                rows = self.store.rows_after(self.last_id, CHUNK)
                if not len(rows):
                    break
                self._append(rows)
                added += len(rows)
            self._apply_deletions()
        return added

    def _apply_deletions(self) -> None:
        assert self.store is not None
        seq, gone = self.store.deletions_after(self.last_seq)
        if gone:
            self.forget(gone)
        self.last_seq = seq

    def forget(self, ids: Sequence[int]) -> None:
        """Mask items out of every search from now on (their rows deleted from the store)."""
        with self.lock:
            positions = self._positions(np.asarray(ids, dtype=np.int64))
            positions = positions[positions >= 0]
            alive = self.alive.values
            self.dead += int(alive[positions].sum())
            alive[positions] = False

    def _append(self, rows: Rows) -> None:
        self.index.add(rows.vectors, rows.paths)
        self._append_metadata(rows)
        self.last_id = int(rows.ids[-1])

    def _append_metadata(self, rows: Rows, alive: np.ndarray | None = None) -> None:
        cameras, times = list(rows.cameras), rows.times.copy()
        missing = [i for i, (c, t) in enumerate(zip(cameras, times)) if not c or math.isnan(t)]
        if self.fallback is not None and missing:
            found = self.fallback([rows.paths[i] for i in missing])
            for j, i in enumerate(missing):
                cameras[i] = cameras[i] or found.cameras[j]
                if math.isnan(times[i]):
                    times[i] = found.times[j]
        codes = []
        for name in cameras:
            code = self._code_of.get(name)
            if code is None:
                code = self._code_of[name] = len(self.camera_names)
                self.camera_names.append(name)
            codes.append(code)
        self.ids.extend(rows.ids)
        self.alive.extend(np.ones(len(rows), bool) if alive is None else alive)
        self.dead += 0 if alive is None else int((~alive).sum())
        self.times.extend(times)
        self.camera_codes.extend(codes)
        self.paths += rows.paths
        self.tracks += rows.tracks

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Each id's position in the index (-1: not there)."""
        known = self.ids.values
        at = np.searchsorted(known, ids)
        inside = at < len(known)
        found = np.full(len(ids), -1, dtype=np.int64)
        hit = inside.copy()
        hit[inside] = known[at[inside]] == ids[inside]
        found[hit] = at[hit]
        return found

    # ---- reading --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Live items, counting what other writers committed or deleted until now."""
        self.refresh()
        return self.ids.size - self.dead

    def position(self, item: int) -> int:
        """The index position of a live item, else -1."""
        with self.lock:
            p = int(self._positions(np.array([item], dtype=np.int64))[0])
            return p if p >= 0 and self.alive.values[p] else -1

    def describe(self, item: int) -> dict | None:
        """A live item's path, camera, time and track (None: no such item, or deleted)."""
        with self.lock:
            p = self.position(item)
            if p < 0:
                return None
            t = float(self.times.values[p])
            return {"id": int(item), "path": self.paths[p], "camera": self.camera_names[self.camera_codes.values[p]]
                    or None, "time": None if math.isnan(t) else t, "track": self.tracks[p] or None}

    def vector(self, item: int) -> np.ndarray:
        """A live item's vector in the index (1 x dim)."""
        with self.lock:
            p = self.position(item)
            if p < 0:
                raise KeyError(item)
            return self.index.vectors(np.array([p]))

    def cameras(self) -> list[str]:
        """The known cameras of live items, sorted by length then name."""
        with self.lock:
            used = np.unique(self.camera_codes.values[self.alive.values])
            return sorted((self.camera_names[c] for c in used if self.camera_names[c]), key=lambda c: (len(c), c))

    def time_range(self) -> list[float] | None:
        with self.lock:
            times = self.times.values[self.alive.values]
            times = times[~np.isnan(times)]
            return [float(times.min()), float(times.max())] if len(times) else None

    def mask(self, cameras: Sequence[str] | None = None, start: float | None = None, end: float | None = None,
             exclude: int | None = None) -> np.ndarray | None:
        """Which positions a search may return (None: all): live, seen by one of ``cameras`` within
        ``[start, end]``, not ``exclude``."""
        if not cameras and start is None and end is None and exclude is None and not self.dead:
            return None
        keep = self.alive.values.copy()
        if cameras:
            wanted = [self._code_of[c] for c in set(cameras) if c in self._code_of]
            keep &= np.isin(self.camera_codes.values, wanted)
        if start is not None:
            keep &= self.times.values >= start         # NaN (unknown) compares false: left out by a time filter
        if end is not None:
            keep &= self.times.values <= end
        if exclude is not None:
            p = self.position(exclude)
            if p >= 0:
                keep[p] = False
        return keep

    def search(self, features: np.ndarray, k: int, cameras: Sequence[str] | None = None, start: float | None = None,
               end: float | None = None, exclude: int | None = None, refresh: bool = True) -> list[tuple[int, float]]:
        """The ``k`` nearest live items of one query: ``[(item id, distance), ...]``, nearest first."""
        if refresh:
            self.refresh()
        with self.lock:
            if self.ids.size == self.dead:
                return []
            allowed = self.mask(cameras, start, end, exclude)
            if allowed is not None and not allowed.any():
                return []
            distances, positions = self.index.search(features, min(k, self.ids.size), allowed=allowed)
            ids = self.ids.values
            return [(int(ids[p]), float(d)) for p, d in zip(positions[0], distances[0]) if p >= 0]

    @property
    def metric(self) -> str:
        return self.index.metric

    @property
    def kind(self) -> str:
        return self.index.kind

    # ---- snapshots and compaction ---------------------------------------------------------------------------
    def maintain(self, final: bool = False, snapshot_every_s: float = 600.0) -> None:
        """Compact when deleted items are a fifth of the index; write a snapshot when the index grew and
        ``snapshot_every_s`` passed since the last one (or ``final``)."""
        self.compact()
        grown, at = self._snapshot_at
        if self.ids.size != grown and (final or time.monotonic() - at > snapshot_every_s):
            self.save_snapshot()
            self._snapshot_at = (self.ids.size, time.monotonic())

    @property
    def snapshot_path(self) -> Path | None:
        return None if self.store is None else _snapshot_file(self.store)

    def save_snapshot(self) -> Path | None:
        """Write the built index and its ids beside the store (atomically, one writer at a time); None when there
        is nothing to write."""
        if self.store is None or self.ids.size == 0:
            return None
        with self.lock:
            self.index._ensure_built()
            blob = _import_faiss().serialize_index(self.index._index)
            ids = self.ids.values.copy()
            header = self.index.header()
        return write_snapshot(self.store, blob, ids, header)

    def compact(self, min_dead_share: float = 0.2) -> bool:
        """Rebuild the index without deleted items when they are at least ``min_dead_share`` of it (the store's
        vectors, read outside the lock; rows and deletions committed meanwhile are applied before the swap)."""
        if self.store is None or self.dead == 0 or self.dead < min_dead_share * self.ids.size:
            return False
        seq0 = self.store.last_deletion()
        with self.lock:
            keep = self.ids.values[self.alive.values].copy()
            top = self.last_id
        fresh = LiveGallery(_empty_index(self.store), self.store, self.fallback)
        for s in range(0, len(keep), CHUNK):
            rows = self.store.rows(keep[s:s + CHUNK])
            if len(rows):
                fresh._append(rows)
        fresh.last_id = top
        fresh.last_seq = seq0
        fresh.refresh()
        if fresh.ids.size:
            fresh.index._ensure_built()
        with self.lock:
            fresh.refresh()
            self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "lock"})
        return True


def write_snapshot(store: GalleryStore, blob: np.ndarray, ids: np.ndarray, header: dict) -> Path:
    """Write a serialised faiss index (``blob``) over items ``ids`` as ``store``'s snapshot (atomically, one
    writer at a time)."""
    header = {**header, "dim": store.dim, "model": store.model}
    path = _snapshot_file(store)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), ids=ids, faiss_index=blob)
    with exclusive_lock(path, f"the snapshot {path}", wait_s=600):
        return write_atomic(path, write)


def _snapshot_file(store: GalleryStore) -> Path:
    return store.path.with_name(store.path.name + SNAPSHOT_SUFFIX)


def _empty_index(store: GalleryStore) -> GalleryIndex:
    return GalleryIndex(np.zeros((0, store.dim), np.float32), [], store.metric, index=store.index, meta=store.meta)


def _snapshot(store: GalleryStore) -> tuple[Any, np.ndarray, dict] | None:
    """The store's snapshot (faiss index, ids, header) when there is one of this store's model, metric and kind;
    None otherwise (a damaged or stale snapshot is ignored, saying why: the rows are the truth)."""
    path = _snapshot_file(store)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            ids = z["ids"].astype(np.int64)
            blob = z["faiss_index"]
        index = _import_faiss().deserialize_index(blob)
    except Exception as e:  # noqa: BLE001 - any damage: rebuild from the rows
        print(f"note: {path} could not be read ({type(e).__name__}: {str(e)[:120]}); building the index from "
              f"{store.path}'s rows")
        return None
    same = (header.get("metric"), header.get("index"), header.get("dim"), header.get("model")) == \
        (store.metric, store.index, store.dim, store.model)
    if not same or index.ntotal != len(ids) or (len(ids) > 1 and not (np.diff(ids) > 0).all()):
        print(f"note: {path} does not match {store.path} (another model, metric or index); building the index "
              "from the rows")
        return None
    return index, ids, header


__all__ = ["LiveGallery", "SNAPSHOT_SUFFIX", "StoreError", "write_snapshot"]
