"""A search service over a gallery: searches, adds, deletes, retention and the audit, safe to call from many
threads (:mod:`reidkit.deploy.web` puts it behind HTTP: the JSON API and the page).

    reidkit serve gallery.db [--metadata market1501 | --metadata-csv seen.csv] [--users users.toml]
                  [--retention 30d] [--workers 4] [--port 8000]

A gallery store (``gallery.db``, :mod:`reidkit.deploy.store`) is read and written by every worker and every
``reidkit extract --add-to``: each add is one transaction, each search first takes in what other writers
committed.  A gallery file (``.npz``) is served read-only (import it into a store to add or delete).  The
gallery's own model (its weights checked by fingerprint) embeds uploaded crops.  Endpoints (``docs/DEPLOY.md``):

* ``GET /`` the page; ``GET /api/health``; ``GET /api/stats`` (counters);
* ``POST /api/search`` (multipart ``image``) and ``GET /api/items/{id}/similar``: the top ``k`` gallery items,
  filtered by ``camera`` (repeatable) and a time window ``start`` / ``end`` inside the index, and nearer than
  ``max_distance`` when given;
* ``GET /api/items/{id}`` (its camera, time, track), ``GET /api/items/{id}/image`` (by id only);
* ``POST /api/items`` (multipart ``images``, optional ``camera``, ``time``, ``track``): embed and commit crops;
  the same bytes again map to the item that holds them;
* ``DELETE /api/items/{id}``, ``POST /api/items/delete`` (JSON ``ids`` / ``crop_sha256`` / ``cameras`` /
  ``start`` / ``end``): delete items and the crop files the store keeps.

Handlers are plain functions that FastAPI runs in its thread pool: an embedding, a store write or a wait for
another writer never blocks the event loop, so searches go on while crops are added.  Safe by default: binds
127.0.0.1; with ``--token`` or ``--users`` every ``/api`` call needs a token (``Authorization: Bearer`` or
``?token=``), each user with the rights search / add / delete; bodies are refused past their size while they
stream; pixels past ``max_pixels`` from the image header; a bad request is a 4xx, a busy or full store a 503 /
507, each with a message.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import BadImageError, decode_rgb
from .access import ANONYMOUS, User
from .gallery import GalleryIndex
from .gallery_model import check_gallery_weights, gallery_extractor
from .live import LiveGallery
from .metadata import metadata_source
from .milvus import is_milvus
from .store import GalleryStore, StoreError, is_store

STATIC = Path(__file__).resolve().parent / "static"
MAX_K = 200
#: crops one add may carry (a request body is capped at this many uploads' worth)
MAX_ADD_FILES = 4


class ServiceError(Exception):
    """A request the service refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _finite(value: float | None, name: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ServiceError(422, f"{name} must be a finite number, got {value}")
    return value


@dataclass
class Filters:
    """What a search keeps: the top ``k``, seen by one of ``cameras`` within ``[start, end]``, nearer than
    ``max_distance`` (the gallery's metric; e.g. a threshold ``eval.verification`` chose), each optional."""

    k: int = 10
    cameras: list[str] | None = None
    start: float | None = None
    end: float | None = None
    max_distance: float | None = None

    def check(self) -> Filters:
        if not 1 <= self.k <= MAX_K:
            raise ServiceError(422, f"k must be between 1 and {MAX_K}, got {self.k}")
        for name in ("start", "end", "max_distance"):
            _finite(getattr(self, name), name)
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ServiceError(422, f"the time window starts after it ends ({self.start} > {self.end})")
        if self.max_distance is not None and not self.max_distance > 0:
            raise ServiceError(422, f"max_distance must be above 0, got {self.max_distance}")
        return self

    def record(self) -> dict:
        """The filters as an audit line records them (those given)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` (or plain seconds) -> seconds; a ``ValueError`` naming the text."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not found or float(found.group(1)) <= 0:
        raise ValueError(f"--retention {text!r}: give a positive duration such as 30d, 12h, 90m or 3600")
    return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[found.group(2)]


class SearchService:
    """A gallery (a store, or a read-only file), its model and metadata, and the counters; every method is safe
    to call from several threads."""

    def __init__(self, gallery: str | Path, weights: str | None = None, metadata: str | None = None,
                 metadata_csv: str | Path | None = None, uploads: str | Path | None = None, device: str = "cpu",
                 max_upload_bytes: int = 8 << 20, max_pixels: int = 16_000_000, extractor: Any = None,
                 retention_s: float | None = None, refresh_s: float = 0.5, snapshot_every_s: float = 600.0):
        self.path: Any = str(gallery) if is_milvus(gallery) else Path(gallery)
        fallback = metadata_source(metadata, metadata_csv)
        self.store: Any = None                       # GalleryStore or MilvusGallery: where adds and deletes go
        self.live: Any
        if is_milvus(gallery):                       # store and search in one: Milvus
            from .milvus import MilvusGallery
            self.store = self.live = MilvusGallery(str(gallery))
            meta = self.store.meta
        elif is_store(self.path):
            self.store = GalleryStore(self.path)
            self.live = LiveGallery.open(self.store, fallback)
            meta = self.store.meta
        else:
            index = GalleryIndex.load(self.path)
            given = index.meta.get("added_metadata", {})     # what uploads said of themselves (older reidkit)
            cameras = [str((given.get(p) or ["", None])[0] or "") for p in index.paths]
            times = [float("nan") if (given.get(p) or ["", None])[1] is None else float(given[p][1])
                     for p in index.paths]
            self.live = LiveGallery.from_index(index, fallback, cameras, times)
            meta = index.meta
        self.meta, self.metric, self.kind = meta, self.live.metric, self.live.kind
        if extractor is None:
            extractor = gallery_extractor(gallery, meta, check_gallery_weights(str(gallery), meta, weights), device)
        self.extractor = extractor
        # a model that embeds each crop's camera (TransReID's SIE) needs its index with every upload
        self.takes_cameras = bool(getattr(extractor, "takes_cameras", False))
        self.sie_cameras: int | None = getattr(extractor, "num_cameras", None) if self.takes_cameras else None
        default = Path(f"{self.store.collection}_added") if is_milvus(gallery) else \
            Path(gallery).with_name(Path(gallery).stem + "_added")
        self.uploads = Path(uploads) if uploads is not None else default
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.retention_s, self.refresh_s, self.snapshot_every_s = retention_s, refresh_s, snapshot_every_s
        self.counters = {"searches": 0, "searches_by_item": 0, "images_added": 0, "images_deleted": 0, "refused": 0}
        self._counter_lock = threading.Lock()
        self._audit: list[dict] = []
        self._audit_lock = threading.Lock()
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- background upkeep ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the upkeep thread: take in other writers' rows, prune past the retention, flush the audit,
        compact and snapshot the index."""
        if self.store is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._upkeep, name="reidkit-gallery-upkeep", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the upkeep thread, flush the audit and snapshot the index when it grew."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.upkeep(final=True)

    def _upkeep(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.upkeep()
            except Exception as e:  # noqa: BLE001 - the thread must go on; the next round tries again
                print(f"reidkit serve: upkeep failed ({type(e).__name__}: {str(e)[:200]}); trying again")

    def upkeep(self, final: bool = False) -> None:
        """One round of upkeep (the thread calls it every ``refresh_s``)."""
        if self.store is None:
            return
        self.live.refresh()
        if self.retention_s is not None:
            self.prune()
        self._flush_audit()
        self.live.maintain(final, self.snapshot_every_s)

    def prune(self) -> list[int]:
        """Delete the items added longer than the retention ago (and their stored crops)."""
        assert self.store is not None and self.retention_s is not None
        deleted = self.store.delete(added_before=time.time() - self.retention_s,
                                    audit={"user": "retention", "filters": {"retention_s": self.retention_s}})
        if deleted.ids:
            self.live.forget(deleted.ids)
            self._count("images_deleted", len(deleted.ids))
        return deleted.ids

    # ---- counters and audit ---------------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        with self._counter_lock:
            self.counters[name] += n

    def _log_search(self, user: User, query: str, filters: Filters, results: int) -> None:
        if self.store is not None:
            with self._audit_lock:
                self._audit.append({"action": "search", "user": user.name, "query_sha256": query,
                                    "filters": filters.record(), "results": results})

    def _flush_audit(self) -> None:
        with self._audit_lock:
            lines, self._audit = self._audit, []
        if lines and self.store is not None:
            try:
                self.store.audit(lines)
            except StoreError:
                with self._audit_lock:                   # kept for the next round
                    self._audit = lines + self._audit
                raise

    # ---- describing -----------------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"status": "ok", "images": len(self.live), "model": self.meta.get("arch"), "metric": self.metric,
                "index": self.kind, "cameras": self.live.cameras(), "time_range": self.live.time_range(),
                "camera_index_needed": self.takes_cameras, "sie_cameras": self.sie_cameras,
                "store": "milvus" if is_milvus(self.path) else "sqlite" if self.store is not None else
                "file (read-only)",
                "writable": self.store is not None, "retention_s": self.retention_s, "token_required": False}

    def stats(self) -> dict:
        with self._counter_lock:
            counters = dict(self.counters)
        return dict(counters, images=len(self.live), uptime_s=round(time.time() - self.started, 1))

    def item(self, item: int) -> dict:
        self.live.refresh()                      # what other workers committed or deleted (one read if nothing)
        found = self.live.describe(item)
        if found is None:
            raise ServiceError(404, f"no gallery item {item} (never added, or deleted)")
        path = found.pop("path")
        return {"id": item, "name": Path(path).name, **found}

    def image_path(self, item: int) -> Path:
        """The file of gallery item ``item``: only paths the gallery holds are ever opened."""
        self.live.refresh()
        found = self.live.describe(item)
        if found is None:
            raise ServiceError(404, f"no gallery item {item} (never added, or deleted)")
        path = Path(found["path"])
        if not path.is_file():
            raise ServiceError(404, f"gallery item {item}'s image is not on disk any more")
        return path

    # ---- searching ------------------------------------------------------------------------------------------
    def _results(self, features: np.ndarray, filters: Filters, exclude: int | None = None) -> list[dict]:
        try:
            hits = self.live.search(features, filters.k, filters.cameras, filters.start, filters.end, exclude)
        except StoreError as e:
            raise ServiceError(e.status, str(e)) from None
        limit = np.inf if filters.max_distance is None else filters.max_distance
        out: list[dict] = []
        for i, d in hits:
            if d >= limit or len(out) == filters.k:
                continue
            found = self.live.describe(i)
            if found is None:                            # deleted during this search
                continue
            path = found.pop("path")
            out.append({"rank": len(out) + 1, "distance": round(d, 6), "name": Path(path).name, **found})
        return out

    def _embed(self, images: list, camera_index: int | None) -> np.ndarray:
        """Embeddings of uploaded crops, each with ``camera_index`` for a model that embeds cameras (required
        then, checked against the cameras it knows; ignored otherwise)."""
        if not self.takes_cameras:
            return self.extractor(images).numpy()
        known = f"0..{self.sie_cameras - 1}" if self.sie_cameras else "0.."
        if camera_index is None:
            raise ServiceError(422, "this gallery's model embeds each crop's camera (TransReID's SIE): give "
                                    f"camera_index ({known}, as the model's training data numbered its cameras)")
        if camera_index < 0 or (self.sie_cameras is not None and camera_index >= self.sie_cameras):
            raise ServiceError(422, f"camera_index {camera_index} is outside {known}: the model knows "
                                    f"{self.sie_cameras} cameras")
        return self.extractor(images, cameras=[camera_index] * len(images)).numpy()

    def search_image(self, data: bytes, filters: Filters | None = None, camera_index: int | None = None,
                     user: User = ANONYMOUS) -> list[dict]:
        """The gallery ranked for an uploaded crop (``camera_index``: its camera, for a model that embeds it)."""
        _require(user, "search")
        filters = (filters or Filters()).check()
        image = self.decode(data)
        features = self._embed([image], camera_index)
        self._count("searches")
        results = self._results(features, filters)
        self._log_search(user, hashlib.sha256(data).hexdigest(), filters, len(results))
        return results

    def search_item(self, item: int, filters: Filters | None = None, user: User = ANONYMOUS) -> list[dict]:
        """The gallery ranked for gallery item ``item`` (itself left out)."""
        _require(user, "search")
        filters = (filters or Filters()).check()
        self.item(item)
        features = self.live.vector(item)
        self._count("searches_by_item")
        results = self._results(features, filters, exclude=item)
        self._log_search(user, f"item:{item}", filters, len(results))
        return results

    # ---- uploads --------------------------------------------------------------------------------------------
    def decode(self, data: bytes):
        """An uploaded crop as an RGB image, decoded as ``reidkit search`` decodes a file (EXIF orientation, 16-bit
        and float images); a :class:`ServiceError` for an empty, oversized, over-large-in-pixels or undecodable
        upload (the pixel count is read from the header, before decoding)."""
        try:
            if not data:
                raise ServiceError(400, "the upload is empty: send an image file")
            if len(data) > self.max_upload_bytes:
                raise ServiceError(413, f"the upload has {len(data)} bytes; the limit is {self.max_upload_bytes}")
            try:
                return decode_rgb(data, "the upload", max_pixels=self.max_pixels)
            except BadImageError as e:
                reason = e.bad[0][1]
                if "decompression bomb" in reason:
                    raise ServiceError(413, f"the image is {reason}") from None
                raise ServiceError(400, f"the upload is not an image reidkit can read ({reason[:200]})") from None
        except ServiceError:
            self._count("refused")
            raise

    def _writable(self) -> Any:
        if self.store is None:
            raise ServiceError(409, f"{self.path} is a gallery file, served read-only: import it into a store to add "
                                    f"or delete (reidkit gallery import {self.path} --out "
                                    f"{self.path.with_suffix('.db')}), then serve the store")
        return self.store

    def add(self, files: list[bytes], camera: str | None = None, t: float | None = None,
            camera_index: int | None = None, track: str | None = None, user: User = ANONYMOUS) -> dict:
        """Embed uploaded crops and commit them in one transaction: ``{"ids", "new"}``, one each (an upload whose
        bytes the gallery holds already maps to that item, ``new`` false).  Nothing is kept of a failed add."""
        _require(user, "add")
        store = self._writable()
        if not files:
            raise ServiceError(400, "send one or more images (multipart field 'images')")
        if len(files) > MAX_ADD_FILES:
            raise ServiceError(413, f"{len(files)} images in one add; at most {MAX_ADD_FILES}")
        _finite(t, "time")
        images = [self.decode(data) for data in files]          # every upload checked before anything is kept
        digests = [hashlib.sha256(data).hexdigest() for data in files]
        self.uploads.mkdir(parents=True, exist_ok=True)
        targets = [str((self.uploads / f"{d[:32]}.png").resolve()) for d in digests]   # our name, never the client's
        features = self._embed(images, camera_index)
        created = []
        try:
            for target, image in zip(targets, images):
                if not os.path.exists(target):
                    tmp = target + ".tmp"
                    image.save(tmp, format="PNG")
                    os.replace(tmp, target)
                    created.append(target)
            ids, new = store.add(features, targets, cameras=[camera] * len(files), times=[t] * len(files),
                                 tracks=[track] * len(files), crop_sha256=digests, owned=True,
                                 model=self.meta.get("weights_sha256"),
                                 audit={"user": user.name, "query_sha256": ",".join(d[:16] for d in digests),
                                        "filters": {k: v for k, v in (("camera", camera), ("time", t),
                                                                      ("track", track)) if v is not None}})
        except (StoreError, OSError) as e:
            for target in targets:                              # the add is rolled back: its files go too
                Path(target + ".tmp").unlink(missing_ok=True)
                if target in created:
                    Path(target).unlink(missing_ok=True)
            if isinstance(e, StoreError):
                raise ServiceError(e.status, str(e)) from None
            raise ServiceError(507, f"could not store the crops under {self.uploads} ({e.strerror or e}); nothing "
                                    "was added") from None
        self.live.refresh()
        self._count("images_added", sum(new))
        return {"ids": ids, "new": new}

    def delete(self, ids: list[int] | None = None, crop_sha256: str | None = None, cameras: list[str] | None = None,
               start: float | None = None, end: float | None = None, user: User = ANONYMOUS) -> dict:
        """Delete the items every given selector matches (and the crops the store keeps); they are left out of
        every search from now on."""
        _require(user, "delete")
        store = self._writable()
        for name, value in (("start", start), ("end", end)):
            _finite(value, name)
        selectors = {k: v for k, v in (("ids", ids), ("crop_sha256", crop_sha256), ("cameras", cameras),
                                       ("start", start), ("end", end)) if v not in (None, [])}
        if not selectors:
            raise ServiceError(422, "say what to delete: ids, crop_sha256, cameras, start / end")
        try:
            deleted = store.delete(ids, crop_sha256=crop_sha256, cameras=cameras, start=start, end=end,
                                   audit={"user": user.name, "filters": selectors})
        except StoreError as e:
            raise ServiceError(e.status, str(e)) from None
        self.live.forget(deleted.ids)
        self.live.refresh()
        self._count("images_deleted", len(deleted.ids))
        return {"deleted": deleted.ids, "files_removed": sum(deleted.owned)}


def _require(user: User, right: str) -> None:
    if right not in user.rights:
        raise ServiceError(403, f"user {user.name!r} may not {right} (rights: {', '.join(sorted(user.rights))})")


__all__ = ["Filters", "SearchService", "ServiceError", "parse_duration"]
