"""The gallery commands of ``reidkit``: extract, search and serve (import-onnx and export: ``model_files.py``)."""
from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch

from ..files import (
    OutputError,
    check_output_file,
    exclusive_lock,
    file_sha256,
    printable,
    refuse_outputs_over_inputs,
    remove_orphan_temporaries,
    same_file,
    write_text_atomic,
)
from ..logs import outputs_summary
from ..names import counted
from ..recipe_files import load_recipe
from .gallery_commands import add_gallery_commands
from .gallery_model import check_gallery_weights, gallery_extractor
from .milvus import is_milvus
from .model_files import add_model_file_commands
from .store import GalleryStore, is_store

log = logging.getLogger("reidkit")


def split_overrides(words: list[str]) -> tuple[list[str], list[str]]:
    """``(paths, overrides)``: the ``key.path=value`` words of ``words`` that name no existing file are recipe
    overrides, the rest paths (the one convention of every command: overrides are KEY=VALUE words)."""
    paths: list[str] = []
    overrides: list[str] = []
    for word in words:
        (overrides if OVERRIDE_WORD.match(word) and not Path(word).exists() else paths).append(word)
    return paths, overrides


OVERRIDE_WORD = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*=")


def cmd_extract(args) -> int:
    from ..data.records import find_images
    from . import FeatureExtractor, GalleryIndex
    size: tuple[int, int] | None
    args.images, words = split_overrides(args.images)
    if args.set_overrides:
        log.warning("--set is the older spelling: give recipe overrides as KEY=VALUE words, as in every command "
                    "(reidkit extract IMAGES --recipe R %s)", " ".join(args.set_overrides))
    args.overrides = [*args.overrides, *args.set_overrides, *words]
    if not args.images:
        raise ValueError("no images to embed: give image files or folders")
    existing = _open_gallery(args.add_to) if args.add_to else None
    out = args.out or args.add_to
    if out is None:
        raise ValueError("say where the gallery goes: --out FILE (or --add-to an existing gallery)")
    if existing is not None:               # the gallery's own model, as `reidkit search` embeds queries
        if args.recipe or args.arch or args.size or args.overrides:
            raise ValueError(f"--add-to {args.add_to}: the gallery records its model; leave out --recipe, --arch, "
                             "--size and recipe overrides")
        meta = existing.meta
        arch, options, size = meta["arch"], meta["model_options"], tuple(meta["image_size"])
        weights = check_gallery_weights(args.add_to, meta, args.weights)
    elif args.recipe:
        recipe = load_recipe(args.recipe, args.overrides)
        arch, options, size = recipe.model.name, recipe.model.options(), (recipe.data.height, recipe.data.width)
        weights = args.weights
    elif args.overrides:
        raise ValueError(f"{' '.join(args.overrides)}: recipe overrides need --recipe")
    else:                                  # a reidkit checkpoint says the rest itself
        arch, options, size = args.arch, {}, ((args.size[0], args.size[1]) if args.size else None)
        weights = args.weights
    if weights is None:
        raise ValueError("--weights is needed (the model to embed the images with)")
    if (args.metadata or args.metadata_csv) and not (is_store(out) or is_milvus(out)):
        raise ValueError("--metadata / --metadata-csv record each image's camera and time in a gallery store "
                         "(--out gallery.db); a gallery file takes them when served (reidkit serve --metadata)")
    if not is_milvus(out):
        check_output_file(out)             # a read-only folder or a path that is a folder: now, not after minutes
    images = find_images(args.images)
    refuse_outputs_over_inputs({"--out": out}, {"the model's weights": weights, "the recipe": args.recipe,
                                                "an image to embed": images})
    paths = [str(p.resolve()) for p in images]
    if existing is not None:
        paths = _new_paths(existing, paths, args.add_to)
        if not paths:
            return 0
    extractor = FeatureExtractor(arch, weights, device=_device(args.device), image_size=size,
                                 batch_size=args.batch_size, model_options=options)
    cameras = _sie_cameras(extractor, paths, args.sie_cameras)
    t0 = time.perf_counter()
    features, paths = extractor.embed_files(paths, progress=not args.no_progress,
                                            skip_bad_images=args.skip_bad_images, cameras=cameras)
    if args.dba > 1:
        from ..evaluation.expansion import database_augment
        features = database_augment(features, args.dba)
    seconds = time.perf_counter() - t0
    if is_store(out) or is_milvus(out):
        if args.ivf_lists is not None:
            raise ValueError("--ivf-lists: a gallery store takes its index as --index (e.g. --index 'IVF1024,Flat')")
        return _extract_into_store(args, out, existing, extractor, features, paths, seconds, weights)
    # one writer of a gallery at a time; --add-to reads the gallery again under the lock, so that images another
    # process added while these were embedded are kept
    with exclusive_lock(out, f"the gallery {out}", wait_s=600):
        remove_orphan_temporaries(Path(out).parent, [Path(out).name])
        if existing is not None:
            index = GalleryIndex.load(args.add_to)
            if index.meta.get("weights_sha256") != existing.meta.get("weights_sha256"):
                raise ValueError(f"{args.add_to} was rebuilt with another model while these images were embedded; "
                                 "run the command again")
            fresh = set(_new_paths(index, paths, None))
            keep = [i for i, p in enumerate(paths) if p in fresh]
            features, paths = features[keep], [paths[i] for i in keep]
            if paths:
                index.add(features, paths)
        else:
            index = GalleryIndex(features, paths, args.metric, args.ivf_lists, meta=_gallery_record(extractor, weights),
                                 index=args.index)
        index.save(out)
    print(f"{len(paths)} images -> {out} ({len(index)} in all, {index.description} index): {index.dim}-d "
          f"{extractor.model_name} embeddings at {extractor.image_size[0]}x{extractor.image_size[1]}, "
          f"{index.metric} ({len(paths) / seconds:.1f} img/s)")
    print(outputs_summary("written", [("gallery", Path(out))], f"search it: reidkit search {out} QUERY.jpg "
                                                              f"--picture ranked.png"))
    return 0


def _open_gallery(path: str):
    """A gallery in Milvus, a gallery store or a gallery file, for ``--add-to``."""
    from . import GalleryIndex
    if is_milvus(path):
        from .milvus import MilvusGallery
        return MilvusGallery(path)
    return GalleryStore(path) if is_store(path) else GalleryIndex.load(path)


def _gallery_record(extractor, weights: str, fingerprint: str | None = None) -> dict:
    """What a new gallery records of the model that embedded it (``search``, ``--add-to`` and ``serve`` embed
    with the same)."""
    return {"arch": extractor.model_name, "weights": str(Path(weights).resolve()),
            "weights_sha256": fingerprint or file_sha256(weights), "image_size": list(extractor.image_size),
            "model_options": extractor.model_options}


def _extract_into_store(args, out: str, existing, extractor, features, paths: list[str], seconds: float,
                        weights: str) -> int:
    """Commit the embeddings into a gallery store (a new one with ``--out``, with its index snapshot; or the one
    of ``--add-to``), in transactions of 5,000 rows: every row committed stays, whoever else writes."""
    from .live import LiveGallery
    from .metadata import metadata_source
    from .milvus import MilvusGallery
    if existing is not None and not isinstance(existing, (GalleryStore, MilvusGallery)):
        raise ValueError(f"--add-to {args.add_to} is a gallery file and --out {out} a store: import the file first "
                         f"(reidkit gallery import {args.add_to} --out {out})")
    same = existing is not None and (out == args.add_to or (
        not is_milvus(out) and Path(out).resolve() == Path(args.add_to).resolve()))
    store = existing if same else None
    fingerprint = file_sha256(weights)            # once: checked against the store's by every add below
    if store is None:
        if existing is not None:
            raise ValueError(f"--add-to {args.add_to} with --out {out}: a store is added to in place; leave --out out")
        kind = MilvusGallery if is_milvus(out) else GalleryStore
        store = kind.create(out, metric=args.metric, index=args.index or "flat", dim=features.shape[1],
                            meta=_gallery_record(extractor, weights, fingerprint))
    source = metadata_source(getattr(args, "metadata", None), getattr(args, "metadata_csv", None))
    found = source(paths) if source is not None else None
    added = 0
    x = features.numpy() if hasattr(features, "numpy") else features
    for s in range(0, len(paths), 5000):
        part = paths[s:s + 5000]
        cameras = found.cameras[s:s + 5000] if found is not None else None
        times = [None if t != t else float(t) for t in found.times[s:s + 5000]] if found is not None else None
        _, new = store.add(x[s:s + 5000], part, cameras=cameras, times=times, model=fingerprint)
        added += sum(new)
    if added < len(paths):
        print(f"{counted(len(paths) - added, 'image')} already in {out}: left out")
    snapshot = None
    if existing is None and isinstance(store, GalleryStore):   # its index built now, so `serve` starts at once
        snapshot = LiveGallery.open(store, snapshot=False).save_snapshot()
    print(f"{added} images -> {out} ({len(store)} in all, a gallery {'in Milvus' if is_milvus(out) else 'store'}; "
          f"{store.index} index): {store.dim}-d "
          f"{extractor.model_name} embeddings at {extractor.image_size[0]}x{extractor.image_size[1]}, "
          f"{store.metric} ({len(paths) / seconds:.1f} img/s)")
    store.close()                             # the last connection: SQLite folds the WAL into the file
    files = [] if is_milvus(out) else [("gallery store", Path(out))]
    files += [("index snapshot", snapshot)] if snapshot else []
    print(outputs_summary("written", files, f"search it: reidkit search {out} QUERY.jpg; serve it: reidkit serve "
                                            f"{out}"))
    return 0


def _new_paths(gallery, paths: list[str], name: str | None) -> list[str]:
    """``paths`` less those already in ``gallery`` (said when ``name`` is given)."""
    known = gallery.known_paths(paths) if isinstance(gallery, GalleryStore) else set(gallery.paths)
    kept = [p for p in paths if p not in known]
    if name is not None and len(kept) < len(paths):
        print(f"{counted(len(paths) - len(kept), 'image')} already in {name}: left out")
    return kept


def _sie_cameras(extractor, paths: list[str], source: str | None) -> list[int] | None:
    """Each image's camera index for a model that embeds cameras (``--sie-cameras``), None for one that does not;
    the option is refused where it would change nothing, and required where the model needs it."""
    from .metadata import sie_camera_indices
    if not extractor.takes_cameras:
        if source:
            raise ValueError(f"--sie-cameras {source}: {extractor.model_name} does not embed cameras (only a model "
                             "trained with model.sie_cameras does); leave the option out")
        return None
    if not source:
        raise ValueError(f"{extractor.model_name} embeds each image's camera (TransReID's SIE, model.sie_cameras "
                         f"= {extractor.num_cameras}): say where they come from with --sie-cameras DATASET (the "
                         "file names of market1501, dukemtmc, msmt17 or cuhk03) or --sie-cameras FILE.csv (header "
                         "path,camera_index; 0-based, as the training data's reader numbered the cameras)")
    return sie_camera_indices(paths, source)


def _device(name: str) -> str:
    """``auto`` -> the first GPU when there is one, else the CPU (ONNX Runtime); a ``ValueError`` naming a device
    that is not one."""
    from ..engine.device import resolve_device
    try:
        return str(resolve_device(name))
    except RuntimeError as e:
        raise ValueError(f"--device {name}: {str(e).splitlines()[0][:160]} (give auto, cpu, cuda or cuda:N)") from None


def cmd_search(args) -> int:
    from ..data.records import find_images
    if args.max_distance is not None and not args.max_distance > 0:
        raise ValueError(f"--max-distance {args.max_distance}: give a distance above 0")
    if is_milvus(args.gallery):
        from .milvus import MilvusGallery
        unused = [f"--{name.replace('_', '-')}" for name in ("nprobe", "ef_search", "refine", "qe")
                  if getattr(args, name)]
        if unused:
            raise ValueError(f"{' '.join(unused)}: a Milvus gallery searches with Milvus's own settings")
        milvus = MilvusGallery(args.gallery)
        meta, size, metric = milvus.meta, len(milvus), milvus.metric

        def ranked(features) -> list[list[tuple[str, float]]]:
            return [[(str((milvus.describe(i) or {}).get("path")), d) for i, d in milvus.search(row, args.top_k)]
                    for row in features.numpy()]
    else:
        index, allowed = _searched_index(args)
        meta, size, metric = index.meta, len(index) if allowed is None else int(allowed.sum()), index.metric

        def ranked(features) -> list[list[tuple[str, float]]]:
            if args.qe > 0:                                  # alpha-QE over the index's own nearest neighbours
                import torch.nn.functional as F

                from ..evaluation.expansion import expand_with_neighbours
                _, nearest = index.search(features, args.qe, allowed=allowed)
                neighbours = F.normalize(torch.from_numpy(index.vectors(nearest.clip(min=0))).float(), dim=-1)
                features = expand_with_neighbours(F.normalize(features.float(), dim=1), neighbours, 3.0,
                                                  include_self=False)
            distances, indices = index.search(features, args.top_k, allowed=allowed)
            return [[(index.paths[g], float(d)) for g, d in zip(gi, di) if g >= 0]      # -1: IVF found < k
                    for gi, di in zip(indices.tolist(), distances.tolist())]
    weights = check_gallery_weights(args.gallery, meta, args.weights)
    for out in (args.json, args.picture):
        if out:
            check_output_file(out)
    images = find_images(args.queries)
    refuse_outputs_over_inputs({"--json": args.json, "--picture": args.picture},
                               {"the gallery": args.gallery, "the model's weights": weights,
                                "a query image": images})
    if args.json and args.picture and same_file(args.json, args.picture):
        raise OutputError(f"--json and --picture are both {args.json}: give each its own file")
    queries = [str(p.resolve()) for p in images]
    extractor = gallery_extractor(args.gallery, meta, weights, _device(args.device))
    features, queries = extractor.embed_files(queries, skip_bad_images=args.skip_bad_images,
                                              cameras=_sie_cameras(extractor, queries, args.sie_cameras))
    limit = float("inf") if args.max_distance is None else args.max_distance
    results: list[dict[str, Any]] = [{"query": q, "matches": [{"path": path, "distance": d} for path, d in found
                                                              if d < limit]}
                                     for q, found in zip(queries, ranked(features))]
    for r in results:
        print(printable(r["query"]))
        if not r["matches"] and args.max_distance is not None:
            print(f"  no gallery image nearer than {args.max_distance}")
        for rank, m in enumerate(r["matches"], 1):
            print(f"  {rank:3d}  {m['distance']:.4f}  {printable(m['path'])}")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1))
        print(f"results -> {args.json}")
    if args.picture:
        from ..reporting.ranked_lists import QUERY, ranked_rows_image
        rows = [(r["query"], [(m["path"], QUERY, f"#{rank} {m['distance']:.3f}")
                              for rank, m in enumerate(r["matches"], 1)]) for r in results]
        ranked_rows_image(rows, args.picture, f"top-{args.top_k} of {size} gallery images ({metric})")
        print(f"picture -> {args.picture}")
    return 0


def _searched_index(args):
    """The faiss index ``reidkit search`` ranks (a store's live index with its deleted items masked, or a gallery
    file's), with the search settings given, and the mask of what may be returned (None: everything)."""
    from . import GalleryIndex
    allowed = None
    if is_store(args.gallery):                        # the store's rows, as the service searches them
        from .live import LiveGallery
        live = LiveGallery.open(args.gallery)
        index, allowed = live.index, live.mask()
        if len(live) == 0:
            raise ValueError(f"{args.gallery}: the gallery store holds no items")
    else:
        index = GalleryIndex.load(args.gallery)
    for name in ("nprobe", "ef_search", "refine"):
        if getattr(args, name) is not None:
            setattr(index, name, getattr(args, name))
    return index, allowed


def cmd_serve(args) -> int:
    try:
        from .web import check_serve_options, serve
    except ImportError:                                  # pragma: no cover - the optional extra is missing
        raise ImportError("reidkit serve needs FastAPI and uvicorn: pip install 'reidkit[serve]'") from None
    from .service import parse_duration
    if args.max_upload_mb < 1:
        raise ValueError(f"--max-upload-mb {args.max_upload_mb}: give at least 1")
    check_serve_options(args.host, args.port, args.workers, args.max_upload_mb << 20, args.max_pixels)
    if args.uploads and Path(args.uploads).exists() and not Path(args.uploads).is_dir():
        raise ValueError(f"--uploads {args.uploads} is a file: give a folder for the added crops")
    retention = parse_duration(args.retention) if args.retention is not None else None
    if retention is not None and not (is_store(args.gallery) or is_milvus(args.gallery)):
        raise ValueError(f"--retention: {args.gallery} is a gallery file, served read-only; serve a store")
    serve(args.gallery, host=args.host, port=args.port, token=args.token, users=args.users, workers=args.workers,
          weights=args.weights, metadata=args.metadata, metadata_csv=args.metadata_csv, uploads=args.uploads,
          device=_device(args.device), max_upload_bytes=args.max_upload_mb << 20, max_pixels=args.max_pixels,
          retention_s=retention)
    return 0


def _add_sie_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--sie-cameras", metavar="SOURCE",
                   help=f"for a model that embeds each {what}'s camera (TransReID's SIE): the camera indices from the "
                        "file names of a dataset (market1501, dukemtmc, msmt17, cuhk03: numbered as reidkit's reader "
                        "numbers them) or from a CSV (header path,camera_index, 0-based)")


def add_deploy_commands(sub) -> None:
    """Register extract, search and serve (and, from model_files, import-onnx and export) on the ``reidkit``
    parser's subcommands."""
    p = sub.add_parser("extract", help="embed gallery images with a trained model -> a searchable gallery file")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively); KEY=VALUE words "
                   "among them are recipe overrides (with --recipe), as in every command, e.g. model.last_stride=2")
    p.add_argument("--weights", help="reidkit checkpoint, state_dict, or an exported .onnx (fp32 or int8, run "
                   "by ONNX Runtime); with --add-to, the gallery's own unless given")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--recipe", help="take the model and image size from this recipe (checked against the "
                                        "checkpoint)")
    model.add_argument("--arch", help="model name, e.g. osnet_x0_25, for weights that do not record it (a bare "
                                      "state_dict, an imported model); reidkit checkpoints record it")
    p.add_argument("--set", dest="set_overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help=argparse.SUPPRESS)    # the older spelling of the KEY=VALUE words; still read, with a note
    p.set_defaults(overrides=[])              # KEY=VALUE words among the images: recipe overrides (with --recipe)
    p.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="input size (default: the checkpoint's, else 256 128)")
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    p.add_argument("--index", default=None, metavar="KIND",
                   help="flat (exact, the default), ivf, hnsw, ivfpq or hnswpq (compressed), or a faiss "
                        "index_factory text; see docs/MODELS.md")
    p.add_argument("--ivf-lists", type=int, default=None,
                   help="inverted lists of an ivf / ivfpq index (default 4 sqrt(N)); alone, means --index ivf")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--out", help="the gallery to write: a store (.db: SQLite, added to by many writers; "
                   "docs/DEPLOY.md) or a file (.npz, replaced only once complete)")
    p.add_argument("--metadata", metavar="PATTERN", help="with a store: each image's camera and time from its file "
                   "name (market1501, dukemtmc, msmt17, or a regular expression with groups camera and time)")
    p.add_argument("--metadata-csv", metavar="FILE", help="with a store: camera and time from a CSV "
                   "(header path,camera,time)")
    p.add_argument("--add-to", metavar="GALLERY", help="embed the images with this gallery's model and add them "
                   "to it (written to --out, default GALLERY itself; images already in it are left out)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave undecodable images out of the gallery (default: list them all and stop)")
    _add_sie_option(p, "image")
    p.add_argument("--dba", type=int, default=0, metavar="K",
                   help="database-side augmentation: each embedding averaged with its K nearest (default off)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("search", help="rank a gallery file's images for query images")
    p.add_argument("gallery", help="gallery store (.db) or file (.npz) written by `reidkit extract`")
    p.add_argument("queries", nargs="+", help="query image files and/or folders")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--weights", help="the model's weights, if moved since `reidkit extract`")
    p.add_argument("--nprobe", type=int, default=None, help="inverted lists scanned per query (ivf, ivfpq indices)")
    p.add_argument("--ef-search", type=int, default=None, help="graph candidates per query (hnsw indices)")
    p.add_argument("--refine", type=int, default=None,
                   help="candidates re-ranked per result, as a multiple of --top-k (ivfpq, hnswpq indices)")
    p.add_argument("--device", default="auto", help="where the queries are embedded (auto, cpu, cuda, cuda:N)")
    p.add_argument("--json", help="also write the ranked lists here")
    p.add_argument("--picture", help="also draw the ranked lists into this PNG")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave undecodable query images out (default: list them all and stop)")
    _add_sie_option(p, "query")
    p.add_argument("--max-distance", type=float, default=None, metavar="D",
                   help="only matches nearer than D (the gallery's metric; e.g. a threshold@FAR that "
                        "`reidkit eval ... eval.verification=true` printed)")
    p.add_argument("--qe", type=int, default=0, metavar="K",
                   help="alpha-query expansion over the K nearest gallery images (default off)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="a search service and its web page over a gallery file (docs/DEPLOY.md)")
    p.add_argument("gallery", help="gallery store (.db: searched, added to, deleted from) or file (.npz: "
                   "read-only) written by `reidkit extract`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="every API call must carry it (Authorization: Bearer TOKEN)")
    p.add_argument("--weights", help="the model's weights, if moved since `reidkit extract`")
    p.add_argument("--metadata", metavar="PATTERN", help="camera and time from the file names: market1501, "
                   "dukemtmc, msmt17, or a regular expression with groups camera (and time)")
    p.add_argument("--metadata-csv", metavar="FILE", help="camera and time from a CSV (header path,camera,time)")
    p.add_argument("--uploads", metavar="DIR", help="where added crops are kept (default GALLERY_added/ beside it)")
    p.add_argument("--device", default="cpu", help="where crops are embedded (cpu, cuda, cuda:N)")
    p.add_argument("--max-upload-mb", type=int, default=8, help="largest upload accepted (default 8 MiB)")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest image accepted, in pixels")
    p.add_argument("--users", metavar="FILE", help="tokens per user with their rights (search, add, delete), "
                   "hashed in a TOML file: reidkit gallery user FILE NAME --rights ...")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the gallery store (default 1)")
    p.add_argument("--retention", metavar="AGE", help="delete items (and stored crops) added longer ago than AGE, "
                   "continuously: e.g. 30d, 12h, 90m")
    p.set_defaults(func=cmd_serve)

    add_model_file_commands(sub)
    add_gallery_commands(sub)
