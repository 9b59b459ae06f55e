"""Modern backbones (issue 37): training and extraction images/s of a network in reidkit against the same network
in a plain PyTorch loop, side by side in one process.

    python -m bench.bench_backbones [--batches 5 --batch-size 32 --threads 2 --height 256 --width 128]

Networks: ViT-S/16 (reidkit: ``timm/vit_small_patch16_224`` under its BNNeck head; the peer: timm's own
``vit_small_patch16_224`` with its classifier) and ResNet-50-IBN-a (reidkit: ``resnet50_ibn_a_bnneck``; timm has no
IBN-a, so the peer is reidkit's IBN-a backbone with a linear classifier, in the plain loop).  Both from random
weights at the same input size.

* training: reidkit's ``Trainer.train_epoch`` on CUHK03-labeled (decoded once into its cache; loading, augmentation,
  label-smoothed CE + batch-hard triplet, Adam, P x K batches: the whole step), against the plain loop: the same
  batch size of pre-made random tensors, cross-entropy, Adam: no data at all, so the peer's figure is the network's
  ceiling and the ratio says what reidkit's loop costs on top of the network;
* extraction: reidkit's ``extract_features`` over CUHK03-labeled's 200 query images (the evaluation path: eval
  mode, batches from its cache) against
  ``model(x)`` under ``torch.inference_mode`` on pre-made tensors, the same batch size.

Each side runs ``--batches`` batches after one warm-up batch; the ratio is reidkit / peer (1.0 = no cost).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn

from bench.measure import set_threads

CUHK03 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cuhk03" / "labeled"


def plain_training(model: nn.Module, classes: int, args) -> float:
    """images/s of forward + CE + backward + Adam step on pre-made tensors."""
    opt = torch.optim.Adam(model.parameters(), 3.5e-4)
    x = torch.randn(args.batch_size, 3, args.height, args.width)
    y = torch.randint(0, classes, (args.batch_size,))
    model.train()

    def step() -> None:
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step()
    t0 = time.perf_counter()
    for _ in range(args.batches):
        step()
    return args.batches * args.batch_size / (time.perf_counter() - t0)


@torch.inference_mode()
def plain_extraction(model: nn.Module, args) -> float:
    model.eval()
    x = torch.randn(args.batch_size, 3, args.height, args.width)
    model(x)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        model(x)
    return args.batches * args.batch_size / (time.perf_counter() - t0)


def reidkit_side(name: str, options: list[str], args) -> tuple[float, float, int]:
    """reidkit's training and extraction images/s with model ``name``, and the number of training classes."""
    from reidkit.engine import Trainer
    from reidkit.engine.features import extract_features
    from reidkit.recipe_files import load_recipe
    recipe = load_recipe(None, [
        "data.dataset=cuhk03_labeled", f"data.root={args.data}", f"data.height={args.height}",
        f"data.width={args.width}", f"data.batch_size={args.batch_size}", "data.num_instances=4",
        f"data.test_batch_size={args.batch_size}", f"model.name={name}", "model.pretrained=none", *options,
        "center_loss.weight=0", "schedule.warmup_epochs=0", "train.output_dir=/tmp/reidkit_bench_backbones",
        "train.channels_last=false"])
    trainer = Trainer(recipe, progress=False)
    trainer.train_epoch(0, max_batches=1)
    train_speed = trainer.train_epoch(1, max_batches=args.batches)["images_per_s"]
    query = trainer.query_cache                                           # CUHK03-labeled's 200 queries
    extract_features(trainer.model, query, args.batch_size)                    # warm-up
    t0 = time.perf_counter()
    extract_features(trainer.model, query, args.batch_size)
    return train_speed, len(query) / (time.perf_counter() - t0), trainer.num_classes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=str(CUHK03))
    args = parser.parse_args()
    set_threads(args.threads)
    import timm

    from reidkit.models.resnet import ResNetBackbone
    rows = []
    size = f"[{args.height},{args.width}]"
    train, extract, classes = reidkit_side("timm/vit_small_patch16_224", [f"model.img_size={size}"], args)
    peer = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=classes,
                             img_size=(args.height, args.width))
    rows.append(("ViT-S/16", train, plain_training(peer, classes, args), extract, plain_extraction(peer, args)))
    train, extract, classes = reidkit_side("resnet50_ibn_a_bnneck", [], args)
    peer = nn.Sequential(ResNetBackbone("resnet50_ibn_a", last_stride=1, pretrained=None),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, classes))
    rows.append(("ResNet-50-IBN-a", train, plain_training(peer, classes, args), extract,
                 plain_extraction(peer, args)))
    print(f"{args.height}x{args.width}, batch {args.batch_size}, {args.batches} batches, {args.threads} threads")
    print("| network | train img/s: reidkit | plain loop | ratio | extract img/s: reidkit | plain | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, t, pt, e, pe in rows:
        print(f"| {name} | {t:.1f} | {pt:.1f} | {t / pt:.2f} | {e:.1f} | {pe:.1f} | {e / pe:.2f} |")


if __name__ == "__main__":
    main()
