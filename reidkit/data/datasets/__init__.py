"""Dataset loaders; importing this package registers every dataset name."""
from . import crops, cuhk, cuhk03_release, custom, market_style, msmt17, synthetic  # noqa: F401  (registration)
from .registry import build_dataset, check_dataset, dataset_names, describe_datasets, register_dataset

__all__ = ["build_dataset", "check_dataset", "dataset_names", "describe_datasets", "register_dataset"]
