"""Deployment: feature extraction and importing exported models."""
from .extractor import FeatureExtractor
from .onnx_import import import_onnx_osnet

__all__ = ["FeatureExtractor", "import_onnx_osnet"]
