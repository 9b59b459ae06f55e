"""Feature-extraction speed of OSNet: reidkit vs torchreid 0.2.5's model with the same weights.

    python -m bench.bench_inference [--batches 3 --archs osnet_x1_0 osnet_x0_25]

256x128 input, batch 64, 2 threads, eval mode, no gradients.  torchreid's model
runs as it ships (NCHW) and switched to channels_last (its best setting);
reidkit runs through ``FeatureExtractor``'s two backends on the same normalised
batch: ``torch`` (conv+BN folded, channels_last, inference_mode) and
``onnxruntime`` (the folded model exported to ONNX).  The weights are torchreid's
random initialisation copied into reidkit's model with ``load_state_dict``,
with BatchNorm running statistics randomised so folding them matters; every
backend's features are compared with torchreid's.  Image decoding is left out
(the same for both).
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench.measure import set_threads
from reidkit.deploy import FeatureExtractor
from reidkit.engine.checkpoint import save_checkpoint


def images_per_s(fn, batch: torch.Tensor, batches: int) -> tuple[float, torch.Tensor]:
    out = fn(batch)                                          # warm-up (oneDNN / ORT plan caches)
    t0 = time.perf_counter()
    for _ in range(batches):
        out = fn(batch)
    return batches * len(batch) / (time.perf_counter() - t0), out


def bench_arch(arch: str, batches: int, workdir: Path) -> list[tuple[str, float, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid.reid as tr
    torch.manual_seed(0)
    theirs = tr.models.build_model(arch, num_classes=1000, pretrained=False).eval()
    for m in theirs.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    weights = workdir / f"{arch}.pth"
    save_checkpoint({"state_dict": theirs.state_dict()}, weights)
    batch = torch.randn(64, 3, 256, 128)

    def torchreid_nchw(x):
        with torch.no_grad():
            return theirs(x)

    theirs_cl = tr.models.build_model(arch, num_classes=1000, pretrained=False)
    theirs_cl.load_state_dict(theirs.state_dict())
    theirs_cl = theirs_cl.eval().to(memory_format=torch.channels_last)

    def torchreid_cl(x):
        with torch.no_grad():
            return theirs_cl(x.contiguous(memory_format=torch.channels_last))

    rows = []
    base, reference = images_per_s(torchreid_nchw, batch, batches)
    rows.append(("torchreid 0.2.5, NCHW (as shipped)", base, 0.0))
    speed, out = images_per_s(torchreid_cl, batch, batches)
    rows.append(("torchreid 0.2.5, channels_last", speed, float((out - reference).abs().max())))
    for backend in ("torch", "onnxruntime"):
        extractor = FeatureExtractor(arch, weights, backend=backend, batch_size=64,
                                     onnx_path=workdir / f"{arch}.onnx")
        speed, out = images_per_s(extractor.embed_batch, batch, batches)
        rows.append((f"reidkit FeatureExtractor backend={backend}", speed, float((out - reference).abs().max())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--archs", nargs="+", default=["osnet_x1_0", "osnet_x0_25"])
    args = parser.parse_args()
    set_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            rows = bench_arch(arch, args.batches, Path(tmp))
            best_theirs = max(r[1] for r in rows if r[0].startswith("torchreid"))
            print(f"\n{arch}, 256x128, batch 64, 2 threads, {args.batches} batches after a warm-up")
            print(f"{'':45s} {'img/s':>7s}  {'vs torchreid best':>17s}  max|diff| to torchreid")
            for name, speed, diff in rows:
                print(f"{name:45s} {speed:7.1f}  {speed / best_theirs:16.2f}x  {diff:.1e}")


if __name__ == "__main__":
    main()
