"""Feature extraction for evaluation (optionally averaging an image and its mirror)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..data.cache import ImageCache
from ..data.loader import iter_test_batches


@torch.no_grad()
def extract_features(model: nn.Module, cache: ImageCache, batch_size: int = 128,
                     flip: bool = False, amp: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Embeddings of every image in ``cache`` (eval mode), in order.

    ``amp`` runs under bfloat16 autocast; ``channels_last`` feeds NHWC batches.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    out = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        for images in iter_test_batches(cache, batch_size):
            images = images.contiguous(memory_format=fmt)
            f = model(images).float()
            if flip:
                f = (f + model(images.flip(-1)).float()) / 2
            out.append(f)
    model.train(was_training)
    return torch.cat(out)
