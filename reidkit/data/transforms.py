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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, cast

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENLARGE_SCALE = 1.125        # the OSNet authors' Random2DTranslation


@pydantic_dataclass(config=ConfigDict(extra="forbid", validate_assignment=True))
class AugmentConfig:
    """The training augmentation: the recipe's ``augment`` section (validated there) and what
    :class:`BatchAugment` applies."""

    flip: Annotated[float, Field(ge=0, le=1)] = 0.5
    crop: Literal["pad", "enlarge"] = "pad"      # pad: zero-pad + crop (BoT); enlarge: x1.125 + crop (OSNet)
    crop_prob: Annotated[float, Field(ge=0, le=1)] = 1.0    # probability an image is cropped (OSNet/torchreid: 0.5)
    padding: Annotated[int, Field(ge=0)] = 10
    erasing: Annotated[float, Field(ge=0, le=1)] = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.4)   # erased fraction of the image, drawn in this range
    erasing_ratio: Annotated[float, Field(gt=0, le=1)] = 0.3     # aspect ratio in [r, 1/r]
    # mean_pixel: erased pixels = the mean pixel (0 after normalisation); reference_code: the mean's values
    # written into the normalised tensor, as Zhong et al.'s, BoT's and torchreid's code do
    erasing_fill: Literal["mean_pixel", "reference_code"] = "mean_pixel"
    color_jitter: Annotated[float, Field(ge=0, le=1)] = 0.0   # brightness/contrast/saturation jitter (0 = off)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def image_size(batch: torch.Tensor) -> tuple[int, int]:
    """``(height, width)`` of an ``N x C x H x W`` batch."""
    return int(batch.shape[-2]), int(batch.shape[-1])


def normalize(batch: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """``B x 3 x H x W`` in [0, 255] (uint8 or float) -> standardised per channel (torch's default float dtype),
    on the batch's device."""
    m = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=batch.device).view(1, 3, 1, 1) * 255.0
    return (batch.to(torch.get_default_dtype()) - m) / s


@dataclass
class AugmentDraws:
    """The random choices of one batch's augmentation, one row per image (CPU tensors).

    Drawing them for a whole global batch and applying each process's rows
    (:meth:`rows`) makes data-parallel training augment exactly as one process would.
    """

    flip: torch.Tensor            # bool (B,)
    crop: torch.Tensor            # bool (B,): this image is cropped
    crop_y: torch.Tensor          # uniform [0, 1) offsets, scaled to the room the crop has
    crop_x: torch.Tensor
    jitter: torch.Tensor          # (B, 3): brightness, contrast, saturation factors
    erase: torch.Tensor           # bool (B,): an erasing rectangle was found
    erase_box: torch.Tensor       # (B, 4) int64: y, x, height, width

    def rows(self, start: int, end: int) -> AugmentDraws:
        return AugmentDraws(**{k: v[start:end] for k, v in vars(self).items()})

    def to(self, device: torch.device | str) -> AugmentDraws:
        """On ``device``, in one non-blocking copy from pinned memory (CPU: unchanged)."""
        if torch.device(device).type == "cpu":
            return self
        packed = self.pack()
        if torch.cuda.is_available():
            packed = packed.pin_memory()
        return self.unpack(packed.to(device, non_blocking=True))

    def pack(self) -> torch.Tensor:
        """Every field as float32 columns of one ``B x 12`` tensor (exact: offsets and sizes are small)."""
        return torch.cat([v.float().reshape(len(v), -1) for v in vars(self).values()], dim=1)

    def unpack(self, packed: torch.Tensor) -> AugmentDraws:
        """The draws in ``packed`` (made by :meth:`pack` of draws shaped like these), with their dtypes."""
        out, col = {}, 0
        for name, v in vars(self).items():
            width = v[0].numel() if len(v) else (v.shape[1] if v.dim() > 1 else 1)
            part = packed[:, col:col + width].reshape(v.shape)
            out[name] = part if v.is_floating_point() else (part > 0.5 if v.dtype == torch.bool else part.long())
            col += width
        return AugmentDraws(**out)


def draw_augment(config: AugmentConfig, n: int, size: tuple[int, int], gen: torch.Generator) -> AugmentDraws:
    """Every random choice of :class:`BatchAugment` for ``n`` images of ``size`` (height, width)."""
    c = config
    flip = torch.rand(n, generator=gen) < c.flip
    crop = torch.rand(n, generator=gen) < c.crop_prob if c.crop_prob < 1 else torch.ones(n, dtype=torch.bool)
    crop_y, crop_x = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    jitter = 1.0 + (torch.rand(n, 3, generator=gen) * 2 - 1) * c.color_jitter
    erase, box = _draw_erasing(n, size, c.erasing, c.erasing_area, c.erasing_ratio, gen)
    return AugmentDraws(flip, crop, crop_y, crop_x, jitter, erase, box)


def _draw_erasing(n: int, size: tuple[int, int], p: float, area: tuple[float, float], ratio: float,
                  gen: torch.Generator, attempts: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhong et al.'s rectangle: with probability ``p``, the first of ``attempts`` draws of (area fraction in
    ``area``, aspect in [ratio, 1/ratio]) that fits inside the image, at a uniform position."""
    h, w = size
    chosen = torch.rand(n, generator=gen) < p
    target = (torch.rand(n, attempts, generator=gen) * (area[1] - area[0]) + area[0]) * (h * w)
    aspect = torch.rand(n, attempts, generator=gen) * (1.0 / ratio - ratio) + ratio
    eh = torch.sqrt(target * aspect).round().long()
    ew = torch.sqrt(target / aspect).round().long()
    fits = (eh < h) & (ew < w)
    first = fits.float().argmax(dim=1, keepdim=True)            # the first attempt that fits
    erase = chosen & fits.any(dim=1)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    y = (torch.rand(n, generator=gen) * (h - eh + 1)).long().clamp(max=h - 1)
    x = (torch.rand(n, generator=gen) * (w - ew + 1)).long().clamp(max=w - 1)
    box = torch.stack([y, x, eh, ew], dim=1) * erase.unsqueeze(1)
    return erase, box


def apply_flip(batch: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    if flip.device.type == "cpu" and not bool(flip.any()):
        return batch
    return torch.where(flip.to(batch.device).view(-1, 1, 1, 1), batch.flip(-1), batch)


def apply_crop(batch: torch.Tensor, draws: AugmentDraws, grow: Callable[[torch.Tensor], torch.Tensor],
               grow_all: bool | None = None) -> torch.Tensor:
    """Crop ``grow(images)`` back to the batch's size at the drawn offsets, for the images drawn for it.

    On a CPU batch only the chosen images are grown; on a GPU batch every image is grown and the chosen
    ones are selected, so that no step waits for the device (same result; ``grow_all`` overrides the choice).
    """
    if draws.crop.device.type == "cpu" and not bool(draws.crop.any()):
        return batch
    b, c, h, w = batch.shape
    dev = batch.device
    on_cpu = dev.type == "cpu" if grow_all is None else not grow_all
    chosen = torch.nonzero(draws.crop).flatten() if on_cpu else slice(None)
    grown = grow(batch[chosen])
    room_y, room_x = grown.shape[-2] - h + 1, grown.shape[-1] - w + 1
    ys = (draws.crop_y[chosen].to(dev) * room_y).long().clamp(max=room_y - 1)
    xs = (draws.crop_x[chosen].to(dev) * room_x).long().clamp(max=room_x - 1)
    if on_cpu:                                    # the CPU copies windows; a gather would be slower here
        out = batch.clone()
        for j, i in enumerate(cast(torch.Tensor, chosen).tolist()):
            y, x = int(ys[j]), int(xs[j])
            out[i] = grown[j, :, y:y + h, x:x + w]
        return out
    rows = ys.view(-1, 1, 1, 1) + torch.arange(h, device=dev).view(1, 1, h, 1)
    cols = xs.view(-1, 1, 1, 1) + torch.arange(w, device=dev).view(1, 1, 1, w)
    picked = grown[torch.arange(grown.shape[0], device=dev).view(-1, 1, 1, 1),
                   torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols]
    return torch.where(draws.crop.to(dev).view(-1, 1, 1, 1), picked, batch)


def _pad(padding: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: F.pad(x, (padding,) * 4)


def _enlarge(scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def enlarge(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = (int(round(h * scale)), int(round(w * scale)))
        big = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
        return big.round_().clamp_(0, 255).to(x.dtype) if not x.is_floating_point() else big
    return enlarge


def apply_color_jitter(batch: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Per-image brightness, contrast and saturation ``factors`` (B x 3) on a float batch in [0, 255]."""
    f = factors.to(batch.device).view(-1, 3, 1, 1, 1).unbind(1)
    out = batch * f[0]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * f[1] + mean
    grey = out.mean(dim=1, keepdim=True)
    out = (out - grey) * f[2] + grey
    return out.clamp(0, 255)


def apply_erasing(batch: torch.Tensor, erase: torch.Tensor, box: torch.Tensor,
                  value: float | Sequence[float] = 0.0, per_box: bool | None = None) -> torch.Tensor:
    """Fill each drawn rectangle (float batch, in place); ``value``: one fill or one per channel.

    With the draws on the CPU each box is filled in turn; on a GPU one mask covers the whole batch, so
    that no step waits for the device (same result; ``per_box`` overrides the choice).
    """
    _, c, h, w = batch.shape
    fill = torch.as_tensor(value, dtype=batch.dtype, device=batch.device).reshape(-1, 1, 1).expand(c, 1, 1)
    if erase.device.type == "cpu" if per_box is None else per_box:
        for i in torch.nonzero(erase).flatten().tolist():
            y, x, eh, ew = box[i].tolist()
            batch[i, :, y:y + eh, x:x + ew] = fill
        return batch
    dev = batch.device
    y, x, eh, ew = (v.to(dev).view(-1, 1, 1, 1) for v in box.unbind(1))
    ys, xs = torch.arange(h, device=dev).view(1, 1, h, 1), torch.arange(w, device=dev).view(1, 1, 1, w)
    inside = (ys >= y) & (ys < y + eh) & (xs >= x) & (xs < x + ew) & erase.to(dev).view(-1, 1, 1, 1)
    return batch.copy_(torch.where(inside, fill, batch))


def random_flip(batch: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    return apply_flip(batch, torch.rand(batch.shape[0], generator=gen) < p)


def random_pad_crop(batch: torch.Tensor, padding: int, gen: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset (probability ``p``)."""
    if padding <= 0:
        return batch
    draws = draw_augment(AugmentConfig(crop_prob=p), batch.shape[0], image_size(batch), gen)
    return apply_crop(batch, draws, _pad(padding))


def random_enlarge_crop(batch: torch.Tensor, p: float, gen: torch.Generator,
                        scale: float = ENLARGE_SCALE) -> torch.Tensor:
    """With probability ``p``, resize by ``scale`` (bilinear) and crop back at a random offset.

    The OSNet authors' ``Random2DTranslation`` (torchreid), on the cached image.
    """
    draws = draw_augment(AugmentConfig(crop_prob=p), batch.shape[0], image_size(batch), gen)
    return apply_crop(batch, draws, _enlarge(scale))


def random_erasing(batch: torch.Tensor, p: float, area: tuple[float, float], ratio: float,
                   gen: torch.Generator, value: float | Sequence[float] = 0.0) -> torch.Tensor:
    """Zhong et al.'s random erasing, in place on a float batch; ``value``: one fill or one per channel."""
    erase, box = _draw_erasing(batch.shape[0], image_size(batch), p, area, ratio, gen)
    return apply_erasing(batch, erase, box, value)


def erasing_value(config: AugmentConfig) -> float | tuple[float, float, float]:
    """What erased pixels hold in the normalised tensor (see the module docstring)."""
    return config.mean if config.erasing_fill == "reference_code" else 0.0


class BatchAugment:
    """The training augmentation of a uint8 batch (on any device); returns a normalised float batch.

    ``augment(batch)`` draws and applies; ``augment.apply(batch, augment.draw(n).rows(a, b))`` augments rows
    ``a:b`` of an ``n``-image batch exactly as ``augment`` would augment the whole batch.
    """

    def __init__(self, config: AugmentConfig, seed: int = 0):
        self.config = config
        self.gen = torch.Generator().manual_seed(seed)

    def draw(self, n: int, size: tuple[int, int]) -> AugmentDraws:
        return draw_augment(self.config, n, size, self.gen)

    def apply(self, batch: torch.Tensor, draws: AugmentDraws) -> torch.Tensor:
        """Augment ``batch`` (uint8, any device) with ``draws`` (CPU, one row per image)."""
        c = self.config
        on_device = draws.to(batch.device)
        if c.flip > 0 and bool(draws.flip.any()):
            batch = apply_flip(batch, on_device.flip)
        if c.crop == "enlarge" or c.padding > 0:
            batch = apply_crop(batch, on_device if bool(draws.crop.any()) else draws,
                               _enlarge(ENLARGE_SCALE) if c.crop == "enlarge" else _pad(c.padding))
        out = batch.to(torch.get_default_dtype())
        if c.color_jitter > 0:
            out = apply_color_jitter(out, on_device.jitter)
        out = normalize(out, c.mean, c.std)
        if c.erasing > 0 and bool(draws.erase.any()):
            out = apply_erasing(out, on_device.erase, on_device.erase_box, erasing_value(c))
        return out

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.apply(batch, self.draw(batch.shape[0], image_size(batch)))


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
