"""Optimisers with parameter groups (BoT: biases get their own lr factor and weight decay)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import OptimConfig


def model_parameter_groups(model: nn.Module, cfg: OptimConfig, prefix: str = "") -> list[dict]:
    """``model``'s trainable weights and biases as two parameter groups (named ``prefix + weights`` / ``biases``)
    with the recipe's lr, bias lr factor and weight decays."""
    weights: list[torch.nn.Parameter] = []
    biases: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (biases if name.endswith("bias") else weights).append(p)
    groups = [{"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": prefix + "weights"}]
    if biases:
        groups.append({"params": biases, "lr": cfg.lr * cfg.bias_lr_factor,
                       "weight_decay": cfg.weight_decay_bias, "name": prefix + "biases"})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    extra_groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """Adam, AMSGrad or SGD over ``model``'s trainable parameters, biases in their own group.

    ``extra_groups``: more parameter groups (the training pieces' own, e.g. adaptive L2's
    factors without weight decay); a group without ``lr`` trains at the base lr.
    """
    groups = model_parameter_groups(model, cfg)
    for group in extra_groups or []:
        groups.append({"lr": cfg.lr, **group})
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), amsgrad=cfg.name == "amsgrad")
