"""``reidkit demo``: built-in dataset -> train a small BoT model -> evaluate -> report."""
from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path

import torch

from .evaluation import RankResult, compute_distance, evaluate_rank
from .logs import browse_command, setup_logging
from .names import counted
from .recipe_files import load_recipe
from .reporting import metrics_table, write_report

log = logging.getLogger("reidkit")


def demo_recipe_path() -> Path:
    packaged = resources.files("reidkit") / "recipes" / "demo_synthetic.yaml"
    return Path(str(packaged))


REFERENCE_ONNX = Path("shared") / "data" / "weights" / "osnet_x0_25_msmt17.onnx"


def find_reference(explicit: str | None = None) -> Path | None:
    """The real MSMT17 OSNet x0.25 export: ``explicit``, or ../shared/data/weights beside the checkout."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"--reference: no such file: {path}")
        return path
    here = Path(__file__).resolve().parents[1]
    for base in (Path.cwd().parent, here.parent):
        if (base / REFERENCE_ONNX).is_file():
            return base / REFERENCE_ONNX
    return None


def evaluate_reference(onnx_file: Path, dataset, metric: str, progress: bool):
    """Zero-shot mAP/CMC of the imported MSMT17 OSNet x0.25 on the demo's query/gallery (256x128)."""
    from .config import EvalConfig
    from .data.cache import ImageCache
    from .deploy import import_onnx_osnet
    from .deploy.optimize import fuse_for_inference
    from .engine.evaluate import evaluate_model
    from .models import build_model

    model = build_model("osnet_x0_25", 1)
    model.load_state_dict(import_onnx_osnet(onnx_file, "osnet_x0_25"))
    q = ImageCache(dataset.query, (256, 128), progress=progress, desc="query 256x128")
    g = ImageCache(dataset.gallery, (256, 128), progress=progress, desc="gallery 256x128")
    return evaluate_model(fuse_for_inference(model), q, g, EvalConfig(metric=metric), 64, channels_last=True)


def run_demo(output: str | Path = "demo_output", epochs: int | None = None, progress: bool = True,
             reference: str | None = None, overwrite: bool = False) -> Path:
    from .engine import Trainer
    from .engine.run_folder import prepare_run_folder, release_run_folder

    output = Path(output)
    overrides = [f"data.root={output / 'data'}", f"train.output_dir={output / 'run'}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    recipe = load_recipe(demo_recipe_path(), overrides)
    prepare_run_folder(recipe.train.output_dir, overwrite=overwrite)    # before minutes of work, not after
    try:
        setup_logging(str(output))
        t0 = time.perf_counter()
        trainer = Trainer(recipe, progress=progress)
        result = trainer.fit()
        train_s = time.perf_counter() - t0
    finally:
        release_run_folder(recipe.train.output_dir)

    if result is None or trainer.last_features is None:
        raise RuntimeError("the demo recipe trained no epoch")
    qf, gf = trainer.last_features            # from the final evaluation of the last epoch
    distmat = compute_distance(qf, gf, recipe.eval.metric).numpy()
    q, g = trainer.query_cache, trainer.gallery_cache
    gen = torch.Generator().manual_seed(0)
    chance = evaluate_rank(compute_distance(torch.randn(qf.shape, generator=gen),
                                            torch.randn(gf.shape, generator=gen)).numpy(),
                           q.pids(), g.pids(), q.camids(), g.camids())
    results: dict[str, RankResult] = {f"{recipe.model.name}, {recipe.train.epochs} epochs": result}
    notes = []
    reference_file = find_reference(reference)
    if reference_file is not None:
        name = "pretrained reference: OSNet x0.25 trained on real MSMT17, zero-shot (256x128)"
        results[name] = evaluate_reference(reference_file, trainer.dataset, recipe.eval.metric, progress)
        notes.append(f"pretrained reference: {reference_file} imported with reidkit import-onnx; never "
                     "trained on synthetic data")
    else:
        log.info("no pretrained reference (%s not found beside the checkout); pass --reference", REFERENCE_ONNX)
    results["chance (random embeddings)"] = chance
    notes += [f"dataset: built-in synthetic, {trainer.num_classes} train identities, "
             f"{counted(len(q), 'query', 'queries')}, {len(g)} gallery images (with distractors), 6 cameras",
             f"training + evaluation: {train_s:.0f} s on {counted(torch.get_num_threads(), 'CPU thread')}",
             "the model starts from random initialisation (no ImageNet weights are downloaded)"]
    index = write_report(output / "report", "reidkit demo: Bag-of-Tricks baseline on synthetic data",
                         results, trainer.history, q.records, g.records, distmat, notes)
    log.info("\n%s\n", metrics_table(results))
    log.info("demo finished in %.0f s; report: %s", time.perf_counter() - t0, index)
    log.info("look: %s", browse_command(index))
    return index
