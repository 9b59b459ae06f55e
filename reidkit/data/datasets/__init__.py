"""Dataset loaders; importing this package registers every dataset name."""
from . import cuhk, custom, market_style, msmt17, synthetic  # noqa: F401  (registration)
from .registry import build_dataset, dataset_names, register_dataset

__all__ = ["build_dataset", "dataset_names", "register_dataset"]
