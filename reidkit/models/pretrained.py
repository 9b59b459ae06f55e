"""Offline loading of ImageNet weights: a file path or the torch hub cache, never a download."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)


def read_weights(path: Path, name: str) -> dict:
    """The tensors of a weights file (a state_dict, or a dict holding one under ``state_dict``), read with
    ``weights_only`` (no code runs); a ``ValueError`` naming the file when it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickles that would run code, truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{name}: {path} is not a readable weights file ({type(e).__name__}: {first[:200]}); "
                         "only plain tensors are loaded (weights_only), nothing in the file was run") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{name}: {path} holds no state_dict of tensors")
    return state


def hub_cache_file(url: str) -> Path:
    """Where torch.hub would have cached the file behind ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def fetch_imagenet_weights(url: str, name: str) -> Path:
    """torchvision's ImageNet file for ``url``: from the torch hub cache, else downloaded there by torch.hub with
    the hash check of its file name; a ``FileNotFoundError`` naming the path and the way out when offline."""
    path = hub_cache_file(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=_hash_prefix(url), progress=False)
    except Exception as e:  # noqa: BLE001 - offline, refused, corrupt: one clear message
        path.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"{name}: model.pretrained=imagenet: no ImageNet weights at {path}, and downloading {url} failed "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}). Put the file there (the "
            f"torch hub cache, $TORCH_HOME), or give its path: model.pretrained=/path/to/{Path(url).name}; "
            "model.pretrained=none trains from random weights") from None
    log.info("%s: ImageNet weights downloaded to %s (hash checked)", name, path)
    return path


def _hash_prefix(url: str) -> str | None:
    """The sha256 prefix torchvision puts in its file names (``resnet50-0676ba61.pth``), checked on download."""
    stem = Path(url).name.split(".")[0]
    tail = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None


def torchvision_network(family: str, table: dict, name: str, last_stride: int) -> tuple[Any, str]:
    """A randomly initialised torchvision network ``table[name] = (builder, weights)`` and its ImageNet URL."""
    if name not in table:
        raise ValueError(f"unknown {family} {name!r}; choose from {', '.join(table)}")
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    builder, weights = table[name]
    return builder(weights=None), weights.url


def load_backbone_weights(module: nn.Module, source: str | None, url: str | None, name: str,
                          head_prefix: str | tuple[str, ...] = "fc.",
                          key_map: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> bool:
    """Load ImageNet weights into ``module`` from ``source``.

    ``source``: ``"imagenet"`` (strict: the torch hub cache file of ``url``, else torchvision's own download
    with its hash check; an error naming where it looked when neither works), ``"auto"`` (the cache file when
    present, else random initialisation with a warning), a path, ``"none"`` (random initialisation, said in
    the log) or ``None``
    (silently nothing: the caller loads trained weights next).  Keys of the
    classification head (``head_prefix``: ``fc.`` for torchvision's ResNets, ``classifier.`` too for torchreid's
    ReID checkpoints) are ignored, as is a DataParallel ``module.`` prefix; ``key_map`` renames the file's keys
    first (an older layout).  Returns whether weights loaded;
    when not, the log says training starts from random initialisation.
    """
    if source is None:
        return False
    if source == "none":
        log.warning("%s: starting from random initialisation (pretrained=none)", name)
        return False
    if source == "imagenet":
        if not url:
            raise ValueError(f"{name}: no ImageNet weights are published for it; give a weights file's path")
        path = fetch_imagenet_weights(url, name)
    else:
        path = hub_cache_file(url) if source == "auto" and url else Path(source)
    if not path.is_file():
        if source == "auto":
            log.warning("%s: no ImageNet weights in the torch hub cache (%s); starting from "
                        "random initialisation (nothing is downloaded)", name, path)
            return False
        raise FileNotFoundError(f"{name}: pretrained weights file not found: {path}")
    state = {k.removeprefix("module."): v for k, v in read_weights(path, name).items()}
    state = key_map(state) if key_map is not None else state
    if any(k.startswith("backbone.") for k in state) \
            and not any(k.startswith("backbone.") for k in module.state_dict()):
        head = sorted({k.split(".")[0] for k in state if not k.startswith("backbone.")})
        log.info("%s: %s is a whole ReID model's checkpoint: its backbone is loaded, its head (%s) starts afresh",
                 name, path, ", ".join(head) or "none")
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    head = sorted(k for k in state if k.startswith(head_prefix))
    if head:
        log.info("%s: the file's classification head is not used (%s)", name, ", ".join(head))
    state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head_prefix)]    # the ImageNet head is not used
    if unexpected or missing:
        raise ValueError(f"{name}: weights in {path} do not match the backbone: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    log.info("%s: ImageNet weights loaded from %s", name, path)
    return True


def load_matching_weights(model: nn.Module, path: str | Path, name: str, prefix: str = "") -> list[str]:
    """Initialise ``model`` from a checkpoint of the same architecture, keeping its own head.

    For fine-tuning: ``path`` is a plain state_dict, a dict with ``state_dict``
    (reidkit, torchreid) or a DataParallel one (``module.`` keys).  Tensors whose
    name and shape match are loaded; the others (typically the classifier of the
    source dataset) keep their fresh initialisation and are returned.  Checkpoint
    keys are tried as they are and under ``prefix`` (a backbone-only ImageNet file
    loaded into a model that nests its backbone).  Raises when fewer than half
    of the model's tensors match: that is the wrong file, not a new head.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: pretrained weights file not found: {path}")
    state = read_weights(path, name)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    loaded = {}
    for k, v in state.items():
        for key in (k, prefix + k):
            if key in own and own[key].shape == v.shape:
                loaded[key] = v
                break
    skipped = sorted(k for k in own if k not in loaded)
    if len(loaded) < len(own) / 2:
        raise ValueError(f"{name}: {path} matches only {len(loaded)} of the model's {len(own)} tensors "
                         f"(e.g. model keys {list(own)[:3]}, file keys {list(state)[:3]}): not weights of this "
                         "architecture")
    model.load_state_dict(loaded, strict=False)
    log.info("%s: %d tensors loaded from %s; freshly initialised: %s", name, len(loaded), path,
             ", ".join(skipped) if skipped else "none")
    return skipped
