"""Augmentation on whole batches of tensors, plus the equivalent torchvision pipeline.

The Bag-of-Tricks order: resize (done once, in the cache), random horizontal
flip, zero-pad + random crop, normalise, random erasing.  The OSNet recipes
crop the way the OSNet authors' code (torchreid's ``Random2DTranslation``)
does instead: with probability 0.5, enlarge by 1.125 and crop back.  Random erasing
follows Zhong et al. (AAAI 2020) with its published defaults: probability 0.5,
area fraction in [0.02, 0.4], aspect ratio in [0.3, 1/0.3], fill = the
ImageNet mean pixel (0 after normalisation), up to 100 attempts.  The reference
code of Zhong et al., of the BoT baseline and of torchreid instead writes the
mean's values (0.485, 0.456, 0.406) into the already normalised tensor, a lighter
grey: ``erasing_fill="reference_code"`` does that, for runs that must match them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENLARGE_SCALE = 1.125        # the OSNet authors' Random2DTranslation


@dataclass
class AugmentConfig:
    flip: float = 0.5
    crop: Literal["pad", "enlarge"] = "pad"
    crop_prob: float = 1.0
    padding: int = 10
    erasing: float = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.4)
    erasing_ratio: float = 0.3
    erasing_fill: Literal["mean_pixel", "reference_code"] = "mean_pixel"
    color_jitter: float = 0.0     # strength of brightness/contrast/saturation jitter (0 = off)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def normalize(batch: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """``B x 3 x H x W`` in [0, 255] (uint8 or float) -> float standardised per channel."""
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std).view(1, 3, 1, 1) * 255.0
    return (batch.float() - m) / s


def random_flip(batch: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(batch.shape[0], generator=gen) < p
    if flip.any():
        batch = batch.clone()
        batch[flip] = batch[flip].flip(-1)
    return batch


def random_pad_crop(batch: torch.Tensor, padding: int, gen: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset (probability ``p``)."""
    if padding <= 0:
        return batch
    return _crop_some(batch, p, gen, lambda x: F.pad(x, (padding,) * 4))


def random_enlarge_crop(batch: torch.Tensor, p: float, gen: torch.Generator,
                        scale: float = ENLARGE_SCALE) -> torch.Tensor:
    """With probability ``p``, resize by ``scale`` (bilinear) and crop back at a random offset.

    The OSNet authors' ``Random2DTranslation`` (torchreid), on the cached image.
    """
    h, w = batch.shape[-2:]
    size = (int(round(h * scale)), int(round(w * scale)))

    def enlarge(x: torch.Tensor) -> torch.Tensor:
        big = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
        return big.round_().clamp_(0, 255).to(x.dtype) if not x.is_floating_point() else big
    return _crop_some(batch, p, gen, enlarge)


def _crop_some(batch: torch.Tensor, p: float, gen: torch.Generator,
               grow: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Crop ``grow(images)`` back to the batch's size at random offsets, for each image with probability ``p``."""
    b, _, h, w = batch.shape
    chosen = torch.arange(b) if p >= 1 else torch.nonzero(torch.rand(b, generator=gen) < p).flatten()
    if len(chosen) == 0:
        return batch
    grown = grow(batch[chosen])
    ys = torch.randint(0, grown.shape[-2] - h + 1, (len(chosen),), generator=gen).tolist()
    xs = torch.randint(0, grown.shape[-1] - w + 1, (len(chosen),), generator=gen).tolist()
    out = batch.clone()
    for j, i in enumerate(chosen.tolist()):
        out[i] = grown[j, :, ys[j]:ys[j] + h, xs[j]:xs[j] + w]
    return out


def color_jitter(batch: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in [1 - s, 1 + s] (float batch in [0, 255])."""
    b = batch.shape[0]
    factor = lambda: 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * strength  # noqa: E731
    out = batch * factor()
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factor() + mean
    grey = out.mean(dim=1, keepdim=True)
    out = (out - grey) * factor() + grey
    return out.clamp(0, 255)


def random_erasing(batch: torch.Tensor, p: float, area: tuple[float, float], ratio: float,
                   gen: torch.Generator, value: float | Sequence[float] = 0.0) -> torch.Tensor:
    """Zhong et al.'s random erasing, in place on a float batch; ``value``: one fill or one per channel."""
    _, c, h, w = batch.shape
    fill = torch.as_tensor(value, dtype=batch.dtype).reshape(-1, 1, 1).expand(c, 1, 1)
    for i in range(batch.shape[0]):
        if float(torch.rand(1, generator=gen)) >= p:
            continue
        for _ in range(100):
            target = float(torch.empty(1).uniform_(*area, generator=gen)) * h * w
            aspect = float(torch.empty(1).uniform_(ratio, 1.0 / ratio, generator=gen))
            eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if ew < w and eh < h:
                y = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
                x = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
                batch[i, :, y:y + eh, x:x + ew] = fill
                break
    return batch


def erasing_value(config: AugmentConfig) -> float | tuple[float, float, float]:
    """What erased pixels hold in the normalised tensor (see the module docstring)."""
    return config.mean if config.erasing_fill == "reference_code" else 0.0


class BatchAugment:
    """The training augmentation applied to a uint8 batch; returns a normalised float batch."""

    def __init__(self, config: AugmentConfig, seed: int = 0):
        self.config = config
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        c = self.config
        batch = random_flip(batch, c.flip, self.gen)
        if c.crop == "enlarge":
            batch = random_enlarge_crop(batch, c.crop_prob, self.gen)
        else:
            batch = random_pad_crop(batch, c.padding, self.gen, c.crop_prob)
        out = batch.float()
        if c.color_jitter > 0:
            out = color_jitter(out, c.color_jitter, self.gen)
        out = normalize(out, c.mean, c.std)
        if c.erasing > 0:
            out = random_erasing(out, c.erasing, c.erasing_area, c.erasing_ratio, self.gen, erasing_value(c))
        return out


def torchvision_transforms(size: tuple[int, int], config: AugmentConfig | None = None) -> T.Compose:
    """The per-image torchvision pipeline (the plain path; ``config=None`` for test images)."""
    steps: list = [T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)]
    if config is not None:
        grow = (T.Resize((int(round(size[0] * ENLARGE_SCALE)), int(round(size[1] * ENLARGE_SCALE))))
                if config.crop == "enlarge" else T.Pad(config.padding))
        steps += [T.RandomHorizontalFlip(config.flip), T.RandomApply([grow, T.RandomCrop(size)], config.crop_prob)]
    steps += [T.ToTensor(), T.Normalize(config.mean if config else IMAGENET_MEAN,
                                        config.std if config else IMAGENET_STD)]
    if config is not None and config.erasing > 0:
        steps.append(T.RandomErasing(config.erasing, scale=config.erasing_area,
                                     ratio=(config.erasing_ratio, 1 / config.erasing_ratio),
                                     value=erasing_value(config)))
    return T.Compose(steps)
