"""Reading embeddings from files for ``collapselab diagnose``: .npy, .npz, .pt/.pth, .csv/.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from collapselab._validation import InputError

SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".csv", ".txt")
PREFERRED_KEYS = ("z", "emb", "embeddings", "features", "repr", "x")


def _pick(arrays: dict[str, object], key: str | None, path: Path) -> object:
    if key is not None:
        if key not in arrays:
            raise InputError(f"{path}: no array named '{key}'; it holds {sorted(arrays)}")
        return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    for name in PREFERRED_KEYS:
        if name in arrays:
            return arrays[name]
    raise InputError(f"{path}: holds several arrays {sorted(arrays)}; choose one with --key NAME")


def load_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """Load one numeric array from ``path``; ``key`` names it inside an .npz or a .pt dict.

    Never unpickles: .npy/.npz are read with ``allow_pickle=False`` and .pt with
    ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; pass a file ({', '.join(SUFFIXES)})")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arr = _pick({k: archive[k] for k in archive.files}, key, path)
        elif suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = _pick(obj, key, path)
            if not isinstance(obj, torch.Tensor):
                raise InputError(f"{path}: expected a tensor (or a dict of tensors), found {type(obj).__name__}")
            arr = obj.detach().cpu().numpy()
        elif suffix in (".csv", ".txt"):
            arr = _load_text(path)
        else:
            raise InputError(f"{path}: unsupported format '{suffix}'; use one of {', '.join(SUFFIXES)}")
    except InputError:
        raise
    except Exception as err:  # corrupt archives, pickles refused by weights_only, bad text
        raise InputError(f"{path}: cannot read as {suffix} ({type(err).__name__}: {err})") from err
    arr = np.asarray(arr)
    if arr.size == 0:
        raise InputError(f"{path}: the array is empty (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{path}: expected numbers, found dtype {arr.dtype}")
    return arr


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _load_text(path: Path) -> np.ndarray:
    """Comma- or whitespace-separated numbers. The first line is a header only when none of its
    fields is a number; a bad value anywhere else (the first data row included) is an error that
    names its line."""
    with path.open() as handle:
        first = handle.readline()
    delimiter = "," if "," in first else None
    fields = [f.strip() for f in (first.split(delimiter) if delimiter else first.split())]
    header = bool(fields) and not any(_is_number(f) for f in fields if f)
    try:
        return np.loadtxt(path, delimiter=delimiter, ndmin=2, skiprows=1 if header else 0)
    except ValueError as err:
        raise InputError(f"{path}: cannot read as a table of numbers ({err})") from err
