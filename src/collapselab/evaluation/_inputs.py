"""Input checks shared by the evaluation protocols: features, labels, train/test pairs."""

from __future__ import annotations

import torch

from collapselab._validation import ArrayLike, InputError, as_tensor, describe_nonfinite


def check_features(features: ArrayLike, name: str) -> torch.Tensor:
    """Validate an (N, D) real feature matrix without copying or up-casting it.

    Raises :class:`InputError` for a wrong rank, no rows or columns, a non-real dtype, or NaN/Inf
    entries (the message counts them and gives the first positions).
    """
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
    """Validate (N,) integer class labels that belong to ``n`` feature rows; returns int64."""
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
    ytr = check_labels(train_labels, xtr.shape[0], "train_labels", "train_features")
    yte = check_labels(test_labels, xte.shape[0], "test_labels", "test_features")
    ytr, yte, n_classes = encode_labels(ytr, yte)
    return xtr, ytr, xte, yte, n_classes


def resolve_device(device: str | torch.device | None, *tensors: torch.Tensor) -> torch.device:
    """``device`` if given, else the device of the first tensor (CPU for NumPy inputs)."""
    if device is not None:
        return torch.device(device)
    return tensors[0].device if tensors else torch.device("cpu")
