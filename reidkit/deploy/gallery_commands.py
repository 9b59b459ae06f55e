"""``reidkit gallery``: a gallery store's own commands (import a gallery file, describe, delete, audit, users).

    reidkit gallery import gallery.npz --out gallery.db [--metadata market1501]
    reidkit gallery info gallery.db
    reidkit gallery delete gallery.db --camera 3 --end 1700000000 [--yes]
    reidkit gallery audit gallery.db [--user alice] [--action delete] [--last 50] [--json]
    reidkit gallery user users.toml alice --rights search add
"""
from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..files import printable
from .milvus import is_milvus
from .store import GalleryStore, is_store


def _store(path: str) -> Any:
    """The gallery store (or the gallery in Milvus) that ``path`` names."""
    if is_milvus(path):
        from .milvus import MilvusGallery
        return MilvusGallery(path)
    if not is_store(path):
        raise ValueError(f"{path} is not a gallery store (.db): `reidkit gallery import {path} --out "
                         f"{Path(path).with_suffix('.db')}` makes one of a gallery file")
    return GalleryStore(path)


def cmd_import(args) -> int:
    """A gallery file (.npz) -> a new store with the same vectors, paths, model record and index (the file's
    built index becomes the store's snapshot: nothing is built again)."""
    from ..files import file_sha256
    from .gallery import GalleryIndex, _import_faiss
    from .live import write_snapshot
    from .metadata import metadata_source
    index = GalleryIndex.load(args.gallery)
    if Path(args.out).exists():
        raise ValueError(f"--out {args.out} exists already: choose a new file (a store is never replaced)")
    if not str(args.out).lower().endswith((".db", ".sqlite", ".sqlite3")):
        raise ValueError(f"--out {args.out}: a gallery store's name ends in .db (or .sqlite)")
    index._ensure_built()
    exact = index.description is not None and "PQ" not in index.description
    if not exact:
        print(f"note: {args.gallery} holds compressed codes ({index.description}): the store keeps their decoded "
              "vectors; embed the crops again (reidkit extract --out) for exact ones")
    meta = dict(index.meta)
    given = meta.pop("added_metadata", {})
    source = metadata_source(args.metadata, args.metadata_csv)
    found = source(index.paths) if source is not None else None
    cameras, times = [], []
    for i, path in enumerate(index.paths):
        camera, t = given.get(path, ["", None])
        cameras.append(camera or (found.cameras[i] if found is not None else "") or None)
        if t is None and found is not None and not np.isnan(found.times[i]):
            t = float(found.times[i])
        times.append(t)
    if "weights_sha256" not in meta and meta.get("weights") and Path(meta["weights"]).is_file():
        meta["weights_sha256"] = file_sha256(meta["weights"])
    store = GalleryStore.create(args.out, metric=index.metric, index=index.kind, dim=index.dim, meta=meta)
    vectors = index.features
    ids: list[int] = []
    for s in range(0, len(index), 5000):
        part, _ = store.add(vectors[s:s + 5000], index.paths[s:s + 5000], cameras=cameras[s:s + 5000],
                            times=times[s:s + 5000])
        ids += part
    if len(set(index.paths)) != len(index.paths):
        print(f"note: {len(index.paths) - len(set(index.paths))} paths appear twice in {args.gallery}: the store "
              "keeps one item each")
    elif ids == list(range(1, len(index) + 1)):
        write_snapshot(store, _import_faiss().serialize_index(index._index), np.asarray(ids, dtype=np.int64),
                       index.header())
    count = len(store)
    store.close()
    print(f"{count} items of {args.gallery} -> {args.out} (a gallery store; {index.kind} index, {index.metric})")
    print(f"serve it: reidkit serve {args.out}")
    return 0


def cmd_info(args) -> int:
    from .live import SNAPSHOT_SUFFIX
    store = _store(args.store)
    summary = store.summary()
    first, last = summary["added"]
    snapshot = Path(str(store.path) + SNAPSHOT_SUFFIX)
    info = {"store": str(store.path), "items": summary["items"], "last_id": summary["last_id"],
            "deleted": summary["deleted"], "metric": store.metric, "index": store.index, "dim": store.dim,
            "model": store.meta.get("arch"), "weights_sha256": store.model or None,
            "cameras": {c or "(none)": n for c, n in summary["cameras"].items()},
            "added": [_when(first), _when(last)] if first else None, "audit_lines": summary["audit_lines"],
            "snapshot": str(snapshot) if snapshot.is_file() else None}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for key, value in info.items():
        print(f"{key:>15}: {value}")
    return 0


def _when(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_delete(args) -> int:
    from .service import parse_duration
    store = _store(args.store)
    added_before = time.time() - parse_duration(args.older_than) if args.older_than else None
    selectors = dict(ids=args.ids, crop_sha256=args.crop, cameras=args.camera, start=args.start, end=args.end,
                     added_before=added_before)
    if all(v in (None, []) for v in selectors.values()):
        raise ValueError("say what to delete: --ids, --crop, --camera, --start / --end or --older-than")
    if not args.yes:
        n = store.count(**selectors)
        print(f"{n} items of {args.store} match; nothing deleted: add --yes to delete them (and the crops the store "
              "keeps)")
        return 0
    deleted = store.delete(**selectors, audit={"user": args.user, "filters": {
        k: v for k, v in vars(args).items() if k in ("ids", "crop", "camera", "start", "end", "older_than")
        and v not in (None, [])}})
    print(f"deleted {len(deleted.ids)} items of {args.store} ({sum(deleted.owned)} stored crops removed); every "
          "service of this store leaves them out from its next search")
    for path, owned in zip(deleted.paths[:20], deleted.owned[:20]):
        print(f"  {printable(path)}" + ("" if owned else "  (your file: not removed)"))
    return 0


def cmd_audit(args) -> int:
    store = _store(args.store)
    from .service import parse_duration
    since = time.time() - parse_duration(args.since) if args.since else None
    rows = store.audit_rows(since=since, user=args.user, action=args.action, limit=args.last)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'when':<23} {'user':<12} {'action':<7} {'results':>7}  query / filters")
    for r in rows:
        what = " ".join(x for x in (r["query_sha256"] and r["query_sha256"][:24],
                                    r["filters"] and json.dumps(r["filters"], sort_keys=True)) if x)
        print(f"{_when(r['at']):<23} {r['user'] or '-':<12} {r['action']:<7} {r['results']:>7}  {what}")
    print(f"({len(rows)} lines)")
    return 0


def cmd_user(args) -> int:
    from .access import add_user
    token = add_user(args.users, args.name, args.rights)
    print(f"user {args.name} ({', '.join(args.rights)}) -> {args.users}")
    print(f"token (shown once; only its SHA-256 is kept): {token}")
    return 0


def add_gallery_commands(sub) -> None:
    """Register ``reidkit gallery ...`` on the ``reidkit`` parser's subcommands."""
    gallery = sub.add_parser("gallery", help="a gallery store's commands: import, info, delete, audit, user "
                                             "(docs/DEPLOY.md)").add_subparsers(dest="gallery_command", required=True)
    p = gallery.add_parser("import", help="a gallery file (.npz) -> a new gallery store (.db)")
    p.add_argument("gallery", help="gallery file written by `reidkit extract --out X.npz`")
    p.add_argument("--out", required=True, help="the new store (.db)")
    p.add_argument("--metadata", metavar="PATTERN", help="each image's camera and time from its file name "
                   "(market1501, dukemtmc, msmt17, or a regular expression with groups camera and time)")
    p.add_argument("--metadata-csv", metavar="FILE", help="camera and time from a CSV (header path,camera,time)")
    p.set_defaults(func=cmd_import)

    p = gallery.add_parser("info", help="what a store holds: items, cameras, model, deletions, audit lines")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = gallery.add_parser("delete", help="delete items (and the crops the store keeps) by id, crop, camera, time "
                                          "or age; every service leaves them out at once")
    p.add_argument("store")
    p.add_argument("--ids", type=int, nargs="+", help="item ids")
    p.add_argument("--crop", metavar="SHA256", help="a stored crop's SHA-256 (of the uploaded bytes)")
    p.add_argument("--camera", nargs="+", help="seen by one of these cameras")
    p.add_argument("--start", type=float, help="seen at or after this time")
    p.add_argument("--end", type=float, help="seen at or before this time")
    p.add_argument("--older-than", metavar="AGE", help="added longer ago than AGE (30d, 12h, 90m)")
    p.add_argument("--user", default="cli", help="who the audit line names (default cli)")
    p.add_argument("--yes", action="store_true", help="delete (without it: say how many match, delete nothing)")
    p.set_defaults(func=cmd_delete)

    p = gallery.add_parser("audit", help="print the store's audit lines: every search, add and delete")
    p.add_argument("store")
    p.add_argument("--user")
    p.add_argument("--action", choices=["search", "add", "delete"])
    p.add_argument("--since", metavar="AGE", help="only the last AGE (e.g. 24h)")
    p.add_argument("--last", type=int, help="only the last N lines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = gallery.add_parser("user", help="add a user (or a new token for one) to a users file for serve --users")
    p.add_argument("users", help="the users file (TOML; created if absent)")
    p.add_argument("name")
    p.add_argument("--rights", nargs="+", required=True, choices=["search", "add", "delete"])
    p.set_defaults(func=cmd_user)


__all__ = ["add_gallery_commands"]
