"""ResNet backbones from torchvision (He et al., CVPR 2016) with a ``last_stride`` option.

``last_stride=1`` (Luo et al. 2019, "Bag of Tricks", trick 4) keeps the final
stage at 1/16 resolution: a 16x8 feature map at 256x128.  The torchvision
module layout is kept, so ImageNet checkpoints load as they are.

IBN-Net-a (Pan et al., ECCV 2018): the same networks with the first normalisation of every block in the first
three stages an :class:`IBN` layer (half of its channels instance-normalised, half batch-normalised); the
layout, key for key, is the authors' (``layer1.0.bn1.IN.weight``, ``layer1.0.bn1.BN.running_mean``), so their
published ImageNet files load as they are.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision.models as tvm

from .pretrained import load_backbone_weights, torchvision_network

#: the authors' ImageNet files of IBN-Net-a (github.com/XingangPan/IBN-Net, release v1.0; the hash prefix in the
#: name is checked on download)
IBN_A_URLS = {
    "resnet18_ibn_a": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet18_ibn_a-2f571257.pth",
    "resnet34_ibn_a": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet34_ibn_a-94bc1577.pth",
    "resnet50_ibn_a": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth",
    "resnet101_ibn_a": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet101_ibn_a-59ea0ac6.pth",
}

RESNETS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1),
    "resnet152": (tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V1),
}


class IBN(nn.Module):
    """Instance-batch normalisation (IBN-a): the first ``int(planes * ratio)`` channels through an affine
    InstanceNorm, the others through a BatchNorm, concatenated back in order."""

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.instance_channels = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.instance_channels, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.instance_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.instance_channels
        return torch.cat([self.IN(x[:, :k].contiguous()), self.BN(x[:, k:].contiguous())], dim=1)


def to_ibn_a(net: tvm.ResNet) -> tvm.ResNet:
    """IBN-Net-a from a torchvision ResNet: every block's ``bn1`` in layer1-3 becomes an :class:`IBN`."""
    for layer in (net.layer1, net.layer2, net.layer3):
        for block in layer:
            block.bn1 = IBN(block.bn1.num_features)
    return net


class ResNetBackbone(nn.Module):
    """A torchvision ResNet (or its IBN-Net-a, ``resnet50_ibn_a``) without its pooling and classifier; returns the
    feature map."""

    def __init__(self, depth_name: str, last_stride: int = 1, pretrained: str | None = "auto"):
        super().__init__()
        ibn = depth_name in IBN_A_URLS
        net, url = torchvision_network("ResNet", RESNETS, depth_name.removesuffix("_ibn_a") if ibn else depth_name,
                                       last_stride)
        if ibn:
            net, url = to_ibn_a(net), IBN_A_URLS[depth_name]
        self.pretrained = load_backbone_weights(net, pretrained, url, depth_name,
                                                head_prefix=("fc.", "classifier."))   # torchvision's / torchreid's
        if last_stride == 1:
            block = net.layer4[0]
            # torchvision puts the stride on conv2 of a Bottleneck, on conv1 of a BasicBlock
            strided = block.conv2 if isinstance(block, tvm.resnet.Bottleneck) else block.conv1
            strided.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        # torchvision's attribute names, so ImageNet / BoT checkpoints map key for key
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features
        expansion = net.layer1[0].expansion               # what the first four stages put out, and shrink by
        self.stage_channels = [net.conv1.out_channels] + [w * expansion for w in (64, 128, 256)]
        self.stage_shrink = (4, 1, 2, 2, last_stride)
        self.stage_ceil_mode = (True,) * 5               # strided convolutions with padding round up

    def stages(self) -> list:
        """The five stages in order (stem, layer1 ... layer4); chained, they are :meth:`forward`."""
        return [lambda x: self.maxpool(self.relu(self.bn1(self.conv1(x)))),
                self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.up_to_layer3(x))

    def up_to_layer3(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map entering the last stage (block 5 in Ni et al.'s naming)."""
        for stage in self.stages()[:4]:
            x = stage(x)
        return x
