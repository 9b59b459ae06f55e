"""Data layer: dataset records, the synthetic set, caching, augmentation, P x K sampling."""
from .datasets import build_dataset, check_dataset, dataset_names, describe_datasets
from .records import DatasetLayoutError, ImageRecord, ReIDDataset

__all__ = ["build_dataset", "check_dataset", "dataset_names", "describe_datasets", "DatasetLayoutError", "ImageRecord",
           "ReIDDataset"]
