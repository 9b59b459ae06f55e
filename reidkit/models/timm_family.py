"""Any timm network as a ReID backbone: ``model.name: timm/<architecture>`` (``pip install reidkit[timm]``).

The network is timm's, built without its classifier; reidkit puts its own head under it, the one every
ReID model here has (pooling -> BNNeck -> classifier, :class:`~reidkit.models.ReIDModel`), so that every piece
(triplet, center loss, camera mining, DML, distillation, precise BN, cluster memory) and every deployment
command (extract, search, export to ONNX and int8) works with it unchanged.

* **Feature maps** (CNNs: ResNet, ResNet-IBN, EfficientNet, MobileNet, ConvNeXt, RegNet, RepVGG, ...): timm's
  head up to its pooling (ConvNeXt's norm included) gives the map, pooled by reidkit (``model.pooling``: avg or
  GeM).  ``last_stride: 1`` (BoT's trick) makes the network's last downsampling step by 1: found by trying its
  stride-2 layers from the last one back until the network runs with twice the output size (a residual block's
  two strided paths change together).
* **Tokens** (ViT, DeiT, Swin, ...): timm's own pooling (the class token for a ViT) and its final norm give the
  embedding; ``pooling`` must stay ``avg`` (it has no map to pool), ``last_stride`` changes nothing.
  ``img_size: [H, W]`` builds the network for the recipe's input size (position embeddings resized from the
  pretrained grid by timm when weights load).

Weights (``model.pretrained``): ``imagenet`` — timm's published weights of the architecture (its default tag),
from the Hugging Face cache or downloaded by timm (a clear error naming the cache when that fails); ``auto`` —
the cached file when it is there, else random initialisation (said in the log; nothing is downloaded); a path
(``.pth``/``.bin``/``.safetensors``: a timm state_dict, its classifier ignored); ``none``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from ..names import did_you_mean
from .heads import build_pooling
from .pretrained import read_weights
from .registry import register_model_family
from .reid_model import ReIDModel

log = logging.getLogger(__name__)


class TimmOptions(BaseModel):
    """The recipe's ``model`` options of the ``timm/...`` models (besides the shared ones)."""

    model_config = ConfigDict(extra="forbid")
    img_size: tuple[int, int] | None = None     # transformers: the input H x W the network is built for
    drop_path_rate: float = Field(0.0, ge=0, lt=1)    # stochastic depth, where the network has it
    embedding_dim: int | None = Field(None, gt=0)     # a linear reduction of the pooled feature (None: none)


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ImportError("timm/... models need timm: pip install 'reidkit[timm]' (or pip install timm)") from None
    return timm


def _stride_two_layers(net: nn.Module) -> list[nn.Module]:
    """Convolutions and pooling layers that step by 2, in the order the network defines them."""
    found: list[nn.Module] = []
    for module in net.modules():
        stride = getattr(module, "stride", None)
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and stride in (2, (2, 2)):
            found.append(module)
    return found


def _set_stride(module: nn.Module, stride: int) -> None:
    module.stride = (stride, stride) if isinstance(module, nn.Conv2d) else stride  # type: ignore[assignment]


class TimmBackbone(nn.Module):
    """timm's network without its classifier: a feature map (``tokens`` False) or a pooled embedding."""

    def __init__(self, architecture: str, last_stride: int = 1, pretrained: str | None = "auto",
                 img_size: tuple[int, int] | None = None, drop_path_rate: float = 0.0):
        super().__init__()
        timm = _import_timm()
        name = f"timm/{architecture}"
        known = timm.list_models()
        if architecture.split(".")[0] not in known:
            raise ValueError(f"unknown timm architecture {architecture!r}{did_you_mean(architecture, known)} "
                             "(timm.list_models() lists them)")
        kwargs: dict[str, Any] = {}
        if img_size is not None:
            kwargs["img_size"] = tuple(img_size)
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        self.name = name
        net: Any = self._create(timm, architecture, pretrained, kwargs)
        self.net = net
        fixed = getattr(getattr(net, "patch_embed", None), "img_size", None)     # a transformer's built-in size
        probe_size = tuple(img_size) if img_size is not None else tuple(fixed) if fixed else (64, 32)
        with torch.no_grad():
            was_training = net.training
            features = net.eval().forward_features(torch.zeros(1, 3, *probe_size))
            net.train(was_training)
        # an N x C x H x W map is pooled by reidkit; tokens (N x L x C) or a channels-last map (Swin) go through
        # the network's own pooling and norm
        self.tokens = not (features.dim() == 4 and features.shape[1] == net.num_features)
        if not self.tokens:
            net.reset_classifier(0, global_pool="")          # the map, through the head's norm if any
        out = self._probe(probe_size)
        if out.dim() != (2 if self.tokens else 4):
            raise ValueError(f"{name}: its head gives {tuple(out.shape)} for one image; reidkit needs a map or "
                             "one embedding per image")
        self.out_channels = int(out.shape[1])
        if last_stride == 1:
            self._remove_last_stride(probe_size)

    def _create(self, timm: Any, architecture: str, pretrained: str | None, kwargs: dict) -> nn.Module:
        if pretrained in (None, "none"):
            if pretrained == "none":
                log.warning("%s: starting from random initialisation (pretrained=none)", self.name)
            return timm.create_model(architecture, pretrained=False, num_classes=0, **kwargs)
        if pretrained == "imagenet":
            try:
                return timm.create_model(architecture, pretrained=True, num_classes=0, **kwargs)
            except Exception as e:  # noqa: BLE001 - offline, refused, no published weights: one clear message
                raise FileNotFoundError(
                    f"{self.name}: model.pretrained=imagenet: timm could not load its weights ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}); looked in the Hugging Face cache "
                    f"{_hf_cache()} and online. Give a file: model.pretrained=/path/to/model.safetensors, or "
                    "model.pretrained=none to train from random weights") from None
        net = timm.create_model(architecture, pretrained=False, num_classes=0, **kwargs)
        path = _cached_weights(net) if pretrained == "auto" else Path(pretrained)
        if path is None:
            log.warning("%s: no timm weights in the Hugging Face cache (%s); starting from random initialisation "
                        "(nothing is downloaded; model.pretrained=imagenet downloads them)", self.name, _hf_cache())
            return net
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: pretrained weights file not found: {path}")
        try:        # timm's own loading: its classifier left out, position embeddings resized to img_size
            net = timm.create_model(architecture, pretrained=True, num_classes=0,
                                    pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except Exception as e:  # noqa: BLE001 - a foreign, truncated or mismatched file
            raise ValueError(f"{self.name}: weights in {path} do not fit the network ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:300] if str(e) else ''})") from None
        _check_keys(net, path, self.name)
        log.info("%s: weights loaded from %s", self.name, path)
        return net

    def _probe(self, size: tuple[int, ...]) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.forward(torch.zeros(1, 3, *size))
        finally:
            self.train(was_training)

    def _remove_last_stride(self, size: tuple[int, ...]) -> None:
        """BoT's last stride 1: the last downsampling steps by 1 (for a map; a transformer has none)."""
        if self.tokens:
            log.info("%s: last_stride=1 changes nothing (a transformer has no stride to change)", self.name)
            return
        before = self._probe(size).shape[-2:]
        changed: list[nn.Module] = []
        for layer in reversed(_stride_two_layers(self.net)):
            _set_stride(layer, 1)
            changed.append(layer)
            try:
                after = self._probe(size).shape[-2:]
            except RuntimeError:            # a residual block's other strided path still halves: change it too
                continue
            if after[0] > before[0]:
                log.info("%s: last stride 1 (%d layer%s changed): %s -> %s at %s", self.name, len(changed),
                         "s" * (len(changed) > 1), tuple(before), tuple(after), size)
                return
        for layer in changed:
            _set_stride(layer, 2)
        raise ValueError(f"{self.name}: model.last_stride=1 found no last downsampling to remove; "
                         "set model.last_stride=2 (the network as published)")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(images), pre_logits=True)


class _Flat(nn.Module):
    """The pooling of a backbone whose output is already one vector per image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Reduced(nn.Module):
    """A backbone followed by its pooling and a linear reduction to ``dim`` (the head pools nothing more)."""

    def __init__(self, backbone: TimmBackbone, pool: nn.Module, dim: int):
        super().__init__()
        self.inner, self.pool = backbone, pool
        self.reduce = nn.Linear(backbone.out_channels, dim, bias=False)
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out")
        self.out_channels = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.pool(self.inner(images)))


@register_model_family("timm", options=TimmOptions)
def build_timm(num_classes: int, architecture: str, last_stride: int = 1, pretrained: str | None = "auto",
               pooling: str = "avg", bnneck: bool = True, test_feature: str = "after_bn",
               feature_clip: tuple[float, float] | None = None, bn_bias: str = "frozen", classifier: str = "linear",
               img_size: tuple[int, int] | None = None, drop_path_rate: float = 0.0,
               embedding_dim: int | None = None) -> ReIDModel:
    """Any timm network under the BNNeck head (pip install 'reidkit[timm]'): timm/resnet50, timm/vit_small_patch16_224.

    Pretrained weights: timm's (``imagenet``), its cached file (``auto``) or a file; see the module's docstring."""
    backbone = TimmBackbone(architecture, last_stride, pretrained, img_size, drop_path_rate)
    if backbone.tokens and pooling != "avg":
        raise ValueError(f"timm/{architecture} gives one embedding per image (a transformer's own pooling): "
                         f"model.pooling={pooling!r} has no map to pool; leave it at avg")
    pool = _Flat() if backbone.tokens else build_pooling(pooling)
    body: nn.Module = backbone if embedding_dim is None else _Reduced(backbone, pool, embedding_dim)
    model = ReIDModel(body, num_classes, pooling, bnneck, test_feature, clip=feature_clip, bn_bias=bn_bias,
                      classifier=classifier)
    model.pool = pool if embedding_dim is None else _Flat()     # the reduction pooled already
    return model


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except ImportError:                                      # pragma: no cover - timm depends on it
        return "the Hugging Face cache"


def _cached_weights(net: nn.Module) -> Path | None:
    """timm's published weights file of ``net``'s architecture when it is in the Hugging Face cache."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:                                      # pragma: no cover
        return None
    for filename in ([cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else []) + [
            "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _check_keys(net: nn.Module, path: Path, name: str) -> None:
    """timm loads a file's tensors leniently (a key the network lacks is only warned of): here every tensor of
    the file, its classifier aside, must be the network's and every tensor of the network must be in the file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    else:
        keys = set(read_weights(path, name))
    keys = {k.removeprefix("module.") for k in keys}
    classifier = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
    heads = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    own = set(net.state_dict())
    unexpected = sorted(k for k in keys - own if not k.startswith(heads))
    missing = sorted(own - keys)
    if unexpected or missing:
        raise ValueError(f"{name}: weights in {path} do not fit the network: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} ({len(missing)} and {len(unexpected)} in all)")
