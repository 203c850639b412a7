"""Device names → ``torch.device``, with one-line errors for devices this machine does not have.

Used by the trainer (``train.device``) and the evaluation (``device=`` / ``--device``), so both
accept the same spellings: ``auto`` (the local CUDA device when there is one, else the CPU),
``cpu``, ``cuda`` (the current CUDA device, or this process's ``LOCAL_RANK`` under torchrun),
``cuda:N``, and ``mps`` on Apple silicon.
"""

from __future__ import annotations

import os

import torch

from collapselab._validation import InputError

SPELLINGS = "auto, cpu, cuda or cuda:N"


def _local_cuda_index() -> int:
    """The CUDA index of this process: ``LOCAL_RANK`` under torchrun, else the current device."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and local_rank.isdigit():
        return int(local_rank) % max(torch.cuda.device_count(), 1)
    return torch.cuda.current_device()


def resolve_device(name: str | torch.device | None, key: str = "device") -> torch.device:
    """The device ``name`` means here, always with an index for CUDA (``cuda`` → ``cuda:K``).

    Raises :class:`InputError` (naming ``key``, the config key or option) for a string that is not
    a device, for CUDA on a machine without it, and for a CUDA index that does not exist.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", _local_cuda_index())
        return torch.device("cpu")
    try:
        device = torch.device(name.strip() if isinstance(name, str) else name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{key}={name!r} is not a device (use {SPELLINGS})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{key}={name!r} but CUDA is not available on this machine "
                             f"(torch {torch.__version__}); use {key}=cpu or auto")
        count = torch.cuda.device_count()
        index = _local_cuda_index() if device.index is None else device.index
        if not 0 <= index < count:
            raise InputError(f"{key}={name!r}: there is no CUDA device {index} here "
                             f"({count} visible: cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index)
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"{key}={name!r} but the MPS backend is not available here; use {key}=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{key}={name!r}: collapselab runs on {SPELLINGS} (or mps), not {device.type!r}")
    return device


__all__ = ["SPELLINGS", "resolve_device"]
