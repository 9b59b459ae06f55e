"""A ReID network: backbone -> pooling -> BNNeck head."""
from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn

from .densenet import DENSENETS, DenseNetBackbone
from .heads import BNNeckHead, build_pooling
from .registry import register_model
from .resnet import IBN_A_URLS, RESNETS, ResNetBackbone


class ReIDModel(nn.Module):
    """In training mode returns ``(logits, f_t)``; in eval mode the test embedding."""

    def __init__(self, backbone: nn.Module, num_classes: int, pooling: str = "avg",
                 bnneck: bool = True, test_feature: str = "after_bn", **head_options):
        super().__init__()
        self.backbone = backbone
        self.pool = build_pooling(pooling)
        self.head = BNNeckHead(cast(int, backbone.out_channels), num_classes, bnneck, test_feature, **head_options)
        self.feature_dim = backbone.out_channels

    def forward(self, images: torch.Tensor):
        return self.head(self.pool(self.backbone(images)))


def _bnneck_builder(name: str, backbone_class: type[ResNetBackbone] | type[DenseNetBackbone]):
    def build(num_classes: int, last_stride: int = 1, pretrained: str | None = "auto",
              pooling: str = "avg", bnneck: bool = True, test_feature: str = "after_bn",
              feature_clip: tuple[float, float] | None = None, bn_bias: str = "frozen",
              classifier: str = "linear") -> ReIDModel:
        return ReIDModel(backbone_class(name, last_stride, pretrained), num_classes, pooling,
                         bnneck, test_feature, clip=feature_clip, bn_bias=bn_bias, classifier=classifier)
    build.__doc__ = f"{name} with BNNeck (Luo et al. 2019); ``last_stride=1`` by default."
    return build


for _name in (*RESNETS, *IBN_A_URLS):
    register_model(f"{_name}_bnneck")(_bnneck_builder(_name, ResNetBackbone))
for _name in DENSENETS:
    register_model(f"{_name}_bnneck")(_bnneck_builder(_name, DenseNetBackbone))
