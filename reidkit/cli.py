"""The ``reidkit`` command: train, eval, extract, search, data (synth, summary), import-onnx, export, demo,
models, datasets."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .config import RecipeError, load_recipe
from .engine.distributed import DistributedError
from .files import OutputError, check_output_file, write_text_atomic
from .logs import setup_logging
from .names import counted

log = logging.getLogger("reidkit")


def cmd_train(args) -> int:
    """Train a recipe: alone, or as one of the processes ``torchrun`` started (data parallel)."""
    from .engine import Trainer
    from .engine.device import resolve_device
    from .engine.distributed import init_from_env, shutdown
    from .engine.run_folder import prepare_run_folder
    recipe = load_recipe(args.recipe, args.overrides)
    env = init_from_env(resolve_device(recipe.train.device).type, recipe.train.dist_timeout)
    try:
        if env.is_main:              # before the log file is opened there, and before minutes of decoding
            prepare_run_folder(recipe.train.output_dir, args.resume, args.overwrite)
        setup_logging(recipe.train.output_dir, main_process=env.is_main)
        trainer = Trainer(recipe, progress=not args.no_progress)
        result = trainer.fit(resume=args.resume)
        if result is not None:
            log.info("final:\n%s", result.summary())
        log.info("checkpoints and TensorBoard logs in %s", recipe.train.output_dir)
    finally:
        shutdown()
    return 0


def model_options(recipe) -> dict:
    """The recipe's model settings that shape a trained model (beyond its name and classes)."""
    return recipe.model.options()


def load_trained_model(recipe, weights: str):
    """A model of the recipe's architecture with the weights of a reidkit checkpoint; a checkpoint trained with
    another architecture, head or input size than the recipe's is an error naming both."""
    from .engine.checkpoint import check_against_spec, load_embedding_model
    model, spec = load_embedding_model(weights, recipe.model.name, **model_options(recipe))
    check_against_spec(spec, weights, image_size=(recipe.data.height, recipe.data.width))
    return model


def cmd_eval(args) -> int:
    from .data import build_dataset
    from .engine.device import resolve_device, set_threads
    from .engine.evaluate import build_test_caches, evaluate_model
    from .evaluation import evaluate_features
    overrides = list(args.overrides) + (["eval.rerank=true"] if args.rerank else [])
    recipe = load_recipe(args.recipe, overrides)
    setup_logging()
    set_threads(recipe.train.threads)
    device = resolve_device(recipe.train.device)
    models = [_evaluated_model(recipe, w, len(args.weights) > 1) for w in args.weights]   # before any decoding
    dataset = build_dataset(recipe.data.dataset, recipe.data.root, **recipe.data.options)
    first = args.weights[0]
    report = None if args.no_report else Path(args.report or Path(first).parent / "report_eval")
    if report is not None:
        check_output_file(report / "index.html")
    caches: dict[tuple[int, int], tuple] = {}        # decoded query / gallery images, per input size
    results: dict[str, Any] = {}
    features: list[tuple[torch.Tensor, torch.Tensor]] = []
    for weights, (model, size) in zip(args.weights, models):
        if size not in caches:
            sized = load_recipe(args.recipe, [*overrides, f"data.height={size[0]}", f"data.width={size[1]}"])
            caches[size] = build_test_caches(sized, dataset, progress=not args.no_progress)
        query, gallery = caches[size]
        model = model.to(device)
        if recipe.train.channels_last:
            model.to(memory_format=torch.channels_last)
        result, qf, gf = evaluate_model(model, query, gallery, recipe.eval, recipe.data.test_batch_size,
                                        amp=recipe.train.amp, channels_last=recipe.train.channels_last,
                                        device=device, progress=not args.no_progress, return_features=True)
        results[str(weights) if str(weights) not in results else f"{weights} (#{len(results) + 1})"] = result
        features.append((qf, gf))
    described = (f"{dataset.name}: {counted(len(query), 'query', 'queries')}, "
                 f"{counted(len(gallery), 'gallery image')}, metric {recipe.eval.metric}"
                 f"{', re-ranked' if recipe.eval.rerank else ''}")
    print(described)
    if len(features) > 1:
        from .evaluation.ensemble import concatenate_members
        qf, gf = concatenate_members(features)
        results[f"ensemble of {len(features)}"] = evaluate_features(
            qf, gf, query.pids(), gallery.pids(), query.camids(), gallery.camids(), metric=recipe.eval.metric,
            max_rank=min(recipe.eval.max_rank, len(gallery)), rerank=recipe.eval.rerank)
        for name, r in results.items():
            print(f"{name}:\n{r.summary()}")
        described += f"; ensemble: the {len(features)} models' L2-normalised embeddings concatenated"
    else:
        print(result.summary())
    if report is not None:
        from .evaluation import compute_distance
        from .evaluation.cameras import camera_pair_map
        from .reporting import write_report
        distmat = compute_distance(qf, gf, recipe.eval.metric).cpu().numpy()
        cameras = camera_pair_map(distmat, query.pids(), gallery.pids(), query.camids(), gallery.camids())
        index = write_report(report, f"reidkit eval: {', '.join(map(str, args.weights))} on {dataset.name}",
                             results, {}, query.records, gallery.records, distmat, [described],
                             num_queries=args.ranked, recipe=recipe.model_dump(mode="json"),
                             data_summary=dataset.summary(), camera_table=cameras)
        print(f"report -> {index}")
    return 0


def _evaluated_model(recipe, weights: str, ensemble: bool):
    """The model of ``weights`` and its input size.  Alone, it must be the recipe's model; in an ensemble a
    self-describing checkpoint brings its own architecture and size (a bare state_dict takes the recipe's)."""
    from .engine.checkpoint import embedding_spec, load_checkpoint, load_embedding_model
    spec = embedding_spec(load_checkpoint(weights)) if ensemble else None
    if spec is None:
        return load_trained_model(recipe, weights), (recipe.data.height, recipe.data.width)
    model, spec = load_embedding_model(weights)
    assert spec is not None
    return model, tuple(spec.image_size)


def cmd_extract(args) -> int:
    from .data.records import find_images
    from .deploy import FeatureExtractor, GalleryIndex
    size: tuple[int, int] | None
    existing = GalleryIndex.load(args.add_to) if args.add_to else None
    out = args.out or args.add_to
    if out is None:
        raise ValueError("say where the gallery goes: --out FILE (or --add-to an existing gallery)")
    if existing is not None:               # the gallery's own model, as `reidkit search` embeds queries
        if args.recipe or args.arch or args.size or args.overrides:
            raise ValueError(f"--add-to {args.add_to}: the gallery records its model; leave out --recipe, --arch, "
                             "--size and --set")
        meta = existing.meta
        arch, options, size = meta["arch"], meta["model_options"], tuple(meta["image_size"])
        weights = args.weights or meta["weights"]
    elif args.recipe:
        recipe = load_recipe(args.recipe, args.overrides)
        arch, options, size = recipe.model.name, model_options(recipe), (recipe.data.height, recipe.data.width)
        weights = args.weights
    elif args.overrides:
        raise ValueError(f"--set {' '.join(args.overrides)}: recipe overrides need --recipe")
    else:                                  # a reidkit checkpoint says the rest itself
        arch, options, size = args.arch, {}, ((args.size[0], args.size[1]) if args.size else None)
        weights = args.weights
    if weights is None:
        raise ValueError("--weights is needed (the model to embed the images with)")
    check_output_file(out)                 # a read-only folder or a path that is a folder: now, not after minutes
    paths = [str(p.resolve()) for p in find_images(args.images)]
    if existing is not None:
        known = set(existing.paths)
        kept = [p for p in paths if p not in known]
        if len(kept) < len(paths):
            print(f"{counted(len(paths) - len(kept), 'image')} already in {args.add_to}: left out")
        if not kept:
            return 0
        paths = kept
    extractor = FeatureExtractor(arch, weights, device=_device(args.device), image_size=size,
                                 batch_size=args.batch_size, model_options=options)
    t0 = time.perf_counter()
    features, paths = extractor.embed_files(paths, progress=not args.no_progress,
                                            skip_bad_images=args.skip_bad_images)
    if args.dba > 1:
        from .evaluation.expansion import database_augment
        features = database_augment(features, args.dba)
    seconds = time.perf_counter() - t0
    if existing is not None:
        index = existing
        index.add(features, paths)
    else:
        meta = {"arch": extractor.model_name, "weights": str(Path(weights).resolve()),
                "image_size": list(extractor.image_size), "model_options": extractor.model_options}
        index = GalleryIndex(features, paths, args.metric, args.ivf_lists, meta=meta, index=args.index)
    index.save(out)
    print(f"{len(paths)} images -> {out} ({len(index)} in all, {index.description} index): {index.dim}-d "
          f"{extractor.model_name} embeddings at {extractor.image_size[0]}x{extractor.image_size[1]}, "
          f"{index.metric} ({len(paths) / seconds:.1f} img/s)")
    return 0


def _device(name: str) -> str:
    """``auto`` -> the first GPU when there is one, else the CPU (ONNX Runtime)."""
    from .engine.device import resolve_device
    return str(resolve_device(name))


def cmd_search(args) -> int:
    from .data.records import find_images
    from .deploy import FeatureExtractor, GalleryIndex
    index = GalleryIndex.load(args.gallery)
    if args.nprobe is not None:
        index.nprobe = args.nprobe
    if args.ef_search is not None:
        index.ef_search = args.ef_search
    if args.refine is not None:
        index.refine = args.refine
    meta = index.meta
    if "arch" not in meta:
        raise ValueError(f"{args.gallery}: no record of the model that embedded the gallery "
                         "(write it with `reidkit extract`)")
    weights = args.weights or meta["weights"]
    for out in (args.json, args.picture):
        if out:
            check_output_file(out)
    queries = [str(p.resolve()) for p in find_images(args.queries)]
    from .deploy.extractor import check_image_size
    size = check_image_size(meta.get("image_size", ()), f"{args.gallery}: the metadata's image_size")
    extractor = FeatureExtractor(meta["arch"], weights, device=_device(args.device),
                                 image_size=size, model_options=meta["model_options"])
    features, queries = extractor.embed_files(queries, skip_bad_images=args.skip_bad_images)
    if args.qe > 0:                                  # alpha-QE over the index's own nearest neighbours
        import torch.nn.functional as F

        from .evaluation.expansion import expand_with_neighbours
        _, nearest = index.search(features, args.qe)
        neighbours = F.normalize(torch.from_numpy(index.vectors(nearest.clip(min=0))).float(), dim=-1)
        features = expand_with_neighbours(F.normalize(features.float(), dim=1), neighbours, 3.0, include_self=False)
    distances, indices = index.search(features, args.top_k)
    results: list[dict[str, Any]] = [{"query": q, "matches": [{"path": index.paths[g], "distance": float(d)}
                                        for g, d in zip(gi, di) if g >= 0]}    # -1: IVF found fewer than k
               for q, gi, di in zip(queries, indices.tolist(), distances.tolist())]
    for r in results:
        print(r["query"])
        for rank, m in enumerate(r["matches"], 1):
            print(f"  {rank:3d}  {m['distance']:.4f}  {m['path']}")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1))
        print(f"results -> {args.json}")
    if args.picture:
        from .reporting.ranked_lists import QUERY, ranked_rows_image
        rows = [(r["query"], [(m["path"], QUERY) for m in r["matches"]]) for r in results]
        ranked_rows_image(rows, args.picture, f"top-{args.top_k} of {len(index)} gallery images ({index.metric})")
        print(f"picture -> {args.picture}")
    return 0


def cmd_synth(args) -> int:
    from .data.synthesis import generate
    t0 = time.perf_counter()
    generate(args.out, num_ids=args.ids, num_cameras=args.cameras, seed=args.seed,
             num_distractors=args.distractors)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    if args.grid:
        from .data import build_dataset
        from .reporting.grid import sample_grid
        dataset = build_dataset("synthetic", args.out, num_cameras=args.cameras)
        print(f"sample grid: {sample_grid(dataset.train, args.grid)}")
    return 0


def cmd_summary(args) -> int:
    """Describe a dataset (and with --check-images decode every image); never writes anything."""
    from .data import build_dataset
    from .data.datasets.registry import loader_takes
    from .data.images import check_images, describe_bad_images
    read_only = {"generate": False} if loader_takes(args.name, "generate") else {}
    dataset = build_dataset(args.name, args.root, **read_only)
    print(dataset.summary())
    if args.check_images:
        splits = {"train": dataset.train, "query": dataset.query, "gallery": dataset.gallery}
        bad = {name: check_images([r.path for r in records]) for name, records in splits.items()}
        total = sum(len(records) for records in splits.values())
        print(f"decoded {total} images: {sum(len(b) for b in bad.values())} bad")
        if any(bad.values()):
            print(describe_bad_images({k: v for k, v in bad.items() if v}, limit=10**9))
            return 1
    return 0


def cmd_import_onnx(args) -> int:
    from .deploy import import_onnx_osnet
    from .engine.checkpoint import save_checkpoint
    state = import_onnx_osnet(args.file, args.arch)
    # its BatchNorms are folded (identity statistics): fine-tuning first measures real ones (train.bn_stats=auto)
    save_checkpoint({"state_dict": state, "arch": args.arch, "source": str(args.file), "bn_stats": "recalibrate"},
                    args.out)
    print(f"{args.file} -> {args.out} ({args.arch}, {sum(v.numel() for v in state.values())} values)")
    return 0


def cmd_export(args) -> int:
    """Trained weights -> ONNX (checked against torch), and with ``--int8`` an int8 model calibrated on images,
    checked against the fp32 one on the recipe's query and gallery."""
    import numpy as np
    import onnxruntime as ort

    from .deploy.optimize import export_onnx
    from .engine.checkpoint import EmbeddingSpec, embedding_spec, load_checkpoint
    recipe = load_recipe(args.recipe, args.overrides)
    int8_path = Path(args.out).with_suffix(".int8.onnx") if args.int8 else None
    for out in (args.out, int8_path):
        if out is not None:
            check_output_file(out)
    model = load_trained_model(recipe, args.weights)
    size = (recipe.data.height, recipe.data.width)
    spec = embedding_spec(load_checkpoint(args.weights)) or EmbeddingSpec(recipe.model.name, model_options(recipe),
                                                                          size)
    path = export_onnx(model, args.out, size, spec=spec)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    print(f"{args.weights} -> {path} ({recipe.model.name}, input N x 3 x {size[0]} x {size[1]}, "
          f"output N x {got.shape[1]}); ONNX Runtime vs torch max |diff| {diff:.2e}")
    if diff >= 1e-3:
        return 1
    return _export_int8(args, recipe, spec, path, int8_path) if int8_path is not None else 0


def _export_int8(args, recipe, spec, fp32_path: Path, int8_path: Path) -> int:
    from .data import build_dataset
    from .data.records import find_images
    from .deploy.onnx_model import calibration_batches, compare_on_dataset, quantize_onnx
    if args.calibration:
        paths, source = [str(p) for p in find_images(args.calibration)], args.calibration
    else:
        dataset = build_dataset(recipe.data.dataset, recipe.data.root, **recipe.data.options)
        paths, source = [r.path for r in dataset.train], f"{dataset.name} train"
    count = min(args.calibration_images, len(paths))
    batches = calibration_batches(paths, spec.image_size, spec.mean, spec.std, count)
    quantize_onnx(fp32_path, int8_path, batches, args.calibration_method)
    print(f"int8 -> {int8_path} (static, {args.calibration_method} ranges from {counted(count, 'image')} of "
          f"{source})")
    if args.no_check:
        return 0
    results = compare_on_dataset({"fp32": fp32_path, "int8": int8_path}, recipe, progress=not args.no_progress)
    for name, (result, speed) in results.items():
        print(f"  {name}: mAP {100 * result.mAP:.2f}  rank-1 {100 * result.cmc[0]:.2f}  {speed:.1f} img/s")
    drop = 100 * (results["fp32"][0].mAP - results["int8"][0].mAP)
    speedup = results["int8"][1] / results["fp32"][1]
    ok = drop <= args.max_map_drop
    print(f"int8 vs fp32 on the recipe's query/gallery: {speedup:.2f}x the speed, mAP {-drop:+.2f} points "
          f"({'within' if ok else 'BEYOND'} --max-map-drop {args.max_map_drop})")
    return 0 if ok else 1


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(args.output, epochs=args.epochs, progress=not args.no_progress, reference=args.reference,
             overwrite=args.overwrite)
    return 0


def cmd_models(args) -> int:
    from .models import describe_models
    for name, doc in describe_models():
        print(f"{name:28s} {doc}")
    return 0


def cmd_recipes(args) -> int:
    from .config import describe_recipes
    for name, doc in describe_recipes():
        print(f"{name:32s} {doc}")
    return 0


def cmd_datasets(args) -> int:
    from .data import describe_datasets
    for name, doc in describe_datasets():
        print(f"{name:16s} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reidkit", description="Person re-identification toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe")
    p.add_argument("recipe", help="YAML recipe file, or the name of a recipe shipped with reidkit (`reidkit recipes`)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5")
    p.add_argument("--resume", help="continue from a training checkpoint (last.pth)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in train.output_dir (deleted first; refused without this flag)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate trained weights on the recipe's query/gallery")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--weights", required=True, action="append",
                   help="checkpoint (best.pth, last.pth or a state_dict); given several times, each model is "
                        "evaluated and so is their ensemble (embeddings concatenated)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    p.add_argument("--report", help="report folder (default: report_eval/ beside the weights)")
    p.add_argument("--no-report", action="store_true", help="print the metrics only")
    p.add_argument("--ranked", type=int, default=8, help="ranked lists (queries) drawn in the report")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("extract", help="embed gallery images with a trained model -> a searchable gallery file")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--weights", help="reidkit checkpoint, state_dict, or an exported .onnx (fp32 or int8, run "
                   "by ONNX Runtime); with --add-to, the gallery's own unless given")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--recipe", help="take the model and image size from this recipe (checked against the "
                                        "checkpoint)")
    model.add_argument("--arch", help="model name, e.g. osnet_x0_25, for weights that do not record it (a bare "
                                      "state_dict, an imported model); reidkit checkpoints record it")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="dotted recipe overrides (with --recipe), e.g. --set model.last_stride=2")
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
    p.add_argument("--qe", type=int, default=0, metavar="K",
                   help="alpha-query expansion over the K nearest gallery images (default off)")
    p.set_defaults(func=cmd_search)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write the built-in synthetic dataset (Market-1501 layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--ids", type=int, default=200)
    p.add_argument("--cameras", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distractors", type=int, default=150)
    p.add_argument("--grid", help="also save a PNG grid of sample crops here")
    p.set_defaults(func=cmd_synth)
    p = data.add_parser("summary", help="print a dataset's identities / images / cameras per split")
    p.add_argument("name")
    p.add_argument("--root", required=True)
    p.add_argument("--check-images", action="store_true", help="decode every image, list bad ones")
    p.set_defaults(func=cmd_summary)

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
    p.add_argument("--no-check", action="store_true", help="skip the int8 accuracy check")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> HTML report (a few minutes)")
    p.add_argument("--output", default="demo_output")
    p.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    p.add_argument("--reference", default=None, help="OSNet x0.25 ONNX export shown as pretrained reference "
                   "(default: ../shared/data/weights/osnet_x0_25_msmt17.onnx when present)")
    p.add_argument("--overwrite", action="store_true", help="replace the run of an earlier demo in --output")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the model names a recipe's model.name can take")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("recipes", help="list the recipes shipped with reidkit (train them by name)")
    p.set_defaults(func=cmd_recipes)
    p = sub.add_parser("datasets", help="list the dataset names a recipe's data.dataset can take")
    p.set_defaults(func=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # recipe overrides may come after options too (`reidkit train R --no-progress train.epochs=5`), which
    # argparse alone rejects: take the leftover KEY=VALUE words as overrides
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(w.startswith("-") or "=" not in w for w in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except (RecipeError, ValueError, FileNotFoundError, FloatingPointError, DistributedError, OutputError) as e:
        print(f"reidkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
