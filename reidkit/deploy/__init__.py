"""Deployment: feature extraction, gallery search and importing exported models."""
from .extractor import FeatureExtractor
from .gallery import GalleryIndex
from .onnx_import import import_onnx_osnet

__all__ = ["FeatureExtractor", "GalleryIndex", "import_onnx_osnet"]
