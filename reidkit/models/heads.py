"""Pooling and the BNNeck head (Luo et al., "Bag of Tricks and a Strong Baseline", 2019).

global pooling -> f_t (triplet / center loss) -> BatchNorm with its bias frozen
-> f_i -> bias-free linear classifier (ID loss).  At test time the head returns
f_i ("after_bn", the paper's choice, used with cosine distance) or f_t.

The same head is the "objective module" of Ni et al. (adaptive L2, ICPR 2020,
Fig. 1) with ``clip=(0, 1)`` (element-wise clipping of the pooled features,
before BatchNorm), ``bn_bias="trained"`` and ``test_feature="before_bn"``.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al. 2018) with a learnable exponent."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p).flatten(1)


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def build_pooling(name: str) -> nn.Module:
    if name == "avg":
        return AvgPool()
    if name == "gem":
        return GeM()
    raise ValueError(f"pooling must be 'avg' or 'gem', got {name!r}")


class BNNeckHead(nn.Module):
    """BNNeck: BatchNorm (bias frozen at 0) between the embedding and a bias-free classifier."""

    def __init__(self, in_features: int, num_classes: int, bnneck: bool = True,
                 test_feature: str = "after_bn", clip: tuple[float, float] | None = None,
                 bn_bias: str = "frozen", classifier: str = "linear"):
        super().__init__()
        if classifier not in ("linear", "cosine"):
            raise ValueError(f"classifier must be 'linear' or 'cosine', got {classifier!r}")
        # cosine: the logits are the cosines between f_i and each class's weight vector, what the margin-based
        # identity losses (loss.id_loss: cosface, arcface, circle) put their margin on
        self.cosine = classifier == "cosine"
        if test_feature not in ("after_bn", "before_bn"):
            raise ValueError(f"test_feature must be 'after_bn' or 'before_bn', got {test_feature!r}")
        if bn_bias not in ("frozen", "trained"):
            raise ValueError(f"bn_bias must be 'frozen' or 'trained', got {bn_bias!r}")
        if clip is not None and not clip[0] < clip[1]:
            raise ValueError(f"feature clip needs low < high, got {tuple(clip)}")
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.test_feature = test_feature if bnneck else "before_bn"
        self.bottleneck = nn.BatchNorm1d(in_features) if bnneck else nn.Identity()
        if bnneck:
            self.bottleneck.bias.requires_grad_(bn_bias == "trained")
            bn = cast(nn.BatchNorm1d, self.bottleneck)
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
        self.classifier = nn.Linear(in_features, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        if self.clip is not None:
            f_t = f_t.clamp(*self.clip)
        f_i = self.bottleneck(f_t)
        if self.training:
            if self.cosine:
                return F.linear(F.normalize(f_i, dim=1), F.normalize(self.classifier.weight, dim=1)), f_t
            return self.classifier(f_i), f_t
        return f_i if self.test_feature == "after_bn" else f_t


def takes_cameras(model: nn.Module) -> bool:
    """Whether ``model`` (or the model a DDP wrapper holds) embeds each image's camera (TransReID's SIE): it is
    then called ``model(images, cameras)``."""
    return bool(getattr(getattr(model, "module", model), "takes_cameras", False))


def embed(model: nn.Module, images: torch.Tensor, cameras: torch.Tensor | None = None):
    """``model(images)``, with the images' cameras for a model that takes them."""
    return model(images, cameras) if takes_cameras(model) else model(images)


class TestedFeature:
    """A model's training embedding as the model is tested: through its BNNeck's BatchNorm (the batch's
    statistics, as in the training forward pass, without a second update of the running ones) when the model
    tests after it, else unchanged.  Losses that compare training embeddings with test-time ones (a teacher's,
    a memory built from evaluation features) use it."""

    def __init__(self, model: nn.Module):
        head = getattr(model, "head", None)
        bn = getattr(head, "bottleneck", None)
        tested_after_bn = getattr(head, "test_feature", None) == "after_bn"
        # (SyncBatchNorm under data parallelism: the features it normalises here are the gathered global batch)
        self.bn = bn if isinstance(bn, nn.modules.batchnorm._BatchNorm) and tested_after_bn else None

    def __call__(self, f_t: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if bn is None:
            return f_t
        return F.batch_norm(f_t, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
