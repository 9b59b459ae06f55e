"""The model a gallery was embedded with: its weights, checked against what the gallery recorded, and an
extractor that embeds queries exactly as the gallery was embedded (``reidkit search``, ``extract --add-to``,
``reidkit serve``)."""
from __future__ import annotations

from pathlib import Path

from ..files import file_sha256
from .extractor import FeatureExtractor, check_image_size


def check_gallery_weights(gallery: str, meta: dict, weights: str | None) -> str:
    """The weights a gallery's model is to be loaded from (``weights`` if given, else the recorded path), checked
    against the fingerprint the gallery recorded: another file would mix two models' embeddings in one index."""
    if "arch" not in meta:
        raise ValueError(f"{gallery}: no record of the model that embedded the gallery "
                         "(write it with `reidkit extract`)")
    path = weights or meta.get("weights")
    if not path:
        raise ValueError(f"{gallery}: no record of the model's weights; pass --weights")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{gallery}: the model's weights {path} are not there any more; pass --weights with "
                                "the file the gallery was built with")
    recorded = meta.get("weights_sha256")
    if recorded is None:
        print(f"note: {gallery} records no fingerprint of its model (written by an older reidkit): {path} is "
              "assumed to be the model that embedded it")
        return path
    actual = file_sha256(path)
    if actual != recorded:
        raise ValueError(f"{gallery} was embedded with weights of SHA-256 {recorded[:12]}..., but {path} now has "
                         f"{actual[:12]}...: another model. Pass the original file with --weights, or build the "
                         "gallery again with `reidkit extract --out`")
    return path


def gallery_extractor(gallery: str | Path, meta: dict, weights: str, device: str = "cpu") -> FeatureExtractor:
    """The gallery's model (``weights`` as :func:`check_gallery_weights` returned them), at the recorded input size
    and options."""
    size = check_image_size(meta.get("image_size", ()), f"{gallery}: the metadata's image_size")
    return FeatureExtractor(meta["arch"], weights, device=device, image_size=size,
                            model_options=meta.get("model_options") or {})
