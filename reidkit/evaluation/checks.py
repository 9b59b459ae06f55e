"""Input validation shared by the evaluation functions.

Every check raises :class:`ValueError` naming the offending argument, so that a
bad call fails at the boundary instead of deep inside the ranking code.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor or sequence


def as_float_matrix(value: ArrayLike, name: str, check: bool = True,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Return ``value`` as a 2-D floating tensor (float32 or float64) on ``device`` (the CPU by default).

    With ``check`` (default) NaN/inf raise; callers that scan the matrix block by
    block anyway pass ``check=False`` and check each block.
    """
    tensor = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    tensor = tensor.detach().to(device)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    elif tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    if check:
        check_finite(tensor, name)
    return tensor


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise if ``tensor`` holds NaN or infinity, saying where the first one is.

    The sum of a tensor is finite whenever all its entries are (barring
    overflow), so the element-wise scan only runs when the cheap sum is not.
    """
    if bool(torch.isfinite(tensor.sum())):
        return
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/inf value(s); first at index {first}"
        )


def as_id_vector(value: ArrayLike, name: str, length: int | None = None) -> np.ndarray:
    """Return ``value`` as a 1-D int64 array, rejecting non-integer ids."""
    array = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold integer ids, got non-integer values")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer ids, got dtype {array.dtype}")
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} entries but {length} were expected")
    return array.astype(np.int64, copy=False)


def check_metric(metric: str) -> str:
    """Return the metric name if it is supported."""
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    return metric


def as_feature_pair(qf: ArrayLike, gf: ArrayLike,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Query and gallery features as finite float matrices of one dimension and dtype, on ``device``."""
    q = as_float_matrix(qf, "qf", device=device)
    g = as_float_matrix(gf, "gf", device=device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"qf has dimension {q.shape[1]} but gf has {g.shape[1]}")
    dtype = torch.promote_types(q.dtype, g.dtype)
    return q.to(dtype), g.to(dtype)
