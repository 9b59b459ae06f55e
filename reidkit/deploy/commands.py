"""The deployment commands of ``reidkit``: extract, search, import-onnx, export (with ``--int8``)."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.checkpoint import describe_tensors, non_finite_tensors
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
from .gallery_model import check_gallery_weights, gallery_extractor

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
    existing = GalleryIndex.load(args.add_to) if args.add_to else None
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
    check_output_file(out)                 # a read-only folder or a path that is a folder: now, not after minutes
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
            meta = {"arch": extractor.model_name, "weights": str(Path(weights).resolve()),
                    "weights_sha256": file_sha256(weights), "image_size": list(extractor.image_size),
                    "model_options": extractor.model_options}
            index = GalleryIndex(features, paths, args.metric, args.ivf_lists, meta=meta, index=args.index)
        index.save(out)
    print(f"{len(paths)} images -> {out} ({len(index)} in all, {index.description} index): {index.dim}-d "
          f"{extractor.model_name} embeddings at {extractor.image_size[0]}x{extractor.image_size[1]}, "
          f"{index.metric} ({len(paths) / seconds:.1f} img/s)")
    print(outputs_summary("written", [("gallery", Path(out))], f"search it: reidkit search {out} QUERY.jpg "
                                                              f"--picture ranked.png"))
    return 0


def _new_paths(gallery, paths: list[str], name: str | None) -> list[str]:
    """``paths`` less those already in ``gallery`` (said when ``name`` is given)."""
    known = set(gallery.paths)
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
    """``auto`` -> the first GPU when there is one, else the CPU (ONNX Runtime)."""
    from ..engine.device import resolve_device
    return str(resolve_device(name))


def cmd_search(args) -> int:
    from ..data.records import find_images
    from . import GalleryIndex
    if args.max_distance is not None and not args.max_distance > 0:
        raise ValueError(f"--max-distance {args.max_distance}: give a distance above 0")
    index = GalleryIndex.load(args.gallery)
    if args.nprobe is not None:
        index.nprobe = args.nprobe
    if args.ef_search is not None:
        index.ef_search = args.ef_search
    if args.refine is not None:
        index.refine = args.refine
    meta = index.meta
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
    if args.qe > 0:                                  # alpha-QE over the index's own nearest neighbours
        import torch.nn.functional as F

        from ..evaluation.expansion import expand_with_neighbours
        _, nearest = index.search(features, args.qe)
        neighbours = F.normalize(torch.from_numpy(index.vectors(nearest.clip(min=0))).float(), dim=-1)
        features = expand_with_neighbours(F.normalize(features.float(), dim=1), neighbours, 3.0, include_self=False)
    distances, indices = index.search(features, args.top_k)
    limit = float("inf") if args.max_distance is None else args.max_distance
    results: list[dict[str, Any]] = [{"query": q, "matches": [{"path": index.paths[g], "distance": float(d)}
                                        for g, d in zip(gi, di) if g >= 0 and d < limit]}   # -1: IVF found < k
               for q, gi, di in zip(queries, indices.tolist(), distances.tolist())]
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
        ranked_rows_image(rows, args.picture, f"top-{args.top_k} of {len(index)} gallery images ({index.metric})")
        print(f"picture -> {args.picture}")
    return 0


def cmd_import_onnx(args) -> int:
    from ..engine.checkpoint import save_checkpoint
    from . import import_onnx_osnet
    from .onnx_import import onnx_input_size
    check_output_file(args.out)
    refuse_outputs_over_inputs({"--out": args.out}, {"the ONNX file": args.file})
    state = import_onnx_osnet(args.file, args.arch)
    size = onnx_input_size(args.file)
    # its BatchNorms are folded (identity statistics): fine-tuning first measures real ones (train.bn_stats=auto)
    save_checkpoint({"state_dict": state, "arch": args.arch, "source": str(args.file), "bn_stats": "recalibrate"}
                    | ({"trained_image_size": list(size)} if size else {}), args.out)
    print(f"{args.file} -> {args.out} ({args.arch}, {sum(v.numel() for v in state.values())} values)")
    return 0


def cmd_export(args) -> int:
    """Trained weights -> ONNX (checked against torch), and with ``--int8`` an int8 model calibrated on images,
    checked against the fp32 one on the recipe's query and gallery."""
    import numpy as np
    import onnxruntime as ort

    from ..engine.checkpoint import load_recipe_model
    from ..models.heads import embed, takes_cameras
    from .optimize import export_onnx
    recipe = load_recipe(args.recipe, args.overrides)
    int8_path = Path(args.out).with_suffix(".int8.onnx") if args.int8 else None
    for out in (args.out, int8_path):
        if out is not None:
            check_output_file(out)
    refuse_outputs_over_inputs({"--out": args.out, "the int8 model": int8_path},
                               {"the weights": args.weights, "the recipe": args.recipe})
    model, spec = load_recipe_model(recipe, args.weights)
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise ValueError(f"{args.weights}: {describe_tensors(bad)} hold NaN or infinite values (a diverged run?); "
                         "an export would give NaN embeddings. Export an earlier checkpoint")
    size = (recipe.data.height, recipe.data.width)
    x, feed = torch.randn(2, 3, *size), {}
    cameras = None
    if takes_cameras(model):                       # TransReID's SIE: a second input, each image's camera index
        if int8_path is not None:
            raise ValueError(f"{args.weights}: the model embeds each image's camera (TransReID's SIE); its int8 "
                             "export is not supported (the fp32 export is: leave out --int8)")
        cameras = torch.tensor([0, int(spec.options["sie_cameras"]) - 1])     # the first and the last camera
        feed = {"cameras": cameras.numpy()}
    path = export_onnx(model, args.out, size, spec=spec)
    with torch.inference_mode():
        expected = embed(model, x, cameras).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy(), **feed})[0]
    diff = float(np.abs(got - expected).max())
    print(f"{args.weights} -> {path} ({recipe.model.name}, input N x 3 x {size[0]} x {size[1]}, "
          f"output N x {got.shape[1]}); ONNX Runtime vs torch max |diff| {diff:.2e}")
    if not np.isfinite(got).all() or not np.isfinite(expected).all() or not diff < 1e-3:   # NaN fails too
        print(f"reidkit export: error: {path} does not reproduce the model (max |diff| {diff:.2e}, "
              f"{int((~np.isfinite(got)).sum())} non-finite outputs); do not deploy it", file=sys.stderr)
        return 1
    code = _export_int8(args, recipe, spec, path, int8_path) if int8_path is not None else 0
    print(outputs_summary("written", [("ONNX model", path)] + ([("int8 model", int8_path)] if int8_path else []),
                          f"use it: reidkit extract GALLERY_DIR --weights {path} --out gallery.npz"))
    return code


def _export_int8(args, recipe, spec, fp32_path: Path, int8_path: Path) -> int:
    """Quantise, time both models on this machine, say which to deploy (recorded in the int8 file), then check
    the int8 model's mAP against the fp32 one's."""
    from ..data.combine import build_recipe_dataset
    from ..data.records import find_images
    from ..engine.device import describe_cpu
    from .onnx_model import calibration_batches, compare_on_dataset, measure_speed, quantize_onnx, record_int8_check
    if args.calibration:
        paths, source = [str(p) for p in find_images(args.calibration)], args.calibration
    else:
        dataset = build_recipe_dataset(recipe.data)
        paths, source = [r.path for r in dataset.train], f"{dataset.name} train"
    count = min(args.calibration_images, len(paths))
    batches = list(calibration_batches(paths, spec.image_size, spec.mean, spec.std, count))
    quantize_onnx(fp32_path, int8_path, batches, args.calibration_method)
    print(f"int8 -> {int8_path} (static, {args.calibration_method} ranges from {counted(count, 'image')} of "
          f"{source})")
    cpu, features = describe_cpu()
    threads = torch.get_num_threads()
    speed = measure_speed({"fp32": fp32_path, "int8": int8_path}, np.concatenate(batches)[:SPEED_BATCH], threads)
    speedup = speed["int8"] / speed["fp32"]
    check = {"cpu": cpu, "cpu_features": features, "threads": threads, "fp32_images_per_s": round(speed["fp32"], 1),
             "int8_images_per_s": round(speed["int8"], 1), "speedup": round(speedup, 3)}
    print(f"speed on this machine ({cpu}; {', '.join(features) or 'no AVX-512 / VNNI / AMX'}; {threads} threads, "
          f"ONNX Runtime): fp32 {speed['fp32']:.1f} img/s, int8 {speed['int8']:.1f} img/s: "
          f"{deploy_advice(speedup, fp32_path, int8_path)}")
    if args.int8_if_faster and speedup <= 1.0:
        int8_path.unlink()
        print(f"--int8-if-faster: {int8_path} removed; deploy {fp32_path}")
        return 0
    if args.no_check:
        record_int8_check(int8_path, check)
        return 0
    results = compare_on_dataset({"fp32": fp32_path, "int8": int8_path}, recipe, progress=not args.no_progress)
    for name, (result, ips) in results.items():
        print(f"  {name}: mAP {100 * result.mAP:.2f}  rank-1 {100 * result.cmc[0]:.2f}  {ips:.1f} img/s "
              "(evaluation pass)")
    drop = 100 * (results["fp32"][0].mAP - results["int8"][0].mAP)
    ok = drop <= args.max_map_drop
    record_int8_check(int8_path, check | {"fp32_mAP": round(100 * results["fp32"][0].mAP, 2),
                                          "int8_mAP": round(100 * results["int8"][0].mAP, 2)})
    print(f"int8 vs fp32 on the recipe's query/gallery: {speedup:.2f}x the speed, mAP {-drop:+.2f} points "
          f"({'within' if ok else 'BEYOND'} --max-map-drop {args.max_map_drop})")
    return 0 if ok else 1


#: images per timed batch when export compares the fp32 and int8 models' speed
SPEED_BATCH = 64


def deploy_advice(speedup: float, fp32_path: Path, int8_path: Path) -> str:
    """Which model to deploy on this machine, from int8's speed over fp32's."""
    if speedup >= 1.1:
        return f"int8 is {speedup:.2f}x the fp32 speed here: deploy {int8_path}"
    if speedup >= 0.95:
        return f"int8 is {speedup:.2f}x the fp32 speed here, no gain: keep {fp32_path}"
    return (f"int8 is {speedup:.2f}x the fp32 speed here, SLOWER: keep {fp32_path} (on this CPU the fp32 kernels "
            "beat int8 for this network; docs/BENCHMARKS.md, int8 deployment)")


def cmd_serve(args) -> int:
    try:
        from .service import serve
    except ImportError:                                  # pragma: no cover - the optional extra is missing
        raise ImportError("reidkit serve needs FastAPI and uvicorn: pip install 'reidkit[serve]'") from None
    serve(args.gallery, host=args.host, port=args.port, token=args.token, weights=args.weights,
          metadata=args.metadata, metadata_csv=args.metadata_csv, uploads=args.uploads, device=_device(args.device),
          max_upload_bytes=args.max_upload_mb << 20, max_pixels=args.max_pixels)
    return 0


def _add_sie_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--sie-cameras", metavar="SOURCE",
                   help=f"for a model that embeds each {what}'s camera (TransReID's SIE): the camera indices from the "
                        "file names of a dataset (market1501, dukemtmc, msmt17, cuhk03: numbered as reidkit's reader "
                        "numbers them) or from a CSV (header path,camera_index, 0-based)")


def add_deploy_commands(sub) -> None:
    """Register extract, search, serve, import-onnx and export on the ``reidkit`` parser's subcommands."""
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
    p.add_argument("--out", help="gallery file to write (.npz; replaced only once complete)")
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
    p.add_argument("gallery", help="gallery file written by `reidkit extract`")
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
    p.add_argument("gallery", help="gallery file written by `reidkit extract`")
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
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("import-onnx", help="map a BN-folded OSNet ONNX export onto reidkit's model")
    p.add_argument("file")
    p.add_argument("--arch", required=True, help="e.g. osnet_x0_25")
    p.add_argument("--out", required=True, help="output .pth (a state_dict checkpoint)")
    p.set_defaults(func=cmd_import_onnx)

    p = sub.add_parser("export", help="trained weights -> ONNX (BN folded, dynamic batch), checked with onnxruntime")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True, help="output .onnx")
    p.add_argument("--int8", action="store_true", help="also write OUT with .int8.onnx: ONNX Runtime static "
                   "quantisation, then its mAP against the fp32 model's on the recipe's query/gallery")
    p.add_argument("--calibration", metavar="DIR", help="images the int8 ranges are measured on "
                   "(default: the recipe's training images)")
    p.add_argument("--calibration-images", type=int, default=256, metavar="N",
                   help="how many calibration images (a seeded random sample; default 256)")
    p.add_argument("--calibration-method", default="percentile", choices=["percentile", "minmax", "entropy"],
                   help="how activation ranges are set from the calibration images (default percentile)")
    p.add_argument("--max-map-drop", type=float, default=0.5, metavar="POINTS",
                   help="fail (exit 1) when int8 loses more mAP than this (default 0.5)")
    p.add_argument("--no-check", action="store_true", help="skip the int8 accuracy check (the speed is still "
                   "measured)")
    p.add_argument("--int8-if-faster", action="store_true", help="keep the int8 model only when it is faster than "
                   "the fp32 one on this machine (else it is removed and fp32 is the one to deploy)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export)
