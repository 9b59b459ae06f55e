"""Training throughput (data loading included): reidkit vs torchreid 0.2.5's triplet engine.

    python -m bench.bench_train [--batches 30 --height 128 --width 64 --arch resnet18 --torch-batchnorm]

reidkit runs twice: fp32 (its default, channels_last) and with ``train.amp=true``
(bfloat16 autocast; fast on CPUs with AVX512-BF16/AMX).  Same data (CUHK03-labeled
train), same backbone (``--arch``: ResNet-18 with last stride 2 as torchreid
builds it, or OSNet; from scratch), same losses (label-smoothed softmax +
batch-hard triplet, margin 0.3), Adam 3.5e-4, P=16 x K=4, 2 threads.  Each runs
``--batches`` training iterations after 2 warm-up iterations; images/s counts
the whole loop: loading, augmentation, forward, backward, step.  reidkit's
one-off decode into its cache is reported separately.
"""
from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from pathlib import Path
from unittest import mock

import torch

from bench import peers
from bench.measure import set_threads
from reidkit.engine import Trainer
from reidkit.recipe_files import load_recipe

REIDKIT_NAMES = {"resnet18": "resnet18_bnneck", "resnet50": "resnet50_bnneck",
                 "osnet_x0_25": "osnet_x0_25", "osnet_x1_0": "osnet_x1_0"}
CUHK03 = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cuhk03" / "labeled")


def run_reidkit(args, amp: bool, torch_batchnorm: bool = False) -> tuple[float, float]:
    """images/s and the decode time; ``torch_batchnorm``: keep torch's channels_last BatchNorm statistics
    instead of ``ExactBatchNorm2d`` (how reidkit trained on CPUs before 2026-11-27)."""
    recipe = load_recipe(None, [f"train.amp={amp}", "train.channels_last=true",
        "data.dataset=cuhk03_labeled", f"data.root={CUHK03}", f"data.height={args.height}",
        f"data.width={args.width}", f"model.name={REIDKIT_NAMES[args.arch]}",
        *(["model.last_stride=2"] if args.arch.startswith("resnet") else []),   # OSNet has no last_stride
        "model.pretrained=none", "center_loss.weight=0", "schedule.warmup_epochs=0",
        "train.output_dir=/tmp/reidkit_bench_train", "augment.erasing=0.5"])
    t0 = time.perf_counter()
    with mock.patch("reidkit.engine.trainer.exact_cpu_batchnorm", lambda m, *_: m) if torch_batchnorm \
            else contextlib.nullcontext():
        trainer = Trainer(recipe, progress=False)
    decode_s = time.perf_counter() - t0
    trainer.train_epoch(0, max_batches=2)
    stats = trainer.train_epoch(1, max_batches=args.batches)
    return stats["images_per_s"], decode_s


def run_torchreid(args) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid.reid as tr
        from torchreid.reid.engine import ImageTripletEngine
    dm = peers.torchreid_cuhk03_datamanager(CUHK03, args.height, args.width, 64, 4, 2,
                                            ["random_flip", "random_crop", "random_erase"])
    model = tr.models.build_model(args.arch, num_classes=dm.num_train_pids, loss="triplet",
                                  pretrained=False)
    optimizer = tr.optim.build_optimizer(model, optim="adam", lr=3.5e-4)
    engine = ImageTripletEngine(dm, model, optimizer, margin=0.3, weight_t=1, weight_x=1,
                                label_smooth=True, use_gpu=False)
    model.train()
    loader = iter(dm.train_loader)
    for _ in range(2):
        engine.forward_backward(next(loader))
    t0, n = time.perf_counter(), 0
    for _ in range(args.batches):
        data = next(loader)
        engine.forward_backward(data)
        n += data["img"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--arch", choices=sorted(REIDKIT_NAMES), default="resnet18")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--torch-batchnorm", action="store_true",
                        help="also time reidkit fp32 with torch's inexact channels_last BatchNorm statistics")
    args = parser.parse_args()
    set_threads(2)
    torch.manual_seed(0)
    fp32, decode_s = run_reidkit(args, amp=False)
    bf16, _ = run_reidkit(args, amp=True)
    before = run_reidkit(args, amp=False, torch_batchnorm=True)[0] if args.torch_batchnorm else None
    theirs = run_torchreid(args)
    print(f"\n{args.arch}, {args.height}x{args.width}, softmax+triplet, batch 64, {args.batches} iterations")
    print(f"torchreid 0.2.5 (fp32, NCHW)        {theirs:6.1f} img/s")
    print(f"reidkit fp32, channels_last         {fp32:6.1f} img/s   {fp32 / theirs:.2f}x"
          f"   (one-off decode into the cache: {decode_s:.1f} s)")
    print(f"reidkit bf16 autocast, channels_last{bf16:6.1f} img/s   {bf16 / theirs:.2f}x   (train.amp=true)")
    if before is not None:
        print(f"reidkit fp32, torch's BatchNorm     {before:6.1f} img/s   {before / theirs:.2f}x   "
              f"(inexact statistics, before 2026-11-27; exact: {fp32 / before:.2f}x of it)")


if __name__ == "__main__":
    main()
