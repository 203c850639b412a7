"""Input checks shared by the public functions: clear errors instead of silent numbers."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences

_value_checks = [True]


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turn the checks that read tensor *values* (NaN/Inf in loss inputs, equal shapes on every
    rank) on or off inside the block; shape and type checks always run.

    Reading a value is a host synchronisation on a GPU: the trainer's step runs with these checks
    off and finds a non-finite loss itself, from values it reads back every ``log.every`` steps.
    """
    previous = _value_checks[0]
    _value_checks[0] = bool(enabled)
    try:
        yield
    finally:
        _value_checks[0] = previous


def value_checks_enabled() -> bool:
    """Whether checks that read tensor values run here (off inside ``value_checks(False)``)."""
    return _value_checks[0]


class InputError(ValueError):
    """Raised when an input has the wrong shape, type or values; the message says how to fix it."""


def check_number(value: Any, key: str, positive: bool = False, what: str = "") -> float:
    """``value`` as a float if it is a finite real number >= 0 (> 0 with ``positive``); else an
    :class:`InputError` naming ``key`` (e.g. ``optim.lr``, ``method.temperature``) and, after it,
    ``what`` (e.g. ``" (kNN vote temperature)"``)."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if not number or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise InputError(f"{key} must be {'> 0' if positive else '>= 0'} and finite{what}, got {value!r}")
    return float(value)


def plain_values(value: Any) -> Any:
    """``value`` with NumPy scalars (``np.float32(0.1)``, ``np.int64(64)``, 0-d arrays) turned
    into Python numbers, inside mappings, lists and tuples too, so that a config accepts them."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    if isinstance(value, Mapping):
        return {key: plain_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_values(item) for item in value]
    return value


def as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Convert a tensor, ndarray or nested sequence to a tensor without copying when possible."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise InputError(f"{name}: object arrays are not supported; pass a numeric array")
        if x.dtype.kind in "USV":
            raise InputError(f"{name}: holds {'text' if x.dtype.kind in 'US' else 'raw bytes'} ({x.dtype}); pass "
                             "a numeric array (for class names: np.unique(names, return_inverse=True)[1])")
        try:
            return torch.from_numpy(np.ascontiguousarray(x))
        except TypeError as err:  # dtypes torch has no tensor for (e.g. datetime64)
            raise InputError(f"{name}: arrays of dtype {x.dtype} are not supported; pass a numeric array") from err
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: cannot convert {type(x).__name__} to a numeric array ({err})") from err
    return as_tensor(array, name)


def describe_nonfinite(t: torch.Tensor, name: str, limit: int = 5) -> str:
    """Say how many entries of ``t`` are NaN/Inf and where the first ones are."""
    bad = ~torch.isfinite(t)
    count = int(bad.sum())
    where = bad.nonzero()[:limit].tolist()
    n_nan = int(torch.isnan(t).sum())
    places = ", ".join(str(tuple(w)) for w in where)
    more = " ..." if count > limit else ""
    return (
        f"{name} has {count} non-finite value(s) ({n_nan} NaN, {count - n_nan} Inf) "
        f"out of {t.numel()}; first at index {places}{more}"
    )


def as_float64_matrix(z: ArrayLike, name: str = "z", min_samples: int = 2) -> torch.Tensor:
    """Validate an (N, D) embedding matrix and return it as float64 on its own device.

    Raises :class:`InputError` for a wrong rank, too few samples, zero width, a non-numeric
    dtype, or NaN/Inf entries (the message counts them and gives the first positions).
    """
    t = as_tensor(z, name)
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{name}: expected real numbers, got dtype {t.dtype}")
    if t.ndim != 2:
        hint = " (flatten it with z.reshape(len(z), -1))" if t.ndim > 2 else ""
        raise InputError(f"{name}: expected a 2-D array of shape (N, D), got shape {tuple(t.shape)}{hint}")
    n, d = t.shape
    if n < min_samples:
        raise InputError(f"{name}: need at least {min_samples} samples (rows), got {n}")
    if d < 1:
        raise InputError(f"{name}: embeddings have zero dimensions (shape {tuple(t.shape)})")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise InputError(describe_nonfinite(t, name))
    return t


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Require two arrays of the same shape (e.g. two views of the same samples)."""
    if a.shape != b.shape:
        raise InputError(
            f"{name_b} must have the same shape as {name_a}: got {tuple(b.shape)} vs {tuple(a.shape)}"
        )
