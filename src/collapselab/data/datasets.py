"""Datasets as uint8 tensors: a registry, archive readers, and checksummed downloads.

Every dataset loads to an :class:`ImageDataset` holding ``images`` (uint8, (N, C, H, W)),
``labels`` (int64, (N,), ``-1`` where unlabeled) and ``classes``. Small datasets are meant to be
moved to the training device once (``dataset.to("cuda")``) and augmented there in whole batches.

Where files live: ``data_dir`` if given, else ``$COLLAPSELAB_DATA``, else
``~/.cache/collapselab/data``. The archive layouts are those of the official releases (and of
torchvision's dataset classes), so a folder that torchvision already filled works as it is:
``cifar-10-batches-py/``, ``cifar-100-python/``, ``train_32x32.mat``, ``stl10_binary/``.

Downloads fetch the official URL into ``<file>.part-<pid>``, verify the published MD5 and only
then rename into place; archives are verified before extraction and extracted into a temporary
folder that is renamed into place when complete, so a half-written download or extraction never
counts as present. Archive members that would land outside the target folder (absolute paths,
``..``, links, devices) are refused before anything is written.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from collapselab._validation import InputError

DATA_ENV_VAR = "COLLAPSELAB_DATA"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class IntegrityError(InputError):
    """A file's checksum differs from the published one (corrupt or truncated download)."""


# ---------------------------------------------------------------------------------------------
# The dataset object


class FolderImages:
    """Lazily decoded image-folder pixels: indexable like a uint8 (N, C, H, W) tensor.

    Used when an image folder is too large to decode into memory at once; ``images[idx]``
    decodes only the requested files (``idx``: int, slice, list or 1-D integer tensor).
    """

    dtype = torch.uint8

    def __init__(self, files: list[Path], channels: int, size: tuple[int, int] | None,
                 shape_hw: tuple[int, int]):
        self.files = list(files)
        self.channels = channels
        self.size = size
        self.shape = torch.Size((len(self.files), channels, *shape_hw))
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().tolist()
        if isinstance(index, int):
            return torch.from_numpy(_decode_image(self.files[index], self.channels, self.size))
        if isinstance(index, slice):
            index = range(len(self.files))[index]
        arrays = [_decode_image(self.files[i], self.channels, self.size) for i in index]
        return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(
            (0, *self.shape[1:]), dtype=torch.uint8)


@dataclass
class ImageDataset:
    """Images and labels of one split.

    Attributes:
        name: registry name (``"cifar10"``); split: ``"train"``, ``"test"`` or ``"unlabeled"``.
        images: uint8 tensor (N, C, H, W) (or :class:`FolderImages` for streamed folders).
        labels: int64 tensor (N,); ``-1`` marks an unlabeled sample.
        classes: class names, ``classes[label]``.
    """

    name: str
    split: str
    images: torch.Tensor | FolderImages
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or len(self.images.shape) != 4:
            raise InputError(
                f"dataset {self.name!r}: images must be a uint8 tensor of shape (N, C, H, W), got "
                f"dtype {self.images.dtype} and shape {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise InputError(
                f"dataset {self.name!r}: labels must be int64 of shape ({self.images.shape[0]},), "
                f"got dtype {self.labels.dtype} and shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: str | torch.device) -> ImageDataset:
        """Copy images and labels to ``device`` (e.g. ``"cuda"``) once, for on-device training."""
        if isinstance(self.images, FolderImages):
            raise InputError(f"dataset {self.name!r} is streamed from disk (too large for memory); "
                             "iterate it with DeviceLoader instead of moving it")
        return ImageDataset(self.name, self.split, self.images.to(device), self.labels.to(device),
                            list(self.classes))


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class RemoteFile:
    """A file of an official release: where to get it and its published MD5."""

    filename: str
    url: str
    md5: str
    extract: bool = False  # a tar archive to unpack into data_dir


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about a dataset.

    ``splits`` maps split name to number of images; ``required`` lists the paths (relative to the
    data folder) that must exist for the dataset to count as present.
    """

    name: str
    description: str
    splits: dict[str, int]
    num_classes: int
    resolution: tuple[int, int, int]
    reader: Callable[[Path, str], ImageDataset]
    files: tuple[RemoteFile, ...] = ()
    required: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> paths
    builtin: bool = False  # ships with a dependency; needs no files
    user_path: bool = False  # data_dir points at the user's own data

    def remote_for(self, split: str) -> tuple[RemoteFile, ...]:
        """The remote files needed for ``split``."""
        needed = set(self.required.get(split, ()))
        out = []
        for f in self.files:
            if f.extract or f.filename in needed:
                out.append(f)
        return tuple(out)


def default_data_dir() -> Path:
    """``$COLLAPSELAB_DATA`` if set, else ``~/.cache/collapselab/data``."""
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "collapselab" / "data"


def _resolve_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


# ---------------------------------------------------------------------------------------------
# Checksums, downloads, safe extraction


def md5_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | Path, expected: str) -> None:
    """Raise :class:`IntegrityError` if ``path``'s MD5 is not ``expected``."""
    actual = md5_file(path)
    if actual != expected.lower():
        raise IntegrityError(
            f"checksum mismatch for {path}: MD5 is {actual}, the published value is {expected}. "
            "The file is corrupt or incomplete; delete it and download it again.")


def download_file(url: str, dest: str | Path, md5: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically and verify its MD5.

    Bytes go to ``dest.part-<pid>`` first; only a file with the published checksum is renamed to
    ``dest``. Any ``urllib`` URL works (``https://``, ``http://``, ``file://``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as err:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"could not download {url} ({err}). If this machine is offline, fetch the file "
            f"elsewhere and place it at {dest}") from err
    if digest.hexdigest() != md5.lower():
        tmp.unlink(missing_ok=True)
        raise IntegrityError(
            f"checksum mismatch for the download of {url}: MD5 {digest.hexdigest()}, published "
            f"{md5}. Nothing was kept; try again (or place a good copy at {dest}).")
    os.replace(tmp, dest)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or (name.parts and ":" in name.parts[0]):
        raise InputError(f"refusing to extract {archive}: member {member.name!r} has an absolute path")
    if ".." in name.parts:
        raise InputError(f"refusing to extract {archive}: member {member.name!r} escapes the target "
                         "folder ('..' in its path)")
    if not (member.isfile() or member.isdir()):
        raise InputError(f"refusing to extract {archive}: member {member.name!r} is a link or special "
                         "file; dataset archives hold only regular files and folders")
    return name


def extract_archive(archive: str | Path, dest_dir: str | Path, md5: str | None = None) -> list[Path]:
    """Extract a tar archive (any compression) into ``dest_dir`` safely and atomically.

    Verifies ``md5`` first if given. Every member is checked before anything is written: absolute
    paths, ``..`` components, links and special files raise :class:`InputError`. Members are
    unpacked into a temporary folder inside ``dest_dir``; each top-level entry is then renamed
    into place (an earlier copy is swapped out, then deleted). Returns the top-level paths
    created. With several processes (DDP), prepare the data on one rank before the others read.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if md5 is not None:
        verify_md5(archive, md5)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise InputError(f"cannot read archive {archive}: {err}; delete it and download it again") from err
    with tar:
        members = tar.getmembers()
        tops = set()
        for m in members:
            name = _check_member(m, archive)
            if name.parts:
                tops.add(name.parts[0])
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = dest_dir / f".extract-{archive.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            tar.extractall(tmp, members=members, filter="data")
            created = []
            for top in sorted(tops):
                target = dest_dir / top
                old = None
                if target.exists() or target.is_symlink():
                    # swap rather than delete first: the path never points at a missing folder
                    old = dest_dir / f".old-{top}-{os.getpid()}"
                    os.replace(target, old)
                os.replace(tmp / top, target)
                if old is not None:
                    if old.is_dir() and not old.is_symlink():
                        shutil.rmtree(old, ignore_errors=True)
                    else:
                        old.unlink(missing_ok=True)
                created.append(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return created


def _verified_stamp(path: Path) -> Path:
    return path.with_name(path.name + ".md5-verified")


def _ensure_verified(path: Path, md5: str) -> None:
    """Verify a loose (non-archive) file once; a stamp records size and mtime of the good copy."""
    stat = path.stat()
    stamp = _verified_stamp(path)
    key = f"{md5} {stat.st_size} {stat.st_mtime_ns}"
    if stamp.exists() and stamp.read_text().strip() == key:
        return
    verify_md5(path, md5)
    _write_stamp(path, md5)


def _write_stamp(path: Path, md5: str) -> None:
    stat = path.stat()
    try:
        _verified_stamp(path).write_text(f"{md5} {stat.st_size} {stat.st_mtime_ns}\n")
    except OSError:
        pass  # a read-only data folder: verify again next time


def prepare(name: str, split: str = "train", data_dir: str | Path | None = None,
            download: bool = False) -> Path:
    """Make sure the files of ``name``/``split`` are present in ``data_dir``; return that folder.

    Present archives are verified and extracted; missing ones are downloaded when
    ``download=True``; otherwise :class:`FileNotFoundError` says which file to place where.
    """
    spec = _spec(name)
    _check_split(spec, split)
    root = _resolve_dir(data_dir)
    if spec.builtin or spec.user_path or _present(spec, split, root):
        return root
    for remote in spec.remote_for(split):
        local = root / remote.filename
        if remote.extract:
            if _present(spec, split, root):
                continue
            if not local.exists():
                if not download:
                    raise _missing_error(spec, split, root, remote)
                download_file(remote.url, local, remote.md5)
            extract_archive(local, root, md5=remote.md5)
        else:
            if not local.exists():
                if not download:
                    raise _missing_error(spec, split, root, remote)
                download_file(remote.url, local, remote.md5)
                _write_stamp(local, remote.md5)
    if not _present(spec, split, root):
        missing = [p for p in spec.required.get(split, ()) if not (root / p).exists()]
        raise FileNotFoundError(
            f"{name}: after extraction these files are still missing in {root}: {missing}. "
            "The archive does not have the official layout; delete it and download it again.")
    return root


def _missing_error(spec: DatasetSpec, split: str, root: Path, remote: RemoteFile) -> FileNotFoundError:
    return FileNotFoundError(
        f"dataset {spec.name!r} (split {split!r}) is not in {root}. Fetch it with `collapselab datasets "
        f"--download {spec.name}` (or data.download=true on `collapselab train`, download=True "
        f"in Python), or, offline, download {remote.url} (MD5 {remote.md5}) elsewhere and "
        f"place it at {root / remote.filename}. Set the folder with data_dir=... / --data-dir or "
        f"${DATA_ENV_VAR}.")


def _present(spec: DatasetSpec, split: str, root: Path) -> bool:
    if spec.builtin:
        return True
    if spec.user_path:
        return root.exists()
    paths = spec.required.get(split, ())
    return bool(paths) and all((root / p).exists() for p in paths)


def is_present(name: str, data_dir: str | Path | None = None, split: str | None = None) -> bool:
    """Whether the files of ``name`` (all its splits, or ``split``) are present in ``data_dir``."""
    spec = _spec(name)
    root = _resolve_dir(data_dir)
    splits = [split] if split is not None else list(spec.splits)
    return all(_present(spec, s, root) for s in splits)


# ---------------------------------------------------------------------------------------------
# Readers


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only dicts, lists, strings and numpy arrays (no arbitrary code)."""

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise InputError(f"refusing to unpickle {module}.{name}: a CIFAR batch file holds only "
                         "arrays, lists and strings; this file is not an official batch")


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"cannot read {path}: {err}; delete the folder and extract the archive again") from err
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    if "data" not in d or label_key not in d:
        raise InputError(f"{path}: missing key 'data' or {label_key!r} (keys: {sorted(d)})")
    data = np.asarray(d["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InputError(f"{path}: 'data' must have shape (N, 3072), got {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(d[label_key], dtype=np.int64)


def _read_cifar10(root: Path, split: str) -> ImageDataset:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_cifar_arrays(folder / n, "labels") for n in names]
    classes = [str(c) for c in _load_pickle(folder / "batches.meta")["label_names"]]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ImageDataset("cifar10", split, torch.from_numpy(x), torch.from_numpy(y), classes)


def _read_cifar100(root: Path, split: str) -> ImageDataset:
    folder = root / "cifar-100-python"
    x, y = _cifar_arrays(folder / split, "fine_labels")
    classes = [str(c) for c in _load_pickle(folder / "meta")["fine_label_names"]]
    return ImageDataset("cifar100", split, torch.from_numpy(x), torch.from_numpy(y), classes)


def _read_svhn(root: Path, split: str) -> ImageDataset:
    import scipy.io

    spec = DATASETS["svhn"]
    remote = next(f for f in spec.files if f.filename == f"{split}_32x32.mat")
    path = root / remote.filename
    _ensure_verified(path, remote.md5)
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, OSError) as err:
        raise InputError(f"cannot read {path}: {err}; delete it and download it again") from err
    if "X" not in mat or "y" not in mat:
        raise InputError(f"{path}: expected variables 'X' and 'y', found {sorted(k for k in mat if not k.startswith('__'))}")
    x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)  # (H,W,C,N) -> (N,C,H,W)
    y = mat["y"].astype(np.int64).reshape(-1)
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return ImageDataset("svhn", split, torch.from_numpy(x), torch.from_numpy(y), [str(i) for i in range(10)])


def _read_stl10(root: Path, split: str) -> ImageDataset:
    folder = root / "stl10_binary"
    x = np.fromfile(folder / f"{split}_X.bin", dtype=np.uint8)
    if x.size % (3 * 96 * 96):
        raise InputError(f"{folder / f'{split}_X.bin'}: size {x.size} is not a multiple of 3*96*96; "
                         "the file is truncated, extract the archive again")
    # stored column-major per image: (N, C, W, H) -> (N, C, H, W)
    x = np.ascontiguousarray(x.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
    if split == "unlabeled":
        y = np.full(len(x), -1, dtype=np.int64)
    else:
        y = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if len(y) != len(x):
            raise InputError(f"{folder}: {len(x)} images but {len(y)} labels in {split}_y.bin")
    names_file = folder / "class_names.txt"
    classes = names_file.read_text().split() if names_file.exists() else [str(i) for i in range(10)]
    return ImageDataset("stl10", split, torch.from_numpy(x), torch.from_numpy(y), classes)


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed train/test split of ``digits``: per class, the first 20 % of a seeded
    permutation (``numpy.random.RandomState(0)``, a frozen stream) go to test."""
    from sklearn.datasets import load_digits

    y = load_digits().target
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(y))
    test = []
    for c in range(10):
        members = perm[y[perm] == c]
        test.extend(members[: round(DIGITS_TEST_FRACTION * len(members))].tolist())
    test_idx = np.sort(np.asarray(test, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return {"train": train_idx, "test": test_idx}


def _read_digits(root: Path, split: str) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = digits_split_indices()[split]
    x = np.rint(bunch.images[idx] * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    y = bunch.target[idx].astype(np.int64)
    return ImageDataset("digits", split, torch.from_numpy(x), torch.from_numpy(y), [str(i) for i in range(10)])


def _to_nchw_uint8(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
            x = np.rint(x * 255.0).astype(np.uint8)
        else:
            raise InputError(f"{where}: images must be uint8 (0..255) or floats in [0, 1], got {x.dtype}"
                             + (f" with range [{x.min()}, {x.max()}]" if x.size and x.dtype.kind in "fiu" else ""))
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise InputError(f"{where}: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")
    last, second = x.shape[-1] in (1, 3, 4), x.shape[1] in (1, 3, 4)
    if last and second and x.shape[1:] != (1, 1, 1):
        # both axes could hold the channels, e.g. (N, 4, 4, 3): take the reading with square images
        hwc_square, chw_square = x.shape[1] == x.shape[2], x.shape[2] == x.shape[3]
        if hwc_square == chw_square:
            raise InputError(f"{where}: cannot tell the channel axis of shape {x.shape}: it reads as "
                             "(N, H, W, C) and as (N, C, H, W) with images of the same squareness")
        second = chw_square
    if last and not second:
        x = x.transpose(0, 3, 1, 2)
    elif not second:
        raise InputError(f"{where}: cannot tell the channel axis of shape {x.shape}; use (N, H, W, C) "
                         "or (N, C, H, W) with 1, 3 or 4 channels")
    return np.ascontiguousarray(x)


def _npz_split_path(root: Path, split: str) -> Path | None:
    """The file of ``split``: ``root/<split>.npz`` for a folder; a single file serves ``train``
    (or the split it is named after), else None."""
    if root.is_dir():
        return root / f"{split}.npz"
    return root if split == "train" or root.stem == split else None


def _read_npz(root: Path, split: str) -> ImageDataset:
    path = _npz_split_path(root, split)
    if path is None:
        raise InputError(
            f"npz: {root} holds a single split, used as 'train'; for split {split!r} put "
            f"{split}.npz beside train.npz in a folder and pass that folder as data_dir")
    if not path.exists():
        raise FileNotFoundError(f"npz: no file {path}; pass data_dir=<file.npz> or a folder holding "
                                f"{split}.npz (arrays 'x' and optionally 'y', 'classes')")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z:
                raise InputError(f"{path}: expected an array named 'x' (images), found {sorted(z.files)}")
            x = _to_nchw_uint8(z["x"], str(path))
            y = _int_labels(z["y"], str(path)) if "y" in z else np.full(len(x), -1, np.int64)
            classes = [str(c) for c in z["classes"]] if "classes" in z else None
    except InputError:
        raise
    except ValueError as err:  # object arrays (refused: loading them would unpickle), bad headers
        raise InputError(f"{path}: cannot be read as numeric arrays ({err}); save images and labels as "
                         "plain NumPy number arrays (np.savez(path, x=uint8 images, y=int labels))") from None
    except (OSError, EOFError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise InputError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    if len(y) != len(x):
        raise InputError(f"{path}: 'x' has {len(x)} images but 'y' has {len(y)} labels")
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1)] if (y >= 0).any() else []
    return ImageDataset("npz", split, torch.from_numpy(x), torch.from_numpy(y), classes)


def _decode_image(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot decode image {path}: {err}; remove or replace the file") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _class_folders(root: Path) -> list[str]:
    """Sorted class sub-folder names of ``root`` (hidden folders skipped)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _int_labels(y: np.ndarray, where: str) -> np.ndarray:
    """``y`` as int64 class indices (-1 = unlabelled); fractional or text labels are an error,
    not truncated."""
    if y.dtype.kind not in "biuf":
        raise InputError(f"{where}: 'y' holds {y.dtype} values; save class indices as integers "
                         "(for class names: y = np.unique(names, return_inverse=True)[1], classes = the names)")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise InputError(f"{where}: 'y' holds non-integer values (e.g. {y[np.isfinite(y) & (y != np.round(y))][:1]}"
                         "); labels are class indices (-1 = unlabelled)")
    return y.astype(np.int64).reshape(-1)


def _folder_listing(root: Path, index: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of ``root/<class>/<image>``. With ``index`` (the train
    split's class names), labels are positions in ``index``, matched by folder name, and the
    returned classes are ``index``; a class folder missing from ``index`` is an error."""
    classes = _class_folders(root)
    if not classes:
        raise InputError(f"imagefolder: {root} has no class sub-folders; expected "
                         f"{root}/<class_name>/<image>.png (one sub-folder per class)")
    position = {cls: i for i, cls in enumerate(index if index is not None else classes)}
    unknown = [cls for cls in classes if cls not in position]
    if unknown:
        raise InputError(f"imagefolder: class folder(s) {unknown} in {root} are not classes of the train split "
                         f"{sorted(position)}; labels are matched by folder name, so rename or remove them")
    files, labels = [], []
    for cls in classes:
        label = position[cls]
        for p in sorted((root / cls).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                files.append(p)
                labels.append(label)
    if not files:
        raise InputError(f"imagefolder: no images with extensions {IMAGE_EXTENSIONS} under {root}")
    return files, labels, list(index) if index is not None else classes


def _imagefolder_split(root: Path, split: str) -> Path | None:
    """The folder of ``split`` under ``root`` (``root`` itself serves ``train``); None if absent."""
    if (root / split).is_dir():
        return root / split
    return root if split == "train" else None


def missing_split_hint(name: str, split: str, data_dir: str | Path | None) -> str | None:
    """For a dataset read from the user's own files (``npz``, ``imagefolder``): None when
    ``split`` is there, else how to add it (one phrase). Registered datasets have all their
    splits (None)."""
    spec = _spec(name)
    if not spec.user_path or data_dir is None:
        return None
    root = Path(data_dir).expanduser()
    if name == "npz":
        path = _npz_split_path(root, split)
        if path is None:
            return (f"{root} is a single file (the train split); put it in a folder as train.npz with a "
                    f"{split}.npz beside it and pass that folder as data.data_dir")
        return None if path.exists() or not root.is_dir() else (
            f"add {path} (arrays x, y) beside train.npz")
    if name == "imagefolder":
        if not root.is_dir() or _imagefolder_split(root, split) is not None:
            return None
        return f"add {root / split}/<class>/<image> (and the training images under {root / 'train'}/<class>/)"
    return None


def load_imagefolder(root: str | Path, split: str = "train", image_size: int | tuple[int, int] | None = None,
                     max_memory_bytes: int = 4 << 30, cache_dir: str | Path | None = None) -> ImageDataset:
    """Load a folder of class sub-folders (``root/<class>/<image>``) as an :class:`ImageDataset`.

    If ``root/<split>`` exists it is used, else ``root`` itself serves the ``train`` split.
    Images are converted to RGB (grayscale if every image is single-channel) and must share one
    size unless ``image_size`` (int or (H, W)) resizes them (bilinear). When the decoded array fits
    in ``max_memory_bytes`` it is decoded once and cached as a ``.npy`` file under
    ``cache_dir`` (default ``<default data dir>/imagefolder-cache``), keyed by the file list, sizes
    and modification times; otherwise images are streamed (decoded per batch, :class:`FolderImages`).
    """
    from PIL import Image

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: {root} is not a folder; pass data_dir=<folder with one "
                                "sub-folder per class>")
    folder = _imagefolder_split(root, split)
    if folder is None:
        raise FileNotFoundError(f"imagefolder: no {split!r} sub-folder in {root}; split {split!r} "
                                f"needs {root / split}/<class>/<image>")
    # another split's labels follow the train split's class index, matched by folder name
    train_folder = _imagefolder_split(root, "train") if split != "train" else None
    files, labels, classes = _folder_listing(folder, _class_folders(train_folder) if train_folder else None)
    size = (image_size, image_size) if isinstance(image_size, int) else (tuple(image_size) if image_size else None)
    modes, sizes = set(), set()
    for p in files if size is None else files[:256]:
        try:
            with Image.open(p) as im:
                modes.add(im.mode)
                sizes.add((im.size[1], im.size[0]))
        except (OSError, SyntaxError, ValueError) as err:  # PIL raises SyntaxError for some bad headers
            raise InputError(f"cannot decode image {p}: {err}; remove or replace the file") from None
    channels = 1 if modes <= {"L", "1", "I", "I;16", "F"} else 3
    if size is None:
        if len(sizes) != 1:
            raise InputError(f"imagefolder: images in {folder} have {len(sizes)} different sizes "
                             f"(e.g. {sorted(sizes)[:3]} as (H, W)); pass image_size=... to resize them")
        size_hw = next(iter(sizes))
    else:
        size_hw = size
    y = torch.tensor(labels, dtype=torch.int64)
    nbytes = len(files) * channels * size_hw[0] * size_hw[1]
    if nbytes > max_memory_bytes:
        return ImageDataset("imagefolder", split, FolderImages(files, channels, size, size_hw), y, classes)
    h = hashlib.sha1(usedforsecurity=False)
    h.update(repr((str(folder.resolve()), size, channels)).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = Path(cache_dir) if cache_dir is not None else default_data_dir() / "imagefolder-cache"
    cache_file = cache / f"{split}-{h.hexdigest()[:20]}.npy"
    if cache_file.exists():
        x = np.load(cache_file, allow_pickle=False)
    else:
        x = np.stack([_decode_image(p, channels, size) for p in files])
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(cache_file.name + f".part-{os.getpid()}")
            with open(tmp, "wb") as fh:
                np.save(fh, x)
            os.replace(tmp, cache_file)
        except OSError:
            pass  # cache is an optimisation only
    return ImageDataset("imagefolder", split, torch.from_numpy(x), y, classes)


def _read_imagefolder(root: Path, split: str) -> ImageDataset:
    return load_imagefolder(root, split)


# ---------------------------------------------------------------------------------------------
# The registry itself

_CIFAR10_FILES = tuple(f"cifar-10-batches-py/{n}" for n in
                       [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"])

DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "digits", "scikit-learn's bundled 8x8 handwritten digits (grayscale, 0..16 rescaled to 0..255)",
        {"train": 1438, "test": 359}, 10, (1, 8, 8), _read_digits, builtin=True),
    "cifar10": DatasetSpec(
        "cifar10", "CIFAR-10, python pickle batches", {"train": 50000, "test": 10000}, 10, (3, 32, 32),
        _read_cifar10,
        files=(RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          "c58f30108f718f92721af3b95e74349a", extract=True),),
        required={"train": _CIFAR10_FILES, "test": _CIFAR10_FILES}),
    "cifar100": DatasetSpec(
        "cifar100", "CIFAR-100 (fine labels), python pickles", {"train": 50000, "test": 10000}, 100,
        (3, 32, 32), _read_cifar100,
        files=(RemoteFile("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          "eb9058c3a382ffc7106e4002c42a8d85", extract=True),),
        required={s: ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")
                  for s in ("train", "test")}),
    "svhn": DatasetSpec(
        "svhn", "Street View House Numbers, cropped digits (.mat)", {"train": 73257, "test": 26032}, 10,
        (3, 32, 32), _read_svhn,
        files=(RemoteFile("train_32x32.mat", "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                          "e26dedcc434d2e4c54c9b2d4a06d8373"),
               RemoteFile("test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                          "eb5a983be6a315427106f1b164d9cef3")),
        required={"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)}),
    "stl10": DatasetSpec(
        "stl10", "STL-10 binary release (96x96; labeled train/test and 100k unlabeled)",
        {"train": 5000, "test": 8000, "unlabeled": 100000}, 10, (3, 96, 96), _read_stl10,
        files=(RemoteFile("stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                          "91f7769df0f17e558f3565bffb0c7dfb", extract=True),),
        required={"train": ("stl10_binary/train_X.bin", "stl10_binary/train_y.bin"),
                  "test": ("stl10_binary/test_X.bin", "stl10_binary/test_y.bin"),
                  "unlabeled": ("stl10_binary/unlabeled_X.bin",)}),
    "imagefolder": DatasetSpec(
        "imagefolder", "your folder of class sub-folders (data_dir=<folder>)", {"train": -1, "test": -1},
        -1, (-1, -1, -1), _read_imagefolder, user_path=True),
    "npz": DatasetSpec(
        "npz", "your .npz file (arrays x, optional y and classes; data_dir=<file or folder>)",
        {"train": -1, "test": -1}, -1, (-1, -1, -1), _read_npz, user_path=True),
}


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return list(DATASETS)


def _spec(name: str) -> DatasetSpec:
    if not isinstance(name, str) or name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown dataset {name!r}{hint} Known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise InputError(f"dataset {spec.name!r} has no split {split!r}; choose one of {list(spec.splits)}")


def get_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                download: bool = False) -> ImageDataset:
    """Load one split of a registered dataset as uint8 tensors (on the CPU).

    Args:
        name: one of :func:`list_datasets` (``digits`` needs no files).
        split: ``"train"``, ``"test"`` (and ``"unlabeled"`` for ``stl10``).
        data_dir: folder with the dataset files (default: ``$COLLAPSELAB_DATA`` or
            ``~/.cache/collapselab/data``); for ``imagefolder``/``npz`` the user's folder or file.
        download: fetch missing official files (checksummed) instead of raising.

    Raises:
        InputError: unknown name or split, corrupt file, bad layout.
        FileNotFoundError: files missing; the message says which file to place where.
    """
    spec = _spec(name)
    _check_split(spec, split)
    if spec.user_path and data_dir is None:
        raise InputError(f"dataset {name!r} reads your own data: pass data_dir=<path> "
                         f"({spec.description})")
    root = prepare(name, split, data_dir, download)
    return spec.reader(root, split)


__all__ = [
    "DATASETS", "DATA_ENV_VAR", "DatasetSpec", "FolderImages", "ImageDataset", "IntegrityError",
    "RemoteFile", "default_data_dir", "digits_split_indices", "download_file", "extract_archive",
    "get_dataset", "is_present", "list_datasets", "load_imagefolder", "md5_file", "missing_split_hint",
    "prepare", "verify_md5",
]
