"""Are reidkit's OSNet training batches as hard as torchreid's?  One fixed classifier scores both.

    python -m experiments.pipeline_hardness [--epochs 2]

A CUHK03 identity classifier that does not change: the imported MSMT17 OSNet
x0.25 (frozen, eval mode) with a linear layer fitted to its features of the
clean, resized CUHK03 training images.  Both input pipelines of
``bench/bench_osnet_cuhk03.py`` (reidkit's ``TrainLoader`` from
configs/osnet_x0_25_cuhk03.yaml, torchreid 0.2.5's ``ImageDataManager`` with
flip + crop + erase) then feed it full epochs, and the mean cross-entropy,
accuracy and batch statistics are compared.  The same model sees both, so a
difference is the data's (augmentation, sampling, decoding), measured with far
less noise than two training runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.bench_train import CUHK03
from bench.peers import torchreid_cuhk03_datamanager, torchreid_sampler, torchreid_transforms
from reidkit.data import build_dataset
from reidkit.data.cache import ImageCache
from reidkit.data.loader import iter_test_batches
from reidkit.engine.checkpoint import model_from_checkpoint
from reidkit.engine.pipeline import build_train_loader
from reidkit.engine.trainer import seed_everything
from reidkit.recipe_files import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "osnet_x0_25_cuhk03.yaml"
TEACHER = ROOT / "runs" / "osnet_x0_25_msmt17.pth"


def fit_classifier(features: torch.Tensor, pids: torch.Tensor, classes: int, steps: int = 300) -> torch.nn.Linear:
    head = torch.nn.Linear(features.shape[1], classes)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(features), pids) + 1e-4 * head.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return head.requires_grad_(False)


@torch.no_grad()
def score(model, head, batches) -> dict[str, float]:
    n = loss = correct = 0
    mean = sq = 0.0
    for images, pids in batches:
        logits = head(F.normalize(model(images), dim=1) * 16)
        loss += float(F.cross_entropy(logits, pids, reduction="sum"))
        correct += int((logits.argmax(1) == pids).sum())
        n += len(pids)
        mean += float(images.mean()) * len(pids)
        sq += float(images.pow(2).mean()) * len(pids)
    return {"images": n, "CE": loss / n, "acc": correct / n, "pixel_mean": mean / n,
            "pixel_rms": (sq / n) ** 0.5}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(RECIPE, [f"data.root={CUHK03}", "data.sampler=identity"])   # P x K, as torchreid's side
    d = recipe.data
    dataset = build_dataset(d.dataset, CUHK03)
    cache = ImageCache(dataset.train, (d.height, d.width), progress=False)
    model = model_from_checkpoint("osnet_x0_25", TEACHER).eval()
    pids = torch.from_numpy(cache.pids())
    with torch.no_grad():
        feats = torch.cat([model(x) for x in iter_test_batches(cache, 256)])
    head = fit_classifier(F.normalize(feats, dim=1) * 16, pids, dataset.num_train_pids)
    print("clean:", score(model, head, ((x, pids[i:i + 256]) for i, x in zip(range(0, len(cache), 256),
                                                                             iter_test_batches(cache, 256)))))
    # built once; each pass draws a new epoch
    datamanager = torchreid_cuhk03_datamanager(CUHK03, d.height, d.width, d.batch_size, d.num_instances, 2,
                                               torchreid_transforms(recipe), torchreid_sampler(recipe))
    for epoch in range(args.epochs):
        loader = build_train_loader(recipe, cache, seed=epoch)
        print(f"reidkit   epoch {epoch}:", score(model, head, ((b.images, b.pids) for b in loader)), flush=True)
        seed_everything(epoch)
        print(f"torchreid epoch {epoch}:",
              score(model, head, ((b["img"], b["pid"]) for b in datamanager.train_loader)), flush=True)


if __name__ == "__main__":
    main()
