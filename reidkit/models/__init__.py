"""Models: a registry of ReID networks built from torchvision backbones."""
from . import osnet, ptl, regional, reid_model, timm_family, transreid  # noqa: F401  (registration)
from .registry import build_model, check_model, describe_models, model_names, register_model
from .reid_model import ReIDModel

__all__ = ["build_model", "check_model", "describe_models", "model_names", "register_model", "ReIDModel"]
