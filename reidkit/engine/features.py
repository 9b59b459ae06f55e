"""Feature extraction for evaluation (optionally averaging an image and its mirror), on any device."""
from __future__ import annotations

import torch
import torch.nn as nn
from tqdm import tqdm

from ..data.cache import ImageCache
from ..data.loader import iter_test_batches
from ..logs import bar_disabled
from ..models.heads import embed, takes_cameras
from .device import autocast


@torch.no_grad()
def extract_features(model: nn.Module, cache: ImageCache, batch_size: int = 128, flip: bool = False,
                     amp: str | bool = "off", channels_last: bool = False,
                     device: torch.device | str | None = None, progress: bool = False,
                     desc: str = "features", rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Embeddings (float32) of every image in ``cache`` (or of its rows ``start:stop``) in eval mode, in order,
    on ``device``.

    ``device``: where the model runs (default: where its parameters are); ``amp``: ``bf16`` / ``fp16``
    autocast (``True`` means bf16); ``channels_last`` feeds NHWC batches; ``progress``: a bar (on a terminal).
    """
    amp = ("bf16" if amp else "off") if isinstance(amp, bool) else amp
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    device = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    out = []
    start, stop = rows if rows is not None else (0, len(cache))
    cameras = torch.as_tensor(cache.camids(), dtype=torch.long, device=device) if takes_cameras(model) else None
    done = start
    with autocast(device, amp):
        batches = tqdm(iter_test_batches(cache, batch_size, device=device, limit=stop, start=start), desc=desc,
                       unit="batch", leave=False, total=-(-(stop - start) // batch_size),
                       disable=bar_disabled(progress))
        for images in batches:
            images = images.contiguous(memory_format=fmt)
            cams = cameras[done:done + len(images)] if cameras is not None else None
            done += len(images)
            f = embed(model, images, cams).float()
            if flip:
                f = (f + embed(model, images.flip(-1), cams).float()) / 2
            out.append(f)
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0, device=device)
