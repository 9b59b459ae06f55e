"""The commands that turn a model into files: ``reidkit import-onnx`` (an OSNet ONNX export -> a reidkit checkpoint)
and ``reidkit export`` (a checkpoint -> ONNX checked against torch, with ``--int8`` a calibrated int8 model timed and
checked on the recipe's query/gallery)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..engine.checkpoint import describe_tensors, non_finite_tensors
from ..files import OutputError, check_output_file, refuse_outputs_over_inputs
from ..logs import outputs_summary
from ..names import counted
from ..recipe_files import load_recipe


def cmd_import_onnx(args) -> int:
    from ..engine.checkpoint import save_checkpoint
    from . import import_onnx_osnet
    from .onnx_import import onnx_input_size
    check_output_file(args.out)
    refuse_outputs_over_inputs({"--out": args.out}, {"the ONNX file": args.file})
    state = import_onnx_osnet(args.file, args.arch)
    size = onnx_input_size(args.file)
    # its BatchNorms are folded (identity statistics): fine-tuning first measures real ones (train.bn_stats=auto)
    save_checkpoint({"state_dict": state, "arch": args.arch, "source": str(args.file), "bn_stats": "recalibrate"}
                    | ({"trained_image_size": list(size)} if size else {}), args.out)
    print(f"{args.file} -> {args.out} ({args.arch}, {sum(v.numel() for v in state.values())} values)")
    return 0


def cmd_export(args) -> int:
    """Trained weights -> ONNX (checked against torch), and with ``--int8`` an int8 model calibrated on images,
    checked against the fp32 one on the recipe's query and gallery."""
    import onnxruntime as ort

    from ..engine.checkpoint import load_recipe_model
    from ..models.heads import embed, takes_cameras
    from .optimize import export_onnx
    recipe = load_recipe(args.recipe, args.overrides)
    int8_path = Path(args.out).with_suffix(".int8.onnx") if args.int8 else None
    for out in (args.out, int8_path):
        if out is not None:
            check_output_file(out)
    if int8_path is not None and int8_path.exists() and not args.overwrite:
        raise OutputError(f"{int8_path} exists (the int8 model of --out {args.out}): pass --overwrite to replace it, "
                          "or choose another --out")
    refuse_outputs_over_inputs({"--out": args.out, "the int8 model": int8_path},
                               {"the weights": args.weights, "the recipe": args.recipe})
    model, spec = load_recipe_model(recipe, args.weights)
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise ValueError(f"{args.weights}: {describe_tensors(bad)} hold NaN or infinite values (a diverged run?); "
                         "an export would give NaN embeddings. Export an earlier checkpoint")
    size = (recipe.data.height, recipe.data.width)
    x, feed = torch.randn(2, 3, *size), {}
    cameras = None
    if takes_cameras(model):                       # TransReID's SIE: a second input, each image's camera index
        if int8_path is not None:
            raise ValueError(f"{args.weights}: the model embeds each image's camera (TransReID's SIE); its int8 "
                             "export is not supported (the fp32 export is: leave out --int8)")
        cameras = torch.tensor([0, int(spec.options["sie_cameras"]) - 1])     # the first and the last camera
        feed = {"cameras": cameras.numpy()}
    path = export_onnx(model, args.out, size, spec=spec)
    with torch.inference_mode():
        expected = embed(model, x, cameras).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy(), **feed})[0]
    diff = float(np.abs(got - expected).max())
    print(f"{args.weights} -> {path} ({recipe.model.name}, input N x 3 x {size[0]} x {size[1]}, "
          f"output N x {got.shape[1]}); ONNX Runtime vs torch max |diff| {diff:.2e}")
    if not np.isfinite(got).all() or not np.isfinite(expected).all() or not diff < 1e-3:   # NaN fails too
        print(f"reidkit export: error: {path} does not reproduce the model (max |diff| {diff:.2e}, "
              f"{int((~np.isfinite(got)).sum())} non-finite outputs); do not deploy it", file=sys.stderr)
        return 1
    code = _export_int8(args, recipe, spec, path, int8_path) if int8_path is not None else 0
    print(outputs_summary("written", [("ONNX model", path)] + ([("int8 model", int8_path)] if int8_path else []),
                          f"use it: reidkit extract GALLERY_DIR --weights {path} --out gallery.npz"))
    return code


def _export_int8(args, recipe, spec, fp32_path: Path, int8_path: Path) -> int:
    """Quantise, time both models on this machine, say which to deploy (recorded in the int8 file), then check
    the int8 model's mAP against the fp32 one's."""
    from ..data.combine import build_recipe_dataset
    from ..data.records import find_images
    from ..engine.device import describe_cpu
    from .onnx_model import calibration_batches, compare_on_dataset, measure_speed, quantize_onnx, record_int8_check
    if args.calibration:
        paths, source = [str(p) for p in find_images(args.calibration)], args.calibration
    else:
        dataset = build_recipe_dataset(recipe.data)
        paths, source = [r.path for r in dataset.train], f"{dataset.name} train"
    count = min(args.calibration_images, len(paths))
    batches = list(calibration_batches(paths, spec.image_size, spec.mean, spec.std, count))
    quantize_onnx(fp32_path, int8_path, batches, args.calibration_method)
    print(f"int8 -> {int8_path} (static, {args.calibration_method} ranges from {counted(count, 'image')} of "
          f"{source})")
    cpu, features = describe_cpu()
    threads = torch.get_num_threads()
    speed = measure_speed({"fp32": fp32_path, "int8": int8_path}, np.concatenate(batches)[:SPEED_BATCH], threads)
    speedup = speed["int8"] / speed["fp32"]
    check = {"cpu": cpu, "cpu_features": features, "threads": threads, "fp32_images_per_s": round(speed["fp32"], 1),
             "int8_images_per_s": round(speed["int8"], 1), "speedup": round(speedup, 3)}
    print(f"speed on this machine ({cpu}; {', '.join(features) or 'no AVX-512 / VNNI / AMX'}; {threads} threads, "
          f"ONNX Runtime): fp32 {speed['fp32']:.1f} img/s, int8 {speed['int8']:.1f} img/s: "
          f"{deploy_advice(speedup, fp32_path, int8_path)}")
    if args.int8_if_faster and speedup <= 1.0:
        int8_path.unlink()
        print(f"--int8-if-faster: {int8_path} removed; deploy {fp32_path}")
        return 0
    if args.no_check:
        record_int8_check(int8_path, check)
        return 0
    results = compare_on_dataset({"fp32": fp32_path, "int8": int8_path}, recipe, progress=not args.no_progress)
    for name, (result, ips) in results.items():
        print(f"  {name}: mAP {100 * result.mAP:.2f}  rank-1 {100 * result.cmc[0]:.2f}  {ips:.1f} img/s "
              "(evaluation pass)")
    drop = 100 * (results["fp32"][0].mAP - results["int8"][0].mAP)
    ok = drop <= args.max_map_drop
    record_int8_check(int8_path, check | {"fp32_mAP": round(100 * results["fp32"][0].mAP, 2),
                                          "int8_mAP": round(100 * results["int8"][0].mAP, 2)})
    print(f"int8 vs fp32 on the recipe's query/gallery: {speedup:.2f}x the speed, mAP {-drop:+.2f} points "
          f"({'within' if ok else 'BEYOND'} --max-map-drop {args.max_map_drop})")
    return 0 if ok else 1


#: images per timed batch when export compares the fp32 and int8 models' speed
SPEED_BATCH = 64


def deploy_advice(speedup: float, fp32_path: Path, int8_path: Path) -> str:
    """Which model to deploy on this machine, from int8's speed over fp32's."""
    if speedup >= 1.1:
        return f"int8 is {speedup:.2f}x the fp32 speed here: deploy {int8_path}"
    if speedup >= 0.95:
        return f"int8 is {speedup:.2f}x the fp32 speed here, no gain: keep {fp32_path}"
    return (f"int8 is {speedup:.2f}x the fp32 speed here, SLOWER: keep {fp32_path} (on this CPU the fp32 kernels "
            "beat int8 for this network; docs/BENCHMARKS.md, int8 deployment)")


def add_model_file_commands(sub) -> None:
    """Register import-onnx and export on the ``reidkit`` parser's subcommands."""
    p = sub.add_parser("import-onnx", help="map a BN-folded OSNet ONNX export onto reidkit's model")
    p.add_argument("file")
    p.add_argument("--arch", required=True, help="e.g. osnet_x0_25")
    p.add_argument("--out", required=True, help="output .pth (a state_dict checkpoint)")
    p.set_defaults(func=cmd_import_onnx)

    p = sub.add_parser("export", help="trained weights -> ONNX (BN folded, dynamic batch), checked with onnxruntime")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True, help="output .onnx")
    p.add_argument("--int8", action="store_true", help="also write OUT with .int8.onnx: ONNX Runtime static "
                   "quantisation, then its mAP against the fp32 model's on the recipe's query/gallery")
    p.add_argument("--calibration", metavar="DIR", help="images the int8 ranges are measured on "
                   "(default: the recipe's training images)")
    p.add_argument("--calibration-images", type=int, default=256, metavar="N",
                   help="how many calibration images (a seeded random sample; default 256)")
    p.add_argument("--calibration-method", default="percentile", choices=["percentile", "minmax", "entropy"],
                   help="how activation ranges are set from the calibration images (default percentile)")
    p.add_argument("--max-map-drop", type=float, default=0.5, metavar="POINTS",
                   help="fail (exit 1) when int8 loses more mAP than this (default 0.5)")
    p.add_argument("--no-check", action="store_true", help="skip the int8 accuracy check (the speed is still "
                   "measured)")
    p.add_argument("--int8-if-faster", action="store_true", help="keep the int8 model only when it is faster than "
                   "the fp32 one on this machine (else it is removed and fp32 is the one to deploy)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.int8.onnx (default: refuse)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export)
