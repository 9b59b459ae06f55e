"""ResNet with a global branch and horizontal-stripe regional branches (Ni, Fang and Huttunen,
"Adaptive L2 Regularization in Person Re-Identification", ICPR 2020, Fig. 2).

The backbone's last stage ("block 5") is copied, not shared: the global branch
runs the original, the regional branches run the copy.  The copy's feature map
is cut into ``regions`` horizontal stripes (the uniform partition of PCB, Sun et
al. 2018); each stripe is reduced and gets its own objective module (pooling ->
clip -> BatchNorm -> bias-free classifier, :class:`BNNeckHead`).  Two reductions:
``light`` (a 1x1 convolution + BatchNorm + ReLU to 256 channels, as PCB reduces its
stripes) and ``authors`` (as the authors' Keras code: a 3x3 convolution with bias
to the last stage's channels / ``regions``, then ReLU; Glorot-uniform kernel, zero
bias, Keras's defaults).  Training mode returns
one ``(logits, features)`` pair per branch as two lists, global first; eval
mode the branches' test embeddings concatenated.
"""
from __future__ import annotations

import copy
from typing import Literal, cast

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from .heads import BNNeckHead, build_pooling
from .registry import register_model
from .resnet import RESNETS, ResNetBackbone


class RegionalReIDModel(nn.Module):
    """Global branch + ``regions`` stripe branches over a copy of the last stage."""

    def __init__(self, backbone: ResNetBackbone, num_classes: int, regions: int = 2, region_dim: int | None = None,
                 pooling: str = "avg", bnneck: bool = True, test_feature: str = "after_bn", reduction: str = "light",
                 **head_options):
        super().__init__()
        channels = backbone.out_channels
        if region_dim is None:
            region_dim = 256 if reduction == "light" else channels // max(regions, 1)
        if regions < 1 or region_dim < 1:
            raise ValueError(f"regions and region_dim must be positive, got {regions} and {region_dim}")
        if reduction not in ("light", "authors"):
            raise ValueError(f"reduction must be 'light' or 'authors', got {reduction!r}")
        self.backbone = backbone
        self.regional_stage = copy.deepcopy(backbone.layer4)
        self.reduce = nn.ModuleList(_reduction(reduction, channels, region_dim) for _ in range(regions))
        self.pool = build_pooling(pooling)
        self.head = BNNeckHead(channels, num_classes, bnneck, test_feature, **head_options)
        self.region_heads = nn.ModuleList(BNNeckHead(region_dim, num_classes, bnneck, test_feature, **head_options)
                                          for _ in range(regions))
        self.regions = regions
        self.feature_dim = channels + regions * region_dim

    def forward(self, images: torch.Tensor):
        shared = self.backbone.up_to_layer3(images)
        outputs = [self.head(self.pool(self.backbone.layer4(shared)))]
        stripes = torch.tensor_split(self.regional_stage(shared), self.regions, dim=2)
        for k, (reduce, head) in enumerate(zip(self.reduce, self.region_heads)):   # indexed: torch.fx traces it
            outputs.append(head(self.pool(reduce(stripes[k]))))
        if self.training:
            logits, features = zip(*outputs)
            return list(logits), list(features)
        return torch.cat(outputs, dim=1)


def _reduction(kind: str, channels: int, region_dim: int) -> nn.Sequential:
    """One stripe's reduction block (see the module docstring)."""
    if kind == "light":
        conv = nn.Conv2d(channels, region_dim, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        return nn.Sequential(conv, nn.BatchNorm2d(region_dim), nn.ReLU(inplace=True))
    conv = nn.Conv2d(channels, region_dim, 3, padding=1, bias=True)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(cast(torch.Tensor, conv.bias))
    return nn.Sequential(conv, nn.ReLU(inplace=True))


class RegionalOptions(BaseModel):
    """The recipe's ``model`` options of the ``*_regional`` models."""

    model_config = ConfigDict(extra="forbid")
    regions: int = Field(2, gt=0)             # horizontal stripes
    # channels each stripe is reduced to (None: 256 for the light reduction, the last stage's channels / regions
    # for the authors'), and how: light = 1x1 conv + BN + ReLU (PCB's), authors = 3x3 conv with bias + ReLU (Ni et
    # al.'s code; its biases make the paper's conv-bias category)
    region_dim: int | None = Field(None, gt=0)
    reduction: Literal["light", "authors"] = "light"


def _regional_builder(depth: str):
    def build(num_classes: int, last_stride: int = 1, pretrained: str | None = "auto", pooling: str = "avg",
              bnneck: bool = True, test_feature: str = "after_bn", feature_clip: tuple[float, float] | None = None,
              bn_bias: str = "frozen", regions: int = 2, region_dim: int | None = None, classifier: str = "linear",
              reduction: str = "light") -> RegionalReIDModel:
        return RegionalReIDModel(ResNetBackbone(depth, last_stride, pretrained), num_classes, regions, region_dim,
                                 pooling, bnneck, test_feature, reduction, clip=feature_clip, bn_bias=bn_bias,
                                 classifier=classifier)
    build.__doc__ = f"{depth} with a global and stripe branches (Ni et al. 2020, adaptive L2's baseline)."
    return build


for _depth in RESNETS:
    register_model(f"{_depth}_regional", options=RegionalOptions)(_regional_builder(_depth))
