"""Training engine: device, data parallelism, objective, optimiser, schedules, checkpoints, the training loop."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .device import DeviceError
from .distributed import DistributedError
from .objective import NonFiniteLossError
from .trainer import Trainer

__all__ = ["Trainer", "CheckpointError", "load_checkpoint", "save_checkpoint", "NonFiniteLossError",
           "DistributedError", "DeviceError"]
