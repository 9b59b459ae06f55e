"""TransReID's pieces (He et al., "TransReID", ICCV 2021) on a timm ViT: ``model.name: transreid/<vit name>``.

Each piece is a recipe switch (``model`` options), each checked against the paper in tests/models/test_transreid.py:

* **overlapping patches** (``patch_stride``; 12 for 16-pixel patches, the paper's): the patch embedding's
  convolution steps by S < P, so N = N_H x N_W with N_H = (H - P) // S + 1 (21 x 10 = 210 at 256x128); the
  position embeddings of the pretrained grid (14 x 14 for a 224 ViT) are resized bilinearly to it, the class
  token's kept (the authors' ``resize_pos_embed``);
* **side-information embedding** (SIE, ``sie_cameras``: the number of cameras, 0 = off): a learned vector per
  camera, added with weight lambda (``sie_weight``, 3 as the authors' configs) to every token with the position
  embeddings, Z_0 = [x_cls; E x_1; ...; E x_N] + P + lambda S(C).  The person datasets have no view labels, so
  the camera alone is embedded.  The model then takes each image's camera: training and evaluation pass it, and
  ``takes_cameras`` says so to whoever runs the model;
* **jigsaw patch module** (JPM, ``jpm``): the last transformer layer is doubled.  The global branch runs it (and
  the final norm) over every token, its class token is f_g.  The local branch takes the tokens entering the last
  layer, shifts the patches (the first ``jpm_shift`` = m moved to the end: x_{m+1}, ..., x_N, x_1, ..., x_m, as
  the paper writes it; the authors' code moves m - 1), shuffles them in ``jpm_shuffle`` groups (the sequence read
  as a k x N/k table and taken column by column), splits them into ``jpm_groups`` = K parts of N // K tokens
  (the remainder left out, as the authors' code slices them) and runs each, after the class token, through the
  copy of the last layer and norm: its class token is f_l^j.  Each feature has its BNNeck and classifier; the
  objective weighs the global branch 1/2 and each local one 1/(2K) (the authors' code: half the global loss plus
  half the locals' mean); the test feature is [f_g, f_l^1 / K, ..., f_l^K / K], each after its BNNeck's
  BatchNorm.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from .heads import BNNeckHead
from .registry import register_model_family
from .timm_family import TimmBackbone


class TransReIDOptions(BaseModel):
    """The recipe's ``model`` options of the ``transreid/...`` models (besides the shared head options)."""

    model_config = ConfigDict(extra="forbid")
    img_size: tuple[int, int] = (256, 128)
    patch_stride: int | None = Field(12, gt=0)     # None: the patch size (no overlap)
    sie_cameras: int = Field(0, ge=0)              # cameras the side-information embedding knows (0: off)
    sie_weight: float = Field(3.0, ge=0)           # lambda
    jpm: bool = False
    jpm_groups: int = Field(4, ge=1)               # K local features
    jpm_shift: int = Field(5, ge=0)                # m
    jpm_shuffle: int = Field(2, ge=1)              # patch-shuffle groups (the authors' Market / MSMT17 setting)
    drop_path_rate: float = Field(0.1, ge=0, lt=1)


def shift_and_shuffle(patches: torch.Tensor, shift: int, groups: int) -> torch.Tensor:
    """JPM's rearrangement of ``B x N x D`` patch tokens: the first ``shift`` moved to the end, then the sequence
    read as a ``groups x N/groups`` table and taken column by column."""
    b, n, d = patches.shape
    if n % groups:
        raise ValueError(f"JPM: {n} patches do not split into {groups} shuffle groups (model.jpm_shuffle)")
    shifted = torch.cat([patches[:, shift:], patches[:, :shift]], dim=1)
    return shifted.reshape(b, groups, n // groups, d).transpose(1, 2).reshape(b, n, d)


def split_parts(tokens: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """``parts`` consecutive runs of N // parts tokens; the N % parts tokens after them are left out (the authors'
    ``x[:, patch_length * j:patch_length * (j + 1)]``)."""
    length = tokens.shape[1] // parts
    return [tokens[:, j * length:(j + 1) * length] for j in range(parts)]


class TransReID(nn.Module):
    """A ViT with TransReID's overlapping patches, SIE and JPM under BNNeck heads (training: ``(logits,
    features)``, a list of each with JPM; eval: the test embedding)."""

    def __init__(self, num_classes: int, architecture: str, pretrained: str | None = "auto",
                 img_size: tuple[int, int] = (256, 128), patch_stride: int | None = 12, sie_cameras: int = 0,
                 sie_weight: float = 3.0, jpm: bool = False, jpm_groups: int = 4, jpm_shift: int = 5,
                 jpm_shuffle: int = 2, drop_path_rate: float = 0.1, bnneck: bool = True,
                 test_feature: str = "after_bn", **head_options: Any):
        super().__init__()
        inner = TimmBackbone(architecture, last_stride=2, pretrained=pretrained, drop_path_rate=drop_path_rate)
        net: Any = inner.net
        needed = ("patch_embed", "pos_embed", "cls_token", "blocks", "norm")
        if not all(getattr(net, name, None) is not None for name in needed) or getattr(net, "no_embed_class", False) \
                or getattr(net, "reg_token", None) is not None:
            raise ValueError(f"transreid/{architecture}: TransReID's pieces need a plain ViT (a class token, "
                             "absolute position embeddings that include it, no register tokens)")
        self.net = net
        self._set_grid((int(img_size[0]), int(img_size[1])), patch_stride)
        dim = int(net.embed_dim)
        self.takes_cameras = sie_cameras > 0
        self.sie_weight = float(sie_weight)
        self.sie = nn.Parameter(torch.zeros(sie_cameras, 1, dim)) if sie_cameras else None
        if self.sie is not None:
            nn.init.trunc_normal_(self.sie, std=0.02)
        self.jpm = jpm
        self.jpm_groups, self.jpm_shift, self.jpm_shuffle = jpm_groups, jpm_shift, jpm_shuffle
        if jpm:
            if self.num_patches % jpm_shuffle:
                raise ValueError(f"model.jpm_shuffle={jpm_shuffle}: {self.num_patches} patches do not split evenly")
            self.local_block = copy.deepcopy(net.blocks[-1])
            self.local_norm = copy.deepcopy(net.norm)
        branches = 1 + (jpm_groups if jpm else 0)
        self.heads = nn.ModuleList(BNNeckHead(dim, num_classes, bnneck, test_feature, **head_options)
                                   for _ in range(branches))
        self.head = self.heads[0]             # the global branch's (TestedFeature, precise BN find it here)
        self.feature_dim = dim * branches
        # the objective's weight of each branch (the authors' code: 0.5 global + 0.5 x the locals' mean)
        self.branch_weights = (0.5,) + (0.5 / jpm_groups,) * jpm_groups if jpm else (1.0,)

    def _set_grid(self, img_size: tuple[int, int], stride: int | None) -> None:
        from timm.layers import resample_abs_pos_embed
        embed = self.net.patch_embed
        patch = embed.proj.kernel_size
        step = (stride, stride) if stride is not None else tuple(embed.proj.stride)
        grid = tuple((size - p) // s + 1 for size, p, s in zip(img_size, patch, step))
        old = tuple(embed.grid_size)
        embed.proj.stride = step
        embed.img_size, embed.grid_size, embed.num_patches = img_size, grid, grid[0] * grid[1]
        resized = resample_abs_pos_embed(self.net.pos_embed.data, new_size=list(grid), old_size=list(old),
                                         num_prefix_tokens=1, interpolation="bilinear", antialias=False)
        self.net.pos_embed = nn.Parameter(resized)
        self.grid, self.num_patches = grid, grid[0] * grid[1]

    def tokens(self, images: torch.Tensor, cameras: torch.Tensor | None = None) -> torch.Tensor:
        """Z_0: the class token and the patch embeddings, plus the position (and side-information) embeddings."""
        net = self.net
        x = net.patch_embed(images)
        x = torch.cat([net.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + net.pos_embed
        if self.sie is not None:
            if cameras is None:
                raise ValueError("this TransReID model embeds each image's camera (SIE, model.sie_cameras): give "
                                 "the cameras")
            if int(cameras.max()) >= len(self.sie) or int(cameras.min()) < 0:
                raise ValueError(f"camera id {int(cameras.max())} outside the {len(self.sie)} cameras the side-"
                                 "information embedding knows (model.sie_cameras)")
            x = x + self.sie_weight * self.sie[cameras.long()]
        return net.norm_pre(net.patch_drop(net.pos_drop(x)))

    def features(self, images: torch.Tensor, cameras: torch.Tensor | None = None) -> list[torch.Tensor]:
        """[f_g] or, with JPM, [f_g, f_l^1, ..., f_l^K] (class tokens after the final norm)."""
        net = self.net
        x = self.tokens(images, cameras)
        for block in net.blocks[:-1]:
            x = block(x)
        out = [net.norm(net.blocks[-1](x))[:, 0]]
        if self.jpm:
            cls, patches = x[:, :1], shift_and_shuffle(x[:, 1:], self.jpm_shift, self.jpm_shuffle)
            for part in split_parts(patches, self.jpm_groups):
                out.append(self.local_norm(self.local_block(torch.cat([cls, part], dim=1)))[:, 0])
        return out

    def forward(self, images: torch.Tensor, cameras: torch.Tensor | None = None):
        feats = self.features(images, cameras)
        if self.training:
            pairs = [head(f) for head, f in zip(self.heads, feats)]
            logits, f_t = [p[0] for p in pairs], [p[1] for p in pairs]
            return (logits, f_t) if self.jpm else (logits[0], f_t[0])
        tested = [head(f) for head, f in zip(self.heads, feats)]
        return torch.cat([tested[0]] + [t / self.jpm_groups for t in tested[1:]], dim=1) if self.jpm else tested[0]


@register_model_family("transreid", options=TransReIDOptions)
def build_transreid(num_classes: int, architecture: str, pretrained: str | None = "auto", bnneck: bool = True,
                    test_feature: str = "after_bn", feature_clip: tuple[float, float] | None = None,
                    bn_bias: str = "frozen", classifier: str = "linear", img_size: tuple[int, int] = (256, 128),
                    patch_stride: int | None = 12, sie_cameras: int = 0, sie_weight: float = 3.0, jpm: bool = False,
                    jpm_groups: int = 4, jpm_shift: int = 5, jpm_shuffle: int = 2,
                    drop_path_rate: float = 0.1) -> TransReID:
    """A timm ViT with TransReID's overlapping patches, SIE and JPM (He et al. 2021): transreid/vit_base_patch16_224."""
    return TransReID(num_classes, architecture, pretrained, img_size, patch_stride, sie_cameras, sie_weight, jpm,
                     jpm_groups, jpm_shift, jpm_shuffle, drop_path_rate, bnneck, test_feature, clip=feature_clip,
                     bn_bias=bn_bias, classifier=classifier)

