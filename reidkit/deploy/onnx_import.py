"""Import an OSNet exported to ONNX with batch norm folded into its convolutions.

Exporters (torch.onnx with constant folding) merge each conv -> BatchNorm pair
into one convolution with a bias and give it an anonymous initializer
(``onnx::Conv_123``); layers without a BN after them keep their parameter
names.  The ONNX node names still carry the module path
(``/conv2/conv2.0/conv2a/conv2/Conv`` -> ``conv2.0.conv2a.conv2``), so each
folded convolution is mapped back onto reidkit's conv and the BatchNorm beside
it, which becomes an identity carrying the folded bias
(weight 1, running mean 0, running variance 1 - eps).  The result is an
ordinary reidkit/torchreid OSNet state_dict.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models import build_model

BN_EPS = 1e-5


def module_path(node_name: str) -> str:
    """``/conv2/conv2.0/conv2b/conv2b.0/conv1/Conv`` -> ``conv2.0.conv2b.0.conv1``.

    Each segment is an attribute name, or (for a Sequential child) the parent's
    segment extended by ``.index``.
    """
    path: list[str] = []
    for segment in node_name.strip("/").split("/")[:-1]:
        if path and segment.startswith(path[-1] + "."):
            path[-1] = segment                  # a Sequential child carries its parent's name
        else:
            path.append(segment)
    return ".".join(path)


def import_onnx_osnet(onnx_file: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """State dict of reidkit's ``arch`` (e.g. ``osnet_x0_25``) from a BN-folded ONNX export.

    The classifier is not in a feature-extractor export; it is left at its
    (1-class) initial value.  Raises ValueError naming the keys that do not map.
    """
    import onnx
    from onnx import numpy_helper

    onnx_file = Path(onnx_file)
    if not onnx_file.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_file}")
    try:
        graph = onnx.load(str(onnx_file)).graph
    except Exception as e:  # noqa: BLE001  (protobuf and onnx raise their own types for damaged files)
        raise ValueError(f"{onnx_file}: not a readable ONNX model, or its external weights are missing or lie "
                         f"outside its folder ({type(e).__name__}: {str(e).strip()[:200]})") from None
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    target = build_model(arch, 1).state_dict()
    found: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "BatchNormalization"):
            continue
        names = [n for n in node.input[1:] if n in inits]
        if node.op_type != "Conv" or not names[0].startswith("onnx::"):
            for name in names:                                   # kept its parameter name
                found[name] = inits[name]
            continue
        conv = module_path(node.name)                            # folded conv + BN
        bn = conv.rsplit(".", 1)[0] + ".bn"
        if f"{bn}.weight" not in target:
            raise ValueError(f"{onnx_file}: folded conv {node.name} has no BatchNorm at {bn} in {arch}")
        weight, bias = inits[names[0]], inits[names[1]]
        found[f"{conv}.weight"] = weight
        found[f"{bn}.weight"] = np.ones_like(bias)
        found[f"{bn}.bias"] = bias
        found[f"{bn}.running_mean"] = np.zeros_like(bias)
        found[f"{bn}.running_var"] = np.full_like(bias, 1.0 - BN_EPS)
    state = dict(target)
    missing = [k for k in target if k not in found and not k.startswith("classifier")
               and not k.endswith("num_batches_tracked")]
    wrong = [f"{k}: onnx {v.shape} vs {arch} {tuple(target[k].shape)}" for k, v in found.items()
             if k in target and tuple(v.shape) != tuple(target[k].shape)]
    unknown = [k for k in found if k not in target]
    if missing or wrong or unknown:
        raise ValueError(f"{onnx_file} does not map onto {arch}: missing {missing[:5]}, "
                         f"shape mismatch {wrong[:5]}, unknown {unknown[:5]}")
    for k, v in found.items():
        state[k] = torch.from_numpy(np.array(v, copy=True)).to(target[k].dtype)
    return state


def onnx_input_size(onnx_file: str | Path) -> tuple[int, int] | None:
    """The (height, width) an ONNX model's image input fixes, or None when it leaves them open."""
    import onnx
    try:
        graph = onnx.load(str(onnx_file), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - import_onnx_osnet names a damaged file
        return None
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in graph.input[0].type.tensor_type.shape.dim]
    return (dims[2], dims[3]) if len(dims) == 4 and dims[2] > 0 and dims[3] > 0 else None
