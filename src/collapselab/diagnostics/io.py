"""Reading embeddings from files for ``collapselab diagnose``: .npy, .npz, .pt/.pth, .csv/.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from collapselab._validation import InputError

SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".csv", ".txt")
NPY_MAGIC = b"\x93NUMPY"
NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
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

    Never unpickles: .npy/.npz are read with ``allow_pickle=False`` (a file without NumPy's
    header is refused, not taken for a pickle) and .pt with ``torch.load(weights_only=True)``.
    Tensors of a float dtype NumPy lacks (bfloat16, float8) are read as float32.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; pass a file ({', '.join(SUFFIXES)})")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        _check_magic(path, suffix)
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
            if obj.is_floating_point() and obj.dtype not in NUMPY_FLOATS:
                obj = obj.float()  # bfloat16, float8: NumPy has no such dtype; float32 holds them exactly
            arr = obj.detach().cpu().numpy()
        elif suffix in (".csv", ".txt"):
            arr = _load_text(path)
        else:
            raise InputError(f"{path}: unsupported format '{suffix}'; use one of {', '.join(SUFFIXES)}")
    except InputError:
        raise
    except Exception as err:  # corrupt archives, pickles refused by weights_only, bad text
        if suffix in (".npy", ".npz") and "allow_pickle" in str(err):
            raise InputError(
                f"{path}: cannot read as {suffix}: it holds Python objects, which are never unpickled; "
                "save a numeric array"
            ) from err
        raise InputError(f"{path}: cannot read as {suffix} ({type(err).__name__}: {err})") from err
    arr = np.asarray(arr)
    if arr.size == 0:
        raise InputError(f"{path}: the array is empty (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{path}: expected numbers, found dtype {arr.dtype}")
    return arr


def _check_magic(path: Path, suffix: str) -> None:
    """Refuse a .npy/.npz whose first bytes are not NumPy's header or a zip archive's (NumPy
    would take it for a pickle, which is never loaded here)."""
    with path.open("rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    if suffix == ".npy" and not head.startswith(NPY_MAGIC):
        kind = "an .npz archive (zip); rename it to .npz" if head.startswith(b"PK") else "no NumPy header"
        raise InputError(f"{path}: cannot read as .npy: not a valid .npy file ({kind}); pickles are never loaded")
    if suffix == ".npz" and not head.startswith(b"PK"):
        kind = "a .npy array; rename it to .npy" if head.startswith(NPY_MAGIC) else "not a zip archive"
        raise InputError(f"{path}: cannot read as .npz: not a valid .npz file ({kind}); pickles are never loaded")


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
