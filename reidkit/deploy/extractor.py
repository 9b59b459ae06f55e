"""``FeatureExtractor``: embeddings from image paths, PIL images or arrays, in one call.

Like torchreid's ``FeatureExtractor``, so users can switch::

    extractor = FeatureExtractor("osnet_x0_25", "osnet_x0_25_msmt17.pth")
    features = extractor(["a.jpg", "b.jpg"])          # (2, 512) float tensor

Preprocessing is the recipes': RGB, resized to ``image_size`` (bilinear),
/255, ImageNet mean/std.  Inference runs in eval mode under
``torch.inference_mode`` in batches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..data.images import load_rgb
from ..data.transforms import normalize
from ..engine.checkpoint import model_from_checkpoint
from ..models import build_model

ImageInput = Union[str, Path, Image.Image, np.ndarray]


class FeatureExtractor:
    """A trained model behind a call that takes images and returns embeddings."""

    def __init__(self, model_name: str, weights: str | Path | None = None, device: str = "cpu",
                 image_size: tuple[int, int] = (256, 128), batch_size: int = 64, num_classes: int | None = None):
        """``num_classes`` only matters without ``weights`` (an untrained model)."""
        if weights is not None:
            self.model = model_from_checkpoint(model_name, weights)
        else:
            self.model = build_model(model_name, num_classes or 1, pretrained=None).eval()
        self.model.to(device)
        self.device, self.image_size, self.batch_size = device, image_size, batch_size

    def _to_uint8(self, image: ImageInput) -> torch.Tensor:
        h, w = self.image_size
        if isinstance(image, (str, Path)):
            pil = load_rgb(image, self.image_size)
        elif isinstance(image, Image.Image):
            pil = image.convert("RGB").resize((w, h), Image.BILINEAR)
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"array images must be H x W x 3 uint8 RGB, got {image.shape} {image.dtype}")
            pil = Image.fromarray(image).resize((w, h), Image.BILINEAR)
        else:
            raise TypeError(f"expected a path, PIL image or uint8 array, got {type(image).__name__}")
        return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                batch = torch.stack([self._to_uint8(i) for i in images[s:s + self.batch_size]])
                out.append(self.model(normalize(batch).to(self.device)).float().cpu())
        return torch.cat(out)
