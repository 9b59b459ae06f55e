"""int8 deployment: ``reidkit export --int8``'s model against the fp32 ONNX model it came from, on CUHK03 val.

    python -m bench.bench_int8 [--resnet RUN/best.pth] [--threads 2]

For each model: the fp32 ONNX export (BN folded) and its int8 version (ONNX Runtime static quantisation,
QDQ, uint8 activations with percentile ranges from 256 CUHK03-labeled *train* images, int8 per-channel
weights), both run by ONNX Runtime with the same threads, evaluated on CUHK03-labeled val (query/gallery,
cosine): mAP, rank-1 and images/s of the embedding pass (decoding excluded, ranking included).  Models:

- the real MSMT17 OSNet x0.25 (``../shared/data/weights/osnet_x0_25_msmt17.onnx``, imported), 256x128;
- a ResNet trained by reidkit (``--resnet``: any checkpoint of a CUHK03 recipe, e.g.
  ``reidkit train bot_r18_cuhk03 data.root=../shared/data/cuhk03/labeled_128x64 train.epochs=8``).

The peers have no int8 path that works (fast-reid documents its own as broken), so the ratio is int8 over
fp32 ONNX Runtime, reidkit's fastest fp32 CPU path (3.7x torchreid's best setting, bench_inference).
Goal (issue 19): >= 2x the fp32 images/s with mAP within 0.5 points.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.measure import set_threads
from reidkit.data import build_dataset
from reidkit.deploy.onnx_model import calibration_batches, compare_on_dataset, quantize_onnx
from reidkit.deploy.optimize import export_onnx
from reidkit.engine.checkpoint import EmbeddingSpec, load_embedding_model
from reidkit.recipe_files import load_recipe

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def bench_model(name: str, weights: Path, recipe, workdir: Path, threads: int) -> dict:
    model, spec = load_embedding_model(weights, recipe.model.name)
    size = (recipe.data.height, recipe.data.width)
    spec = spec or EmbeddingSpec(recipe.model.name, {}, size)
    fp32 = export_onnx(model, workdir / f"{name}.onnx", size, spec=spec)
    train = [r.path for r in build_dataset(recipe.data.dataset, recipe.data.root).train]
    int8 = quantize_onnx(fp32, workdir / f"{name}.int8.onnx",
                         calibration_batches(train, size, spec.mean, spec.std, count=256))
    results = compare_on_dataset({"fp32": fp32, "int8": int8}, recipe, threads=threads)
    (r32, s32), (r8, s8) = results["fp32"], results["int8"]
    row = {"model": name, "size": f"{size[0]}x{size[1]}", "fp32_map": 100 * r32.mAP, "int8_map": 100 * r8.mAP,
           "fp32_r1": 100 * r32.cmc[0], "int8_r1": 100 * r8.cmc[0], "fp32_ips": s32, "int8_ips": s8,
           "bytes_fp32": fp32.stat().st_size, "bytes_int8": int8.stat().st_size}
    print(f"{name:24s} {row['size']:>7s}  fp32 {row['fp32_map']:6.2f} mAP {row['fp32_r1']:6.2f} R1 "
          f"{s32:7.1f} img/s | int8 {row['int8_map']:6.2f} mAP {row['int8_r1']:6.2f} R1 {s8:7.1f} img/s | "
          f"{s8 / s32:.2f}x, mAP {row['int8_map'] - row['fp32_map']:+.2f}, "
          f"{row['bytes_int8'] / row['bytes_fp32']:.2f}x the file size", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resnet", type=Path, help="a reidkit ResNet checkpoint trained on CUHK03-labeled")
    parser.add_argument("--data", type=Path, default=SHARED / "cuhk03" / "labeled")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    from reidkit.deploy import import_onnx_osnet
    from reidkit.engine.checkpoint import save_checkpoint
    rows = []
    with tempfile.TemporaryDirectory(prefix="reidkit_int8_bench_") as tmp:
        workdir = Path(tmp)
        osnet = workdir / "osnet_x0_25_msmt17.pth"
        save_checkpoint({"state_dict": import_onnx_osnet(SHARED / "weights" / "osnet_x0_25_msmt17.onnx",
                                                         "osnet_x0_25"), "arch": "osnet_x0_25"}, osnet)
        recipe = load_recipe("osnet_x0_25_cuhk03", [f"data.root={args.data}"])
        rows.append(bench_model("osnet_x0_25 (MSMT17)", osnet, recipe, workdir, args.threads))
        if args.resnet:
            trained = load_recipe(str(args.resnet.parent / "recipe.json"), [f"data.root={args.data}"])
            rows.append(bench_model(trained.model.name, args.resnet, trained, workdir, args.threads))
    print(f"(ONNX Runtime, {args.threads} threads, torch {torch.__version__}; CUHK03-labeled val)")


if __name__ == "__main__":
    main()
