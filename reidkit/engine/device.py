"""Where training runs: the device a recipe names, mixed precision on it, CPU threads.

``train.device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; under
``torchrun`` each process takes the GPU of its local rank.  ``train.amp``: ``bf16``
(autocast, no loss scaling), ``fp16`` (autocast and a gradient scaler, whose state
the checkpoints keep) or ``off``, on CPU and CUDA alike.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch

from ..names import counted

log = logging.getLogger("reidkit")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
THREADS_ENV = "REIDKIT_THREADS"


class DeviceError(ValueError):
    """A device that does not exist here."""


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` of a recipe's ``train.device``; ``local_rank`` picks the GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"train.device={name}: reidkit trains on cpu or cuda")
    if not torch.cuda.is_available():
        raise DeviceError(f"train.device={name} but torch {torch.__version__} sees no CUDA device "
                          f"(built for CUDA {torch.version.cuda or 'none'}); use train.device=cpu or auto")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if device.index is not None and device.index != local_rank:
            log.warning("train.device=%s ignored under torchrun: process %d takes cuda:%d", name, local_rank,
                        local_rank % count)
        return torch.device("cuda", local_rank % count)
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise DeviceError(f"train.device={name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast to ``amp``'s dtype on ``device`` (a no-op context for ``off``)."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"train.amp must be off, bf16 or fp16, got {amp!r}")
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def gradient_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads to ``threads``, else ``$REIDKIT_THREADS``, else leave torch's default."""
    if threads is None and os.environ.get(THREADS_ENV):
        try:
            threads = int(os.environ[THREADS_ENV])
        except ValueError:
            raise DeviceError(f"{THREADS_ENV}={os.environ[THREADS_ENV]!r} is not a number of threads") from None
    if threads is not None:
        if threads < 1:
            raise DeviceError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def choose_kernels(device: torch.device, deterministic: bool) -> None:
    """``train.deterministic``: on a GPU, kernels that give the same bits on every run (cuDNN's deterministic
    algorithms, no autotuning, cuBLAS with a fixed workspace; ``torch.use_deterministic_algorithms`` warns
    naming any operation that has no deterministic kernel); else cuDNN's autotuned fastest kernels, whose
    sums run in an order that varies from run to run.  CPU runs are deterministic either way."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")    # read when cuBLAS starts
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True          # fixed input sizes: let cuDNN pick its fastest kernels


def describe(device: torch.device) -> str:
    """``cpu (16 threads)`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``, for logs and reports."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({counted(torch.get_num_threads(), 'thread')})"


#: the instruction sets that decide whether int8 (VNNI, AMX) or bf16 inference pays on a CPU, by /proc/cpuinfo flag
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                "avx512_bf16": "AVX-512 bf16", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16"}


def describe_cpu(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """This machine's CPU model name and which of :data:`CPU_FEATURES` it has (read from ``/proc/cpuinfo``, or
    the ``cpuinfo`` text given; elsewhere the platform's processor name and no flags)."""
    import platform
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() or platform.machine() or "unknown CPU", []
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    return name, [label for flag, label in CPU_FEATURES.items() if flag in flags]
