"""A gallery in Milvus: the store and the search index in one, for galleries beyond one machine.

    reidkit extract crops/ --weights osnet.onnx --out milvus://milvus.example:19530/people
    reidkit serve milvus://milvus.example:19530/people --workers 4        # on as many machines as you like
    reidkit extract crops/ --weights osnet.onnx --out milvus+lite://gallery.milvus.db/people   # embedded (tests)

:class:`MilvusGallery` gives the service what the SQLite store and its live faiss index give it (adds, deletes by
the same selectors, searches with the camera / time filters, items by id, the audit), through pymilvus: one
collection holds an item per row (``id``, ``vector``, ``path``, ``crop_sha256``, ``owned``, ``camera``,
``time`` with ``has_time``, ``track``, ``added_at``, ``model``) under a FLAT or HNSW index (the ``flat`` and
``hnsw`` kinds), filters are Milvus expressions, and every read is at Strong consistency, so a row any writer
inserted, or deleted, is seen by every worker's next search.  ``COLLECTION__reidkit`` keeps the gallery's
record (metric, index, dimension, the model) and ``COLLECTION__audit`` the audit lines.

What changes against the SQLite store (docs/DEPLOY.md): Milvus has no transactions, so an add is one insert
request (Milvus applies it whole or not at all) and its audit line a second; an item's id is the first 53 bits of
its path's SHA-256 (the same crop maps to the same item from any writer, and a JavaScript page can hold it; two
paths with the same id are refused, never overwritten); ``milvus+lite://`` (Milvus Lite, one process) serves one
worker.  The cluster's token comes from the ``REIDKIT_MILVUS_TOKEN`` environment variable, never a command line.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .records import Deleted, StoreError, checked_features, finite_or_none

SCHEMES = ("milvus://", "milvus+lite://")
INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW"}
METRICS = {"cosine": "COSINE", "euclidean": "L2"}
FORMAT = 1
#: rows fetched per query page
PAGE = 16_384


def is_milvus(spec: str | Path) -> bool:
    return str(spec).startswith(SCHEMES)


def parse_spec(spec: str) -> tuple[str, str]:
    """``milvus://HOST:PORT/COLLECTION`` -> (``http://HOST:PORT``, collection); ``milvus+lite://PATH/COLLECTION``
    -> (``PATH``, collection), PATH a Milvus Lite file (``.db``)."""
    for scheme in SCHEMES:
        if spec.startswith(scheme):
            rest = spec[len(scheme):]
            where, _, collection = rest.rstrip("/").rpartition("/")
            if not where or not collection or not collection.replace("_", "").isalnum():
                raise ValueError(f"{spec}: give {scheme}{'HOST:PORT' if scheme == 'milvus://' else 'FILE.db'}"
                                 "/COLLECTION (a collection name of letters, digits and _)")
            return (f"http://{where}" if scheme == "milvus://" else where), collection
    raise ValueError(f"{spec}: not a Milvus gallery (milvus://HOST:PORT/COLLECTION or milvus+lite://FILE.db/NAME)")


def path_id(path: str) -> int:
    """An item's id: the first 53 bits of its path's SHA-256 (exact in a JavaScript number)."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()[:8], "big") >> 11


def _client(spec: str):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise ImportError("a Milvus gallery needs pymilvus: pip install 'reidkit[milvus]'") from None
    uri, _ = parse_spec(spec)
    if spec.startswith("milvus+lite://"):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        return MilvusClient(uri=uri, token=os.environ.get("REIDKIT_MILVUS_TOKEN", ""))
    except Exception as e:  # noqa: BLE001 - pymilvus raises its own types; name the server
        raise StoreError(f"{spec}: cannot reach Milvus ({type(e).__name__}: {str(e)[:200]})", 503) from None


def _quote(text: str) -> str:
    return json.dumps(str(text))                 # a Milvus string literal: double quotes, escapes as JSON


class MilvusGallery:
    """A gallery in one Milvus collection (see the module): store and search in one object."""

    def __init__(self, spec: str):
        self.path = spec
        self.uri, self.collection = parse_spec(spec)
        self.client = _client(spec)
        if not self.client.has_collection(self.collection):
            raise FileNotFoundError(f"{spec}: no such gallery collection (write one with `reidkit extract --out "
                                    f"{spec}`)")
        record = self._get(self._record_name, [1], ["value"])
        if not record:
            raise StoreError(f"{spec}: the collection has no reidkit record ({self._record_name})", 400)
        header = json.loads(record[0]["value"])
        if header.get("format") != FORMAT:
            raise StoreError(f"{spec}: reidkit Milvus gallery format {header.get('format')!r}; this reidkit reads "
                             f"{FORMAT}", 400)
        self.metric, self.kind, self.dim, self.meta = header["metric"], header["index"], header["dim"], header["meta"]
        self.index = self.kind
        self.model: str = str(self.meta.get("weights_sha256") or "")

    @property
    def _record_name(self) -> str:
        return f"{self.collection}__reidkit"

    @property
    def _audit_name(self) -> str:
        return f"{self.collection}__audit"

    @classmethod
    def create(cls, spec: str, *, metric: str, index: str, dim: int, meta: dict) -> MilvusGallery:
        """A new, empty gallery collection (refused if it exists)."""
        from ..evaluation.distance import check_metric
        check_metric(metric)
        if index not in INDEX_TYPES:
            raise ValueError(f"--index {index}: a Milvus gallery takes {' or '.join(INDEX_TYPES)}")
        _, collection = parse_spec(spec)
        client = _client(spec)                      # (says how to install pymilvus when it is missing)
        from pymilvus import DataType, MilvusClient
        if client.has_collection(collection):
            raise StoreError(f"{spec} exists already: add to it (`reidkit extract --add-to {spec}`), or drop the "
                             "collection first to start a new gallery", 409)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        for name, length in (("path", 4096), ("crop_sha256", 64), ("camera", 256), ("track", 256), ("model", 64)):
            schema.add_field(name, DataType.VARCHAR, max_length=length)
        for name in ("owned", "has_time"):
            schema.add_field(name, DataType.BOOL)
        for name in ("time", "added_at"):
            schema.add_field(name, DataType.DOUBLE)
        params = client.prepare_index_params()
        params.add_index("vector", index_type=INDEX_TYPES[index], metric_type=METRICS[metric],
                         params={"M": 32, "efConstruction": 200} if index == "hnsw" else {})
        client.create_collection(collection, schema=schema, index_params=params)
        for name, fields in ((f"{collection}__reidkit", [("value", 65535)]),
                             (f"{collection}__audit", [("user", 256), ("action", 16), ("query_sha256", 2048),
                                                       ("filters", 8192)])):
            side = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            side.add_field("id", DataType.INT64, is_primary=True)
            side.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)    # Milvus wants a vector in every collection
            for field, length in fields:
                side.add_field(field, DataType.VARCHAR, max_length=length)
            if name.endswith("audit"):
                side.add_field("at", DataType.DOUBLE)
                side.add_field("results", DataType.INT64)
            side_params = client.prepare_index_params()
            side_params.add_index("dummy", index_type="FLAT", metric_type="L2")
            client.create_collection(name, schema=side, index_params=side_params)
        header = {"format": FORMAT, "metric": metric, "index": index, "dim": int(dim), "meta": meta}
        client.insert(f"{collection}__reidkit", [{"id": 1, "dummy": [0.0, 0.0], "value": json.dumps(header)}])
        return cls(spec)

    # ---- reading ----------------------------------------------------------------------------------------------
    def _get(self, collection: str, ids: Sequence[int], fields: list[str]) -> list[dict]:
        if not ids:
            return []
        return list(self.client.get(collection, ids=[int(i) for i in ids], output_fields=fields,
                                    consistency_level="Strong"))

    def _query(self, expression: str, fields: list[str]) -> list[dict]:
        """Every row matching ``expression`` (paged)."""
        out: list[dict] = []
        iterator = self.client.query_iterator(self.collection, batch_size=PAGE, filter=expression,
                                              output_fields=fields, consistency_level="Strong")
        while True:
            page = iterator.next()
            if not page:
                iterator.close()
                return out
            out += page

    def __len__(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def known_paths(self, paths: Sequence[str]) -> set[str]:
        rows = self._get(self.collection, [path_id(str(p)) for p in paths], ["path"])
        return {r["path"] for r in rows} & {str(p) for p in paths}

    def describe(self, item: int) -> dict | None:
        rows = self._get(self.collection, [item], ["path", "camera", "time", "has_time", "track"])
        if not rows:
            return None
        r = rows[0]
        return {"id": int(item), "path": r["path"], "camera": r["camera"] or None,
                "time": r["time"] if r["has_time"] else None, "track": r["track"] or None}

    def vector(self, item: int) -> np.ndarray:
        rows = self._get(self.collection, [item], ["vector"])
        if not rows:
            raise KeyError(item)
        return np.asarray(rows[0]["vector"], dtype=np.float32)[None]

    def cameras(self) -> list[str]:
        found = {r["camera"] for r in self._query('camera != ""', ["camera"])}
        return sorted(found, key=lambda c: (len(c), c))

    def time_range(self) -> list[float] | None:
        times = [r["time"] for r in self._query("has_time == true", ["time"])]
        return [float(min(times)), float(max(times))] if times else None

    def summary(self) -> dict:
        """Items per camera, when the first and last were added, audit lines (``reidkit gallery info``)."""
        rows = self._query("id >= 0", ["camera", "added_at"])
        cameras: dict[str, int] = {}
        for r in rows:
            cameras[r["camera"]] = cameras.get(r["camera"], 0) + 1
        added = [r["added_at"] for r in rows]
        audit = self.client.query(self._audit_name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return {"items": len(rows), "last_id": None, "cameras": dict(sorted(cameras.items())),
                "added": (min(added), max(added)) if added else (None, None), "deleted": None,
                "audit_lines": int(audit[0]["count(*)"])}

    def refresh(self) -> int:
        """Nothing to take in: every read is at Strong consistency."""
        return 0

    def forget(self, ids: Sequence[int]) -> None:
        """Nothing to mask: deleted rows are gone from Milvus's next search."""

    def maintain(self, final: bool = False, snapshot_every_s: float = 600.0) -> None:
        """Milvus compacts and persists its own segments."""

    def close(self) -> None:
        self.client.close()

    # ---- searching --------------------------------------------------------------------------------------------
    def search(self, features: np.ndarray, k: int, cameras: Sequence[str] | None = None, start: float | None = None,
               end: float | None = None, exclude: int | None = None, refresh: bool = True) -> list[tuple[int, float]]:
        """The ``k`` nearest items of one query, in the gallery's metric (cosine: ``1 - cos``; euclidean: squared)."""
        expression = _expression(None, None, cameras, start, end, None)
        if exclude is not None:
            expression = " and ".join(filter(None, [expression, f"id != {int(exclude)}"]))
        query = np.asarray(features, dtype=np.float32).reshape(-1)
        params = {"params": {"ef": max(64, k)}} if self.kind == "hnsw" else {}
        hits = self.client.search(self.collection, data=[query.tolist()], limit=int(k), filter=expression,
                                  search_params=params, consistency_level="Strong")[0]
        if self.metric == "cosine":
            return [(int(h["id"]), 1.0 - float(h["distance"])) for h in hits]
        return [(int(h["id"]), float(h["distance"])) for h in hits]

    # ---- writing ----------------------------------------------------------------------------------------------
    def add(self, features, paths: Sequence[str], *, cameras: Sequence[str | None] | None = None,
            times: Sequence[float | None] | None = None, tracks: Sequence[str | None] | None = None,
            crop_sha256: Sequence[str | None] | None = None, owned: bool = False, model: str | None = None,
            audit: dict | None = None) -> tuple[list[int], list[bool]]:
        """Insert items in one request: ``(ids, new)`` as :meth:`GalleryStore.add` answers them."""
        n = len(paths)
        x = checked_features(self.path, features, n, self.dim, self.model, model)
        paths = [str(p) for p in paths]
        cameras = list(cameras) if cameras is not None else [None] * n
        times = [finite_or_none(t, "a time") for t in times] if times is not None else [None] * n
        tracks = list(tracks) if tracks is not None else [None] * n
        hashes = list(crop_sha256) if crop_sha256 is not None else [None] * n
        ids = [path_id(p) for p in paths]
        held = {r["id"]: r["path"] for r in self._get(self.collection, sorted(set(ids)), ["path"])}
        clash = [(p, held[i]) for p, i in zip(paths, ids) if i in held and held[i] != p]
        if clash:
            raise StoreError(f"{self.path}: {clash[0][0]} and the stored {clash[0][1]} have the same 53-bit id; "
                             "rename one (nothing was added)", 409)
        now, rows, new, seen = time.time(), [], [], set(held)
        for i in range(n):
            new.append(ids[i] not in seen)
            if new[-1]:
                seen.add(ids[i])
                rows.append({"id": ids[i], "vector": x[i].tolist(), "path": paths[i], "crop_sha256": hashes[i] or "",
                             "owned": bool(owned), "camera": cameras[i] or "", "track": tracks[i] or "",
                             "has_time": times[i] is not None, "time": 0.0 if times[i] is None else times[i],
                             "added_at": now, "model": self.model})
        try:
            if rows:
                self.client.insert(self.collection, rows)
        except Exception as e:  # noqa: BLE001 - pymilvus's own error types
            raise StoreError(f"{self.path}: Milvus refused the insert ({type(e).__name__}: {str(e)[:200]}); "
                             "nothing was added", 503) from None
        if audit is not None:
            self.audit([{"action": "add", "results": n, **audit}])
        return ids, new

    def count(self, ids: Sequence[int] | None = None, **selectors: Any) -> int:
        return len(self._query(_selected(ids, **selectors), ["id"]))

    def delete(self, ids: Sequence[int] | None = None, *, crop_sha256: str | None = None,
               cameras: Sequence[str] | None = None, start: float | None = None, end: float | None = None,
               added_before: float | None = None, audit: dict | None = None) -> Deleted:
        """Delete the items every selector given matches, and the crop files the gallery owns."""
        expression = _selected(ids, crop_sha256=crop_sha256, cameras=cameras, start=start, end=end,
                               added_before=added_before)
        rows = sorted(self._query(expression, ["id", "path", "owned"]), key=lambda r: r["id"])
        if rows:
            self.client.delete(self.collection, ids=[int(r["id"]) for r in rows])
        for r in rows:
            if r["owned"] and not self.known_paths([r["path"]]):
                Path(r["path"]).unlink(missing_ok=True)
        if audit is not None:
            self.audit([{"action": "delete", "results": len(rows), **audit}])
        return Deleted([int(r["id"]) for r in rows], [r["path"] for r in rows], [bool(r["owned"]) for r in rows])

    # ---- audit ------------------------------------------------------------------------------------------------
    def audit(self, lines: Sequence[dict]) -> None:
        if not lines:
            return
        base = time.time_ns() // 1000
        self.client.insert(self._audit_name, [
            {"id": base * 1000 + int.from_bytes(os.urandom(2), "big") % 1000 + i, "dummy": [0.0, 0.0],
             "at": time.time(), "user": line.get("user") or "", "action": line["action"],
             "query_sha256": line.get("query_sha256") or "", "results": int(line["results"]),
             "filters": json.dumps(line.get("filters"), sort_keys=True) if line.get("filters") else ""}
            for i, line in enumerate(lines)])

    def audit_rows(self, since: float | None = None, user: str | None = None, action: str | None = None,
                   limit: int | None = None) -> list[dict]:
        clauses = [f"at >= {float(since)}" if since is not None else "", f"user == {_quote(user)}" if user else "",
                   f"action == {_quote(action)}" if action else ""]
        rows = self.client.query(self._audit_name, filter=" and ".join(c for c in clauses if c) or "id >= 0",
                                 output_fields=["at", "user", "action", "query_sha256", "filters", "results"],
                                 limit=PAGE, consistency_level="Strong")
        rows = sorted(rows, key=lambda r: (r["at"], r["id"]))[-limit if limit else 0:]
        return [{"at": r["at"], "user": r["user"], "action": r["action"], "query_sha256": r["query_sha256"] or None,
                 "filters": json.loads(r["filters"]) if r["filters"] else None, "results": r["results"]}
                for r in rows]


def _expression(ids: Sequence[int] | None, crop_sha256: str | None, cameras: Sequence[str] | None,
                start: float | None, end: float | None, added_before: float | None) -> str:
    """A Milvus filter expression for the selectors given ("" when none)."""
    clauses = []
    if ids is not None:
        clauses.append(f"id in [{', '.join(str(int(i)) for i in ids)}]" if len(ids) else "id < 0")
    if crop_sha256 is not None:
        clauses.append(f"crop_sha256 == {_quote(crop_sha256)}")
    if cameras:
        clauses.append(f"camera in [{', '.join(_quote(c) for c in cameras)}]")
    for clause, value, what in (("has_time == true and time >= {}", start, "start"),
                                ("has_time == true and time <= {}", end, "end"),
                                ("added_at < {}", added_before, "added_before")):
        value = finite_or_none(value, what)
        if value is not None:
            clauses.append(clause.format(repr(float(value))))
    return " and ".join(clauses)


def _selected(ids: Sequence[int] | None = None, **selectors: Any) -> str:
    """The expression of a delete's selectors; refused when there is none (a delete of everything)."""
    expression = _expression(ids, selectors.get("crop_sha256"), selectors.get("cameras"), selectors.get("start"),
                             selectors.get("end"), selectors.get("added_before"))
    if not expression:
        raise StoreError("say what to delete: item ids, a crop hash, cameras, a time range or an age", 422)
    return expression


__all__ = ["MilvusGallery", "is_milvus", "parse_spec", "path_id"]
