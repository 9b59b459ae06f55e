"""alpha-QE and DBA on CUHK03-labeled val with a trained model: features extracted once, every setting ranked.

    python -m experiments.expansion_cuhk03 --weights runs/osnet_x0_25_msmt17.pth   # the imported MSMT17 model

Settings are fixed in advance (k in {2, 3, 5}, alpha 3), not tuned on these figures.
"""
from __future__ import annotations

import argparse

import torch

from bench.bench_train import CUHK03
from reidkit.cli import load_trained_model
from reidkit.data import build_dataset
from reidkit.engine.evaluate import build_test_caches
from reidkit.engine.features import extract_features
from reidkit.evaluation import evaluate_features
from reidkit.evaluation.expansion import database_augment, query_expand
from reidkit.recipe_files import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--recipe", default="osnet_x0_25_cuhk03")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, [f"data.root={CUHK03}"])
    model = load_trained_model(recipe, args.weights)
    dataset = build_dataset(recipe.data.dataset, recipe.data.root)
    query, gallery = build_test_caches(recipe, dataset, progress=False)
    qf = extract_features(model, query, 128, channels_last=True)
    gf = extract_features(model, gallery, 128, channels_last=True)
    ids = (query.pids(), gallery.pids(), query.camids(), gallery.camids())
    print(f"{args.weights} on {dataset.name} val: {len(query)} queries, {len(gallery)} gallery images")
    print("| setting | metric | mAP | rank-1 | rank-5 | mINP |\n|---|---|---|---|---|---|")
    rows = [("none", recipe.eval.metric, qf, gf), ("none", "cosine", qf, gf)]
    rows += [(f"alpha-QE k={k}", "cosine", query_expand(qf, gf, k), gf) for k in (2, 3, 5)]
    for k in (2, 3, 5):
        g = database_augment(gf, k)
        rows.append((f"DBA k={k}", "cosine", qf, g))
        rows.append((f"DBA k={k} + alpha-QE k={k}", "cosine", query_expand(qf, g, k), g))
    for name, metric, q, g in rows:
        r = evaluate_features(q, g, *ids, metric=metric)
        print(f"| {name} | {metric} | {100 * r.mAP:.2f} | {100 * r.rank(1):.2f} | {100 * r.rank(5):.2f} "
              f"| {100 * r.mINP:.2f} |", flush=True)


if __name__ == "__main__":
    main()
