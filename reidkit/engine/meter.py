"""The loss terms of an epoch's steps, summed where they are computed, and the check that they are finite."""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..numerics import full_precision
from .distributed import all_mean


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


class StepMeter:
    """The loss terms of an epoch's steps, summed where they are computed.

    On a CPU every step is checked (and reported) at once; on a GPU the sums stay on the
    device and are read every ``check_every`` steps, so the host never waits for the
    GPU inside a step.  The first non-finite step is remembered with its values either
    way.  With several processes the values read are their mean over the processes.
    """

    def __init__(self, device: torch.device, check_every: int):
        self.device, self.check_every = device, (1 if device.type == "cpu" else check_every)
        self.names: list[str] = []
        self.sums = torch.zeros(0)                     # per term, then the total (sized at the first step)
        self.count = 0
        self.bad = torch.zeros(0)                      # [found, step, values...] of the first bad step

    def add(self, terms: dict[str, torch.Tensor], step: int) -> None:
        values = torch.stack([full_precision(v.detach()).reshape(()) for v in terms.values()])
        values = torch.cat([values, values.sum().reshape(1)])
        if self.count == 0:
            self.names = [*terms, "total"]
            self.sums = torch.zeros_like(values)
            self.bad = torch.zeros(2 + len(values), device=values.device)
        elif list(terms) != self.names[:-1]:
            raise ValueError(f"the loss terms changed between steps: {self.names[:-1]} -> {list(terms)}")
        self.sums += values
        self.count += 1
        new = (~torch.isfinite(values).all()) & (self.bad[0] == 0)
        record = torch.cat([torch.ones(1, device=values.device), torch.full((1,), float(step), device=values.device),
                            values])
        self.bad = torch.where(new, record, self.bad)
        self.last = values

    def due(self, step: int) -> bool:
        return step % self.check_every == 0

    def read(self, where: Callable[[int], str]) -> dict[str, float]:
        """The last step's terms (mean over the processes); raises on a non-finite step since the last read."""
        packed = all_mean(torch.cat([self.bad[:1], self.last]))
        if float(packed[0]) > 0:
            bad = self.bad
            if float(bad[0]) > 0:                        # this process saw it: name its step and values
                shown = ", ".join(f"{k}={float(v)}" for k, v in zip(self.names, bad[2:]))
                step = int(bad[1])
            else:
                shown, step = "on another process", int(self.count)
            raise NonFiniteLossError(f"non-finite loss at {where(step)}: {shown}. Lower the learning rate or "
                                     "check the data.")
        return dict(zip(self.names, packed[1:].tolist()))

    def means(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        sums = all_mean(self.sums)
        return {k: v / self.count for k, v in zip(self.names, sums.tolist())}
