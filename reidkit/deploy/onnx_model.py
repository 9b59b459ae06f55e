"""ONNX embedding models: what an exported model says about itself, an ONNX Runtime session behind a module's
call, and int8 static quantisation calibrated on the user's images.

    export_onnx(model, "m.onnx", spec=spec)           # optimize.py: writes the spec into the file's metadata
    quantize_onnx("m.onnx", "m.int8.onnx", batches)   # QDQ, uint8 activations x int8 per-channel weights
    net = OnnxEmbedding("m.int8.onnx")                # a torch module: reidkit's evaluation runs it unchanged

The int8 model is ONNX Runtime's static quantisation (``onnxruntime.quantization``): activations as uint8
with ranges measured on calibration images (min-max), weights as int8 per output channel, in the QDQ format
that ONNX Runtime fuses into integer convolutions (VNNI / AMX on recent x86).  Measured on CUHK03 val in
docs/BENCHMARKS.md ("int8 export").
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..engine.checkpoint import EmbeddingSpec
from ..files import write_atomic

log = logging.getLogger("reidkit")

#: the metadata key under which reidkit's exports record their :class:`EmbeddingSpec` (JSON)
SPEC_KEY = "reidkit.embedding"


def _with_metadata(path: str | Path, key: str, value: str):
    """The ONNX model of ``path`` with metadata ``key`` set to ``value`` (others kept)."""
    import onnx
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[key] = value
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    return model


def write_spec(path: str | Path, spec: EmbeddingSpec) -> None:
    """Record ``spec`` in the ONNX file's metadata (in place; the caller writes ``path`` atomically)."""
    import onnx
    onnx.save(_with_metadata(path, SPEC_KEY, json.dumps(spec.as_dict())), str(path))


def read_spec(path: str | Path) -> EmbeddingSpec | None:
    """The :class:`EmbeddingSpec` a reidkit export recorded, or None for another tool's ONNX file."""
    return _spec_of(_load_onnx(path))


def _load_onnx(path: str | Path):
    """The ONNX model proto of ``path`` (weights kept external); a missing or damaged file is named."""
    import onnx
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (protobuf raises its own types for a damaged file)
        raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None


def _spec_of(model) -> EmbeddingSpec | None:
    props = {p.key: p.value for p in model.metadata_props}
    if SPEC_KEY not in props:
        return None
    d = json.loads(props[SPEC_KEY])
    return EmbeddingSpec(d["arch"], d["options"], tuple(d["image_size"]), tuple(d["mean"]), tuple(d["std"]))


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (default: torch's)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (ONNX Runtime raises its own exception types)
        raise ValueError(f"{path}: ONNX Runtime cannot load it: a damaged file, not an ONNX model, or external "
                         f"weights missing or outside its folder ({type(e).__name__}: {str(e).strip()[:200]})") \
            from None


def fixed_input(session) -> tuple[str, int | None, tuple[int, int] | None]:
    """An ONNX Runtime session's image input: its name, its batch size when the model fixes one (else None) and
    its (height, width) when fixed (else None)."""
    first = session.get_inputs()[0]
    shape = list(first.shape) + [None] * 4
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    size = (shape[2], shape[3]) if all(isinstance(v, int) and v > 0 for v in shape[2:4]) else None
    return first.name, batch, size


def camera_input(session) -> str | None:
    """The name of an ONNX Runtime session's camera input (a reidkit export of a model that embeds each image's
    camera, TransReID's SIE: int64 ``N``), or None for a model that takes images alone."""
    inputs = session.get_inputs()
    return inputs[1].name if len(inputs) > 1 and inputs[1].type == "tensor(int64)" else None


def run_session(session, images: np.ndarray, cameras: np.ndarray | None = None) -> np.ndarray:
    """``N x D`` embeddings of a batch from any ONNX embedding model: its own input names, a fixed batch size run
    in pieces (the last one padded), outputs flattened per image.  ``cameras`` (``N`` camera indices) go to a
    model with a camera input, which needs them; a model without one ignores them."""
    name, fixed, _ = fixed_input(session)
    camera_name = camera_input(session)
    if camera_name is not None and cameras is None:
        raise ValueError("this ONNX model embeds each image's camera (its second input, "
                         f"{camera_name!r}): give the cameras")

    def feed(part: np.ndarray, part_cameras: np.ndarray | None) -> dict[str, np.ndarray]:
        if camera_name is None:
            return {name: part}
        return {name: part, camera_name: np.asarray(part_cameras, dtype=np.int64)}
    if fixed is None or fixed == len(images):
        out = session.run(None, feed(images, cameras))[0]
    else:
        parts = []
        for s in range(0, len(images), fixed):
            part = images[s:s + fixed]
            part_cameras = None if cameras is None else np.asarray(cameras[s:s + fixed])
            n = len(part)
            if n < fixed:
                part = np.concatenate([part, np.zeros((fixed - n, *part.shape[1:]), part.dtype)])
                if part_cameras is not None:
                    part_cameras = np.concatenate([part_cameras, np.zeros(fixed - n, part_cameras.dtype)])
            parts.append(session.run(None, feed(part, part_cameras))[0][:n])
        out = np.concatenate(parts)
    return np.asarray(out, dtype=np.float32).reshape(len(images), -1)


class OnnxEmbedding(nn.Module):
    """An ONNX embedding model (CPU, ONNX Runtime) called like the torch model it was exported from:
    ``N x 3 x H x W`` normalised float batch -> ``N x D`` float32 embeddings."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.spec = read_spec(path)
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.takes_cameras = camera_input(self.session) is not None      # reidkit's evaluation then passes them

    def forward(self, images: torch.Tensor, cameras: torch.Tensor | None = None) -> torch.Tensor:
        x = images.detach().float().cpu().contiguous().numpy()
        c = None if cameras is None else cameras.detach().cpu().long().numpy()
        return torch.from_numpy(run_session(self.session, x, c))


def measure_speed(models: dict[str, str | Path], images: np.ndarray, threads: int | None = None,
                  rounds: int = 5) -> dict[str, float]:
    """Images per second of each ONNX model embedding ``images`` (one normalised batch) with ONNX Runtime on
    ``threads`` threads: the best of ``rounds`` timings, the models taking turns so that a busy moment of the
    machine does not favour one."""
    import time
    sessions = {name: onnx_session(path, threads) for name, path in models.items()}
    best = dict.fromkeys(sessions, float("inf"))
    for session in sessions.values():
        run_session(session, images)                     # first run: memory and kernel set-up
    for _ in range(rounds):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            run_session(session, images)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: len(images) / seconds for name, seconds in best.items()}


#: the metadata key under which ``reidkit export --int8`` records the machine it timed both models on
INT8_CHECK_KEY = "reidkit.int8_check"


def record_int8_check(path: str | Path, check: dict) -> None:
    """Add ``check`` (the CPU, its features, both models' speed and mAP) to the int8 file's metadata, atomically."""
    import onnx
    model = _with_metadata(path, INT8_CHECK_KEY, json.dumps(check))
    write_atomic(path, lambda tmp: onnx.save(model, tmp))


def read_int8_check(path: str | Path) -> dict | None:
    """What :func:`record_int8_check` recorded in ``path``, or None."""
    props = {p.key: p.value for p in _load_onnx(path).metadata_props}
    return json.loads(props[INT8_CHECK_KEY]) if INT8_CHECK_KEY in props else None


#: how activation ranges are chosen from the calibration images (ONNX Runtime's calibrators)
CALIBRATION_METHODS = ("percentile", "minmax", "entropy")


def quantize_onnx(source: str | Path, out: str | Path, calibration: Iterable[np.ndarray],
                  method: str = "percentile", per_channel: bool = True, **quantize_options) -> Path:
    """Write the int8 version of fp32 ONNX model ``source`` to ``out`` (atomically), with activation ranges
    measured on ``calibration`` (normalised ``N x 3 x H x W`` float batches, as the model takes them).

    ``method``: ``percentile`` (default: each range clips the top 0.001% of values; on CUHK03 val it kept the
    imported OSNet x0.25's mAP where min-max lost 0.7 points), ``minmax`` or ``entropy``.  The embedding spec
    of ``source`` is kept.  A few hundred calibration images suffice.  ``quantize_options`` go to ONNX Runtime's
    ``quantize_static`` (e.g. ``nodes_to_exclude``, ``quant_format``: the variants of ``bench.bench_int8``).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    calibrator = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
                  "entropy": CalibrationMethod.Entropy}[method]
    extra = {"CalibPercentile": 99.999} if method == "percentile" else {}

    class Batches(CalibrationDataReader):
        """The calibration batches, read once (min-max ranges need one pass)."""

        def __init__(self, batches: Iterable[np.ndarray], input_name: str):
            self.batches: Iterator[np.ndarray] = iter(even_batches(batches))
            self.input_name = input_name

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("no calibration images: int8 activation ranges are measured on images")
    source = Path(source)
    model = _load_onnx(source)
    spec, input_name = _spec_of(model), model.graph.input[0].name
    weights = {t.name for t in model.graph.initializer}       # (old ONNX files list their weights as inputs too)
    other_inputs = [i.name for i in model.graph.input[1:] if i.name not in weights]
    if other_inputs:
        raise ValueError(f"{source}: the model embeds each image's camera (input {other_inputs[0]!r}, TransReID's "
                         "SIE); its int8 export is not supported (the fp32 export is: leave out --int8)")
    with tempfile.TemporaryDirectory(prefix="reidkit_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))      # shape inference + graph optimisation first
        reader = Batches(itertools.chain([first], batches), input_name)

        def write(path: str) -> None:
            chatter = io.StringIO()                   # the calibrators print their progress: into the debug log
            with contextlib.redirect_stdout(chatter):
                settings = {"quant_format": QuantFormat.QDQ, "activation_type": QuantType.QUInt8,
                            "weight_type": QuantType.QInt8, "per_channel": per_channel,
                            "calibrate_method": calibrator, "extra_options": extra} | quantize_options
                quantize_static(str(prepared), path, reader, **settings)
            log.debug("onnxruntime quantisation: %s", chatter.getvalue().strip())
            if spec is not None:
                write_spec(path, spec)
        return write_atomic(out, write)


def even_batches(batches: Iterable[np.ndarray], largest: int = 32) -> list[np.ndarray]:
    """The images of ``batches`` again, in batches of one size (the largest divisor of their number up to
    ``largest``): ONNX Runtime's histogram calibrators (percentile, entropy) stack every batch's activations and
    fail on a shorter last batch."""
    images = np.concatenate([np.asarray(b, dtype=np.float32) for b in batches])
    size = max(d for d in range(1, min(largest, len(images)) + 1) if len(images) % d == 0)
    return [images[s:s + size] for s in range(0, len(images), size)]


def calibration_batches(paths: list[str], image_size: tuple[int, int], mean, std, count: int = 256,
                        batch_size: int = 32, seed: int = 0) -> Iterator[np.ndarray]:
    """Normalised batches of ``count`` images drawn (seeded) from ``paths``, decoded as evaluation decodes."""
    from ..data.images import load_rgb
    from ..data.transforms import normalize
    if not paths:
        raise ValueError("no calibration images found")
    chosen = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))[:count]]
    for s in range(0, len(chosen), batch_size):
        images = [torch.from_numpy(np.asarray(load_rgb(p, image_size)).copy()).permute(2, 0, 1)
                  for p in chosen[s:s + batch_size]]
        yield normalize(torch.stack(images), mean, std).numpy()


def compare_on_dataset(models: dict[str, str | Path], recipe, progress: bool = False,
                       threads: int | None = None) -> dict[str, tuple]:
    """Evaluate ONNX embedding models on the recipe's query and gallery (its evaluation settings):
    ``{name: (RankResult, images per second)}``.  The images are decoded once, before any timing."""
    import time

    from ..data.combine import build_recipe_dataset
    from ..engine.evaluate import build_test_caches, evaluate_model
    dataset = build_recipe_dataset(recipe.data)
    query, gallery = build_test_caches(recipe, dataset, progress=progress)
    out = {}
    for name, path in models.items():
        net = OnnxEmbedding(path, threads)
        t0 = time.perf_counter()
        result = evaluate_model(net, query, gallery, recipe.eval, recipe.data.test_batch_size, device="cpu")
        images = (len(query) + len(gallery)) * (2 if recipe.eval.flip else 1)
        out[name] = (result, images / (time.perf_counter() - t0))
    return out
