"""Deployment: importing exported models."""
from .onnx_import import import_onnx_osnet

__all__ = ["import_onnx_osnet"]
