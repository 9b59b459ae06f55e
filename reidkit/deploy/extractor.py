"""``FeatureExtractor``: embeddings from image paths, PIL images or arrays, in one call.

Like torchreid's ``FeatureExtractor``, so users can switch::

    extractor = FeatureExtractor("osnet_x0_25", "osnet_x0_25_msmt17.pth")
    features = extractor(["a.jpg", "b.jpg"])          # (2, 512) float tensor

Preprocessing is the recipes': RGB, resized to ``image_size`` (bilinear),
/255, ImageNet mean/std.  Backends (same features to float rounding, tested):

- ``"auto"`` (default): ``"onnxruntime"`` on CPU, ``"torch"`` on other devices.
- ``"torch"``: eval mode, ``torch.inference_mode``; with
  ``optimize=True`` (default) batch norm is folded into the convolutions and
  tensors are channels_last.
- ``"onnxruntime"``: the fused model exported to ONNX (``onnx_path``, or a
  temporary file) and run by ONNX Runtime with torch's thread count; the
  fastest CPU path (OSNet x1.0: 3.5x torchreid's best setting, docs/BENCHMARKS.md).

``weights`` may also be an exported ``.onnx`` file, fp32 or int8 (``reidkit export [--int8]``): it runs
as it is, with the architecture, input size and normalisation its metadata records.

A model that embeds each image's camera (TransReID's SIE, ``model.sie_cameras``) is given them with the
images, as the camera indices its training data's reader assigned (0-based; :func:`sie_camera_indices`)::

    extractor(["0002_c1s1_000451_03.jpg"], cameras=[0])
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data.images import BadImageError, load_rgb
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from ..engine.checkpoint import EmbeddingSpec, check_against_spec, load_embedding_model
from ..logs import bar_disabled
from ..models import build_model
from ..models.heads import takes_cameras
from .onnx_model import camera_input, fixed_input, onnx_session, read_spec, run_session
from .optimize import export_onnx, fuse_for_inference

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | np.ndarray

#: the largest input a model is built for (far above any person crop: 256x128, 384x192)
MAX_INPUT_SIDE = 2048
MAX_INPUT_PIXELS = 2048 * 1024


def check_image_size(size: Sequence[int], source: str = "image_size") -> tuple[int, int]:
    """``(height, width)`` as ints, or a ``ValueError`` naming ``source`` for a size no ReID model takes."""
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: expected (height, width), got {size!r}") from None
    if not (8 <= h <= MAX_INPUT_SIDE and 8 <= w <= MAX_INPUT_SIDE and h * w <= MAX_INPUT_PIXELS):
        raise ValueError(f"{source}: input size {h}x{w} is outside 8..{MAX_INPUT_SIDE} per side / "
                         f"{MAX_INPUT_PIXELS} pixels (person crops are e.g. 256x128)")
    return h, w


class FeatureExtractor:
    """A trained model behind a call that takes images and returns embeddings."""

    def __init__(self, model_name: str | None = None, weights: str | Path | None = None, device: str = "cpu",
                 image_size: tuple[int, int] | None = None, batch_size: int = 64, num_classes: int | None = None,
                 backend: str = "auto", optimize: bool = True, onnx_path: str | Path | None = None,
                 model_options: dict | None = None):
        """A reidkit training checkpoint describes itself: ``model_name``, ``image_size`` and ``model_options``
        may be left out (they and the normalisation are read from it), and an explicit one that contradicts it
        is an error.  A bare state_dict needs ``model_name`` (and ``image_size``, default 256x128).
        ``num_classes`` only matters without ``weights`` (an untrained model); ``model_options`` go to the
        model's builder (e.g. ``last_stride``, ``pooling`` of the BNNeck models).

        ``backend="auto"``: ONNX Runtime on CPU, torch on other devices.
        """
        if backend not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
        auto = backend == "auto"
        if auto:
            backend = "onnxruntime" if device == "cpu" else "torch"
        if backend == "onnxruntime" and device != "cpu":
            raise ValueError(f"backend='onnxruntime' runs on the CPU; got device={device!r} (use backend='torch')")
        self.spec: EmbeddingSpec | None = None
        self.session = None
        if weights is not None and str(weights).endswith(".onnx"):
            self._init_onnx(weights, model_name, device, image_size, batch_size, model_options)
            return
        if weights is not None:
            self.model, self.spec = load_embedding_model(weights, model_name, **(model_options or {}))
            check_against_spec(self.spec, str(weights), image_size=image_size)
        elif model_name is None:
            raise ValueError("FeatureExtractor needs weights or a model name")
        else:
            self.model = build_model(model_name, num_classes or 1, pretrained=None, **(model_options or {})).eval()
        sie = getattr(self.model, "sie", None)
        self.takes_cameras = takes_cameras(self.model)
        self.num_cameras = len(sie) if self.takes_cameras and sie is not None else None
        if image_size is None:
            image_size = self.spec.image_size if self.spec is not None else (256, 128)
        spec = self.spec
        self.model_name = spec.arch if spec is not None else model_name
        self.model_options = {**(spec.options if spec is not None else {}), **(model_options or {})}
        self.mean, self.std = (spec.mean, spec.std) if spec is not None else (IMAGENET_MEAN, IMAGENET_STD)
        image_size = check_image_size(image_size)
        self.device, self.image_size, self.batch_size = device, image_size, batch_size
        self.memory_format = torch.contiguous_format
        if backend == "onnxruntime":
            try:
                self.session = self._onnx_session(onnx_path)
            except Exception as e:                       # a model the ONNX exporter cannot take
                if not auto:
                    raise
                log.warning("ONNX export of %s failed (%s); using the torch backend", model_name, e)
                backend = "torch"
        self.backend = backend
        if backend == "torch":
            if optimize:
                self.model = fuse_for_inference(self.model, channels_last=device == "cpu")
                self.memory_format = torch.channels_last if device == "cpu" else torch.contiguous_format
            self.model.to(device)

    def _init_onnx(self, path: str | Path, model_name: str | None, device: str,
                   image_size: tuple[int, int] | None, batch_size: int, model_options: dict | None) -> None:
        """An exported ONNX model (fp32 or int8, ``reidkit export``) run by ONNX Runtime; a reidkit export says
        its architecture, input size and normalisation itself (another tool's: ImageNet's, 256x128 unless
        given)."""
        if device != "cpu":
            raise ValueError(f"{path}: an ONNX model runs on the CPU (ONNX Runtime); got device={device!r}")
        self.spec = spec = read_spec(path)
        check_against_spec(spec, str(path), model_name, model_options, image_size)
        self.model_name = spec.arch if spec is not None else (model_name or Path(path).stem)
        self.model_options = dict(spec.options) if spec is not None else dict(model_options or {})
        self.mean, self.std = (spec.mean, spec.std) if spec is not None else (IMAGENET_MEAN, IMAGENET_STD)
        session = onnx_session(path)
        _, _, fixed_size = fixed_input(session)
        self.takes_cameras = camera_input(session) is not None
        self.num_cameras = (spec.options.get("sie_cameras") if spec is not None else None) \
            if self.takes_cameras else None
        if fixed_size is not None and image_size is not None and tuple(image_size) != fixed_size:
            raise ValueError(f"{path} takes images of exactly {fixed_size[0]}x{fixed_size[1]}, not "
                             f"{image_size[0]}x{image_size[1]}: leave out the size (or give that one)")
        size = image_size or (spec.image_size if spec is not None else (fixed_size or (256, 128)))
        self.device, self.image_size, self.batch_size = device, check_image_size(size), batch_size
        self.memory_format = torch.contiguous_format
        self.session, self.backend = session, "onnxruntime"

    def _onnx_session(self, onnx_path: str | Path | None):
        if onnx_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="reidkit_onnx_")
            onnx_path = Path(self._tmp.name) / "model.onnx"
        export_onnx(self.model, onnx_path, self.image_size, spec=self.spec)
        return onnx_session(onnx_path)

    def camera_tensor(self, cameras: int | Sequence[int] | torch.Tensor | np.ndarray | None,
                      count: int) -> torch.Tensor | None:
        """``cameras`` checked for ``count`` images, as the model takes them (None for a model without SIE, which
        ignores cameras); a model that embeds cameras and gets none, a count that differs, or an index outside
        ``0 .. num_cameras - 1`` is a ``ValueError`` naming it."""
        if not self.takes_cameras:
            return None
        if cameras is None:
            raise ValueError(f"{self.model_name}: the model embeds each image's camera (TransReID's SIE, "
                             "model.sie_cameras): give the cameras (extractor(images, cameras=[...]), "
                             "`reidkit extract --sie-cameras ...`), 0-based as its training data's reader numbered "
                             "them")
        try:
            tensor = torch.as_tensor(np.asarray(cameras), dtype=torch.long).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"cameras: expected integer camera indices, got {cameras!r:.80} ({e})") from None
        if len(tensor) != count:
            raise ValueError(f"cameras: {len(tensor)} given for {count} image(s)")
        limit = self.num_cameras
        outside = [int(c) for c in tensor if c < 0 or (limit is not None and c >= limit)]
        if outside:
            raise ValueError(f"camera index {outside[0]} is outside 0..{'' if limit is None else limit - 1}: the "
                             f"model's side-information embedding knows {limit} cameras (model.sie_cameras)")
        return tensor

    @torch.inference_mode()
    def embed_batch(self, batch: torch.Tensor, cameras: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of an already normalised N x 3 x H x W float batch (and its ``N`` camera indices for a
        model that embeds them)."""
        cameras = self.camera_tensor(cameras, len(batch))
        if self.session is not None:
            return torch.from_numpy(run_session(self.session, batch.numpy(),
                                                None if cameras is None else cameras.numpy()))
        batch = batch.to(self.device).contiguous(memory_format=self.memory_format)
        if cameras is not None:
            return self.model(batch, cameras.to(self.device)).float().cpu()
        return self.model(batch).float().cpu()

    def _to_uint8(self, image: ImageInput) -> torch.Tensor:
        h, w = self.image_size
        if isinstance(image, (str, Path)):
            pil = load_rgb(image, self.image_size)
        elif isinstance(image, Image.Image):
            pil = image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"array images must be H x W x 3 uint8 RGB, got {image.shape} {image.dtype}")
            pil = Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)
        else:
            raise TypeError(f"expected a path, PIL image or uint8 array, got {type(image).__name__}")
        return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)

    def embed_files(self, paths: Sequence[str | Path], progress: bool = False, skip_bad_images: bool = False,
                    cameras: Sequence[int] | None = None) -> tuple[torch.Tensor, list[str]]:
        """Embeddings of image files and the paths they belong to (``cameras``: one index per path, for a model
        that embeds them).

        Every file is tried: the undecodable ones are all listed in one :class:`BadImageError` after the pass,
        or with ``skip_bad_images`` left out (logged) and absent from the returned paths.
        """
        camera_of = self.camera_tensor(cameras, len(paths))
        bad: list[tuple[str, str]] = []

        def decode(path):
            try:
                return self._to_uint8(path)
            except BadImageError as e:
                bad.extend(e.bad)
                return None

        out, kept = [], []
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as decoders:
            starts = range(0, len(paths), self.batch_size)
            for s in tqdm(starts, desc="embedding", unit="batch", disable=bar_disabled(progress)):
                chunk = list(paths[s:s + self.batch_size])
                images = list(decoders.map(decode, chunk))
                good = [(p, x, s + i) for i, (p, x) in enumerate(zip(chunk, images)) if x is not None]
                if good and not (bad and not skip_bad_images):     # stop embedding once the run must fail
                    batch = normalize(torch.stack([x for _, x, _ in good]), self.mean, self.std)
                    batch_cameras = None if camera_of is None else camera_of[[i for _, _, i in good]]
                    out.append(self.embed_batch(batch, batch_cameras))
                    kept += [str(p) for p, _, _ in good]
        if bad and not skip_bad_images:
            raise BadImageError(bad, hint="pass --skip-bad-images to leave them out")
        if bad:
            log.warning("left out %d undecodable image(s): %s", len(bad), ", ".join(p for p, _ in bad[:5]))
        if not kept:
            raise ValueError(f"none of the {len(paths)} image(s) could be decoded")
        return torch.cat(out), kept

    def __call__(self, images: ImageInput | Sequence[ImageInput], progress: bool = False,
                 cameras: int | Sequence[int] | None = None) -> torch.Tensor:
        """Embeddings of one image or a list, ``batch_size`` at a time (``progress``: a bar over the batches;
        ``cameras``: one index per image for a model that embeds them, ignored by one that does not)."""
        if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        camera_of = self.camera_tensor(cameras, len(images))
        out = []
        starts = range(0, len(images), self.batch_size)
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as decoders:    # PIL releases the GIL
            for s in tqdm(starts, desc="embedding", unit="batch", disable=bar_disabled(progress)):
                batch = torch.stack(list(decoders.map(self._to_uint8, images[s:s + self.batch_size])))
                batch_cameras = None if camera_of is None else camera_of[s:s + self.batch_size]
                out.append(self.embed_batch(normalize(batch, self.mean, self.std), batch_cameras))
        return torch.cat(out)
