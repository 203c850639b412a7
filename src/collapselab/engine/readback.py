"""Per-step training values kept on the device and read back in one transfer.

Reading a CUDA tensor on the host (``float(loss)``, ``loss.item()``) waits for the GPU to finish
everything queued so far, so a loop that reads its loss every step can never run ahead of the
GPU. The trainer instead appends each step's loss and logged terms to a :class:`StepValues`
window (one small ``torch.stack`` per step, no synchronisation) and reads the whole window with
one copy every ``log.every`` steps, at the end of an epoch and before a checkpoint. The values it
logs are the same per-step values a per-step read would give, and a non-finite loss is still
found at the first step where it happened (:meth:`StepValues.first_nonfinite`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch


class StepValues:
    """A window of per-step scalars: device tensors stacked lazily, Python numbers kept as is.

    ``add(step, tensors, numbers)``: ``tensors`` are 0-d tensors (the loss first, then logged
    terms), read back in float64; ``numbers`` are host values (learning rate, EMA momentum).
    Every step of a window must log the same tensor names (one method, one configuration).
    """

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.names: list[str] | None = None
        self.rows: list[torch.Tensor] = []
        self.numbers: list[dict[str, float]] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, tensors: Mapping[str, torch.Tensor], numbers: Mapping[str, float]) -> None:
        names = list(tensors)
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise ValueError(f"step {step} logs {names}, the window started with {self.names}")
        self.steps.append(int(step))
        self.rows.append(torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors.values()]))
        self.numbers.append(dict(numbers))

    def read(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[dict[str, Any]]:
        """One dict per step (``step`` plus every value), in order, and empty the window.

        ``reduce`` (e.g. a mean over ranks) is applied to the (steps, values) matrix on the device
        before the one transfer to the host.
        """
        if not self.steps:
            return []
        matrix = torch.stack(self.rows)
        if reduce is not None:
            matrix = reduce(matrix)
        values = matrix.cpu().tolist()
        names = self.names or []
        out = [{"step": step, **dict(zip(names, row, strict=True)), **numbers}
               for step, row, numbers in zip(self.steps, values, self.numbers, strict=True)]
        self.steps, self.rows, self.numbers, self.names = [], [], [], None
        return out


def first_nonfinite(records: list[dict[str, Any]], key: str = "loss") -> dict[str, Any] | None:
    """The first record whose ``key`` is NaN or ±Inf (None if all are finite)."""
    for record in records:
        if not math.isfinite(record[key]):
            return record
    return None


__all__ = ["StepValues", "first_nonfinite"]
