"""Initial (and trained) weights as functions: reidkit's and torchreid's OSNet x0.25, seed by seed, on real images.

    python -m experiments.init_census --seeds 0 1 2 ... [--images 256] [--height 256 --width 128]
    python -m experiments.init_census --weights DIR/*.pth        # models kept by bench_osnet_cuhk03 --save-weights

For each seed, the weights reidkit's run of issue 16 starts from (``Trainer``'s order: seed, build) and the
weights torchreid's run starts from (``bench.bench_osnet_cuhk03.torchreid_run_weights``), each in training mode
on the same fixed CUHK03 training images (no augmentation): per aggregation gate, the share of
(image, stream) pairs for which each hidden unit of the gate's first FC is active (x0.25 gates have 1 or 2
hidden units: a unit never active passes no gradient to the gate's first layer), the initial loss, the
feature and logit scales.  One JSON line per (seed, side).

``--weights``: the same census of trained models, their test mAP as trained, and their test mAP after the
BatchNorm running statistics are re-estimated as plain averages over ``--bn-images`` clean training images
spread over the training set, by ``train.precise_bn``'s function (train-mode passes, no gradient, batches of the
recipe's 128): a model whose running statistics lag what its layers now compute gains there.
"""
from __future__ import annotations

import argparse
import json
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bench.bench_osnet_cuhk03 import RECIPES, torchreid_run_weights
from bench.bench_train import CUHK03
from reidkit.data import build_dataset
from reidkit.data.cache import ImageCache
from reidkit.data.loader import iter_test_batches
from reidkit.engine.batchnorm_modes import precise_batchnorm
from reidkit.engine.evaluate import build_test_caches, evaluate_model
from reidkit.engine.trainer import seed_everything
from reidkit.models import build_model, check_model
from reidkit.recipe_files import load_recipe


def reidkit_start(seed: int, num_classes: int) -> torch.nn.Module:
    seed_everything(seed)
    check_model("osnet_x0_25", pretrained="none")
    return build_model("osnet_x0_25", num_classes, pretrained="none")


@torch.no_grad()
def census(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    gates = [(name, m) for name, m in model.named_modules() if name.endswith("gate")]
    active: dict[str, list[torch.Tensor]] = {name: [] for name, _ in gates}
    hooks = [m.fc1.register_forward_hook(lambda mod, inp, out, name=name: active[name].append(out.flatten(1) > 0))
             for name, m in gates]
    kept: list[torch.Tensor] = []
    hooks.append(model.fc.register_forward_hook(lambda mod, inp, out: kept.append(out)))
    model.train()
    loss = feat = logit = 0.0
    n = 0
    for images, pids in batches:
        out = model(images)
        logits, features = out[0] if isinstance(out, tuple) else out, kept.pop()
        loss += float(F.cross_entropy(logits, pids, label_smoothing=0.1, reduction="sum"))
        feat += float(features.std()) * len(pids)
        logit += float(logits.std()) * len(pids)
        n += len(pids)
    for h in hooks:
        h.remove()
    shares = {name: [round(float(s), 4) for s in torch.cat(v).float().mean(0)] for name, v in active.items()}
    units = [s for v in shares.values() for s in v]
    return {"dead_units": sum(s == 0.0 for s in units), "units": len(units),
            "mean_active": round(sum(units) / len(units), 4), "loss": round(loss / n, 4),
            "feature_std": round(feat / n, 4), "logit_std": round(logit / n, 5), "gates": shares}


def trained_census(files: list[str], batches, dataset, args) -> None:
    recipe = load_recipe(RECIPES["amsgrad"], [f"data.root={args.data}", f"data.height={args.height}",
                                              f"data.width={args.width}"])
    query, gallery = build_test_caches(recipe, dataset, progress=False)
    train_cache = ImageCache(dataset.train, (args.height, args.width), workers=2, progress=False)
    for path in files:
        state = torch.load(path, map_location="cpu")
        model = build_model("osnet_x0_25", state["classifier.weight"].shape[0], pretrained="none")
        model.load_state_dict(state)
        row: dict = {"weights": path, "mAP": round(100 * evaluate_model(model, query, gallery, recipe.eval).mAP, 2)}
        row |= census(model, batches)                 # (train-mode passes: after the evaluation as trained)
        precise_batchnorm(model, train_cache, args.bn_images, recipe.data.test_batch_size,   # as train.precise_bn
                          recipe.augment.mean, recipe.augment.std, torch.device("cpu"), torch.contiguous_format)
        row["mAP_population_bn"] = round(100 * evaluate_model(model, query, gallery, recipe.eval).mAP, 2)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--data", default=CUHK03)
    parser.add_argument("--weights", nargs="+", help="trained models (state_dicts) instead of the seeds' starts")
    parser.add_argument("--bn-images", type=int, default=2048, help="--weights: images for population statistics")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = build_dataset("cuhk03_labeled", args.data)
    step = max(1, len(dataset.train) // args.images)
    cache = ImageCache(dataset.train[::step][:args.images], (args.height, args.width), workers=1, progress=False)
    pids = torch.as_tensor([r.pid for r in dataset.train[::step][:args.images]])
    images = torch.cat(list(iter_test_batches(cache, 64)))              # normalised as the recipes normalise
    batches = [(images[i:i + 64], pids[i:i + 64]) for i in range(0, len(images), 64)]
    if args.weights:
        trained_census(args.weights, batches, dataset, args)
        return
    recipe = load_recipe(RECIPES["amsgrad"], [f"data.root={args.data}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid.reid as tr
    for seed in args.seeds:
        ours = reidkit_start(seed, dataset.num_train_pids)
        bench_args = SimpleNamespace(seed=seed, data=args.data, arch="osnet_x0_25", workers=0, device="cpu")
        theirs = tr.models.build_model("osnet_x0_25", num_classes=dataset.num_train_pids, loss="softmax",
                                       pretrained=False)
        theirs.load_state_dict(torchreid_run_weights(bench_args, recipe))
        for side, model in (("reidkit", ours), ("torchreid", theirs)):
            print(json.dumps({"seed": seed, "side": side, **census(model, batches)}), flush=True)


if __name__ == "__main__":
    main()
