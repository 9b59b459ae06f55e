"""reidkit's Trainer and torchreid 0.2.5's engine, from the same weights, trained on the same batches.

    python -m experiments.lockstep_torchreid [--steps 12 --height 128 --width 64 --channels-last false --recipe amsgrad]
    python -m experiments.lockstep_torchreid --epochs 10 --seed 1 --channels-last true --threads 1

reidkit's ``Trainer`` (``--recipe paper``: configs/osnet_x0_25_cuhk03.yaml; ``amsgrad``:
configs/osnet_x0_25_cuhk03_amsgrad.yaml, torchreid's default softmax recipe; on the real
CUHK03-labeled data) draws each batch; torchreid's ``ImageSoftmaxEngine.forward_backward``
then trains torchreid's OSNet x0.25 (a copy of reidkit's initial weights) on
the same batch.  Prints both losses step by step and the largest relative
weight differences at the end.  With the default memory layout the two runs
are the same computation; with channels_last (reidkit's default on the CPU)
the arithmetic is reordered and, OSNet's from-scratch gradients being
ill-conditioned, the trajectories part within a few steps.  ``--epochs N``
trains N whole epochs this way, prints both sides' mean loss per epoch and
evaluates both models (reidkit's ``evaluate_model``): with everything else
equal (weights, batches, schedule), whether reidkit's layout learns slower.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.bench_osnet_cuhk03 import RECIPES
from bench.bench_train import CUHK03
from bench.peers import TorchreidLockstep
from reidkit.engine import Trainer
from reidkit.engine.evaluate import evaluate_model
from reidkit.recipe_files import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--channels-last", choices=("true", "false"), default="false")
    parser.add_argument("--epochs", type=int, default=None, help="train whole epochs instead of --steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="paper")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(RECIPES[args.recipe], [f"data.root={CUHK03}", "data.val_identities=null",
                                                f"data.height={args.height}", f"data.width={args.width}",
                                  f"train.output_dir=/tmp/reidkit_lockstep_{args.seed}", f"train.seed={args.seed}",
                                  f"train.channels_last={args.channels_last}"])
    trainer = Trainer(recipe, progress=False)
    lockstep = TorchreidLockstep(trainer)
    ours_losses, theirs_losses = lockstep.ours_losses, lockstep.theirs_losses
    if args.epochs is not None:
        train_epochs(trainer, lockstep, args.epochs)
        return
    epoch = 0
    while len(theirs_losses) < args.steps:
        trainer.train_epoch(epoch, max_batches=args.steps - len(theirs_losses))
        epoch += 1
    diff = np.array(ours_losses) - np.array(theirs_losses)
    for i, (a, b) in enumerate(zip(ours_losses, theirs_losses)):
        print(f"step {i + 1:4d}  reidkit {a:.7f}  torchreid {b:.7f}  difference {a - b:+.2e}")
    print(f"mean |difference| {np.abs(diff).mean():.2e}")
    print_weight_differences(trainer, lockstep)


def train_epochs(trainer: Trainer, lockstep: TorchreidLockstep, epochs: int) -> None:
    """Whole epochs in lockstep (the schedule steps for both), then both models evaluated alike."""
    for epoch in range(epochs):
        start = len(lockstep.theirs_losses)
        trainer.train_epoch(epoch)
        lockstep.step_scheduler()
        ours, theirs = (float(np.mean(x[start:])) for x in (lockstep.ours_losses, lockstep.theirs_losses))
        print(f"epoch {epoch + 1:3d}  reidkit {ours:.4f}  torchreid {theirs:.4f}  difference {ours - theirs:+.4f}",
              flush=True)
    r = trainer.recipe
    for name, model in (("reidkit", trainer.model), ("torchreid", lockstep.model)):
        result = evaluate_model(model.eval(), trainer.query_cache, trainer.gallery_cache, r.eval,
                                r.data.test_batch_size)
        print(f"{name:9s} mAP {100 * result.mAP:6.2f}  rank-1 {100 * result.rank(1):6.2f}", flush=True)
    print_weight_differences(trainer, lockstep)


def print_weight_differences(trainer: Trainer, lockstep: TorchreidLockstep) -> None:
    theirs_state = lockstep.model.state_dict()
    rel = {n: float((p.float() - theirs_state[n].float()).norm() / (theirs_state[n].float().norm() + 1e-12))
           for n, p in trainer.model.state_dict().items() if p.is_floating_point()}
    print("largest relative weight differences:",
          ", ".join(f"{n} {v:.1e}" for n, v in sorted(rel.items(), key=lambda kv: -kv[1])[:4]))


if __name__ == "__main__":
    main()
