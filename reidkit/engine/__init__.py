"""Training engine: device, data parallelism, optimiser, schedules, checkpoints, the training loop.

The package imports its modules when one of its names is first used (PEP 562), so that a leaf such as
:mod:`reidkit.engine.distributed` can be imported (by :mod:`reidkit.pieces`) without the training loop.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"Trainer": "trainer", "CheckpointError": "checkpoint", "load_checkpoint": "checkpoint",
          "save_checkpoint": "checkpoint", "DistributedError": "distributed", "DeviceError": "device",
          "NonFiniteLossError": "meter"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
