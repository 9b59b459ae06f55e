"""Precision helpers: losses and statistics run in at least float32, and in float64 when the model does."""
from __future__ import annotations

import torch


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 (from half / bfloat16 under autocast), or unchanged when float32 or float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
