"""int8 deployment: ``reidkit export --int8``'s model against the fp32 ONNX model it came from, on CUHK03 val.

    python -m bench.bench_int8 [--resnet RUN/best.pth] [--threads 2]

For each model: the fp32 ONNX export (BN folded) and its int8 version (ONNX Runtime static quantisation,
QDQ, uint8 activations with percentile ranges from 256 CUHK03-labeled *train* images, int8 per-channel
weights), both run by ONNX Runtime with the same threads, evaluated on CUHK03-labeled val (query/gallery,
cosine): mAP, rank-1 and images/s of the embedding pass (decoding excluded, ranking included).  Models:

- the real MSMT17 OSNet x0.25 (``../shared/data/weights/osnet_x0_25_msmt17.onnx``, imported), 256x128;
- a ResNet trained by reidkit (``--resnet``: any checkpoint of a CUHK03 recipe, e.g.
  ``reidkit train bot_r18_cuhk03 data.root=../shared/data/cuhk03/labeled_128x64 train.epochs=8
  data.val_identities=null``).

The peers have no int8 path that works (fast-reid documents its own as broken), so the ratio is int8 over
fp32 ONNX Runtime, reidkit's fastest fp32 CPU path (3.7x torchreid's best setting, bench_inference).
Goal (issue 19): >= 2x the fp32 images/s with mAP within 0.5 points.

It prints the CPU and the instruction sets that decide int8's speed (VNNI, AMX, AVX-512 bf16) first: int8 pays on
some CPUs and networks and not on others (issue 40: OSNet x0.25 on an AMD EPYC).  ``speed`` is the embedding of one
batch of 64 images, best of 5 rounds with the models taking turns (what ``reidkit export --int8`` measures);
``eval`` the images/s of the evaluation pass.  Without ``--resnet``, speed-only rows for random-weight ResNet-18 /
ResNet-50 / OSNet x1.0 show where int8 pays on the machine at hand (``--no-speed-rows`` leaves them out).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.measure import set_threads
from reidkit.data import build_dataset
from reidkit.deploy.onnx_model import (
    OnnxEmbedding,
    calibration_batches,
    compare_on_dataset,
    measure_speed,
    quantize_onnx,
)
from reidkit.deploy.optimize import export_onnx
from reidkit.engine.checkpoint import EmbeddingSpec, load_embedding_model
from reidkit.engine.device import describe_cpu
from reidkit.models import build_model
from reidkit.recipe_files import load_recipe

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def bench_model(name: str, weights: Path | None, recipe, workdir: Path, threads: int, check: bool = True) -> dict:
    """fp32 and int8 ONNX of ``weights`` (None: random weights, speed only): speed, and with ``check`` mAP."""
    size = (recipe.data.height, recipe.data.width)
    if weights is None:
        torch.manual_seed(0)
        model, spec = build_model(recipe.model.name, 2, pretrained="none").eval(), None
    else:
        model, spec = load_embedding_model(weights, recipe.model.name)
    spec = spec or EmbeddingSpec(recipe.model.name, {}, size)
    stem = name.split()[0] + f"_{size[0]}"
    fp32 = export_onnx(model, workdir / f"{stem}.onnx", size, spec=spec)
    train = [r.path for r in build_dataset(recipe.data.dataset, recipe.data.root).train]
    # speed-only rows: min-max ranges from 64 images (the kernels are the same; percentile ranges over 256 images
    # of a large network hold every activation value in memory)
    batches = list(calibration_batches(train, size, spec.mean, spec.std, count=256 if check else 64))
    int8 = quantize_onnx(fp32, workdir / f"{stem}.int8.onnx", batches, "percentile" if check else "minmax")
    speed = measure_speed({"fp32": fp32, "int8": int8}, np.concatenate(batches)[:64], threads)
    row = {"model": name, "size": f"{size[0]}x{size[1]}", "fp32_speed": speed["fp32"], "int8_speed": speed["int8"],
           "bytes_fp32": fp32.stat().st_size, "bytes_int8": int8.stat().st_size}
    text = (f"{name:28s} {row['size']:>7s}  speed fp32 {speed['fp32']:7.1f} int8 {speed['int8']:7.1f} img/s "
            f"= {speed['int8'] / speed['fp32']:.2f}x")
    if check:
        results = compare_on_dataset({"fp32": fp32, "int8": int8}, recipe, threads=threads)
        (r32, s32), (r8, s8) = results["fp32"], results["int8"]
        row |= {"fp32_map": 100 * r32.mAP, "int8_map": 100 * r8.mAP, "fp32_r1": 100 * r32.cmc[0],
                "int8_r1": 100 * r8.cmc[0], "fp32_ips": s32, "int8_ips": s8}
        text += (f" | eval fp32 {s32:6.1f} int8 {s8:6.1f} img/s | mAP fp32 {row['fp32_map']:.2f} int8 "
                 f"{row['int8_map']:.2f} ({row['int8_map'] - row['fp32_map']:+.2f}), R1 {row['fp32_r1']:.2f} / "
                 f"{row['int8_r1']:.2f}")
    print(text + f" | {row['bytes_int8'] / row['bytes_fp32']:.2f}x the file size", flush=True)
    return row


def op_profile(path: Path, images: np.ndarray, threads: int, runs: int = 3) -> dict[str, float]:
    """Milliseconds per batch spent in each ONNX Runtime op type (its profiler's kernel times)."""
    import json

    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: images})
    events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            times[op] = times.get(op, 0.0) + e["dur"] / 1000 / runs
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def variant_study(fp32: Path, batches: list[np.ndarray], workdir: Path, threads: int) -> None:
    """OSNet x0.25's int8 variants on this machine: speed over fp32 and the embeddings' worst cosine to fp32's
    (64 images), then where the time goes (per op type) in fp32 and in reidkit's int8 model."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType
    images = np.concatenate(batches)[:64]
    graph = onnx.load(str(fp32)).graph
    depthwise = [n.name for n in graph.node if n.op_type == "Conv"
                 and next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    variants: dict[str, dict] = {
        "reidkit's: QDQ, u8 activations, s8 per-channel weights": {},
        "per-tensor weights": {"per_channel": False},
        "QOperator format": {"quant_format": QuantFormat.QOperator},
        "s8 activations": {"activation_type": QuantType.QInt8},
        "depthwise convolutions left in fp32": {"nodes_to_exclude": depthwise},
        "convolutions only": {"op_types_to_quantize": ["Conv"]},
    }
    reference = OnnxEmbedding(fp32, threads)(torch.from_numpy(images))
    paths = {}
    for k, (label, options) in enumerate(variants.items()):
        path = quantize_onnx(fp32, workdir / f"variant{k}.onnx", batches, "minmax", **options)
        paths[label] = path
        speed = measure_speed({"fp32": fp32, "int8": path}, images, threads)
        cosine = torch.nn.functional.cosine_similarity(OnnxEmbedding(path, threads)(torch.from_numpy(images)),
                                                       reference).min()
        print(f"  {label:56s} {speed['int8'] / speed['fp32']:.2f}x fp32's speed, worst cosine {cosine:.3f}",
              flush=True)
    for label, path in (("fp32", fp32), ("int8 (reidkit's)", paths[next(iter(variants))])):
        profile = op_profile(path, images, threads)
        total = sum(profile.values())
        print(f"  {label}: {total:.1f} ms per 64 images; " + ", ".join(f"{op} {ms:.1f}" for op, ms in
                                                                     list(profile.items())[:6]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resnet", type=Path, help="a reidkit ResNet checkpoint trained on CUHK03-labeled")
    parser.add_argument("--data", type=Path, default=SHARED / "cuhk03" / "labeled")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-speed-rows", action="store_true", help="without --resnet: no random-weight rows")
    parser.add_argument("--variants", action="store_true", help="also OSNet x0.25's quantisation variants and "
                        "where the time goes per op type (issue 40)")
    args = parser.parse_args()
    set_threads(args.threads)
    import onnxruntime
    cpu, features = describe_cpu()
    print(f"CPU: {cpu}; {', '.join(features) or 'no AVX-512 / VNNI / AMX'}; {args.threads} threads; "
          f"ONNX Runtime {onnxruntime.__version__}, torch {torch.__version__}", flush=True)
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
        if args.variants:
            train = [r.path for r in build_dataset(recipe.data.dataset, recipe.data.root).train]
            spec = EmbeddingSpec("osnet_x0_25", {}, (256, 128))
            variant_study(workdir / "osnet_x0_25_256.onnx",
                          list(calibration_batches(train, (256, 128), spec.mean, spec.std, count=128)), workdir,
                          args.threads)
        if args.resnet:
            trained = load_recipe(str(args.resnet.parent / "recipe.json"), [f"data.root={args.data}"])
            rows.append(bench_model(trained.model.name, args.resnet, trained, workdir, args.threads))
        elif not args.no_speed_rows:
            for arch, h, w in (("resnet18_bnneck", 128, 64), ("resnet50_bnneck", 256, 128), ("osnet_x1_0", 256, 128)):
                other = load_recipe("bot_r18_cuhk03", [f"data.root={args.data}", f"model.name={arch}",
                                                       f"data.height={h}", f"data.width={w}"])
                rows.append(bench_model(f"{arch} (random weights)", None, other, workdir, args.threads, check=False))
    print(f"(ONNX Runtime, {args.threads} threads; CUHK03-labeled val)")


if __name__ == "__main__":
    main()
