"""DenseNet backbones from torchvision (Huang, Liu, van der Maaten and Weinberger, CVPR 2017).

The backbone of Progressive Transfer Learning's strongest results (Yu et al.,
DenseNet-161; docs/TRAINING.md, "Progressive Transfer Learning").  torchvision's ``features``
module is kept under the same name, so ImageNet checkpoints load key for key,
including the torch hub files of the older layout (``norm.1`` for ``norm1``).
``last_stride=1`` removes the average pooling of the last transition, the
DenseNet counterpart of the ResNet option (Luo et al. 2019): a 16x8 final
map at 256x128 instead of 8x4.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm

from .pretrained import load_backbone_weights, torchvision_network

DENSENETS = {
    "densenet121": (tvm.densenet121, tvm.DenseNet121_Weights.IMAGENET1K_V1),
    "densenet161": (tvm.densenet161, tvm.DenseNet161_Weights.IMAGENET1K_V1),
    "densenet169": (tvm.densenet169, tvm.DenseNet169_Weights.IMAGENET1K_V1),
    "densenet201": (tvm.densenet201, tvm.DenseNet201_Weights.IMAGENET1K_V1),
}

# the torch hub files name a dense layer's parts ``norm.1`` / ``conv.2``; torchvision's modules ``norm1`` / ``conv2``
_OLD_LAYER_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                            r"([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def modern_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``features.denseblock1.denselayer1.norm.1.weight`` -> ``...norm1.weight``; other keys unchanged."""
    return {_OLD_LAYER_KEY.sub(r"\1\2", k): v for k, v in state.items()}


class DenseNetBackbone(nn.Module):
    """A torchvision DenseNet without its classifier; returns the (ReLU'd) feature map.

    Stages, as PTL places its cells beside them: the stem (conv0 ... pool0, /4),
    dense block 1, then transition + dense block for blocks 2-4 (/2 each; the last
    /``last_stride``), the final BatchNorm and ReLU closing stage 4.
    """

    def __init__(self, name: str, last_stride: int = 1, pretrained: str | None = "auto"):
        super().__init__()
        net, url = torchvision_network("DenseNet", DENSENETS, name, last_stride)
        self.pretrained = load_backbone_weights(net, pretrained, url, name, head_prefix="classifier.",
                                                key_map=modern_densenet_keys)
        self.features = f = net.features
        if last_stride == 1:
            f.transition3.pool = nn.Identity()
        self.out_channels = net.classifier.in_features
        self.stage_channels = [f.conv0.out_channels] + [t.conv.in_channels
                                                        for t in (f.transition1, f.transition2, f.transition3)]
        self.stage_shrink = (4, 1, 2, 2, last_stride)
        self.stage_ceil_mode = (True, True, False, False, False)   # the stem rounds up, transitions' pooling down

    def stages(self) -> list:
        """The five stages in order (callables); chained, they are :meth:`forward`."""
        f = self.features
        return [nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0), f.denseblock1,
                nn.Sequential(f.transition1, f.denseblock2), nn.Sequential(f.transition2, f.denseblock3),
                lambda x: F.relu(f.norm5(f.denseblock4(f.transition3(x))))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(x))
