"""OSNet trained from scratch on CUHK03-labeled by reidkit and by torchreid 0.2.5, same recipe.

    python -m bench.bench_osnet_cuhk03 --epochs 10 [--recipe paper|amsgrad --arch osnet_x0_25 --seed 0]

Recipes, cut to ``--epochs``:

* ``paper`` (configs/osnet_x0_25_cuhk03.yaml, the OSNet paper's from-scratch
  settings): label-smoothed CE (0.1), SGD lr 0.065 momentum 0.9, weight decay
  5e-4, random flip + crop (with probability 0.5 enlarge x1.125 and crop back,
  torchreid's ``random_crop``) + random erasing, the paper's milestones;
* ``amsgrad`` (configs/osnet_x0_25_cuhk03_amsgrad.yaml, torchreid's default
  softmax recipe): AMSGrad lr 0.0015 (betas 0.9 / 0.99), weight decay 5e-4,
  label-smoothed CE, random flip + random erasing, constant lr.

Both: batches of 64 from the recipe's sampler (plain shuffled batches; torchreid's
``RandomSampler``), 256x128, seed ``--seed``; both sides step the learning rate per
epoch.  torchreid trains with its ``ImageSoftmaxEngine`` on its ``ImageDataManager``
(2 workers); reidkit with ``Trainer``.  Both trained models are evaluated by the
same code (reidkit's caches and ``evaluate_model``, Euclidean, the recipe's
protocol) every ``--eval-every`` epochs and at the end, so only training differs.
Prints mAP, rank-1, training wall time and images/s for both.
``--torchreid-data`` trains reidkit's loop on torchreid's data loader instead,
to tell a difference in the data from one in the training loop.  ``--paired``
starts both sides from the same initial weights (drawn once per seed by
torchreid's builder; each side still draws its own batches), which removes the
initialisation from the difference between a pair.  ``--init-like-torchreid``
starts reidkit's side from exactly the weights torchreid's run of the same seed
starts from (its batches and augmentation stay reidkit's): with a torchreid run
and a reidkit run of that seed, it tells the initial weights from the data.  Both
flags together replay torchreid's run of the seed through reidkit's loop (its
weights, its loader, the random streams its workers are seeded from): with
``--set train.channels_last=false`` it ends at torchreid's mAP to the last digit
(tests/bench/test_osnet_cuhk03_lockstep.py).  ``--save-weights DIR`` keeps each trained model.  ``--device cuda`` trains
both sides on a GPU (torchreid with ``use_gpu``), ``--data`` reads another copy
of CUHK03-labeled (the GPU check carries the 128x64 one).
"""
from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench import peers
from bench.bench_train import CUHK03
from bench.measure import set_threads
from reidkit.data.loader import Batch
from reidkit.engine import Trainer
from reidkit.engine.batchnorm_modes import precise_batchnorm
from reidkit.engine.evaluate import evaluate_model
from reidkit.engine.trainer import seed_everything
from reidkit.recipe_files import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = {"paper": CONFIGS / "osnet_x0_25_cuhk03.yaml", "amsgrad": CONFIGS / "osnet_x0_25_cuhk03_amsgrad.yaml"}


def recipe_for(args):
    return load_recipe(RECIPES[args.recipe],
                       [f"model.name={args.arch}", f"data.root={args.data}", f"train.epochs={args.epochs}",
                        f"train.eval_every={args.epochs}", f"train.seed={args.seed}", f"train.device={args.device}",
                        f"train.output_dir=/tmp/reidkit_bench_osnet/{args.arch}_{args.recipe}_{args.seed}_reidkit",
                        "data.val_identities=null", *args.set])     # torchreid trains on every identity


def initial_weights(args, num_classes: int) -> dict[str, torch.Tensor] | None:
    """``--paired``: the seed's initial OSNet weights, drawn by torchreid's builder, for both sides."""
    if not args.paired:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid.reid as tr
    with torch.random.fork_rng(devices=[]):       # the runs' own random streams stay as they were
        torch.manual_seed(10_000 + args.seed)
        model = tr.models.build_model(args.arch, num_classes=num_classes, loss="softmax", pretrained=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


class TorchreidBatches:
    """torchreid's training loader (its sampler, PIL transforms and workers) in the shape of reidkit's."""

    def __init__(self, datamanager):
        self.loader = datamanager.train_loader

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        for data in self.loader:
            yield Batch(data["img"], data["pid"], data["camid"])


def torchreid_datamanager(args, recipe):
    return peers.torchreid_cuhk03_datamanager(args.data, recipe.data.height, recipe.data.width,
                                              recipe.data.batch_size, recipe.data.num_instances, args.workers,
                                              peers.torchreid_transforms(recipe), peers.torchreid_sampler(recipe),
                                              use_gpu=args.device == "cuda")


def evaluations_due(args, epoch: int) -> bool:
    return bool(args.eval_every) and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs


def torchreid_start(args, recipe, start: dict[str, torch.Tensor] | None = None):
    """torchreid's data manager and model as its run of ``args.seed`` builds them (``start``: its weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid.reid as tr
    # torchreid's RandomIdentitySampler draws from Python's ``random`` and NumPy: seeding them too makes its
    # runs reproduce, and "same seed" mean the same thing on both sides
    seed_everything(args.seed)
    dm = torchreid_datamanager(args, recipe)
    model = tr.models.build_model(args.arch, num_classes=dm.num_train_pids, loss="softmax", pretrained=False)
    if start is not None:
        model.load_state_dict(start)
    return dm, model


def torchreid_run_weights(args, recipe) -> dict[str, torch.Tensor]:
    """``--init-like-torchreid``: the initial weights of torchreid's run of this seed; every global random
    stream (torch, NumPy, Python) is left as it was."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        _, model = torchreid_start(args, recipe)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    return {k: v.clone() for k, v in model.state_dict().items()}


def save_weights(args, side: str, model: torch.nn.Module) -> None:
    """``--save-weights DIR``: the trained model's state_dict as DIR/{side}_seed{N}.pth (both sides load it)."""
    if args.save_weights:
        folder = Path(args.save_weights)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / f"{side}_seed{args.seed}.pth")


def precise_bn_figures(args, model: torch.nn.Module, trainer: Trainer, memory_format: torch.memory_format,
                       evaluate) -> dict:
    """``--precise-bn N``: the trained model evaluated again after its BatchNorm statistics are re-measured on N
    clean training images (reidkit's ``train.precise_bn``, the same function for both sides)."""
    if not args.precise_bn:
        return {}
    r = trainer.recipe
    precise_batchnorm(model, trainer.train_cache, args.precise_bn, r.data.test_batch_size, r.augment.mean,
                      r.augment.std, torch.device(args.device), memory_format)
    result = evaluate()
    return {"mAP_precise_bn": result.mAP, "rank1_precise_bn": result.rank(1)}


def train_reidkit(args) -> tuple[dict, Trainer]:
    t0, images = time.perf_counter(), 0              # the one-off decode into the caches counts
    trainer = Trainer(recipe_for(args), progress=False)
    if args.torchreid_data and args.init_like_torchreid:
        # torchreid's run of the seed, but reidkit's loop: its weights, its loader and the random streams its
        # loader's workers are seeded from, all as torchreid's run has them when its first epoch starts
        dm, model = torchreid_start(args, trainer.recipe)
        trainer.model.load_state_dict(model.state_dict())
        trainer.loader = TorchreidBatches(dm)
    else:
        start = (torchreid_run_weights(args, trainer.recipe) if args.init_like_torchreid
                 else initial_weights(args, trainer.num_classes))
        if start is not None:
            trainer.model.load_state_dict(start)     # in place: the optimiser keeps its parameters
        if args.torchreid_data:                      # reidkit's training loop on torchreid's batches
            seed_everything(args.seed)
            trainer.loader = TorchreidBatches(torchreid_datamanager(args, trainer.recipe))
    curve, eval_s = [], 0.0
    for epoch in range(args.epochs):
        stats = trainer.train_epoch(epoch, max_batches=args.max_batches)
        images += min(len(trainer.loader), args.max_batches or len(trainer.loader)) * trainer.recipe.data.batch_size
        print(f"reidkit epoch {epoch + 1}: {stats['images_per_s']:.1f} img/s, loss {stats['total']:.3f}", flush=True)
        if evaluations_due(args, epoch):
            e0 = time.perf_counter()
            trainer.before_evaluation(epoch)                  # as reidkit train evaluates (train.precise_bn)
            result = trainer.evaluate()
            eval_s += time.perf_counter() - e0
            curve.append((epoch + 1, result.mAP, result.rank(1)))
            print(f"reidkit epoch {epoch + 1}: mAP {100 * result.mAP:.2f} rank-1 {100 * result.rank(1):.2f}",
                  flush=True)
    wall = time.perf_counter() - t0 - eval_s
    save_weights(args, "reidkit", trainer.model)                 # as trained (before the last precise BN)
    trainer.before_evaluation(args.epochs - 1)
    result = trainer.evaluate()
    return {"mAP": result.mAP, "rank1": result.rank(1), "train_s": wall, "images_per_s": images / wall,
            "loss": stats["total"], "curve": curve,
            **precise_bn_figures(args, trainer.model, trainer, trainer.memory_format, trainer.evaluate)}, trainer


def train_torchreid(args, trainer: Trainer) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.engine import ImageSoftmaxEngine
    r = trainer.recipe
    dm, model = torchreid_start(args, r, initial_weights(args, trainer.num_classes))
    gpu = args.device == "cuda"
    model = model.cuda() if gpu else model          # before the optimiser, as torchreid's own scripts do
    optimizer, scheduler = peers.torchreid_optimizer(model, r)
    engine = ImageSoftmaxEngine(dm, model, optimizer, scheduler=scheduler, label_smooth=True, use_gpu=gpu)
    evaluate = lambda: evaluate_model(model.eval(), trainer.query_cache, trainer.gallery_cache, r.eval, 128,  # noqa: E731
                                      device=args.device)
    t0, images, curve, eval_s = time.perf_counter(), 0, [], 0.0
    for epoch in range(args.epochs):
        model.train()
        losses = []
        for i, data in enumerate(dm.train_loader):
            if args.max_batches is not None and i >= args.max_batches:
                break
            losses.append(engine.forward_backward(data)["loss"])
            images += data["img"].shape[0]
        scheduler.step()
        print(f"torchreid epoch {epoch + 1}: {images / (time.perf_counter() - t0 - eval_s):.1f} img/s so far, "
              f"loss {sum(losses) / len(losses):.3f}", flush=True)
        if evaluations_due(args, epoch):
            e0 = time.perf_counter()
            result = evaluate()
            eval_s += time.perf_counter() - e0
            curve.append((epoch + 1, result.mAP, result.rank(1)))
            print(f"torchreid epoch {epoch + 1}: mAP {100 * result.mAP:.2f} rank-1 {100 * result.rank(1):.2f}",
                  flush=True)
    wall = time.perf_counter() - t0 - eval_s
    result = evaluate()
    save_weights(args, "torchreid", model)
    return {"mAP": result.mAP, "rank1": result.rank(1), "train_s": wall, "images_per_s": images / wall,
            "loss": sum(losses) / len(losses), "curve": curve,
            **precise_bn_figures(args, model, trainer, torch.contiguous_format, evaluate)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="paper",
                        help="paper: the OSNet paper's SGD recipe; amsgrad: torchreid's default softmax recipe")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate both sides every N epochs")
    parser.add_argument("--arch", default="osnet_x0_25")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paired", action="store_true",
                        help="both sides start from the same initial weights (drawn per seed)")
    parser.add_argument("--init-like-torchreid", action="store_true",
                        help="reidkit's side starts from the weights torchreid's run of the same seed starts from")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument("--data", default=CUHK03, help="CUHK03-labeled root (default ../shared/data/cuhk03/labeled)")
    parser.add_argument("--workers", type=int, default=2, help="torchreid's loader workers")
    parser.add_argument("--max-batches", type=int, default=None, help="cut epochs short (a smoke test)")
    parser.add_argument("--save-weights", metavar="DIR", help="keep each trained model as DIR/{side}_seed{N}.pth")
    parser.add_argument("--precise-bn", type=int, default=0, metavar="N",
                        help="also evaluate each trained model after re-measuring its BatchNorm statistics on N "
                             "clean training images (reidkit's train.precise_bn; both sides alike)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (2 for timings; 1 to run two accuracy-only runs side by side)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more recipe overrides, e.g. augment.erasing_fill=reference_code (reidkit's side) or "
                             "data.height=128 data.width=64 (both sides)")
    parser.add_argument("--torchreid-data", action="store_true",
                        help="reidkit's side trains on torchreid's data loader (sampler + transforms), to tell "
                             "a difference in the data from one in the training loop")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--reidkit-only", action="store_true", help="train reidkit's side only")
    side.add_argument("--torchreid-only", action="store_true",
                      help="train torchreid's side only (reidkit still builds the evaluation caches)")
    args = parser.parse_args()
    if args.paired and args.init_like_torchreid:
        parser.error("--paired and --init-like-torchreid each choose reidkit's initial weights: give one")
    set_threads(args.threads)
    if args.torchreid_only:
        theirs = train_torchreid(args, Trainer(recipe_for(args), progress=False))
        print(f"torchreid 0.2.5  mAP {100 * theirs['mAP']:6.2f}  rank-1 {100 * theirs['rank1']:6.2f}")
        print(json.dumps({"torchreid": theirs}))
        return
    ours, trainer = train_reidkit(args)
    if args.reidkit_only:
        print(json.dumps({"reidkit": ours}))
        return
    theirs = train_torchreid(args, trainer)
    print(f"\n{args.arch} from scratch on CUHK03-labeled, {args.epochs} epochs, seed {args.seed}")
    for name, r in (("reidkit", ours), ("torchreid 0.2.5", theirs)):
        print(f"{name:16s} mAP {100 * r['mAP']:6.2f}  rank-1 {100 * r['rank1']:6.2f}  "
              f"train {r['train_s'] / 60:6.1f} min  {r['images_per_s']:6.1f} img/s")
    print(f"time reidkit / torchreid = {ours['train_s'] / theirs['train_s']:.2f}")
    print(json.dumps({"reidkit": ours, "torchreid": theirs}))


if __name__ == "__main__":
    main()
