"""A gallery's store of record: an SQLite database (WAL) that every writer commits rows to.

    store = GalleryStore.create("gallery.db", metric="cosine", index="hnsw", dim=512, meta=model_record)
    ids = store.add(features, paths, cameras=["3", "3"], times=[t0, t1])      # one transaction
    store.delete(cameras=["3"], end=t_cut)                                  # by item, crop, camera, time
    store = GalleryStore.open("gallery.db")

Each item row holds its vector (float32, as embedded), the crop's path and, for a crop the store keeps itself (an
upload), the SHA-256 of its bytes; its camera, the time it was seen, its track id, when it was added, and the
fingerprint of the model that embedded it.  Item ids only grow: SQLite has one writer at a time and hands out
ids inside the writing transaction, so a row committed later always has a larger id than any committed before,
and a reader that has seen every row up to id N needs only ``id > N`` to catch up (:class:`LiveGallery` does).
A deleted item's row is removed (its vector goes with it) and a line in ``deletions`` (a growing sequence) says
which id went, so every reader can drop it from its search index.  An ``audit`` table records searches, adds
and deletes (``reidkit gallery audit``).

The search side (the faiss index built from these rows, kept in step, snapshotted) is
:class:`reidkit.deploy.live.LiveGallery`.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .records import Deleted, Rows, StoreError, checked_features, finite_or_none

#: the schema this reidkit writes and reads
STORE_VERSION = 1
#: what an SQLite database file starts with
SQLITE_MAGIC = b"SQLite format 3\x00"
STORE_SUFFIXES = (".db", ".sqlite", ".sqlite3")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS header (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vector BLOB NOT NULL,
    path TEXT NOT NULL UNIQUE,
    crop_sha256 TEXT,
    owned INTEGER NOT NULL DEFAULT 0,
    camera TEXT,
    time REAL,
    track TEXT,
    added_at REAL NOT NULL,
    model TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_crop ON items (crop_sha256);
CREATE INDEX IF NOT EXISTS items_camera_time ON items (camera, time);
CREATE INDEX IF NOT EXISTS items_added ON items (added_at);
CREATE TABLE IF NOT EXISTS deletions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item INTEGER NOT NULL,
    path TEXT NOT NULL,
    owned INTEGER NOT NULL,
    file_removed INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    query_sha256 TEXT,
    filters TEXT,
    results INTEGER NOT NULL
);
"""


def is_store(path: str | Path) -> bool:
    """Whether ``path`` names a gallery store (an SQLite file, or a new file with a store suffix)."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    return p.suffix.lower() in STORE_SUFFIXES


class GalleryStore:
    """A gallery's rows in an SQLite database (WAL journal: readers never wait for the writer); safe to use from
    several threads (one connection each) and several processes (SQLite's locks; a writer waits up to
    ``busy_s`` for another, then a :class:`StoreError` 503)."""

    def __init__(self, path: str | Path, busy_s: float = 30.0):
        self.path = Path(path)
        self.busy_s = busy_s
        self._local = threading.local()
        if not self.path.is_file():
            raise FileNotFoundError(f"gallery store not found: {self.path}")
        if not is_store(self.path):
            raise StoreError(f"{self.path} is not an SQLite gallery store (write one with `reidkit extract --out "
                             "gallery.db` or `reidkit gallery import`)", 400)
        header = self._read_header()
        self.metric: str = header["metric"]
        self.index: str = header["index"]
        self.dim: int = int(header["dim"])
        self.meta: dict = header["meta"]
        self.model: str = str(self.meta.get("weights_sha256") or "")

    # ---- opening --------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, metric: str, index: str, dim: int, meta: dict,
               busy_s: float = 30.0) -> GalleryStore:
        """A new, empty store at ``path`` (refused if the file exists: a gallery is never replaced by accident)."""
        from ..evaluation.distance import check_metric
        check_metric(metric)
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path} exists already: add to it (`reidkit extract --add-to {path}`), or remove it "
                             "first to start a new gallery", 409)
        from ..files import ensure_writable_dir
        ensure_writable_dir(path.parent)
        header = {"format": STORE_VERSION, "metric": metric, "index": index, "dim": int(dim), "meta": meta}
        tmp = path.with_name(path.name + ".creating")
        tmp.unlink(missing_ok=True)
        try:
            con = sqlite3.connect(tmp)
            with con:
                con.executescript(_SCHEMA)
                con.executemany("INSERT INTO header VALUES (?, ?)", [(k, json.dumps(v)) for k, v in header.items()])
            con.execute("PRAGMA journal_mode=WAL")
            con.close()
            tmp.replace(path)                         # the store appears whole, or not at all
        except sqlite3.Error as e:
            tmp.unlink(missing_ok=True)
            raise _store_error(e, path) from None
        return cls(path, busy_s)

    def _read_header(self) -> dict:
        try:
            rows = dict(self._con().execute("SELECT key, value FROM header").fetchall())
            header = {k: json.loads(v) for k, v in rows.items()}
        except (sqlite3.Error, json.JSONDecodeError) as e:
            raise StoreError(f"{self.path}: not a reidkit gallery store, or a damaged one ({type(e).__name__}: "
                             f"{str(e)[:200]})", 400) from None
        if header.get("format") != STORE_VERSION:
            raise StoreError(f"{self.path}: gallery store format {header.get('format')!r}; this reidkit reads "
                             f"{STORE_VERSION}", 400)
        for key, kind in (("metric", str), ("index", str), ("dim", int), ("meta", dict)):
            if not isinstance(header.get(key), kind):
                raise StoreError(f"{self.path}: the store's header has no valid {key!r}", 400)
        return header

    def _con(self) -> sqlite3.Connection:
        """This thread's connection (autocommit: each read sees every committed row; writes take ``BEGIN
        IMMEDIATE`` so two writers queue instead of failing mid-transaction)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self.busy_s, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")       # WAL: a commit survives a killed process
            con.execute("PRAGMA foreign_keys=ON")
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def _write(self, work) -> Any:
        """Run ``work(connection)`` in one write transaction: all of it is committed, or none."""
        con = self._con()
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise _store_error(e, self.path) from None
        try:
            out = work(con)
            con.execute("COMMIT")
            return out
        except BaseException as e:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(e, sqlite3.Error):
                raise _store_error(e, self.path) from None
            raise

    # ---- rows -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._con().execute("SELECT count(*) FROM items").fetchone()[0])

    def last_id(self) -> int:
        """The largest item id ever handed out (0 for a new store)."""
        row = self._con().execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        return int(row[0]) if row else 0

    def add(self, features, paths: Sequence[str], *, cameras: Sequence[str | None] | None = None,
            times: Sequence[float | None] | None = None, tracks: Sequence[str | None] | None = None,
            crop_sha256: Sequence[str | None] | None = None, owned: bool = False, model: str | None = None,
            audit: dict | None = None) -> tuple[list[int], list[bool]]:
        """Commit items in one transaction: ``(ids, new)``, one per path.  A path the store holds already keeps its
        item (``new`` False; its row unchanged), so adding the same crop twice gives one item.  ``model``: the
        fingerprint of the weights that embedded ``features`` (refused unless it is the store's).  ``audit``: an
        audit line (``user``, ``query_sha256``, ``filters``) committed with the rows."""
        n = len(paths)
        x = checked_features(self.path, features, n, self.dim, self.model, model)
        cameras = list(cameras) if cameras is not None else [None] * n
        times = [finite_or_none(t, "a time") for t in times] if times is not None else [None] * n
        tracks = list(tracks) if tracks is not None else [None] * n
        hashes = list(crop_sha256) if crop_sha256 is not None else [None] * n
        if not len(cameras) == len(times) == len(tracks) == len(hashes) == n:
            raise StoreError("cameras, times, tracks and hashes must give one value per item", 422)
        now = time.time()

        def work(con: sqlite3.Connection) -> tuple[list[int], list[bool]]:
            ids, new = [], []
            for i in range(n):
                cur = con.execute(
                    "INSERT INTO items (vector, path, crop_sha256, owned, camera, time, track, added_at, model) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO NOTHING",
                    (x[i].tobytes(), str(paths[i]), hashes[i], int(owned), cameras[i] or None, times[i],
                     tracks[i] or None, now, self.model))
                if cur.rowcount:
                    ids.append(int(cur.lastrowid or 0))
                    new.append(True)
                else:
                    ids.append(int(con.execute("SELECT id FROM items WHERE path = ?", (str(paths[i]),)).fetchone()[0]))
                    new.append(False)
            if audit is not None:
                self._audit(con, "add", len(ids), **audit)
            return ids, new
        return self._write(work)

    def rows_after(self, last_id: int, limit: int | None = None) -> Rows:
        """The items with ids above ``last_id``, in id order (at most ``limit``)."""
        sql = "SELECT id, vector, path, camera, time, track FROM items WHERE id > ? ORDER BY id"
        params: tuple = (last_id,)
        if limit is not None:
            sql += " LIMIT ?"
            params = (last_id, limit)
        return self._rows(self._con().execute(sql, params).fetchall())

    def rows(self, ids: Iterable[int]) -> Rows:
        """The items ``ids`` that still exist, in id order."""
        wanted = sorted({int(i) for i in ids})
        found: list[tuple] = []
        for s in range(0, len(wanted), 500):
            chunk = wanted[s:s + 500]
            found += self._con().execute(
                f"SELECT id, vector, path, camera, time, track FROM items WHERE id IN ({','.join('?' * len(chunk))})"
                " ORDER BY id", chunk).fetchall()
        return self._rows(found)

    def _rows(self, rows: list[tuple]) -> Rows:
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        return Rows(np.array([r[0] for r in rows], dtype=np.int64), vectors, [r[2] for r in rows],
                    [r[3] or "" for r in rows], np.array([math.nan if r[4] is None else r[4] for r in rows],
                                                         dtype=np.float64), [r[5] or "" for r in rows])

    def ids(self) -> np.ndarray:
        """Every item id the store holds, ascending."""
        return np.array([r[0] for r in self._con().execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)

    def known_paths(self, paths: Sequence[str]) -> set[str]:
        """Those of ``paths`` the store holds."""
        found: set[str] = set()
        paths = [str(p) for p in paths]
        for s in range(0, len(paths), 500):
            chunk = paths[s:s + 500]
            found |= {r[0] for r in self._con().execute(
                f"SELECT path FROM items WHERE path IN ({','.join('?' * len(chunk))})", chunk)}
        return found

    def item_info(self, item: int) -> dict | None:
        """An item's path, camera, time, track, when added and crop hash (None: no such item)."""
        row = self._con().execute("SELECT path, camera, time, track, added_at, crop_sha256 FROM items WHERE id = ?",
                                  (int(item),)).fetchone()
        if row is None:
            return None
        return {"path": row[0], "camera": row[1], "time": row[2], "track": row[3], "added_at": row[4],
                "crop_sha256": row[5]}

    def summary(self) -> dict:
        """Items per camera, when the first and last were added, deletions and audit lines so far."""
        con = self._con()
        cameras = con.execute("SELECT coalesce(camera, ''), count(*) FROM items GROUP BY 1 ORDER BY 1").fetchall()
        first, last = con.execute("SELECT min(added_at), max(added_at) FROM items").fetchone()
        return {"items": len(self), "last_id": self.last_id(), "cameras": dict(cameras), "added": (first, last),
                "deleted": con.execute("SELECT count(*) FROM deletions").fetchone()[0],
                "audit_lines": con.execute("SELECT count(*) FROM audit").fetchone()[0]}

    # ---- deleting -------------------------------------------------------------------------------------------
    def count(self, ids: Sequence[int] | None = None, *, crop_sha256: str | None = None,
              cameras: Sequence[str] | None = None, start: float | None = None, end: float | None = None,
              added_before: float | None = None) -> int:
        """How many items :meth:`delete` with the same selectors would delete."""
        clauses, params = _selector(ids, crop_sha256, cameras, start, end, added_before)
        where = " AND ".join(clauses) or "1"
        return int(self._con().execute(f"SELECT count(*) FROM items WHERE {where}", params).fetchone()[0])

    def last_deletion(self) -> int:
        row = self._con().execute("SELECT seq FROM sqlite_sequence WHERE name = 'deletions'").fetchone()
        return int(row[0]) if row else 0

    def watermarks(self) -> tuple[int, int]:
        """``(last item id, last deletion)`` handed out so far, in one read: a reader whose own are the same has
        every committed row and deletion."""
        rows = dict(self._con().execute(
            "SELECT name, seq FROM sqlite_sequence WHERE name IN ('items', 'deletions')").fetchall())
        return int(rows.get("items", 0)), int(rows.get("deletions", 0))

    def deletions_after(self, seq: int) -> tuple[int, list[int]]:
        """``(last_seq, ids)``: the items deleted after deletion ``seq``."""
        rows = self._con().execute("SELECT seq, item FROM deletions WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
        return (int(rows[-1][0]) if rows else seq), [int(r[1]) for r in rows]

    def delete(self, ids: Sequence[int] | None = None, *, crop_sha256: str | None = None,
               cameras: Sequence[str] | None = None, start: float | None = None, end: float | None = None,
               added_before: float | None = None, audit: dict | None = None) -> Deleted:
        """Delete the items that match every selector given (ids; a stored crop's hash; cameras; seen within
        ``[start, end]``; added before ``added_before``, seconds since the epoch) in one transaction, and the
        crop files the store owns (after the commit).  At least one selector is needed."""
        clauses, params = _selector(ids, crop_sha256, cameras, start, end, added_before)
        if not clauses:
            raise StoreError("say what to delete: item ids, a crop hash, cameras, a time range or an age", 422)
        where = " AND ".join(clauses)
        now = time.time()

        def work(con: sqlite3.Connection) -> Deleted:
            rows = con.execute(f"SELECT id, path, owned FROM items WHERE {where} ORDER BY id", params).fetchall()
            con.executemany("INSERT INTO deletions (item, path, owned, at) VALUES (?, ?, ?, ?)",
                            [(r[0], r[1], r[2], now) for r in rows])
            con.executemany("DELETE FROM items WHERE id = ?", [(r[0],) for r in rows])
            if audit is not None:
                self._audit(con, "delete", len(rows), **audit)
            return Deleted([int(r[0]) for r in rows], [r[1] for r in rows], [bool(r[2]) for r in rows])
        deleted = self._write(work)
        self.remove_deleted_files()
        return deleted

    def remove_deleted_files(self) -> int:
        """Remove the crop files of deleted items that the store owned and that are still on disk (a process
        killed between a delete's commit and its file removal leaves them for the next call); how many went."""
        pending = self._con().execute("SELECT seq, path FROM deletions WHERE owned = 1 AND file_removed = 0 "
                                      "ORDER BY seq").fetchall()
        done = []
        for seq, path in pending:
            # the same bytes may have been added again since (a new item of the same stored file): keep it then
            if self._con().execute("SELECT 1 FROM items WHERE path = ?", (path,)).fetchone() is None:
                try:
                    Path(path).unlink(missing_ok=True)
                except OSError:
                    continue
            done.append((seq,))
        if done:
            self._write(lambda con: con.executemany("UPDATE deletions SET file_removed = 1 WHERE seq = ?", done))
        return len(done)

    # ---- audit ----------------------------------------------------------------------------------------------
    @staticmethod
    def _audit(con: sqlite3.Connection, action: str, results: int, user: str = "", query_sha256: str | None = None,
               filters: dict | None = None) -> None:
        con.execute("INSERT INTO audit (at, user, action, query_sha256, filters, results) VALUES (?, ?, ?, ?, ?, ?)",
                    (time.time(), user, action, query_sha256, json.dumps(filters, sort_keys=True) if filters
                     else None, int(results)))

    def audit(self, lines: Sequence[dict]) -> None:
        """Commit audit lines (``action``, ``results`` and optionally ``user``, ``query_sha256``, ``filters``)."""
        if lines:
            self._write(lambda con: [self._audit(con, **line) for line in lines])

    def audit_rows(self, since: float | None = None, user: str | None = None, action: str | None = None,
                   limit: int | None = None) -> list[dict]:
        """The audit lines, oldest first (filtered by time, user and action)."""
        clauses, params = [], []
        for clause, value in (("at >= ?", since), ("user = ?", user), ("action = ?", action)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        sql = "SELECT at, user, action, query_sha256, filters, results FROM audit"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY seq"
        if limit is not None:
            sql = f"SELECT * FROM ({sql.replace(' ORDER BY seq', ' ORDER BY seq DESC')} LIMIT {int(limit)}) " \
                  "ORDER BY at"
        return [{"at": r[0], "user": r[1], "action": r[2], "query_sha256": r[3],
                 "filters": json.loads(r[4]) if r[4] else None, "results": r[5]}
                for r in self._con().execute(sql, params).fetchall()]


def _selector(ids: Sequence[int] | None, crop_sha256: str | None, cameras: Sequence[str] | None,
              start: float | None, end: float | None, added_before: float | None) -> tuple[list[str], list]:
    """SQL clauses and their parameters for a delete's selectors."""
    clauses: list[str] = []
    params: list = []
    if ids is not None:
        ids = [int(i) for i in ids]
        if not ids:
            return ["0"], []
        clauses.append(f"id IN ({','.join('?' * len(ids))})")
        params += ids
    if crop_sha256 is not None:
        clauses.append("crop_sha256 = ?")
        params.append(crop_sha256)
    if cameras:
        clauses.append(f"camera IN ({','.join('?' * len(cameras))})")
        params += list(cameras)
    for clause, value, what in (("time >= ?", start, "start"), ("time <= ?", end, "end"),
                                ("added_at < ?", added_before, "added_before")):
        value = finite_or_none(value, what)
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return clauses, params


def _store_error(e: sqlite3.Error, path: Path) -> StoreError:
    """An SQLite failure as a :class:`StoreError` naming the database: busy (503), full (507), other (500)."""
    text = str(e)
    if "locked" in text or "busy" in text:
        return StoreError(f"the gallery store {path} is busy (another writer held it past the wait); nothing was "
                          "changed: try again", 503)
    if "full" in text or "disk I/O" in text:
        return StoreError(f"could not write the gallery store {path} ({text}; the disk may be full); nothing was "
                          "changed", 507)
    if "readonly" in text:
        return StoreError(f"the gallery store {path} is read-only here ({text}); nothing was changed", 503)
    return StoreError(f"the gallery store {path}: {type(e).__name__}: {text}", 500)


__all__ = ["Deleted", "GalleryStore", "Rows", "STORE_SUFFIXES", "StoreError", "is_store"]
