"""Process-group setup, rank helpers and autograd-aware collectives.

Everything here is a no-op on a single process, so the same code runs on a laptop, under
``torchrun`` on one node, or on many nodes.

Gradient convention (read this before using :func:`gather` or :func:`all_reduce`)
---------------------------------------------------------------------------------
The backward pass of every collective here **sums** the incoming gradients over ranks. Each
rank therefore receives the gradient of the *sum of all ranks' losses* with respect to its own
inputs. ``DistributedDataParallel`` then *averages* parameter gradients over ranks, so the
update is the gradient of the *mean* rank loss. The losses in :mod:`collapselab.losses` are
written so that the mean rank loss equals the single-process loss on the concatenated (global)
batch; the result is that a run on W GPUs with per-GPU batch n takes the same step as a run on
one GPU with batch W·n. ``tests/distributed/test_loss_gradients_ddp.py`` checks this for every
loss. If you synchronise gradients yourself with a *sum* instead of DDP's mean, divide by
:func:`get_world_size`.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist

from collapselab._validation import InputError, value_checks_enabled

__all__ = [
    "all_reduce",
    "barrier",
    "cleanup",
    "gather",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "global_batch_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "local_only",
    "print0",
]

_LOCAL_ONLY = False


# --------------------------------------------------------------------------- setup and ranks


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from the ``torchrun`` environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Uses
    ``nccl`` when CUDA is available and ``gloo`` otherwise (override with ``backend``); on CUDA
    the current device is set to ``LOCAL_RANK``. Returns ``True`` when a process group with more
    than one rank is active afterwards, ``False`` for a plain single-process run (no
    ``WORLD_SIZE`` or ``WORLD_SIZE=1``). Calling it twice is harmless.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world_env = os.environ.get("WORLD_SIZE")
    if world_env is None:
        return False
    try:
        world_size = int(world_env)
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise InputError(
            f"torchrun environment: RANK/WORLD_SIZE/LOCAL_RANK must be integers ({err})"
        ) from err
    if world_size <= 1:
        return False
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise InputError(
            f"torchrun environment: WORLD_SIZE={world_size} but {', '.join(missing)} is not set; "
            "launch with `torchrun --nproc_per_node=N ...` or set them yourself"
        )
    if not 0 <= rank < world_size:
        raise InputError(
            f"torchrun environment: RANK={rank} is outside [0, WORLD_SIZE={world_size})"
        )
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return True


def cleanup() -> None:
    """Destroy the default process group if one is active."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group with more than one rank is active (and not in :func:`local_only`)."""
    return (
        not _LOCAL_ONLY
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    )


def get_world_size() -> int:
    """Number of ranks taking part in the losses' collectives (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """This process's rank among :func:`get_world_size` ranks (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK`` from torchrun; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0 (and on every single-process run)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return True


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only; other ranks stay silent."""
    if is_main_process():
        builtins.print(*args, **kwargs)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Make the collectives here (and so every loss) act on this rank's data alone.

    Use it to evaluate a loss on one rank only, e.g. for logging on rank 0. Without it, a loss
    called on a subset of ranks waits forever for the others.
    """
    global _LOCAL_ONLY
    previous = _LOCAL_ONLY
    _LOCAL_ONLY = True
    try:
        yield
    finally:
        _LOCAL_ONLY = previous


# --------------------------------------------------------------------------- collectives


class _Gather(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the gradient over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank = dist.get_rank()
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) whose backward is all_reduce(SUM) of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


_MAX_DIMS = 8


def _check_same_shape_everywhere(x: torch.Tensor, what: str) -> None:
    """One small all_gather of every rank's shape; raise on every rank if they differ."""
    if x.ndim > _MAX_DIMS:
        raise InputError(f"{what}: tensors with more than {_MAX_DIMS} dimensions are not supported")
    padded = [x.ndim, *x.shape] + [-1] * (_MAX_DIMS - x.ndim)
    shape = torch.tensor(padded, dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    if all(bool(torch.equal(s, shape)) for s in shapes):
        return
    found = [tuple(s.tolist()[1 : 1 + int(s[0])]) for s in shapes]
    raise InputError(
        f"{what}: every rank must pass a tensor of the same shape, got {found} "
        "(use equal per-rank batches, e.g. drop_last=True in the sampler)"
    )


def gather(x: torch.Tensor, check_shapes: bool = True) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients for every shard.

    Shapes: ``x`` (n, ...) on each of W ranks -> (W·n, ...), rank order. Identity on a single
    process.

    Backward: the gradient arriving at the gathered tensor is summed over ranks and rank r
    keeps rows ``[r·n, (r+1)·n)``, i.e. rank r receives ∂(Σ_ranks loss)/∂x_r (see the module
    docstring for how this pairs with DDP's averaging).

    Pitfalls this avoids:

    * ``torch.distributed.all_gather`` has no autograd: the gathered copies are constants, so the
      negatives coming from other ranks push nothing back to the rank that produced them. The
      common patch -- put the local tensor back into its slot -- recovers the gradient of the
      local loss only; the terms of the other W − 1 ranks' losses (where this rank's rows are
      negatives) are dropped, so the step differs from the single-GPU one, not just in scale.
    * Every rank must call ``gather`` (and later ``backward``) the same number of times in the
      same order; a rank that skips a loss blocks the others until the timeout.
    * ``all_gather`` needs equal shapes on every rank; with ``check_shapes`` (default) a
      mismatch raises :class:`~collapselab._validation.InputError` instead of hanging or
      mixing rows. Use equal per-rank batches (``drop_last=True``). The check is one more
      collective and a host synchronisation; it is skipped inside
      ``collapselab._validation.value_checks(False)`` (the trainer's step, whose loader gives
      every rank equal batches by construction).
    """
    if not is_distributed():
        return x
    if check_shapes and value_checks_enabled():
        _check_same_shape_everywhere(x, "gather")
    return _Gather.apply(x)


def all_reduce(x: torch.Tensor, op: Literal["sum", "mean", "max"] = "sum") -> torch.Tensor:
    """Sum (or average) ``x`` over ranks, differentiably; identity on a single process.

    Backward: the gradient is summed over ranks (for ``"mean"`` also divided by W), which is
    the exact gradient of Σ_ranks loss when every rank computes its loss from the reduced value.
    ``"max"`` is offered for numerical shifts only and returns a detached tensor (no gradient).

    Pitfalls this avoids:

    * ``torch.distributed.all_reduce`` works in place and has no autograd: backward treats it as
      the identity, so rank r's input receives the gradient of its own loss only, not of the W
      ranks' losses that all use the reduced value. After DDP's averaging the step is 1/W of the
      single-GPU one (a factor the official Barlow Twins code folds into its learning rate), and
      the in-place write can corrupt a tensor autograd saved for backward.
    * With ``"mean"``, equal per-rank batches are assumed when the reduced value is itself a
      per-rank mean; for unequal batches reduce sums and counts separately
      (:func:`global_batch_size`).
    * Every rank must call it, in the same order, in forward and in backward.
    """
    if op not in ("sum", "mean", "max"):
        raise InputError(f"all_reduce: op must be 'sum', 'mean' or 'max', got {op!r}")
    if op == "max":
        out = x.detach().contiguous().clone()
        if is_distributed():
            dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out
    if not is_distributed():
        return x
    out = _AllReduceSum.apply(x)
    if op == "mean":
        out = out / dist.get_world_size()
    return out


def global_batch_size(n: int, device: torch.device | str | None = None) -> int:
    """Total number of rows over ranks when this rank holds ``n`` (``n`` on a single process)."""
    if not is_distributed():
        return int(n)
    count = torch.tensor([int(n)], dtype=torch.long, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    return int(count.item())
