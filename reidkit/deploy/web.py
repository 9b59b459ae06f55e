"""The search service over HTTP: the FastAPI application (JSON API and page), the request-body limit, tokens and
rights, and ``reidkit serve`` (one process, or ``--workers N`` sharing a gallery store).

Handlers are plain functions that FastAPI runs in its thread pool: an embedding, a store write or a wait for
another writer never blocks the event loop.  See :mod:`reidkit.deploy.service` for what each call does.
"""
# (no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time)
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

from .access import ANONYMOUS, Users
from .milvus import is_milvus
from .service import MAX_ADD_FILES, STATIC, Filters, SearchService, ServiceError
from .store import is_store


class BodyLimit:
    """ASGI middleware: a request body over its limit is answered 413 as soon as it is known to be (from its
    Content-Length, else while it streams), before it is read whole."""

    def __init__(self, app, limit_for):
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        refusal = json.dumps({"detail": f"the request body is over the limit of {limit} bytes"}).encode()
        answered = False

        async def refuse() -> None:
            nonlocal answered
            answered = True
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": refusal})
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await refuse()
        seen = 0

        async def counted():
            nonlocal seen
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    await refuse()
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message):
            if not answered:
                await send(message)
        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not answered:
                raise


def create_app(service: SearchService, token: str | None = None, users: Users | None = None):
    """The FastAPI application over ``service`` (``token``: one user with every right; ``users``: tokens per user
    with their rights; neither: no token needed)."""
    from contextlib import asynccontextmanager

    from fastapi import Body, FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    if token is not None and users is not None:
        raise ValueError("give --token or --users, not both")
    users = users or (Users.single(token) if token is not None else Users.none())

    @asynccontextmanager
    async def lifespan(_app):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="reidkit search", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    page = (STATIC / "search.html").read_text()

    @app.exception_handler(ServiceError)
    async def refused(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        request.state.user = ANONYMOUS
        if users.required and request.url.path.startswith("/api/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
                or request.query_params.get("token", "")
            user = users.authenticate(given)
            if user is None:
                service._count("refused")
                return JSONResponse({"detail": "a valid token is needed (Authorization: Bearer TOKEN)"},
                                    status_code=401)
            request.state.user = user
        return await call_next(request)

    def read_capped(upload: UploadFile) -> bytes:
        data = upload.file.read(service.max_upload_bytes + 1)     # never more than the limit into memory
        if len(data) > service.max_upload_bytes:
            service._count("refused")
            raise ServiceError(413, f"the upload is over the limit of {service.max_upload_bytes} bytes")
        return data

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return page

    @app.get("/api/health")
    def health(request: Request) -> dict:
        user = request.state.user
        return service.describe() | {"token_required": users.required, "user": user.name or None,
                                     "rights": sorted(user.rights)}

    @app.get("/api/stats")
    def stats() -> dict:
        return service.stats()

    @app.post("/api/search")
    def search(request: Request, image: Annotated[UploadFile, File()], k: int = 10,
               camera: Annotated[list[str] | None, Query()] = None, start: float | None = None,
               end: float | None = None, max_distance: float | None = None, camera_index: int | None = None) -> dict:
        t0 = time.perf_counter()
        results = service.search_image(read_capped(image), Filters(k, camera, start, end, max_distance),
                                       camera_index, request.state.user)
        return {"results": results, "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    @app.get("/api/items/{item}")
    def item(item: int) -> dict:
        return service.item(item)

    @app.get("/api/items/{item}/similar")
    def similar(request: Request, item: int, k: int = 10, camera: Annotated[list[str] | None, Query()] = None,
                start: float | None = None, end: float | None = None, max_distance: float | None = None) -> dict:
        t0 = time.perf_counter()
        results = service.search_item(item, Filters(k, camera, start, end, max_distance), request.state.user)
        return {"query": service.item(item), "results": results,
                "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    @app.get("/api/items/{item}/image")
    def item_image(item: int) -> FileResponse:
        return FileResponse(service.image_path(item))

    @app.post("/api/items")
    def add(request: Request, images: Annotated[list[UploadFile], File()],
            camera: Annotated[str | None, Form()] = None, time_seen: Annotated[float | None, Form(alias="time")] = None,
            camera_index: Annotated[int | None, Form()] = None, track: Annotated[str | None, Form()] = None) -> dict:
        data = [read_capped(f) for f in images]
        added = service.add(data, camera or None, time_seen, camera_index, track or None, request.state.user)
        return added | {"images": len(service.live)}

    @app.delete("/api/items/{item}")
    def delete_item(request: Request, item: int) -> dict:
        service.item(item)
        return service.delete(ids=[item], user=request.state.user) | {"images": len(service.live)}

    @app.post("/api/items/delete")
    def delete_items(request: Request, ids: Annotated[list[int] | None, Body()] = None,
                     crop_sha256: Annotated[str | None, Body()] = None,
                     cameras: Annotated[list[str] | None, Body()] = None,
                     start: Annotated[float | None, Body()] = None,
                     end: Annotated[float | None, Body()] = None) -> dict:
        return service.delete(ids, crop_sha256, cameras, start, end, request.state.user) | \
            {"images": len(service.live)}

    def limit_for(path: str) -> int:
        slack = 1 << 20                                    # multipart headers and form fields
        if path == "/api/items":
            return MAX_ADD_FILES * service.max_upload_bytes + slack
        if path == "/api/search":
            return service.max_upload_bytes + slack
        return slack

    return BodyLimit(app, limit_for)


#: the environment variable through which ``serve --workers N`` hands each worker its settings
CONFIG_VARIABLE = "REIDKIT_SERVE_CONFIG"


def app_from_environment():
    """The application of one ``serve --workers N`` worker process (uvicorn's factory), from its settings."""
    config = json.loads(os.environ[CONFIG_VARIABLE])
    users = Users.load(config.pop("users")) if config.get("users") else None
    token = config.pop("token", None)
    config.pop("users", None)
    return create_app(SearchService(**config), token=token, users=users)


def check_serve_options(host: str, port: int, workers: int, max_upload_bytes: int, max_pixels: int) -> None:
    """Refuse a setting that cannot work, in one line naming it."""
    if not 0 < port < 65536:
        raise ValueError(f"--port {port}: give a port between 1 and 65535")
    if workers < 1:
        raise ValueError(f"--workers {workers}: give at least 1")
    if max_upload_bytes < 1:
        raise ValueError(f"--max-upload-mb {max_upload_bytes >> 20}: give at least 1")
    if max_pixels < 1:
        raise ValueError(f"--max-pixels {max_pixels}: give at least 1")
    if not host:
        raise ValueError("--host is empty: give an address, e.g. 127.0.0.1")


def serve(gallery: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          users: str | None = None, workers: int = 1, **options: Any) -> None:
    """Run the service with uvicorn until interrupted (``workers`` processes sharing the store)."""
    import uvicorn
    check_serve_options(host, port, workers, options.get("max_upload_bytes", 1), options.get("max_pixels", 1))
    if token is not None and users is not None:
        raise ValueError("give --token or --users, not both")
    access = Users.load(users) if users else (Users.single(token) if token is not None else Users.none())
    if workers > 1 and str(gallery).startswith("milvus+lite://"):
        raise ValueError(f"--workers {workers}: Milvus Lite is one process; serve a Milvus server "
                         "(milvus://HOST:PORT/COLLECTION) or a gallery store with several workers")
    if workers > 1 and not (is_store(gallery) or is_milvus(gallery)):
        raise ValueError(f"--workers {workers}: several workers share a gallery store; {gallery} is a file "
                         f"(import it: reidkit gallery import {gallery} --out {Path(gallery).with_suffix('.db')})")
    service = SearchService(gallery, **options)          # checked here, in this process, before any worker starts
    if host not in ("127.0.0.1", "localhost", "::1") and not access.required:
        print(f"warning: serving {gallery} on {host} without a token: anyone who reaches this port can search "
              "the gallery" + (", add to it and delete from it" if service.store is not None else "") +
              " (--token or --users)")
    print(f"reidkit search: {len(service.live)} images of {gallery} ({service.describe()['store']}) on "
          f"http://{host}:{port}/" + (f", {workers} workers" if workers > 1 else ""))
    if workers == 1:
        uvicorn.run(create_app(service, token=token if users is None else None,
                               users=access if users else None), host=host, port=port, log_level="warning")
        return
    service.live.maintain(final=True)                    # the workers open the snapshot instead of building
    os.environ[CONFIG_VARIABLE] = json.dumps({"gallery": str(gallery), "token": token, "users": users, **{
        k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}})
    uvicorn.run("reidkit.deploy.web:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


__all__ = ["BodyLimit", "create_app", "check_serve_options", "serve"]
