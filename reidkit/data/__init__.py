"""Data layer: dataset records, the synthetic set, caching, augmentation, P x K sampling."""
from .datasets import build_dataset, dataset_names
from .records import DatasetLayoutError, ImageRecord, ReIDDataset

__all__ = ["build_dataset", "dataset_names", "DatasetLayoutError", "ImageRecord", "ReIDDataset"]
