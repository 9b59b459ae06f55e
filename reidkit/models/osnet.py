"""OSNet: Omni-Scale Feature Learning for Person Re-Identification (Zhou et al., ICCV 2019).

Lite 3x3 = 1x1 pointwise conv then 3x3 depthwise conv (+BN+ReLU).  The
omni-scale residual bottleneck reduces channels by 4 with a 1x1 conv, runs
T = 4 streams of 1..4 stacked Lite 3x3 layers (receptive fields 3, 5, 7, 9),
weights each stream with a unified aggregation gate shared by all streams
(GAP -> FC (reduction 16) -> ReLU -> FC -> sigmoid, channel-wise and
input-dependent), sums them, expands with a linear 1x1 conv and adds the
residual.  Stages follow the paper's Table 1: conv1 (7x7, stride 2) + max-pool,
conv2 / conv3 / conv4 of 2 bottlenecks each with 1x1 conv + 2x2 average-pool
transitions after conv2 and conv3, conv5 1x1, GAP, FC 512.  Width multipliers
scale the channels (x1.0: 64, 256, 384, 512).  OSNet-IBN (supplementary)
puts instance normalisation in conv1 and after the bottlenecks of conv2.

Attribute names follow torchreid's implementation, so its checkpoints load
with ``model.load_state_dict`` as they are (tested against torchreid 0.2.5).
"""
from __future__ import annotations

import logging
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import BNNeckHead, build_pooling
from .pretrained import load_matching_weights
from .registry import register_model

log = logging.getLogger(__name__)

WIDTHS = {"x1_0": (64, 256, 384, 512), "x0_75": (48, 192, 288, 384),
          "x0_5": (32, 128, 192, 256), "x0_25": (16, 64, 96, 128)}


class ConvLayer(nn.Module):
    """conv -> BatchNorm (or InstanceNorm for IBN) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 instance_norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.InstanceNorm2d(cout, affine=True) if instance_norm else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(ConvLayer):
    """1x1 conv -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 1)


class Conv1x1Linear(nn.Module):
    """1x1 conv -> BN, no activation (the bottleneck's expansion and shortcut)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LiteConv3x3(nn.Module):
    """Lite 3x3: pointwise 1x1 conv, then depthwise 3x3 conv, BN, ReLU (paper Fig. 3)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class AggregationGate(nn.Module):
    """Unified aggregation gate: channel-wise, input-dependent weights shared by all streams."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc2(self.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * weights


class OmniScaleBlock(nn.Module):
    """The omni-scale residual bottleneck with T = 4 streams (paper Fig. 4)."""

    def __init__(self, cin: int, cout: int, instance_norm: bool = False, reduction: int = 4):
        super().__init__()
        mid = cout // reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2a = LiteConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(4)))
        self.gate = AggregationGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None
        self.IN = nn.InstanceNorm2d(cout, affine=True) if instance_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        streams = (self.conv2a(x1), self.conv2b(x1), self.conv2c(x1), self.conv2d(x1))
        out = self.conv3(sum(self.gate(s) for s in streams))
        out = out + (self.downsample(x) if self.downsample is not None else x)
        if self.IN is not None:
            out = self.IN(out)
        return F.relu(out)


def _stage(cin: int, cout: int, blocks: int, downsample: bool, instance_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [OmniScaleBlock(cin, cout, instance_norm)]
    layers += [OmniScaleBlock(cout, cout, instance_norm) for _ in range(blocks - 1)]
    if downsample:                                   # transition: 1x1 conv + 2x2 average pooling
        layers.append(nn.Sequential(Conv1x1(cout, cout), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNetBackbone(nn.Module):
    """conv1 ... conv5 of OSNet; returns the feature map (``out_channels`` channels)."""

    def __init__(self, width: str = "x1_0", ibn: bool = False):
        super().__init__()
        if width not in WIDTHS:
            raise ValueError(f"unknown OSNet width {width!r}; choose from {', '.join(WIDTHS)}")
        c = WIDTHS[width]
        self.conv1 = ConvLayer(3, c[0], 7, stride=2, padding=3, instance_norm=ibn)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(c[0], c[1], 2, downsample=True, instance_norm=ibn)
        self.conv3 = _stage(c[1], c[2], 2, downsample=True, instance_norm=False)
        self.conv4 = _stage(c[2], c[3], 2, downsample=False, instance_norm=False)
        self.conv5 = Conv1x1(c[3], c[3])
        self.out_channels = c[3]
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))


class OSNet(OSNetBackbone):
    """The full OSNet: backbone, GAP, FC 512 (+BN+ReLU), classifier.

    Training mode returns ``(logits, features)``; eval mode the 512-d features.
    """

    def __init__(self, num_classes: int, width: str = "x1_0", ibn: bool = False, feature_dim: int = 512):
        super().__init__(width, ibn)
        self.fc = nn.Sequential(nn.Linear(self.out_channels, feature_dim), nn.BatchNorm1d(feature_dim),
                                nn.ReLU(inplace=True))
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        _init_weights(self)

    def forward(self, x: torch.Tensor):
        v = self.fc(F.adaptive_avg_pool2d(super().forward(x), 1).flatten(1))
        return (self.classifier(v), v) if self.training else v


class OSNetBNNeck(nn.Module):
    """OSNet backbone under the BoT head (pooling -> BNNeck -> classifier)."""

    def __init__(self, num_classes: int, width: str = "x1_0", ibn: bool = False, pooling: str = "avg",
                 bnneck: bool = True, test_feature: str = "after_bn", **head_options):
        super().__init__()
        self.backbone = OSNetBackbone(width, ibn)
        self.pool = build_pooling(pooling)
        self.head = BNNeckHead(self.backbone.out_channels, num_classes, bnneck, test_feature, **head_options)
        self.feature_dim = self.backbone.out_channels

    def forward(self, x: torch.Tensor):
        return self.head(self.pool(self.backbone(x)))


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


M = TypeVar("M", bound=nn.Module)


def _init_from(model: M, pretrained: str | None, name: str, prefix: str = "") -> M:
    """``pretrained``: a checkpoint path (ImageNet or ReID; the head is kept new), or none/auto/None.

    OSNet's ImageNet weights are not on the torch hub, so "auto" means random
    initialisation unless a path is given.
    """
    if pretrained in (None, ""):
        return model
    if pretrained in ("none", "auto"):
        log.warning("%s: starting from random initialisation (pretrained=%s; give a weights path to "
                    "fine-tune, e.g. torchreid's osnet ImageNet file or a reidkit checkpoint)", name, pretrained)
        return model
    if pretrained == "imagenet":
        raise FileNotFoundError(f"{name}: model.pretrained=imagenet: OSNet's ImageNet weights are not published on "
                                "the torch hub; download torchreid's file (e.g. osnet_x1_0_imagenet.pth from its "
                                "model zoo) and give its path: model.pretrained=/path/to/file.pth")
    load_matching_weights(model, pretrained, name, prefix)
    return model


def _register(width: str, ibn: bool) -> None:
    name = f"osnet{'_ibn' if ibn else ''}_{width}"

    def full(num_classes: int, pretrained: str | None = None) -> OSNet:
        return _init_from(OSNet(num_classes, width, ibn), pretrained, name)

    def bnneck(num_classes: int, pretrained: str | None = None, pooling: str = "avg", bnneck: bool = True,
               test_feature: str = "after_bn", feature_clip: tuple[float, float] | None = None,
               bn_bias: str = "frozen", classifier: str = "linear") -> OSNetBNNeck:
        model = OSNetBNNeck(num_classes, width, ibn, pooling, bnneck, test_feature, clip=feature_clip,
                            bn_bias=bn_bias, classifier=classifier)
        return _init_from(model, pretrained, name, prefix="backbone.")

    full.__doc__ = f"OSNet {width} (Zhou et al. 2019), torchreid-compatible state_dict."
    bnneck.__doc__ = f"OSNet {width} backbone with the BNNeck head (Luo et al. 2019)."
    register_model(name)(full)
    register_model(f"{name}_bnneck")(bnneck)


for _width in WIDTHS:
    _register(_width, ibn=False)
_register("x1_0", ibn=True)
