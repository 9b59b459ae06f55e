"""Optimisers with parameter groups (BoT: biases get their own lr factor and weight decay)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    no_decay: list[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """Adam, AMSGrad or SGD over ``model``'s trainable parameters, biases in their own group.

    ``no_decay``: more parameters trained at the base lr without weight decay
    (adaptive L2's regularisation factors).
    """
    weights, biases = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (biases if name.endswith("bias") else weights).append(p)
    groups = [{"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "weights"}]
    if biases:
        groups.append({"params": biases, "lr": cfg.lr * cfg.bias_lr_factor,
                       "weight_decay": cfg.weight_decay_bias, "name": "biases"})
    if no_decay:
        groups.append({"params": list(no_decay), "lr": cfg.lr, "weight_decay": 0.0, "name": "no_decay"})
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr, amsgrad=cfg.name == "amsgrad")
