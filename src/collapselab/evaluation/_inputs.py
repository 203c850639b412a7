"""Input checks shared by the evaluation protocols: features, labels, train/test pairs."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from collapselab._validation import ArrayLike, InputError, as_tensor, describe_nonfinite


def check_features(features: ArrayLike, name: str) -> torch.Tensor:
    """Validate an (N, D) real feature matrix without copying or up-casting it.

    Raises :class:`InputError` for a wrong rank, no rows or columns, a non-real dtype, or NaN/Inf
    entries (the message counts them and gives the first positions).
    """
    if _categorical(features) is not None:
        raise InputError(f"{name}: expected real numbers, got text ({np.asarray(features).dtype})")
    t = as_tensor(features, name)
    if (
        t.dtype == torch.bool
        or t.is_complex()
        or not (t.is_floating_point() or t.dtype in _INTEGER_DTYPES)
    ):
        raise InputError(f"{name}: expected real numbers, got dtype {t.dtype}")
    if t.ndim != 2:
        hint = f" (flatten it with {name}.reshape(len({name}), -1))" if t.ndim > 2 else ""
        raise InputError(
            f"{name}: expected a 2-D array of shape (N, D), got shape {tuple(t.shape)}{hint}"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name}: got an empty feature matrix of shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise InputError(
            describe_nonfinite(t, name)
            + "; check the model for a diverged run (NaN loss) or drop those rows before evaluating"
        )
    return t


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_labels(labels: ArrayLike, n: int, name: str, features_name: str) -> torch.Tensor:
    """Validate (N,) integer class labels that belong to ``n`` feature rows; returns int64.

    Text labels (class names) become the indices of their sorted distinct values
    (:func:`categorical_codes`); give both splits of a train/test pair to that function first
    so that they share one mapping.
    """
    labels = categorical_codes([labels], [name])[0]
    t = as_tensor(labels, name)
    if t.ndim == 2 and 1 in t.shape:
        t = t.reshape(-1)
    if t.ndim != 1:
        raise InputError(
            f"{name}: expected a 1-D array of class labels, got shape {tuple(t.shape)}"
        )
    if len(t) != n:
        raise InputError(
            f"{name} has {len(t)} entries but {features_name} has {n} rows; pass one label per "
            "feature row, in the same order"
        )
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise InputError(describe_nonfinite(t, name))
        if not bool((t == t.round()).all()):
            raise InputError(f"{name}: expected integer class labels, got fractional values")
    elif t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{name}: expected integer class labels, got dtype {t.dtype}")
    return t.to(torch.int64)


def _categorical(labels: ArrayLike) -> np.ndarray | None:
    """``labels`` as a NumPy array when they are text (str/bytes, or an object array of str or
    bytes), else None (numbers and tensors go through the numeric checks)."""
    if isinstance(labels, torch.Tensor):
        return None
    if isinstance(labels, np.ndarray):
        array = labels
    elif isinstance(labels, (str, bytes)):
        return np.asarray([labels])
    else:
        try:
            array = np.asarray(labels)
        except (TypeError, ValueError):
            return None
    if array.dtype.kind in "US":
        return array
    if array.dtype == object and array.size and all(
        isinstance(value, (str, bytes)) for value in array.reshape(-1)
    ):
        return array
    return None


def categorical_codes(labels: Sequence[ArrayLike], names: Sequence[str]) -> list[ArrayLike]:
    """Text labels (class names) → int64 class indices, one mapping for all arrays given.

    The classes are ``np.unique`` of every array together (sorted), so train and test labels of
    a pair get the same index for the same name. Numeric labels are returned unchanged; mixing
    text and numbers across the arrays is an :class:`InputError`.
    """
    arrays = [_categorical(x) for x in labels]
    if all(array is None for array in arrays):
        return list(labels)
    if any(array is None for array in arrays):
        text = [name for name, array in zip(names, arrays, strict=True) if array is not None]
        other = [name for name, array in zip(names, arrays, strict=True) if array is None]
        raise InputError(
            f"{', '.join(text)} hold text (class names) but {', '.join(other)} hold numbers; "
            "give every split labels of the same kind"
        )
    flat = []
    for name, array in zip(names, arrays, strict=True):
        if array.ndim == 2 and 1 in array.shape:
            array = array.reshape(-1)
        if array.ndim != 1:
            raise InputError(
                f"{name}: expected a 1-D array of class labels, got shape {tuple(array.shape)}"
            )
        flat.append(array)
    try:
        _, codes = np.unique(np.concatenate(flat), return_inverse=True)
    except TypeError as err:  # an object array mixing str and bytes
        raise InputError(
            f"{', '.join(names)}: class names mix types that cannot be compared ({err})"
        ) from err
    codes = codes.reshape(-1).astype(np.int64)
    bounds = np.cumsum([0] + [len(array) for array in flat])
    return [codes[start:stop] for start, stop in itertools.pairwise(bounds)]


def _whole(value: object) -> bool:
    """An integer, or a float with a whole value (``5.0``); not a bool."""
    return not isinstance(value, bool) and (
        isinstance(value, numbers.Integral)
        or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    )


def check_count(value: object, name: str, minimum: int = 1, what: str = "") -> int:
    """``value`` as an int if it is a whole number >= ``minimum``; else an :class:`InputError`
    (``what`` describes the setting in the message, e.g. " (k-means restarts)")."""
    if not _whole(value) or value < minimum:
        cond = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
        raise InputError(f"{name} must be {cond}{what}, got {value!r}")
    return int(value)


MAX_SEED = 2**32 - 1  # scikit-learn's k-means takes seeds in [0, 2**32 - 1]


def check_seed(value: object, name: str = "seed", kmeans: bool = True) -> int:
    """A whole-number seed: in [0, 2**32 − 1] when it seeds scikit-learn's k-means (``kmeans``),
    else any value torch takes (negative seeds seed torch generators as before)."""
    if not _whole(value):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    seed = int(value)
    if kmeans and not 0 <= seed <= MAX_SEED:
        raise InputError(
            f"{name} must be a whole number in [0, {MAX_SEED}] (the seeds k-means takes), got {value!r}"
        )
    if not -(2**63) <= seed < 2**63:
        raise InputError(f"{name} must be a whole number in [-2**63, 2**63), got {value!r}")
    return seed


def check_l2(value: object) -> float | list[float]:
    """The probe's λ: a finite number >= 0, or a non-empty sequence of them (candidates)."""
    usage = "l2 must be >= 0 and finite (or a non-empty sequence of such values), got"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        candidates = [value]
    elif isinstance(value, (str, bytes)) or not isinstance(
        value, Sequence | np.ndarray | torch.Tensor
    ):
        raise InputError(f"{usage} {value!r}")
    elif getattr(value, "ndim", 1) == 0:  # a 0-d array or tensor
        candidates = [value.item()]
    else:
        candidates = [v.item() if isinstance(v, (np.generic, torch.Tensor)) else v for v in value]
    for v in candidates:
        number = isinstance(v, numbers.Real) and not isinstance(v, bool)
        if not number or not math.isfinite(v) or v < 0:
            raise InputError(f"{usage} {v!r}")
    if not candidates:
        raise InputError(f"{usage} an empty sequence")
    if isinstance(value, numbers.Real) or getattr(value, "ndim", 1) == 0:
        return float(candidates[0])
    return [float(v) for v in candidates]


def encode_labels(
    train_labels: torch.Tensor, test_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Map labels of both splits to 0..C−1 (C = distinct labels in either); require ≥ 2 train classes."""
    n_train_classes = int(torch.unique(train_labels).numel())
    if n_train_classes < 2:
        value = int(train_labels[0]) if len(train_labels) else None
        raise InputError(
            f"train labels hold a single class ({value}); a classifier needs at least 2 classes. "
            "Check that the labels were not overwritten, or that the split is not a one-class subset"
        )
    both = (
        train_labels if test_labels is None else torch.cat([train_labels.cpu(), test_labels.cpu()])
    )
    classes, codes = torch.unique(both.cpu(), return_inverse=True)
    train_codes = codes[: len(train_labels)]
    test_codes = None if test_labels is None else codes[len(train_labels) :]
    return train_codes, test_codes, int(classes.numel())


def check_split_pair(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Validate a train/test pair; return features, labels encoded as 0..C−1, and C."""
    xtr = check_features(train_features, "train_features")
    xte = check_features(test_features, "test_features")
    if xtr.shape[1] != xte.shape[1]:
        raise InputError(
            f"train_features have {xtr.shape[1]} dimensions but test_features have {xte.shape[1]}; "
            "both splits must come from the same feature extractor"
        )
    train_labels, test_labels = categorical_codes(
        [train_labels, test_labels], ["train_labels", "test_labels"]
    )
    ytr = check_labels(train_labels, xtr.shape[0], "train_labels", "train_features")
    yte = check_labels(test_labels, xte.shape[0], "test_labels", "test_features")
    ytr, yte, n_classes = encode_labels(ytr, yte)
    return xtr, ytr, xte, yte, n_classes


def resolve_device(device: str | torch.device | None, *tensors: torch.Tensor) -> torch.device:
    """``device`` if given, else the device of the first tensor (CPU for NumPy inputs)."""
    if device is not None:
        return torch.device(device)
    return tensors[0].device if tensors else torch.device("cpu")
