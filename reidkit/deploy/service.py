"""A search service over a gallery built by ``reidkit extract``: a JSON API and the web page that uses it.

    reidkit serve gallery.npz [--metadata market1501 | --metadata-csv seen.csv] [--port 8000] [--token T]

The gallery's own model (recorded by ``extract``, its weights checked by fingerprint) embeds uploaded crops.
Endpoints (JSON; ``docs/DEPLOY.md``):

* ``GET /`` the page; ``GET /api/health``; ``GET /api/stats`` (counters);
* ``POST /api/search`` (multipart ``image``) and ``GET /api/items/{id}/similar``: the top ``k`` gallery images,
  filtered by ``camera`` (repeatable) and a time window ``start`` / ``end``, inside the index, and nearer than
  ``max_distance`` when given (a threshold ``eval.verification`` chose);
* ``GET /api/items/{id}`` (its camera and time), ``GET /api/items/{id}/image`` (the gallery image by id: no
  path from a request reaches the disk);
* ``POST /api/items`` (multipart ``images``, optional ``camera`` and ``time``): embed and add crops; the gallery
  file is written again atomically, under its lock, one writer at a time.

A gallery whose model embeds each crop's camera (TransReID's SIE; ``/api/health`` says ``camera_index_needed``)
takes ``camera_index`` (0-based, as the model's training data numbered its cameras) with every upload: a query
parameter of ``POST /api/search``, a form field of ``POST /api/items``.

Safe by default: the command binds 127.0.0.1; with a token every ``/api`` call needs it (``Authorization: Bearer``
or ``?token=``, compared in constant time); an upload is refused past ``max_upload_bytes`` and ``max_pixels``
(decompression bombs) before it is decoded; a bad upload is a 4xx with a message.
"""
# (no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time)
import hashlib
import hmac
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ..files import exclusive_lock
from .gallery import GalleryIndex
from .gallery_model import check_gallery_weights, gallery_extractor
from .metadata import Metadata, compile_pattern, from_csv, from_names

STATIC = Path(__file__).resolve().parent / "static"
MAX_K = 200


class ServiceError(Exception):
    """A request the service refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Filters:
    """What a search keeps: the top ``k``, seen by one of ``cameras`` within ``[start, end]``, nearer than
    ``max_distance`` (the gallery's metric; e.g. a threshold ``eval.verification`` chose), each optional."""

    k: int = 10
    cameras: list[str] | None = None
    start: float | None = None
    end: float | None = None
    max_distance: float | None = None

    def check(self) -> "Filters":
        if not 1 <= self.k <= MAX_K:
            raise ServiceError(422, f"k must be between 1 and {MAX_K}, got {self.k}")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ServiceError(422, f"the time window starts after it ends ({self.start} > {self.end})")
        if self.max_distance is not None and not self.max_distance > 0:
            raise ServiceError(422, f"max_distance must be above 0, got {self.max_distance}")
        return self


class SearchService:
    """The gallery, its model and metadata, and the counters; every method is safe to call from several threads."""

    def __init__(self, gallery: str | Path, weights: str | None = None, metadata: str | None = None,
                 metadata_csv: str | Path | None = None, uploads: str | Path | None = None, device: str = "cpu",
                 max_upload_bytes: int = 8 << 20, max_pixels: int = 16_000_000, extractor: Any = None):
        self.path = Path(gallery)
        self.index = GalleryIndex.load(self.path)
        meta = self.index.meta
        if extractor is None:
            extractor = gallery_extractor(gallery, meta, check_gallery_weights(str(gallery), meta, weights), device)
        self.extractor = extractor
        # a model that embeds each crop's camera (TransReID's SIE) needs its index with every upload
        self.takes_cameras = bool(getattr(extractor, "takes_cameras", False))
        self.sie_cameras: int | None = getattr(extractor, "num_cameras", None) if self.takes_cameras else None
        self.pattern = compile_pattern(metadata) if metadata else None
        self.metadata_csv = metadata_csv
        self.metadata = self._metadata(self.index.paths)
        self.uploads = Path(uploads) if uploads is not None else self.path.with_name(self.path.stem + "_added")
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.lock = threading.Lock()
        self.counters = {"searches": 0, "searches_by_item": 0, "images_added": 0, "refused": 0}
        self.started = time.time()

    # ---- metadata -----------------------------------------------------------------------------------------
    def _metadata(self, paths: list[str]) -> Metadata:
        found = from_csv(paths, self.metadata_csv) if self.metadata_csv else from_names(paths, self.pattern)
        given = self.index.meta.get("added_metadata", {})    # what an upload said of itself
        for i, path in enumerate(paths):
            if path in given:
                camera, t = given[path]
                found.cameras[i] = camera or found.cameras[i]
                found.times[i] = float("nan") if t is None else float(t)
        return found

    def describe(self) -> dict:
        known = sorted((c for c in self.metadata.camera_names() if c), key=lambda c: (len(c), c))
        times = self.metadata.times[~np.isnan(self.metadata.times)]
        return {"status": "ok", "images": len(self.index), "model": self.index.meta.get("arch"),
                "metric": self.index.metric, "index": self.index.kind, "cameras": known,
                "time_range": [float(times.min()), float(times.max())] if len(times) else None,
                "camera_index_needed": self.takes_cameras, "sie_cameras": self.sie_cameras, "token_required": False}

    def stats(self) -> dict:
        return dict(self.counters, images=len(self.index), uptime_s=round(time.time() - self.started, 1))

    # ---- searching ----------------------------------------------------------------------------------------
    def _results(self, features: np.ndarray, filters: Filters, exclude: int | None = None) -> list[dict]:
        k = filters.k
        with self.lock:
            allowed = self.metadata.mask(filters.cameras, filters.start, filters.end)
            if allowed is not None and exclude is not None:
                allowed[exclude] = False
            if allowed is not None and not allowed.any():
                return []
            # without a filter, the item a search starts from is dropped from one more result (no selector of
            # every other id); with one, it is left out of the mask
            extra = 1 if exclude is not None and allowed is None else 0
            distances, indices = self.index.search(features, k + extra, allowed=allowed)
        limit = np.inf if filters.max_distance is None else filters.max_distance
        found = [(int(i), float(d)) for i, d in zip(indices[0], distances[0])
                 if i >= 0 and i != exclude and d < limit][:k]
        out = []
        for rank, (i, d) in enumerate(found, 1):
            out.append({"id": i, "rank": rank, "distance": round(d, 6), "name": Path(self.index.paths[i]).name,
                        **self.metadata.of(i)})
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

    def search_image(self, data: bytes, filters: Filters | None = None, camera_index: int | None = None) -> list[dict]:
        """The gallery ranked for an uploaded crop (``camera_index``: its camera, for a model that embeds it)."""
        filters = (filters or Filters()).check()
        image = self.decode(data)
        features = self._embed([image], camera_index)
        self.counters["searches"] += 1
        return self._results(features, filters)

    def search_item(self, item: int, filters: Filters | None = None) -> list[dict]:
        """The gallery ranked for gallery item ``item`` (itself left out)."""
        filters = (filters or Filters()).check()
        self._check_item(item)
        with self.lock:
            features = self.index.vectors(np.array([item]))
        self.counters["searches_by_item"] += 1
        return self._results(features, filters, exclude=item)

    def _check_item(self, item: int) -> None:
        if not 0 <= item < len(self.index):
            raise ServiceError(404, f"no gallery item {item} (the gallery holds 0..{len(self.index) - 1})")

    def item(self, item: int) -> dict:
        self._check_item(item)
        return {"id": item, "name": Path(self.index.paths[item]).name, **self.metadata.of(item)}

    def image_path(self, item: int) -> Path:
        """The file of gallery item ``item``: only paths the gallery file holds are ever opened."""
        self._check_item(item)
        path = Path(self.index.paths[item])
        if not path.is_file():
            raise ServiceError(404, f"gallery item {item}'s image is not on disk any more")
        return path

    # ---- uploads ------------------------------------------------------------------------------------------
    def decode(self, data: bytes):
        """An uploaded crop as an RGB image; a :class:`ServiceError` for an empty, oversized, over-large-in-pixels
        or undecodable upload (the pixel count is read from the header, before decoding)."""
        try:
            return self._decode(data)
        except ServiceError:
            self.counters["refused"] += 1
            raise

    def _decode(self, data: bytes):
        from PIL import Image, UnidentifiedImageError
        if not data:
            raise ServiceError(400, "the upload is empty: send an image file")
        if len(data) > self.max_upload_bytes:
            raise ServiceError(413, f"the upload has {len(data)} bytes; the limit is {self.max_upload_bytes}")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > self.max_pixels:
                    raise ServiceError(413, f"the image is {width} x {height} pixels; the limit is "
                                            f"{self.max_pixels} pixels")
                probe.load()
                return probe.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ServiceError(400, f"the upload is not an image reidkit can read ({type(e).__name__}: "
                                    f"{str(e)[:160]})") from None

    def add(self, files: list[bytes], camera: str | None = None, t: float | None = None,
            camera_index: int | None = None) -> list[int]:
        """Embed and add uploaded crops (``camera_index``: their camera, for a model that embeds it); the gallery
        file is rewritten atomically under its lock."""
        if not files:
            raise ServiceError(400, "send one or more images (multipart field 'images')")
        images = [self.decode(data) for data in files]          # every upload checked before anything is kept
        features = self._embed(images, camera_index)
        self.uploads.mkdir(parents=True, exist_ok=True)
        stored = []
        for data, image in zip(files, images):
            digest = hashlib.sha256(data).hexdigest()[:32]
            target = self.uploads / f"{digest}.png"          # our own name and encoding, never the client's
            if not target.exists():
                tmp = target.with_suffix(".tmp")
                image.save(tmp, format="PNG")
                tmp.replace(target)
            stored.append(str(target.resolve()))
        with self.lock, exclusive_lock(self.path, f"the gallery {self.path}", wait_s=60):
            first = len(self.index)
            self.index.add(features, stored)
            if camera is not None or t is not None:
                given = self.index.meta.setdefault("added_metadata", {})
                for path in stored:
                    given[path] = [camera or "", t]
            # the stored names are content hashes: only what the upload said gives a camera or a time
            self.metadata.extend([camera or ""] * len(stored), [float("nan") if t is None else t] * len(stored))
            self.index.save(self.path)
            self.counters["images_added"] += len(stored)
        return list(range(first, first + len(stored)))


def create_app(service: SearchService, token: str | None = None):
    """The FastAPI application over ``service`` (``token``: every ``/api`` call must carry it)."""
    from fastapi import FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    app = FastAPI(title="reidkit search", docs_url=None, redoc_url=None)
    page = (STATIC / "search.html").read_text()

    @app.exception_handler(ServiceError)
    async def refused(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token is not None and request.url.path.startswith("/api/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
                or request.query_params.get("token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                service.counters["refused"] += 1
                return JSONResponse({"detail": "a valid token is needed (Authorization: Bearer TOKEN)"},
                                    status_code=401)
        return await call_next(request)

    async def read_capped(upload: UploadFile) -> bytes:
        data = await upload.read(service.max_upload_bytes + 1)     # never more than the limit into memory
        if len(data) > service.max_upload_bytes:
            service.counters["refused"] += 1
            raise ServiceError(413, f"the upload is over the limit of {service.max_upload_bytes} bytes")
        return data

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict:
        return service.describe() | {"token_required": token is not None}

    @app.get("/api/stats")
    def stats() -> dict:
        return service.stats()

    @app.post("/api/search")
    async def search(image: Annotated[UploadFile, File()], k: int = 10,
                     camera: Annotated[list[str] | None, Query()] = None, start: float | None = None,
                     end: float | None = None, max_distance: float | None = None,
                     camera_index: int | None = None) -> dict:
        t0 = time.perf_counter()
        results = service.search_image(await read_capped(image), Filters(k, camera, start, end, max_distance),
                                       camera_index)
        return {"results": results, "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    @app.get("/api/items/{item}")
    def item(item: int) -> dict:
        return service.item(item)

    @app.get("/api/items/{item}/similar")
    def similar(item: int, k: int = 10, camera: Annotated[list[str] | None, Query()] = None,
                start: float | None = None, end: float | None = None, max_distance: float | None = None) -> dict:
        t0 = time.perf_counter()
        results = service.search_item(item, Filters(k, camera, start, end, max_distance))
        return {"query": service.item(item), "results": results,
                "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    @app.get("/api/items/{item}/image")
    def item_image(item: int) -> FileResponse:
        return FileResponse(service.image_path(item))

    @app.post("/api/items")
    async def add(images: Annotated[list[UploadFile], File()], camera: Annotated[str | None, Form()] = None,
                  time_seen: Annotated[float | None, Form(alias="time")] = None,
                  camera_index: Annotated[int | None, Form()] = None) -> dict:
        data = [await read_capped(f) for f in images]
        ids = service.add(data, camera, time_seen, camera_index)
        return {"ids": ids, "images": len(service.index)}

    return app


def serve(gallery: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, **options: Any) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn
    service = SearchService(gallery, **options)
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"warning: serving {gallery} on {host} without a token: anyone who reaches this port can search "
              "the gallery and add to it (--token)")
    print(f"reidkit search: {len(service.index)} images of {gallery} on http://{host}:{port}/")
    uvicorn.run(create_app(service, token), host=host, port=port, log_level="warning")


__all__ = ["Filters", "SearchService", "ServiceError", "create_app", "serve"]
