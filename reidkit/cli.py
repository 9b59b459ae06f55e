"""The ``reidkit`` command: train, eval, extract, search, data (synth, summary), import-onnx, export, demo,
models, datasets."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .config import RecipeError
from .deploy.commands import add_deploy_commands
from .engine.checkpoint import load_trained_model
from .engine.distributed import DistributedError
from .files import OutputError, check_output_file
from .logs import browse_command, outputs_summary, setup_logging
from .names import counted
from .recipe_files import load_recipe

log = logging.getLogger("reidkit")


def cmd_train(args) -> int:
    """Train a recipe: alone, or as one of the processes ``torchrun`` started (data parallel)."""
    from .engine import Trainer
    from .engine.device import resolve_device
    from .engine.distributed import init_from_env, shutdown
    from .engine.run_folder import prepare_run_folder, record_run_file, release_run_folder
    from .engine.run_outputs import recipe_inputs
    recipe = load_recipe(args.recipe, args.overrides)
    env = init_from_env(resolve_device(recipe.train.device).type, recipe.train.dist_timeout)
    out = Path(recipe.train.output_dir)
    try:
        if env.is_main:              # before the log file is opened there, and before minutes of decoding
            inputs = recipe_inputs(recipe) | ({"the recipe file": args.recipe} if Path(args.recipe).is_file() else {})
            prepare_run_folder(out, args.resume, args.overwrite, inputs)
            new_log = not (out / "log.txt").exists()
        setup_logging(out, main_process=env.is_main)
        if env.is_main and new_log:
            record_run_file(out / "log.txt")
        trainer = Trainer(recipe, progress=not args.no_progress)
        result = trainer.fit(resume=args.resume)
        if result is not None:
            log.info("final:\n%s", result.summary())
        if env.is_main:
            log.info("%s", run_outputs_summary(out))
    finally:
        if env.is_main:
            release_run_folder(out)
        shutdown()
    return 0


def run_outputs_summary(out: Path) -> str:
    """The files a training run wrote and how to look at them."""
    report = out / "report" / "index.html"
    return outputs_summary(f"outputs in {out}", [
        ("report", report), ("best model", out / "best.pth"), ("last state", out / "last.pth"),
        ("history", out / "history.json"), ("curves", out / "curves.png"), ("log", out / "log.txt"),
        ("TensorBoard", out / "tensorboard")],
        f"look: {browse_command(report)}" if report.exists() else f"look: tensorboard --logdir {out / 'tensorboard'}")


def _new_folder(base: Path) -> Path:
    """``base``, or ``base_2``, ``base_3``, ... : the first that does not exist (an earlier report is kept)."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")
    return candidate


def cmd_eval(args) -> int:
    from .data.combine import build_recipe_dataset
    from .engine.device import resolve_device, set_threads
    from .engine.evaluate import build_test_caches, evaluate_model, evaluate_other_datasets, rank_features
    overrides = list(args.overrides) + (["eval.rerank=true"] if args.rerank else [])
    recipe = load_recipe(args.recipe, overrides)
    setup_logging()
    set_threads(recipe.train.threads)
    device = resolve_device(recipe.train.device)
    models = [_evaluated_model(recipe, w, len(args.weights) > 1) for w in args.weights]   # before any decoding
    dataset = build_recipe_dataset(recipe.data)
    first = args.weights[0]
    report = None if args.no_report else Path(args.report) if args.report else _new_folder(
        Path("reports") / f"eval_{Path(first).stem}")
    if report is not None:
        check_output_file(report / "index.html")
    caches: dict[tuple[int, int], tuple] = {}        # decoded query / gallery images, per input size
    sized: dict[tuple[int, int], Any] = {}            # the recipe at each input size
    results: dict[str, Any] = {}
    features: list[tuple[torch.Tensor, torch.Tensor]] = []
    for weights, (model, size) in zip(args.weights, models):
        if size not in caches:
            sized[size] = load_recipe(args.recipe, [*overrides, f"data.height={size[0]}", f"data.width={size[1]}"])
            caches[size] = build_test_caches(sized[size], dataset, progress=not args.no_progress)
        query, gallery = caches[size]
        model = model.to(device)
        if recipe.train.channels_last:
            model.to(memory_format=torch.channels_last)
        result, qf, gf = evaluate_model(model, query, gallery, recipe.eval, recipe.data.test_batch_size,
                                        amp=recipe.train.amp, channels_last=recipe.train.channels_last,
                                        device=device, progress=not args.no_progress, return_features=True)
        label = str(weights) if str(weights) not in results else f"{weights} (#{len(results) + 1})"
        results[label] = result
        features.append((qf, gf))
        for name, other in evaluate_other_datasets(model, sized[size], device, progress=not args.no_progress).items():
            results[f"{label} on {name} (cross-dataset)"] = other
    described = (f"{dataset.name}: {counted(len(query), 'query', 'queries')}, "
                 f"{counted(len(gallery), 'gallery image')}, metric {recipe.eval.metric}"
                 f"{', re-ranked' if recipe.eval.rerank else ''}")
    print(described)
    if len(features) > 1:
        from .evaluation.ensemble import concatenate_members
        qf, gf = concatenate_members(features)
        results[f"ensemble of {len(features)}"] = rank_features(
            qf, gf, query.pids(), gallery.pids(), query.camids(), gallery.camids(), recipe.eval)
        described += f"; ensemble: the {len(features)} models' L2-normalised embeddings concatenated"
    if len(results) > 1:
        for name, r in results.items():
            print(f"{name}:\n{r.summary()}")
    else:
        print(result.summary())
    if report is not None:
        from .engine.run_report import write_evaluation_report
        index = write_evaluation_report(report, f"reidkit eval: {', '.join(map(str, args.weights))} on "
                                        f"{dataset.name}", results, {}, query.records, gallery.records, qf, gf,
                                        recipe, [described], dataset.summary(), num_queries=args.ranked)
        print(f"report -> {index}\nlook: {browse_command(index)}")
    return 0


def _evaluated_model(recipe, weights: str, ensemble: bool):
    """The model of ``weights`` and its input size.  Alone, it must be the recipe's model; in an ensemble a
    self-describing checkpoint brings its own architecture and size (a bare state_dict takes the recipe's)."""
    from .engine.checkpoint import embedding_spec, load_checkpoint, load_embedding_model
    if str(weights).endswith(".onnx"):
        return _evaluated_onnx(recipe, weights, ensemble)
    spec = embedding_spec(load_checkpoint(weights)) if ensemble else None
    if spec is None:
        return load_trained_model(recipe, weights), (recipe.data.height, recipe.data.width)
    model, spec = load_embedding_model(weights)
    assert spec is not None
    return model, tuple(spec.image_size)


def _evaluated_onnx(recipe, path: str, ensemble: bool):
    """An exported ONNX model (fp32 or int8, ``reidkit export``; or another tool's) evaluated as it will be deployed,
    by ONNX Runtime on the CPU.  A reidkit export's recorded model, input size and normalisation are checked against
    the recipe's (in an ensemble, its own architecture and size are used); another tool's file takes the recipe's
    input size, or the one its graph fixes."""
    from .deploy.onnx_model import OnnxEmbedding, fixed_input
    from .engine.checkpoint import CheckpointError, check_against_spec
    net = OnnxEmbedding(path, recipe.train.threads or None)
    spec, size = net.spec, (recipe.data.height, recipe.data.width)
    if spec is not None:
        if not ensemble:
            check_against_spec(spec, path, recipe.model.name, recipe.model.options(), size)
        if (tuple(spec.mean), tuple(spec.std)) != (tuple(recipe.augment.mean), tuple(recipe.augment.std)):
            raise CheckpointError(f"{path} was exported for images normalised with mean {list(spec.mean)}, std "
                                  f"{list(spec.std)}; the recipe normalises with {list(recipe.augment.mean)}, "
                                  f"{list(recipe.augment.std)}: set augment.mean / augment.std to the export's")
        return net, tuple(spec.image_size)
    _, _, fixed = fixed_input(net.session)
    return net, fixed or size


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
    from .recipe_files import describe_recipes
    for name, doc in describe_recipes():
        print(f"{name:32s} {doc}")
    return 0


def cmd_methods(args) -> int:
    from .sections import MINERS, PIECES, load_methods
    load_methods()
    for title, registry in (("training pieces (each on by its recipe section, or by the train.* key it names)",
                             PIECES), ("miners (loss.miner)", MINERS)):
        print(title + ":")
        for name, doc in registry.describe():
            config = registry.configs.get(name)
            keys = f"  [{name}: {', '.join(getattr(config, 'model_fields', {}))}]" if config is not None else ""
            print(f"  {name:16s} {doc}{keys}")
    return 0


def cmd_datasets(args) -> int:
    from .data import describe_datasets
    for name, doc in describe_datasets():
        print(f"{name:16s} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reidkit", description="Person re-identification toolkit")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error (also REIDKIT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe")
    p.add_argument("recipe", help="YAML recipe file, or the name of a recipe shipped with reidkit (`reidkit recipes`)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5")
    p.add_argument("--resume", help="continue from a training checkpoint (last.pth)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in train.output_dir: the files it wrote (run_manifest.json) are "
                        "deleted first, nothing else; refused without this flag")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate trained weights on the recipe's query/gallery")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--weights", required=True, action="append",
                   help="checkpoint (best.pth, last.pth or a state_dict) or an exported .onnx (fp32 or int8, run "
                        "by ONNX Runtime as deployed); given several times, each model is evaluated and so is their "
                        "ensemble (embeddings concatenated)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    p.add_argument("--report", help="report folder (default: reports/eval_WEIGHTS/ under the working folder, "
                   "never beside the weights; _2, _3 ... when it exists)")
    p.add_argument("--no-report", action="store_true", help="print the metrics only")
    p.add_argument("--ranked", type=int, default=8, help="ranked lists (queries) drawn in the report")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    add_deploy_commands(sub)

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
    p = sub.add_parser("methods", help="list the training pieces and miners a recipe can switch on, with their "
                                       "recipe sections")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("datasets", help="list the dataset names a recipe's data.dataset can take")
    p.set_defaults(func=cmd_datasets)
    return parser


def _is_internal(error: BaseException) -> bool:
    """Whether an error came from deeper than reidkit's own input checks (a ValueError raised inside torch, numpy,
    faiss ...): then the one-line message may not be enough, and the hint to --debug is shown."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "reidkit" not in tb.tb_frame.f_code.co_filename


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv[1:]:                       # accepted after the command too: `reidkit train R --debug`
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    # recipe overrides may come after options too (`reidkit train R --no-progress train.epochs=5`), which
    # argparse alone rejects: take the leftover KEY=VALUE words as overrides
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(w.startswith("-") or "=" not in w for w in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    debug = args.debug or os.environ.get("REIDKIT_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except (RecipeError, ValueError, FileNotFoundError, FloatingPointError, DistributedError, OutputError) as e:
        if debug:                                   # --debug / REIDKIT_DEBUG=1: the traceback, for a bug report
            traceback.print_exc()
        hint = "" if debug else " (--debug or REIDKIT_DEBUG=1 shows where it was raised)"
        print(f"reidkit {args.command}: error: {e}{hint if _is_internal(e) else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:                  # Ctrl-C: what was left, not a traceback
        print(f"reidkit {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
