"""Inference-time rewrites that keep a model's outputs (to float rounding) and make it faster on CPU.

- ``fuse_for_inference``: batch norm folded into the preceding convolution
  (torch.fx), channels_last weights.  OSNet x1.0 at 256x128 on 2 cores: 8.7 img/s
  as built, 18 img/s fused + channels_last (docs/BENCHMARKS.md).
- ``export_onnx``: the fused eval-mode model as an ONNX graph with a dynamic
  batch axis, for ONNX Runtime (the fastest CPU path for depthwise-heavy OSNet).
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from torch.fx.experimental.optimization import fuse

from ..engine.checkpoint import EmbeddingSpec
from ..files import write_atomic
from ..models.heads import takes_cameras

log = logging.getLogger("reidkit")


def fuse_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with conv+BN folded (and NHWC weights).

    A model torch.fx cannot trace (data-dependent control flow, say) is copied unfused, with a log line.
    """
    try:
        fused = fuse(copy.deepcopy(model).eval())
    except Exception as e:  # noqa: BLE001  (fusion is an optimisation: any failure leaves the model as it is)
        log.info("%s: not fused for inference (torch.fx cannot trace it: %s)", type(model).__name__, e)
        fused = copy.deepcopy(model).eval()
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused.eval()


def export_onnx(model: nn.Module, path: str | Path, image_size: tuple[int, int] = (256, 128),
                opset: int = 17, spec: EmbeddingSpec | None = None) -> Path:
    """Write the eval-mode embedding network to ``path`` (input ``images``: N x 3 x H x W, normalised; a model
    that embeds each image's camera, TransReID's SIE, has a second input ``cameras``: N int64 indices).

    ``spec`` (architecture, input size, normalisation) goes into the file's metadata, so that
    ``reidkit extract --weights model.onnx`` and :class:`~reidkit.deploy.FeatureExtractor` need nothing else.
    """
    net = fuse_for_inference(model, channels_last=False)
    example: tuple[torch.Tensor, ...] = (torch.zeros(2, 3, *image_size),)
    names = ["images"]
    if takes_cameras(model):
        example, names = (*example, torch.zeros(2, dtype=torch.long)), [*names, "cameras"]
    dynamic = {name: {0: "batch"} for name in [*names, "features"]}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, example, tmp, input_names=names, output_names=["features"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
        if spec is not None:
            from .onnx_model import write_spec
            write_spec(tmp, spec)
    return write_atomic(path, write)        # an interrupted export never replaces a working model
