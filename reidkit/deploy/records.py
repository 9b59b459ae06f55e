"""What every gallery backend (the SQLite store, Milvus) hands over: rows, what a delete removed, and its errors."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class StoreError(ValueError):
    """A store that cannot be used or written: ``status`` is the HTTP status a service answers with (503 busy,
    507 full disk, 409 conflict, 400 bad input), the message names the database and the reason."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


@dataclass
class Rows:
    """Item rows read from a store, in id order (``times``: NaN where unknown; ``cameras`` / ``tracks``: ``""``)."""

    ids: np.ndarray            # int64
    vectors: np.ndarray        # float32, N x dim
    paths: list[str]
    cameras: list[str]
    times: np.ndarray          # float64
    tracks: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Deleted:
    """Items a delete removed: their ids and paths, and which of those files the store owned (and removed)."""

    ids: list[int]
    paths: list[str]
    owned: list[bool]


def finite_or_none(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise StoreError(f"{what} must be a finite number, got {value}", 422)
    return value


__all__ = ["Deleted", "Rows", "StoreError", "finite_or_none"]


def checked_features(where: object, features: np.ndarray, n: int, dim: int, held_model: str | None,
                     model: str | None) -> np.ndarray:
    """``features`` as float32 rows for ``n`` new items of a gallery at ``where`` holding ``dim``-d embeddings
    of the model ``held_model``: a wrong shape, a NaN / infinite value or another model's embeddings refused."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape != (n, dim):
        raise StoreError(f"{where}: expected {n} x {dim} features, got {x.shape}", 422)
    if not np.isfinite(x).all():
        raise StoreError(f"{where}: features with NaN or infinite values", 422)
    if model is not None and held_model and model != held_model:
        raise StoreError(f"{where} holds embeddings of the model with SHA-256 {held_model[:12]}...; these "
                         f"come from {model[:12]}...: another model's embeddings cannot share its index", 409)
    return x
