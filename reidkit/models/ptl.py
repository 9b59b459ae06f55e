"""Progressive Transfer Learning networks (Yu, Shen, Jin, Huang, Cai and Hua, "Progressive Transfer
Learning", extending their IJCAI 2019 ReID paper; docs/TRAINING.md, "Progressive Transfer Learning").

BConv-Cell (Eq. 1): a convolutional LSTM-like cell whose latent state ``C`` is
carried from one mini-batch to the next instead of from one time step to the next:

    i_b = sigmoid(W_xi * x_b + b_i),  f_b = sigmoid(W_xf * x_b + b_f),  o_b = sigmoid(W_xo * x_b + b_o)
    C_b = f_b o C_{b-1} + i_b o tanh(W_xc * x_b + b_c)
    y_b = o_b o tanh(C_b)

The state is zero at the start of every epoch (the trainer calls
:func:`reset_cell_states`) and at test time, so a test embedding does not
depend on what was seen before.  reidkit carries ``C`` across batches without
its graph (gradients stop at the batch boundary, as truncated backpropagation
through time with one step) and restarts it from zero when the batch shape
changes (a smaller last batch).

PTL network (Eq. 3, Fig. 2): a BConv-Cell on the image, then one beside each of
the backbone's first four blocks (ResNet: stem, layer1, layer2, layer3;
DenseNet, the paper's DenseNet-161: stem, dense block 1, transition + dense
block 2, transition + dense block 3); the
cell of block ``i`` reads a 1x1 convolution of the block's output concatenated
with the previous cell's output (average-pooled to the block's resolution).  The
last cell's output and the last block's output are concatenated and reduced by
a 1x1 convolution to the feature map whose pooled vector is the embedding.
Choices the paper leaves open, made here: cell widths of their block's
channels // ``cell_ratio`` (4 by default; 16 on the image), 3x3 gate
convolutions, and the embedding as wide as the backbone's (so a PTL model can
teach its plain backbone with :mod:`reidkit.losses.distillation`).  The head is
the BNNeck by default; ``ptl_head="paper"`` is the paper's (sec. III-B): the
pooled 1x1-convolution output is the feature, classified during training by
three fully connected layers (:class:`ThreeLayerClassifier`).  Parameter counts
against the paper's Table I: docs/MODELS.md.

BConv-Cell-v2 (sec. II-B, Fig. 1 right; the PTL-v2 network, ``*_ptl_v2``, uses it in
every place of the BConv-Cell): besides ``C`` the cell keeps its output ``y`` of
the previous batch, recovers "features of historical inputs" from it with a
transposed convolution and concatenates them with the current input before the
gates.  The paper gives no equations for it; as read here:

    r_b = ConvT(y_{b-1})  (zero with no history: epoch start, test time)
    [i_b, f_b, o_b, g_b] = W * [x_b, r_b] + b,  C_b and y_b as in Eq. 1.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from .densenet import DENSENETS, DenseNetBackbone
from .heads import BNNeckHead, build_pooling
from .registry import register_model
from .resnet import RESNETS, ResNetBackbone


class BConvCell(nn.Module):
    """Batch-related convolutional cell (Eq. 1); the latent state lives across training batches."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3):
        super().__init__()
        self.gates = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2)
        self.state: torch.Tensor | None = None

    def reset_state(self) -> None:
        self.state = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, f, o, g = self.gates(x).chunk(4, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g)
        if self.training:
            if self.state is not None and self.state.shape == c.shape:
                c = torch.sigmoid(f) * self.state + c
            self.state = c.detach()
        return torch.sigmoid(o) * torch.tanh(c)


class BConvCellV2(BConvCell):
    """BConv-Cell-v2: also carries its output across batches, recovered by a transposed convolution."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3):
        super().__init__(2 * in_channels, hidden_channels, kernel_size)
        self.recover = nn.ConvTranspose2d(hidden_channels, in_channels, kernel_size, padding=kernel_size // 2)
        self.hidden: torch.Tensor | None = None

    def reset_state(self) -> None:
        super().reset_state()
        self.hidden = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden
        usable = self.training and h is not None and h.shape[0] == x.shape[0] and h.shape[-2:] == x.shape[-2:]
        history = self.recover(h) if usable else torch.zeros_like(x)
        y = super().forward(torch.cat([x, history], dim=1))
        if self.training:
            self.hidden = y.detach()
        return y


def reset_cell_states(model: nn.Module) -> None:
    """Zero the latent state of every BConv-Cell in ``model`` (each epoch's start)."""
    for m in model.modules():
        if isinstance(m, BConvCell):
            m.reset_state()


class ThreeLayerClassifier(nn.Module):
    """The PTL paper's head: the pooled feature is the embedding; three fully connected layers classify it in
    training (``hidden`` wide, ReLU between; 1024: the width at which reidkit's ResNet-50 and DenseNet-161 with
    this head have the paper's baseline parameter counts, docs/MODELS.md)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 1024):
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, num_classes))

    def forward(self, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        return (self.classifier(f_t), f_t) if self.training else f_t


class PTLNetwork(nn.Module):
    """A backbone + BConv-Cells (PTL network; PTL-v2 with ``cell=BConvCellV2``); training mode
    ``(logits, f_t)``, eval mode the embedding.

    ``backbone``: a ResNet or DenseNet backbone (anything with ``stages()``, ``stage_channels``,
    ``stage_shrink``, ``stage_ceil_mode`` and ``out_channels``); its state_dict keys stay under ``backbone.``.
    """

    def __init__(self, backbone: ResNetBackbone | DenseNetBackbone, num_classes: int, pooling: str = "avg",
                 bnneck: bool = True, test_feature: str = "after_bn", image_cell_channels: int = 16,
                 cell: type[BConvCell] = BConvCell, cell_ratio: int = 4, ptl_head: str = "bnneck",
                 **head_options):
        super().__init__()
        if cell_ratio < 1 or ptl_head not in ("bnneck", "paper"):
            raise ValueError(f"cell_ratio must be >= 1 and ptl_head 'bnneck' or 'paper', got {cell_ratio}, "
                             f"{ptl_head!r}")
        self.backbone = b = backbone
        widths = list(b.stage_channels)
        hidden = [image_cell_channels] + [max(1, w // cell_ratio) for w in widths]
        self.image_cell = cell(3, hidden[0])
        self.mix = nn.ModuleList(nn.Conv2d(w + h_prev, h, 1) for w, h_prev, h in zip(widths, hidden, hidden[1:]))
        self.cells = nn.ModuleList(cell(h, h) for h in hidden[1:])
        self.fuse = nn.Sequential(nn.Conv2d(b.out_channels + hidden[-1], b.out_channels, 1, bias=False),
                                  nn.BatchNorm2d(b.out_channels), nn.ReLU(inplace=True))
        self.pool = build_pooling(pooling)
        self.head: nn.Module = (ThreeLayerClassifier(b.out_channels, num_classes) if ptl_head == "paper"
                                else BNNeckHead(b.out_channels, num_classes, bnneck, test_feature, **head_options))
        self.feature_dim = b.out_channels
        # how much each of the five stages shrinks the map, rounding up or down: the previous cell's output is
        # average-pooled the same way (static sizes, so the network exports to ONNX)
        self.shrink = tuple(zip(b.stage_shrink, b.stage_ceil_mode))

    def forward(self, images: torch.Tensor):
        *blocks, last_block = self.backbone.stages()
        x, y = images, self.image_cell(images)
        for block, mix, cell, k in zip(blocks, self.mix, self.cells, self.shrink):
            x = block(x)
            y = cell(mix(torch.cat([x, _shrink(y, *k)], dim=1)))
        x = last_block(x)
        fused = self.fuse(torch.cat([x, _shrink(y, *self.shrink[4])], dim=1))
        return self.head(self.pool(fused))


def _shrink(y: torch.Tensor, k: int, ceil_mode: bool) -> torch.Tensor:
    """Average-pool by ``k``; ``ceil_mode``: the size a stride-``k`` convolution with padding gives (ResNet),
    else the size a ``k``x``k`` average pooling gives (DenseNet's transitions)."""
    return F.avg_pool2d(y, k, ceil_mode=ceil_mode) if k > 1 else y


class PTLOptions(BaseModel):
    """The recipe's ``model`` options of the ``*_ptl`` networks."""

    model_config = ConfigDict(extra="forbid")
    # BConv-Cell width = its block's channels // cell_ratio; the head: BNNeck, or the paper's (the pooled 1x1-conv
    # output as the feature, three fully connected layers as the classifier)
    cell_ratio: int = Field(4, gt=0)
    ptl_head: Literal["bnneck", "paper"] = "bnneck"


def _ptl_builder(name: str, backbone_class: type[ResNetBackbone] | type[DenseNetBackbone], cell: type[BConvCell]):
    def build(num_classes: int, last_stride: int = 1, pretrained: str | None = "auto", pooling: str = "avg",
              bnneck: bool = True, test_feature: str = "after_bn", feature_clip: tuple[float, float] | None = None,
              bn_bias: str = "frozen", cell_ratio: int = 4, ptl_head: str = "bnneck",
              classifier: str = "linear") -> PTLNetwork:
        if ptl_head == "paper" and (not bnneck or test_feature != "after_bn" or feature_clip or bn_bias != "frozen"
                                    or classifier != "linear"):
            raise ValueError("ptl_head=paper has no BNNeck: model.bnneck, test_feature, feature_clip, bn_bias and "
                             "classifier do not apply to it (leave them at their defaults)")
        return PTLNetwork(backbone_class(name, last_stride, pretrained), num_classes, pooling, bnneck, test_feature,
                          cell=cell, cell_ratio=cell_ratio, ptl_head=ptl_head, clip=feature_clip, bn_bias=bn_bias,
                          classifier=classifier)
    build.__doc__ = f"{name} with {cell.__name__}s beside its blocks (PTL network, Yu et al.)."
    return build


for _backbone_class, _names in ((ResNetBackbone, RESNETS), (DenseNetBackbone, DENSENETS)):
    for _name in _names:
        register_model(f"{_name}_ptl", options=PTLOptions)(_ptl_builder(_name, _backbone_class, BConvCell))
        register_model(f"{_name}_ptl_v2", options=PTLOptions)(_ptl_builder(_name, _backbone_class, BConvCellV2))
