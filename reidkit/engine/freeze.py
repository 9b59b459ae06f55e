"""Train only some layers for the first epochs of fine-tuning (OSNet's "fixbase" epochs).

Zhou et al. (OSNet, ICCV 2019) fine-tune with only the new classifier trained for
the first 10 epochs, then everything.  Frozen modules get ``requires_grad=False``
(no gradient, so the optimiser skips them) and eval mode (their BatchNorm running
statistics stay as pretrained).
"""
from __future__ import annotations

import torch.nn as nn


def freeze_batchnorm_statistics(model: nn.Module) -> int:
    """Put every BatchNorm layer in eval mode (normalise with its running statistics, never update them);
    returns how many.  Their scale and shift keep their ``requires_grad``."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.eval()
    return len(layers)


def find_modules(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Modules named by dotted path (``head.classifier``), or by last component (``classifier``)."""
    found: dict[str, nn.Module] = {}
    modules = dict(model.named_modules())
    for name in names:
        hits = {path: m for path, m in modules.items()
                if path and (path == name or ("." not in name and path.rsplit(".", 1)[-1] == name))}
        if not hits:
            top = ", ".join(n for n, _ in model.named_children())
            raise ValueError(f"train.open_layers: no module named {name!r} in {type(model).__name__} "
                             f"(its top-level modules: {top})")
        found.update(hits)
    return found


def open_layers(model: nn.Module, names: list[str]) -> None:
    """Train mode and gradients for the named modules only; everything else frozen.

    Modules that contain an open one stay in train mode (the model still returns
    its training outputs); all others go to eval mode.
    """
    opened = find_modules(model, names)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    for path, m in model.named_modules():
        inside = any(path == o or path.startswith(o + ".") for o in opened)
        contains = any(o.startswith(path + ".") for o in opened) or path == ""
        if inside:
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
        elif not contains:
            m.eval()


def open_all_layers(model: nn.Module, trainable: set[nn.Parameter]) -> None:
    """Train mode and gradients for every parameter in ``trainable``, none for the others.

    ``trainable``: the parameters that were trainable before any freezing (required, so that
    parameters a model keeps fixed by design, such as the BNNeck's frozen bias, stay fixed).
    """
    model.train()
    for p in model.parameters():
        p.requires_grad_(p in trainable)
