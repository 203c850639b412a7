"""Input checks and small helpers shared by the loss functions (no detaching: losses need grads)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from collapselab._validation import InputError, describe_nonfinite, value_checks_enabled

Semantics = Literal["local", "gather", "all_reduce"]
F = TypeVar("F", bound=Callable[..., Any])


def semantics(kind: Semantics) -> Callable[[F], F]:
    """Attach the distributed semantics (``local``, ``gather`` or ``all_reduce``) to a loss."""

    def mark(fn: F) -> F:
        fn.distributed_semantics = kind  # type: ignore[attr-defined]
        return fn

    return mark


def check_tensor(
    x: Any, name: str, *, ndim: int | tuple[int, ...] = 2, min_rows: int = 1
) -> torch.Tensor:
    """Return ``x`` as a floating tensor (graph kept), or raise :class:`InputError`.

    Checks: tensor or ndarray, real floating dtype, number of dimensions, at least ``min_rows``
    rows, a non-empty last dimension and only finite entries (the last one reads the values, a
    host synchronisation on a GPU, and is skipped inside ``value_checks(False)``, as in the
    trainer's step).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(
            f"{name}: expected a floating-point tensor, got dtype {x.dtype} (cast with .float())"
        )
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise InputError(f"{name}: expected a {want} tensor, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise InputError(f"{name}: need at least {min_rows} row(s), got shape {tuple(x.shape)}")
    if x.shape[-1] < 1:
        raise InputError(f"{name}: the last dimension is empty (shape {tuple(x.shape)})")
    if value_checks_enabled() and not bool(torch.isfinite(x).all()):
        raise InputError(describe_nonfinite(x.detach(), name))
    return x


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Require two tensors of the same shape (e.g. two views of the same samples)."""
    if a.shape != b.shape:
        raise InputError(
            f"{name_b} must have the same shape as {name_a}: got {tuple(b.shape)} vs {tuple(a.shape)}"
        )


def check_positive(value: float, name: str) -> float:
    """Require a finite, strictly positive hyper-parameter."""
    if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def stack_views(views: torch.Tensor | Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    """Split a (V, N, K) tensor or a sequence of (N, K) tensors into checked (N, K) views."""
    if isinstance(views, torch.Tensor | np.ndarray):
        views = check_tensor(views, name, ndim=3)
        return list(views.unbind(0))
    if not isinstance(views, Sequence) or len(views) == 0:
        raise InputError(
            f"{name}: expected a (V, N, K) tensor or a non-empty list of (N, K) tensors"
        )
    out = [check_tensor(v, f"{name}[{i}]") for i, v in enumerate(views)]
    for i, v in enumerate(out[1:], start=1):
        check_same_shape(out[0], v, f"{name}[0]", f"{name}[{i}]")
    return out


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()
