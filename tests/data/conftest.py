"""Writers of small dataset files in each official format (tests never download)."""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from collapselab.data import datasets as ds


def add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar10_archive(path: Path, per_batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A cifar-10-python.tar.gz with the official layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    written = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, per_batch).tolist()
            written[name] = (data, labels)
            add_bytes(tar, f"cifar-10-batches-py/{name}",
                      pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": data}, protocol=2))
        meta = {b"label_names": [f"class{i}" for i in range(10)], b"num_vis": 3072}
        add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
    return written


def write_cifar100_archive(path: Path, n: int = 3, seed: int = 1) -> dict[str, tuple]:
    rng = np.random.default_rng(seed)
    written = {}
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            fine = rng.integers(0, 100, n).tolist()
            written[split] = (data, fine)
            add_bytes(tar, f"cifar-100-python/{split}", pickle.dumps(
                {"data": data, "fine_labels": fine, "coarse_labels": [0] * n}, protocol=4))
        add_bytes(tar, "cifar-100-python/meta", pickle.dumps(
            {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": ["c"]}, protocol=4))
    return written


def write_stl10_archive(path: Path, seed: int = 2) -> dict[str, tuple]:
    """stl10_binary.tar.gz: images stored column-major per image, labels 1..10."""
    rng = np.random.default_rng(seed)
    written = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 2), ("test", 3), ("unlabeled", 2)):
            x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
            add_bytes(tar, f"stl10_binary/{split}_X.bin", np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
            y = rng.integers(1, 11, n).astype(np.uint8)
            if split != "unlabeled":
                add_bytes(tar, f"stl10_binary/{split}_y.bin", y.tobytes())
            written[split] = (x, y)
        add_bytes(tar, "stl10_binary/class_names.txt", "\n".join(f"n{i}" for i in range(10)).encode())
    return written


def use_checksum(monkeypatch: pytest.MonkeyPatch, name: str, filename: str, md5: str, url: str | None = None) -> None:
    """Point the registry entry's published MD5 (and optionally URL) at a test file."""
    spec = ds.DATASETS[name]
    files = tuple(replace(f, md5=md5, url=url or f.url) if f.filename == filename else f for f in spec.files)
    monkeypatch.setitem(ds.DATASETS, name, replace(spec, files=files))


@pytest.fixture
def writers():
    """The writers above, as a fixture (works under any pytest import mode)."""
    import types

    return types.SimpleNamespace(
        add_bytes=add_bytes, use_checksum=use_checksum, write_cifar10_archive=write_cifar10_archive,
        write_cifar100_archive=write_cifar100_archive, write_stl10_archive=write_stl10_archive)
