"""The camera-aware mining experiments of docs/RESULTS.md: baseline vs three bias schedules, several seeds.

    python -m experiments.camera_mining run synthetic --seeds 0 1 2 [--set train.epochs=8 ...]
    python -m experiments.camera_mining run cuhk03 --seeds 0 1 2 [--set ...]
    python -m experiments.camera_mining table            # mean +- std per dataset and variant

Every variant trains the dataset's recipe (configs/bot_camaware_*.yaml) with the
same sampler (camera-diverse P x K), data, budget and seed; only the miner and
its bias schedule differ.  Each finished run appends one JSON line to
``runs/camera_mining/results.jsonl``; a run already recorded is skipped, so the
grid can be stopped and resumed.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "camera_mining"
RESULTS = OUT / "results.jsonl"

RECIPES = {
    "synthetic": ROOT / "configs" / "bot_camaware_synthetic.yaml",
    "cuhk03": ROOT / "configs" / "bot_camaware_r18_cuhk03.yaml",
}

VARIANTS = {
    # bias off selects exactly as plain batch-hard (tested) and still logs which pairs it picked
    "batch_hard": ["loss.miner=camera_aware", "camera_aware.schedule=off"],
    "decay": ["loss.miner=camera_aware", "camera_aware.schedule=decay"],
    "constant": ["loss.miner=camera_aware", "camera_aware.schedule=constant"],
    "early": ["loss.miner=camera_aware", "camera_aware.schedule=early"],
}


def recorded() -> set[tuple]:
    if not RESULTS.exists():
        return set()
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {(r["dataset"], r["variant"], r["seed"], r["tag"]) for r in rows}


def run(args) -> None:
    from reidkit.engine import Trainer
    from reidkit.recipe_files import load_recipe

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    done = recorded()
    for seed in args.seeds:
        for variant in args.variants:
            if (args.dataset, variant, seed, args.tag) in done:
                continue
            out_dir = OUT / args.dataset / f"{args.tag}{variant}_seed{seed}"
            overrides = VARIANTS[variant] + [f"camera_aware.early_epochs={args.early_epochs}",
                                             f"train.seed={seed}", f"train.output_dir={out_dir}",
                                             "data.val_identities=null"] + args.overrides     # all identities
            recipe = load_recipe(str(RECIPES[args.dataset]), overrides)
            t0 = time.perf_counter()
            result = Trainer(recipe, progress=False).fit(overwrite=True)    # not recorded: an interrupted run
            history = json.loads((out_dir / "history.json").read_text())
            row = {"dataset": args.dataset, "variant": variant, "seed": seed, "tag": args.tag,
                   "overrides": overrides, "mAP": result.mAP, "rank1": result.rank(1),
                   "rank5": result.rank(5), "minutes": (time.perf_counter() - t0) / 60,
                   "history": {k: v for k, v in history.items() if k.startswith(("camera_aware/", "loss/"))}}
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def table(args) -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["tag"], r["variant"]), []).append(r)
    print("| data | variant | seeds | mAP % (mean ± std) | rank-1 % (mean ± std) "
          "| cross-camera positives, epoch 1 / last | same-camera negatives, epoch 1 / last | min/run |")
    print("|---|---|---|---|---|---|---|---|")
    order = list(VARIANTS)
    for (data, tag, variant), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                        order.index(kv[0][2]))):
        m = [100 * r["mAP"] for r in rs]
        r1 = [100 * r["rank1"] for r in rs]
        def sd(v):
            return statistics.stdev(v) if len(v) > 1 else 0.0
        minutes = statistics.mean(r["minutes"] for r in rs)

        def fraction(key: str, rs=rs) -> str:          # mean over seeds of the first / last epoch's mean
            # rows recorded before the training pieces used "mining/<key>"
            runs = [r["history"].get(f"camera_aware/{key}", r["history"].get(f"mining/{key}")) for r in rs]
            if not all(runs):
                return "-"
            return f"{statistics.mean(v[0] for v in runs):.2f} / {statistics.mean(v[-1] for v in runs):.2f}"

        print(f"| {data}{' ' + tag if tag else ''} | {variant} | {len(rs)} | {statistics.mean(m):.2f} ± {sd(m):.2f} "
              f"| {statistics.mean(r1):.2f} ± {sd(r1):.2f} | {fraction('cross_camera_positives')} "
              f"| {fraction('same_camera_negatives')} | {minutes:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("dataset", choices=sorted(RECIPES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--tag", default="", help="label a grid run with other overrides")
    p.add_argument("--early-epochs", type=int, default=2, help="bias epochs of the 'early' schedule")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="recipe overrides shared by every variant")
    sub.add_parser("table")
    args = parser.parse_args()
    run(args) if args.cmd == "run" else table(args)


if __name__ == "__main__":
    main()
